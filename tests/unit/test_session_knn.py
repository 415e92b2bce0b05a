"""V-SKNN, STAN and VSTAN on tiny hand-made sessions: each weight of the definitions, checked by value."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from stream_reco.core.events import Event
from stream_reco.evaluate.baselines import Method
from stream_reco.evaluate.cli import ALL_METHODS, BASELINES
from stream_reco.evaluate.loaders import LogRecord
from stream_reco.evaluate.session_knn import (
    STAN_INH,
    STAN_SNH_DAYS,
    STAN_SPW,
    VSTAN_IDF,
    VSTAN_INH,
    VSTAN_IPW,
    VSTAN_SNH_DAYS,
    VSTAN_SPW,
    SequenceKnn,
    Stan,
    VSkNN,
    VStan,
    make_session_knn,
)

SECOND = 1000
MINUTE = 60 * SECOND
DAY = 86_400_000


def session(name: str, items: str | Sequence[str], start: int, user: bool = False) -> list[LogRecord]:
    """One visitor's clicks on `items` (one character each when a string), a second apart from `start`."""
    ids = {"user_id": name} if user else {"session_id": name}
    return [
        LogRecord(
            Event(event_id=f"{name}-{n}-{start}", event_type="view", item_id=item, timestamp=start + n * SECOND, **ids),
            True,
        )
        for n, item in enumerate(items)
    ]


def fitted(method: SequenceKnn, *sessions: list[LogRecord]) -> SequenceKnn:
    method.fit(sorted((r for s in sessions for r in s), key=lambda r: r.event.timestamp))
    return method


def score(method: SequenceKnn, visitor: str, now: int) -> dict[str, float]:
    values = method.scores(visitor, now)
    assert values is not None
    return {method.items.ids[i]: float(v) for i, v in enumerate(values.tolist()) if v != 0}


def test_the_three_have_the_method_interface_and_are_registered_with_evaluate() -> None:
    for method in make_session_knn(24.0):
        assert isinstance(method, Method)
        assert method.recommend("nobody", 0, 5) == []
        assert BASELINES[method.name] is type(method)
    assert list(BASELINES) == ["POP", "RPOP", "COVIS", "SKNN", "V-SKNN", "STAN", "VSTAN"]
    assert ALL_METHODS[-1] == "stream_reco"


def test_published_hyper_parameters_are_the_defaults() -> None:
    v, s, vs = VSkNN(), Stan(), VStan()
    assert (v.k, v.sample, v.idf_weight) == (500, 5000, 5.0)
    assert (s.k, s.sample, s.lambda_spw, s.lambda_snh_ms, s.lambda_inh) == (500, 10_000, 1.225, 20 * DAY, 4.9)
    assert (vs.k, vs.sample, vs.lambda_spw, vs.lambda_snh_ms, vs.lambda_inh, vs.lambda_ipw, vs.idf_weight) == (
        1500,
        5000,
        4.9,
        40 * DAY,
        4.9,
        1.225,
        10.0,
    )
    assert not s.most_recent_anchor and not vs.most_recent_anchor


# n1 shares the current session's first click, n2 its last one
POSITION_LOG = (session("n1", "ax", 0), session("n2", "by", 10 * SECOND), session("q", "ab", 100 * SECOND))
NOW = 200 * SECOND


def test_vsknn_weights_positions_quadratically_and_neighbours_by_one_over_step() -> None:
    vsknn = fitted(VSkNN(idf_weight=0.0), *POSITION_LOG)
    got = score(vsknn, "q", NOW)
    # w(a) = (1/2)^2, w(b) = (2/2)^2; sim = shared weight / 2 distinct items; n1's newest shared click is
    # one step back (1/2), n2's is the last click (1/1). Linear weights would give x 0.125, no decay 0.125.
    sim1, sim2 = 0.25 / 2, 1.0 / 2
    assert got == pytest.approx({"a": sim1 / 2, "x": sim1 / 2, "b": sim2, "y": sim2})
    assert vsknn.recommend("q", NOW, 4) == ["b", "y", "a", "x"]  # ties by recent popularity
    assert vsknn.recommend("q", NOW, 2, exclude={"a", "b"}) == ["y", "x"]  # the novel variant


def test_stan_weights_recent_clicks_exponentially() -> None:
    stan = fitted(Stan(), *POSITION_LOG)
    got = score(stan, "q", NOW)
    w_a = math.exp((1 - 2) / STAN_SPW)
    norm = math.sqrt(w_a**2 + 1.0) * math.sqrt(2)  # the current session's weights, n's two items

    def sim(overlap: float, last: int) -> float:
        return overlap / norm * math.exp(-(NOW - last) / (STAN_SNH_DAYS * DAY))

    sim1, sim2 = sim(w_a, 1 * SECOND), sim(1.0, 11 * SECOND)
    inh = math.exp(-1 / STAN_INH)  # x and y sit one step after the shared item
    assert got == pytest.approx({"a": sim1, "x": sim1 * inh, "b": sim2, "y": sim2 * inh})
    assert got["y"] > got["x"]


def test_vstan_combines_position_recency_neighbour_position_and_idf() -> None:
    vstan = fitted(VStan(), *POSITION_LOG)
    got = score(vstan, "q", NOW)
    w_a = math.exp((1 - 2) / VSTAN_SPW)
    norm = math.sqrt(w_a**2 + 1.0) * math.sqrt(2)
    snh = VSTAN_SNH_DAYS * DAY
    sim1 = w_a / norm * math.exp(-(NOW - 1 * SECOND) / snh)
    sim2 = 1.0 / norm * math.exp(-(NOW - 11 * SECOND) / snh)
    ipw1 = math.exp((1 - 2) / VSTAN_IPW)  # n1's newest shared click is one before the last
    inh = math.exp(-1 / VSTAN_INH)

    def idf(events: int) -> float:
        return 1.0 + VSTAN_IDF * math.log(3 / events)  # 3 sessions; a and b have 2 events, x and y 1

    assert got == pytest.approx(
        {
            "a": sim1 * ipw1 * idf(2),
            "x": sim1 * ipw1 * inh * idf(1),
            "b": sim2 * idf(2),
            "y": sim2 * inh * idf(1),
        }
    )


@pytest.mark.parametrize("method", [Stan, VStan])
def test_a_more_recent_neighbour_session_weighs_more(method: type[Stan]) -> None:
    m = fitted(method(), session("old", "ax", 0), session("new", "ay", 9 * DAY), session("q", "a", 10 * DAY))
    got = score(m, "q", 10 * DAY + MINUTE)
    lam = (STAN_SNH_DAYS if method is Stan else VSTAN_SNH_DAYS) * DAY
    assert got["y"] > got["x"]
    # the neighbours differ only in age (9 days and a second apart) and in x, y being rare alike
    assert got["y"] / got["x"] == pytest.approx(math.exp((9 * DAY) / lam))
    assert m.recommend("q", 10 * DAY + MINUTE, 2, exclude={"a"}) == ["y", "x"]


def test_vsknn_ignores_a_neighbours_age() -> None:
    m = fitted(VSkNN(), session("old", "ax", 0), session("new", "ay", 9 * DAY), session("q", "a", 10 * DAY))
    got = score(m, "q", 10 * DAY + MINUTE)
    assert got["x"] == pytest.approx(got["y"])


@pytest.mark.parametrize("method", [VSkNN, VStan])
def test_idf_lifts_a_rare_item_above_a_popular_one(method: type[SequenceKnn]) -> None:
    # n1 and n2 are equally similar to q; y also appears in three unrelated sessions, x nowhere else
    fillers = [session(f"f{n}", "y", (n + 1) * SECOND) for n in range(3)]
    log = (session("n1", "ax", 0), session("n2", "ay", 0), *fillers, session("q", "a", 100 * SECOND))
    m = fitted(method(), *log)
    got = score(m, "q", 200 * SECOND)
    weight = m.idf_weight  # type: ignore[attr-defined]
    n_sessions = 6
    assert got["x"] / got["y"] == pytest.approx(
        (1 + weight * math.log(n_sessions / 1)) / (1 + weight * math.log(n_sessions / 4))
    )
    assert m.recommend("q", 200 * SECOND, 2, exclude={"a"}) == ["x", "y"]
    # without IDF the two tie, and recent popularity puts y first
    plain = fitted(method(idf_weight=0.0), *log)  # type: ignore[call-arg]
    assert plain.recommend("q", 200 * SECOND, 2, exclude={"a"}) == ["y", "x"]


def test_stan_scores_items_near_the_shared_item_higher() -> None:
    stan = fitted(Stan(), session("n", ["x1", "a", "x2", "x3", "x4"], 0), session("q", "a", 100 * SECOND))
    got = score(stan, "q", 200 * SECOND)
    step = math.exp(-1 / STAN_INH)
    assert got["x1"] == pytest.approx(got["x2"])  # one step before or after a
    assert got["x3"] / got["x2"] == pytest.approx(step)
    assert got["x4"] / got["x2"] == pytest.approx(step**2)
    assert got["a"] > got["x2"] > got["x3"] > got["x4"]


def test_stan_anchor_last_shared_position_or_most_recent_item() -> None:
    # q clicked a, then b; in n, b comes first and a last
    log = (session("n", ["b", "z1", "z2", "z3", "a"], 0), session("q", "ab", 100 * SECOND))
    default = score(fitted(Stan(), *log), "q", 200 * SECOND)
    assert default["z3"] > default["z2"] > default["z1"]  # anchored at a, the last shared item in n
    paper = score(fitted(Stan(most_recent_anchor=True), *log), "q", 200 * SECOND)
    assert paper["z1"] > paper["z2"] > paper["z3"]  # anchored at b, the most recent item of q


def test_k_keeps_only_the_most_similar_neighbours() -> None:
    log = (session("near", "abx", 0), session("far", "ay", 10 * SECOND), session("q", "ab", 100 * SECOND))
    assert set(score(fitted(Stan(k=2), *log), "q", 200 * SECOND)) == {"a", "b", "x", "y"}
    assert set(score(fitted(Stan(k=1), *log), "q", 200 * SECOND)) == {"a", "b", "x"}  # far is dropped
    top = fitted(VSkNN(k=1), *log)
    assert set(score(top, "q", 200 * SECOND)) == {"a", "b", "x"}
    got = top.recommend("q", 200 * SECOND, 4)
    assert set(got[:3]) == {"a", "b", "x"} and got[3] == "y"  # y comes back from the RPOP fill


def test_sample_keeps_only_the_most_recent_candidate_sessions() -> None:
    # the older session is the more similar one, but with a sample of one only the newer is a candidate
    log = (session("older", "abx", 0), session("newer", "ay", 10 * SECOND), session("q", "ab", 100 * SECOND))
    for method in (VSkNN, Stan, VStan):
        assert set(score(fitted(method(sample=1), *log), "q", 200 * SECOND)) == {"a", "y"}
        assert set(score(fitted(method(sample=2), *log), "q", 200 * SECOND)) == {"a", "b", "x", "y"}


@pytest.mark.parametrize("method", [VSkNN, Stan, VStan])
def test_sessions_split_like_sknn_and_the_current_session_is_not_its_own_neighbour(
    method: type[SequenceKnn],
) -> None:
    m = fitted(method(), session("n", "ax", 0), session("m", "bz", 0), session("u", "aw", 10 * SECOND, user=True))
    # u's session holds a and w; only n shares one (w, seen only by u, is not scored)
    assert set(score(m, "u", 20 * SECOND)) == {"a", "x"}
    # after 30 minutes without events u's session has ended: RPOP only (a, seen twice, first)
    assert m.scores("u", 10 * SECOND + 31 * MINUTE) is None
    assert m.recommend("u", 10 * SECOND + 31 * MINUTE, 3)[0] == "a"
    # u's next session holds b alone: m is its only neighbour (n would be one if a were still in it)
    m.learn(session("u", "b", 40 * MINUTE, user=True)[0])
    assert set(score(m, "u", 41 * MINUTE)) == {"b", "z"}


def test_the_cached_scores_follow_learning() -> None:
    m = fitted(Stan(), session("n1", "ax", 0), session("n2", "cy", 0), session("q", "a", 10 * SECOND))
    assert "y" not in score(m, "q", 20 * SECOND)
    m.learn(session("q", "c", 20 * SECOND)[0])
    assert "y" in score(m, "q", 20 * SECOND)  # same visitor and time, one more event: recomputed
    assert np.all(np.isfinite(m.scores("q", 20 * SECOND)))  # type: ignore[arg-type]
