"""Stable ordering and MMR diversity re-ranking."""

from __future__ import annotations

import numpy as np

from stream_reco.core.rank import mmr, stable_order


def test_stable_order_breaks_ties_by_item_id():
    ids = ["c", "a", "b", "d"]
    scores = np.array([1.0, 1.0, 2.0, 1.0])
    assert [ids[i] for i in stable_order(ids, scores)] == ["b", "a", "c", "d"]
    assert len(stable_order([], np.zeros(0))) == 0


def test_mmr_with_lambda_one_is_plain_top_k():
    scores = np.array([0.9, 0.8, 0.7])
    vecs = np.ones((3, 4), dtype=np.float32)
    assert mmr(scores, vecs, 2, 1.0).tolist() == [0, 1]


def test_mmr_avoids_near_duplicates():
    # items 0-2 are copies of one direction, item 3 is different and a little less relevant
    v = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1]], dtype=np.float32)
    scores = np.array([1.0, 0.99, 0.98, 0.8])
    assert mmr(scores, v, 2, 1.0).tolist() == [0, 1]
    assert mmr(scores, v, 2, 0.7).tolist() == [0, 3]


def test_mmr_treats_zero_vectors_as_similar_to_nothing():
    v = np.array([[1, 0], [0, 0], [1, 0]], dtype=np.float32)
    scores = np.array([1.0, 0.5, 0.95])
    assert mmr(scores, v, 3, 0.5).tolist() == [0, 1, 2]


def test_mmr_edge_cases():
    assert mmr(np.array([]), np.zeros((0, 2)), 3, 0.5).tolist() == []
    assert mmr(np.array([1.0]), np.ones((1, 2)), 3, 0.5).tolist() == [0]
    assert mmr(np.array([1.0, 0.5]), np.ones((2, 2)), 0, 0.5).tolist() == []


def test_mmr_is_deterministic_on_ties():
    v = np.eye(4, dtype=np.float32)
    scores = np.ones(4)
    assert mmr(scores, v, 4, 0.5).tolist() == [0, 1, 2, 3]


def _one_category_dominates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eight near-identical, very relevant items of group 0, then four weaker ones of groups 1-2."""
    rng = np.random.default_rng(3)
    base = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    same = base + 0.01 * rng.standard_normal((8, 3)).astype(np.float32)
    other = np.array([[0, 1, 0], [0, 1, 0.1], [0, 0, 1], [0, 0.1, 1]], dtype=np.float32)
    scores = np.array([1.0 - 0.01 * i for i in range(8)] + [0.3, 0.29, 0.28, 0.27])
    groups = np.array([0] * 8 + [1, 1, 2, 2])
    return scores, np.vstack([same, other]), groups


def test_mmr_lets_a_dominant_category_fill_the_list_without_a_cap():
    scores, vecs, _ = _one_category_dominates()
    assert mmr(scores, vecs, 6, 0.9, keep=3).tolist()[:5] == [0, 1, 2, 3, 4]


def test_category_cap_keeps_any_group_to_its_share():
    scores, vecs, groups = _one_category_dominates()
    picks = mmr(scores, vecs, 6, 0.9, keep=3, groups=groups, max_per_group=3)
    assert [int(groups[i]) for i in picks].count(0) == 3
    assert picks.tolist()[:3] == [0, 1, 2]  # the kept top slots are the best of the capped group
    assert sorted(picks.tolist()[3:]) == [8, 9, 10]  # then the best of the others, MMR alternating groups
    # the cap binds with MMR off too (lambda 1: relevance order within the cap)
    assert mmr(scores, vecs, 6, 1.0, groups=groups, max_per_group=2).tolist() == [0, 1, 8, 9, 10, 11]


def test_category_cap_never_shortens_a_list():
    scores, vecs, groups = _one_category_dominates()
    picks = mmr(scores, vecs, 10, 0.9, keep=3, groups=groups, max_per_group=3)
    assert len(picks) == 10 and len(set(picks.tolist())) == 10
    assert [int(groups[i]) for i in picks[:7]].count(0) == 3  # others first, then the cap gives way
    # ungrouped items (no category) are never capped
    ungrouped = mmr(np.array([1.0, 0.9, 0.8, 0.7]), np.eye(4), 3, 1.0, groups=np.array([-1, -1, 0, 0]), max_per_group=1)
    assert ungrouped.tolist() == [0, 1, 2]
