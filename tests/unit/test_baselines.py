"""The reference baselines on tiny hand-made logs: POP counts, RPOP decay, COVIS window, SKNN neighbours."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_reco.core.events import Event, EventType
from stream_reco.evaluate.baselines import Covis, Method, Pop, RecentPop, SessionKnn, make_baselines, top_indices
from stream_reco.evaluate.loaders import LogRecord

H = 3_600_000  # one hour in ms
MINUTE = 60_000


def rec(
    visitor: str, item: str, t: int, kind: EventType = "view", target: bool = True, user: bool = False
) -> LogRecord:
    ids = {"user_id": visitor} if user else {"session_id": visitor}
    return LogRecord(Event(event_id=f"{visitor}-{item}-{t}", event_type=kind, item_id=item, timestamp=t, **ids), target)


def test_every_baseline_has_the_method_interface() -> None:
    for method in make_baselines(24.0):
        assert isinstance(method, Method)
        assert method.recommend("nobody", 0, 5) == []


def test_top_indices_orders_by_score_then_tie_then_index_and_skips_excluded() -> None:
    scores = np.array([1.0, 3.0, 3.0, 0.0, 2.0])
    assert top_indices(scores, 3) == [1, 2, 4]
    assert top_indices(scores, 3, tie=np.array([0, 0, 5, 0, 0.0])) == [2, 1, 4]
    assert top_indices(scores, 2, exclude={1}) == [2, 4]
    assert top_indices(scores, 10) == [1, 2, 4, 0]  # zero scores are never recommended


def test_pop_counts_every_event_and_excludes() -> None:
    pop = Pop()
    pop.fit(
        [
            rec("v", "a", 0),
            rec("w", "a", 1),
            rec("w", "b", 2),
            rec("x", "c", 3, "add_to_cart"),
            rec("x", "c", 4, target=False),
        ]
    )
    assert pop.recommend("v", 5, 3) == ["c", "a", "b"]  # c: 2 (cart + non-target), a: 2, ties by recency
    assert pop.recommend("v", 5, 2, exclude={"c"}) == ["a", "b"]


def test_rpop_decays_with_the_half_life() -> None:
    rpop = RecentPop(half_life_h=1.0)
    rpop.fit([rec("v", "a", 0), rec("w", "a", 0), rec("x", "b", 2 * H)])
    decayed = rpop.decayed(2 * H)
    assert decayed["a"] == pytest.approx(0.5)  # two events, two half-lives old
    assert decayed["b"] == pytest.approx(1.0)
    assert rpop.recommend("v", 2 * H, 2) == ["b", "a"]
    assert Pop().recommend("v", 0, 1) == []


def test_rpop_rebases_instead_of_overflowing() -> None:
    rpop = RecentPop(half_life_h=1.0)
    rpop.fit([rec("v", "a", 0), rec("v", "b", 5000 * H)])
    assert np.all(np.isfinite(rpop.scores.view))
    assert rpop.decayed(5000 * H)["b"] == pytest.approx(1.0)
    assert rpop.recommend("v", 5000 * H, 2) == ["b"]  # a has decayed to nothing (2^-5000 underflows)


def test_covis_counts_pairs_only_within_the_last_ten_events_and_forward() -> None:
    covis = Covis(half_life_h=1.0)
    covis.fit([rec("v", f"i{n}", n) for n in range(1, 13)])
    index = covis.items.index
    successors = {covis.items.ids[j] for j in covis.pairs[index["i1"]]}
    assert successors == {f"i{n}" for n in range(2, 12)}  # i12 is 11 events after i1: outside the window
    assert index["i1"] not in covis.pairs[index["i5"]]  # directional: i5 does not lead to i1


def test_covis_scores_the_last_distinct_items_by_one_over_rank() -> None:
    covis = Covis(half_life_h=1.0)
    covis.fit(
        [
            rec("s1", "p", 0),
            rec("s1", "A", 1),  # p -> A
            rec("s2", "q", 2),
            rec("s2", "B", 3),  # q -> B
            rec("s3", "z", 4),
            rec("s3", "z", 5),
            rec("s3", "z", 6),  # z is RPOP's favourite
            rec("w", "p", 10),
            rec("w", "q", 11),  # w: q is the last item (r = 0), p the one before (r = 1)
        ]
    )
    got = covis.recommend("w", 12, 5)
    # B: 1/(0+1) from q; A and q (w's own p -> q): 1/(1+1), tied, q first by recent popularity
    assert got[:3] == ["B", "q", "A"]
    assert got[3] == "z"  # filled with RPOP
    assert covis.recommend("w", 12, 2, exclude={"B", "q", "p"}) == ["A", "z"]


def test_covis_symmetric_option_counts_both_directions() -> None:
    covis = Covis(half_life_h=1.0, symmetric=True)
    covis.fit([rec("v", "a", 0), rec("v", "b", 1)])
    index = covis.items.index
    assert covis.pairs[index["b"]][index["a"]] == 1.0 and covis.pairs[index["a"]][index["b"]] == 1.0


def test_sknn_scores_items_of_similar_sessions_by_cosine() -> None:
    sknn = SessionKnn(half_life_h=1.0)
    log = [rec("s1", i, n) for n, i in enumerate("abc")]
    log += [rec("s2", i, 10 + n) for n, i in enumerate("ad")]
    log += [rec("s3", i, 20 + n) for n, i in enumerate("ef")]
    log += [rec("q", i, 30 + n) for n, i in enumerate("ab")]
    sknn.fit(log)
    got = sknn.recommend("q", 40, 6)
    sim1, sim2 = 2 / math.sqrt(2 * 3), 1 / math.sqrt(2 * 2)
    assert sim1 > sim2
    assert got[:4] == ["a", "b", "c", "d"]  # a: sim1 + sim2, b and c: sim1 (tie by recency), d: sim2
    assert sknn.recommend("q", 40, 3, exclude={"a", "b"})[:2] == ["c", "d"]


def test_sknn_splits_a_users_events_at_thirty_minutes_of_inactivity() -> None:
    sknn = SessionKnn(half_life_h=1.0)
    sknn.fit(
        [
            rec("old", "x", 0),
            rec("old", "y", 1),
            rec("u", "x", 100, user=True),
            rec("u", "b", 100 + 31 * MINUTE, user=True),
        ]
    )
    # u's current session holds only b (x was before the gap), and no other session shares b
    _sid, items = sknn._query("u", 100 + 32 * MINUTE)
    assert {sknn.items.ids[i] for i in items} == {"b"}
    # after another half hour without events the session has ended: nothing to match, RPOP only
    assert sknn._query("u", 100 + 62 * MINUTE) == (-1, set())
