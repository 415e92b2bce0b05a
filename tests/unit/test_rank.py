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
