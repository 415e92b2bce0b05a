"""Ranking metrics of the prequential protocol: one relevant item per target event.

Every method's list is reduced to the rank of the target item (1-based) or a miss, so the metrics are
sums over ranks: HR@K counts ranks <= K, MRR@K sums 1/rank and NDCG@K sums 1/log2(rank + 1) (ideal DCG is 1,
since only one item is relevant). Accumulators keep a histogram of ranks, which also gives HR at every
K <= the list length for the HR@K plot without storing one entry per event.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# (metric name, cut-off) reported for every method, variant and visitor group, per docs/evaluation.md
METRICS: tuple[tuple[str, int], ...] = (("hr@10", 10), ("hr@20", 20), ("mrr@20", 20), ("ndcg@20", 20))
METRIC_NAMES: tuple[str, ...] = tuple(name for name, _ in METRICS)


def rank_of(item_id: str, items: Sequence[str]) -> int | None:
    """1-based position of `item_id` in `items`, None when absent (a miss)."""
    for pos, candidate in enumerate(items, start=1):
        if candidate == item_id:
            return pos
    return None


def hit(rank: int | None, k: int) -> float:
    return 1.0 if rank is not None and rank <= k else 0.0


def reciprocal_rank(rank: int | None, k: int) -> float:
    return 1.0 / rank if rank is not None and rank <= k else 0.0


def ndcg(rank: int | None, k: int) -> float:
    """DCG of one relevant item at `rank`; the ideal DCG is 1 (item at rank 1)."""
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


@dataclass
class RankAccumulator:
    """Ranks of one method on one set of targets, as a histogram (index = rank, 0 unused) plus misses."""

    max_rank: int
    counts: list[int] = field(default_factory=list)
    misses: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (self.max_rank + 1)

    @property
    def n(self) -> int:
        return self.misses + sum(self.counts)

    def add(self, rank: int | None) -> None:
        if rank is None or rank > self.max_rank:
            self.misses += 1
        else:
            self.counts[rank] += 1

    def extend(self, ranks: Iterable[int | None]) -> None:
        for r in ranks:
            self.add(r)

    def _mean(self, fn: Any, k: int) -> float:
        n = self.n
        if n == 0:
            return 0.0
        return sum(c * fn(r, k) for r, c in enumerate(self.counts) if r and c) / n

    def hit_rate(self, k: int) -> float:
        return self._mean(hit, k)

    def mrr(self, k: int) -> float:
        return self._mean(reciprocal_rank, k)

    def ndcg(self, k: int) -> float:
        return self._mean(ndcg, k)

    def summary(self) -> dict[str, float | int]:
        """{"targets": n, "hr@10": .., "hr@20": .., "mrr@20": .., "ndcg@20": ..} (rounded for the report)."""
        fns = {"hr": self.hit_rate, "mrr": self.mrr, "ndcg": self.ndcg}
        out: dict[str, float | int] = {"targets": self.n}
        for name, k in METRICS:
            out[name] = round(fns[name.split("@")[0]](k), 6)
        return out

    def hr_curve(self) -> list[float]:
        """HR@K for K = 1 .. max_rank."""
        return [round(self.hit_rate(k), 6) for k in range(1, self.max_rank + 1)]


def overlap(a: Sequence[str], b: Sequence[str], k: int) -> float:
    """Share of common items between two lists of length (at most) k."""
    if k <= 0:
        return 0.0
    return len(set(a[:k]) & set(b[:k])) / k


def personalisation(lists: Sequence[Sequence[str]], k: int) -> float:
    """1 - mean pairwise overlap of lists of different visitors (1: every visitor sees different items)."""
    n = len(lists)
    if n < 2:
        return 0.0
    sets = [set(x[:k]) for x in lists]
    total = 0.0
    pairs = 0
    for i in range(n):
        si = sets[i]
        for j in range(i + 1, n):
            total += len(si & sets[j]) / k
            pairs += 1
    return 1.0 - total / pairs
