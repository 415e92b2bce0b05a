"""The recently-viewed and session-kNN candidate sources, the session index, and MMR's kept top slots."""

from __future__ import annotations

import numpy as np

from stream_reco.core import explain
from stream_reco.core.candidates import SOURCE_RECENT, SOURCE_SKNN, CandidatePool, blend, recent_candidates
from stream_reco.core.rank import mmr
from stream_reco.core.recommender import Recommender
from stream_reco.core.state import VisitorState
from stream_reco.core.stats import SessionIndex
from tests.unit.core_fixtures import MINUTE, T0, ev, item_id, make_catalog, make_settings

SOFAS, TABLES, BEDS, ROSES = 3, 4, 5, 7


def make_rec(**overrides: object) -> Recommender:
    settings = make_settings(**overrides)
    return Recommender(settings, make_catalog(settings))


# --- session index ---


def test_session_index_cosine_neighbours_skip_own_session_and_break_ties_by_newest():
    idx = SessionIndex(max_sessions=10, per_item=10)
    for item in ("a", "b"):
        idx.add("v1", 0, item)  # {a, b}
    for item in ("a", "c", "d", "e"):
        idx.add("v2", 0, item)  # {a, c, d, e}
    idx.add("v3", 0, "a")  # {a}
    idx.add("v4", 0, "b")  # {b}
    idx.add("me", 5, "a")
    own = idx.session_id("me", 5)
    got = idx.neighbours(["a", "b"], k=10, own=own)
    sims = {idx.keys[sid][0]: round(sim, 6) for sid, sim, _ in got}
    # cosine = overlap / sqrt(|query| * |session|)
    assert sims == {"v1": 1.0, "v3": round(1 / 2**0.5, 6), "v4": round(1 / 2**0.5, 6), "v2": round(1 / 8**0.5, 6)}
    assert [idx.keys[sid][0] for sid, _, _ in got] == ["v1", "v4", "v3", "v2"]  # equal v3/v4: the newer first
    assert [idx.keys[sid][0] for sid, _, _ in idx.neighbours(["a", "b"], k=2, own=own)] == ["v1", "v4"]


def test_session_index_scores_sum_similarities_and_readding_changes_nothing():
    idx = SessionIndex(max_sessions=10, per_item=10)
    for v, items in (("v1", "ab"), ("v2", "ac")):
        for i in items:
            idx.add(v, 0, i)
    before = idx.scores(["a"], k=10)
    idx.add("v1", 0, "a")  # a replayed event: same session, same item
    assert idx.scores(["a"], k=10) == before
    s = 1 / 2**0.5
    assert before == {"a": 2 * s, "b": s, "c": s}


def test_session_index_recency_and_proximity_weights():
    idx = SessionIndex(max_sessions=10, per_item=10)
    for i in "xyz":
        idx.add("old", 0, i)  # shares the older query item x
    for i in "wv":
        idx.add("new", 0, i)  # shares the latest query item v
    flat = {idx.keys[s][0]: sim for s, sim, _ in idx.neighbours(["x", "v"], k=5)}
    assert flat["old"] < flat["new"]  # smaller session wins at equal overlap
    weighted = {idx.keys[s][0]: (sim, a) for s, sim, a in idx.neighbours(["x", "v"], k=5, recency_half_items=1.0)}
    assert weighted["new"][1] == "v" and weighted["old"][1] == "x"
    assert weighted["new"][0] / weighted["old"][0] > flat["new"] / flat["old"]  # the latest item counts more
    near = idx.scores(["x"], k=5, proximity_half_items=1.0)
    assert near["x"] > near["y"] > near["z"] > 0


def test_session_index_forgets_the_oldest_sessions_and_caps_sessions_per_item():
    idx = SessionIndex(max_sessions=2, per_item=1)
    for v in ("v1", "v2", "v3"):
        idx.add(v, 0, "a")
    assert len(idx) == 2 and idx.session_id("v1", 0) is None
    got = idx.neighbours(["a"], k=10)
    assert [idx.keys[s][0] for s, _, _ in got] == ["v3"]  # per_item = 1: only the latest session of `a`


# --- sources in the recommender ---


def _shop(rec: Recommender) -> int:
    """Ten shoppers view a sofa then a specific table; the index and co-visitation learn it."""
    t = T0
    for v in range(10):
        rec.observe(ev("view", item_id(SOFAS, 1), t, session=f"o{v}"))
        rec.observe(ev("view", item_id(TABLES, 5), t + 1, session=f"o{v}"))
        t += 10
    return t + 1000


def test_sknn_source_finds_items_of_similar_sessions_with_its_own_reason():
    rec = make_rec(weight_ann=0.0, weight_covis=0.0, weight_popular=0.0, weight_sknn=1.0)
    t = _shop(rec)
    assert len(rec.sessions) == 10
    rec.observe(ev("view", item_id(SOFAS, 1), t, session="me"))
    lst = rec.recommend("me", t + 1, k=5)
    top = next(r for r in lst if r.item_id == item_id(TABLES, 5))
    assert top.reason == explain.similar_sessions() == "Viewed by shoppers with similar sessions"
    # off by default weight: the index does not even learn
    assert len(make_rec(weight_sknn=0.0).sessions) == 0


def test_sknn_lists_are_deterministic():
    lists = []
    for _ in range(2):
        rec = make_rec(weight_sknn=1.0)
        t = _shop(rec)
        rec.observe(ev("view", item_id(SOFAS, 1), t, session="me"))
        lists.append([(r.item_id, r.score, r.reason) for r in rec.recommend("me", t + 1, k=10)])
    assert lists[0] == lists[1]


def test_recent_source_puts_seen_items_back_down_weighted_and_explained():
    rec = make_rec(weight_recent=1.0, recent_items=3, viewed_penalty=0.9, mmr_lambda=1.0)
    t = _shop(rec)
    mine = [item_id(BEDS, 2), item_id(ROSES, 3), item_id(SOFAS, 4), item_id(BEDS, 6)]
    for n, i in enumerate(mine):
        rec.observe(ev("view", i, t + n * MINUTE, session="me"))
    now = t + 4 * MINUTE
    lst = rec.recommend("me", now, k=10)
    recent = [r for r in lst if r.reason == explain.viewed_recently()]
    # the last 3 distinct items are candidates, the latest first; the oldest one is not
    assert [r.item_id for r in recent][:1] == [mine[3]]
    assert {r.item_id for r in recent} <= set(mine[1:])
    assert mine[0] not in {r.item_id for r in recent}
    assert lst[0].item_id == mine[3]
    # down-weighted, not removed: exactly the viewed penalty below the same shop without it
    plain = make_rec(weight_recent=1.0, recent_items=3, viewed_penalty=1.0, mmr_lambda=1.0)
    _shop(plain)
    for n, i in enumerate(mine):
        plain.observe(ev("view", i, t + n * MINUTE, session="me"))
    unpenalised = {r.item_id: r.score for r in plain.recommend("me", now, k=10)}
    assert abs(lst[0].score - 0.9 * unpenalised[mine[3]]) < 1e-9
    # the novel question drops them all
    novel = rec.recommend("me", now, k=10, exclude_interacted=True)
    assert not {r.item_id for r in novel} & set(mine)


def test_recent_candidates_skip_excluded_and_score_by_recency():
    state = VisitorState()
    settings = make_settings()
    for n, i in enumerate(["a", "b", "a", "c", "d"]):
        state.apply(ev("view", i, T0 + n), settings)
    pool = CandidatePool()
    recent_candidates(pool, state, 3, exclude=["c"])
    assert pool.recent == {"d": 1.0, "a": 1 / 3}  # d, c, a are the last 3 distinct; c is excluded
    pool.sknn["z"] = 2.0
    pool._add("z")
    blended, strongest = blend(pool, make_settings(weight_recent=0.5, weight_sknn=1.0))
    got = dict(zip(pool.ids, zip(blended.tolist(), strongest.tolist(), strict=True), strict=True))
    assert got["d"] == (0.5, SOURCE_RECENT) and got["z"] == (1.0, SOURCE_SKNN)


# --- MMR keeps the best slots ---


def test_mmr_keep_fills_first_slots_by_relevance_then_diversifies():
    scores = np.array([1.0, 0.95, 0.9, 0.5])
    v = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert mmr(scores, v, 3, 0.5).tolist() == [0, 3, 1]
    assert mmr(scores, v, 3, 0.5, keep=2).tolist() == [0, 1, 3]
    assert mmr(scores, v, 3, 0.5, keep=3).tolist() == [0, 1, 2]


def test_mmr_rescales_relevance_after_the_kept_slots():
    # one very strong item would otherwise make every other item look irrelevant next to similarity
    scores = np.array([10.0, 1.0, 0.9, 0.8])
    v = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert mmr(scores, v, 3, 0.9).tolist() == [0, 3, 1]
    assert mmr(scores, v, 3, 0.9, keep=1).tolist() == [0, 1, 3]
