"""Ranking metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from stream_reco.evaluate.metrics import (
    RankAccumulator,
    hit,
    ndcg,
    overlap,
    personalisation,
    rank_of,
    reciprocal_rank,
)


def test_rank_of_is_one_based_and_none_for_a_miss() -> None:
    assert rank_of("b", ["a", "b", "c"]) == 2
    assert rank_of("z", ["a", "b"]) is None


@pytest.mark.parametrize(
    ("rank", "k", "hr", "rr", "gain"),
    [
        (1, 20, 1.0, 1.0, 1.0),
        (2, 20, 1.0, 0.5, 1 / math.log2(3)),
        (10, 10, 1.0, 0.1, 1 / math.log2(11)),
        (11, 10, 0.0, 0.0, 0.0),
        (None, 20, 0.0, 0.0, 0.0),
    ],
)
def test_single_rank_metrics(rank: int | None, k: int, hr: float, rr: float, gain: float) -> None:
    assert hit(rank, k) == hr
    assert reciprocal_rank(rank, k) == pytest.approx(rr)
    assert ndcg(rank, k) == pytest.approx(gain)


def test_accumulator_means_over_targets() -> None:
    acc = RankAccumulator(20)
    acc.extend([1, 3, 15, None])  # 4 targets
    assert acc.n == 4
    assert acc.hit_rate(10) == pytest.approx(2 / 4)
    assert acc.hit_rate(20) == pytest.approx(3 / 4)
    assert acc.mrr(20) == pytest.approx((1 + 1 / 3 + 1 / 15) / 4)
    assert acc.ndcg(20) == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(16)) / 4)
    summary = acc.summary()
    assert set(summary) == {"targets", "hr@10", "hr@20", "mrr@20", "ndcg@20"}
    curve = acc.hr_curve()
    assert len(curve) == 20 and curve[0] == 0.25 and curve[2] == 0.5 and curve[-1] == 0.75


def test_rank_beyond_the_list_is_a_miss() -> None:
    acc = RankAccumulator(5)
    acc.add(6)
    assert acc.misses == 1 and acc.hit_rate(5) == 0.0


def test_empty_accumulator_reports_zero() -> None:
    assert RankAccumulator(20).summary()["hr@20"] == 0.0


def test_personalisation_is_one_minus_mean_pairwise_overlap() -> None:
    assert overlap(["a", "b"], ["b", "c"], 2) == 0.5
    lists = [["a", "b"], ["a", "b"], ["c", "d"]]
    # overlaps: 1, 0, 0 -> mean 1/3
    assert personalisation(lists, 2) == pytest.approx(1 - 1 / 3)
    assert personalisation([["a"]], 1) == 0.0
