"""Nearest-neighbour search over unit item vectors: an exact numpy index and an annoy index, one interface.

Both indexes work on dense integer rows (the catalog maps string ids to rows once) and return `Hits`:
rows and cosine scores, best first. Both take the same filters, so the catalog does not care which one
it holds:

* `blocked`: a boolean mask over rows that must never come back (out of stock, deleted, or, for a
  snapshot index, rows whose vector changed after the build and are searched elsewhere);
* `exclude`: a few more rows to skip for this query only (what the visitor already has).

`ExactIndex` is a matrix-vector product plus `argpartition` (a matrix-matrix product for a batch). It is
the oracle: on a 2-core machine it is as fast as annoy up to tens of thousands of items (bench/ann.py
measures the crossover that sets `exact_index_max_items`), and batched queries amortise it further.

`AnnoyIndex` wraps a built, immutable annoy forest (angular metric, seeded). annoy cannot add items after
`build()`, so the catalog treats it as a snapshot and serves newer vectors from a small exact delta. A
filtered query over-fetches from annoy and widens the fetch (and `search_k`) until enough rows survive
the filters, so blocked items never shrink a result list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

#: annoy metric for cosine similarity on unit vectors: distance d = sqrt(2 - 2 cos)
ANNOY_METRIC = "angular"
#: annoy build threads. One, because (a) annoy's forest depends on the thread count, so a fixed count
#: keeps builds identical on every machine for a given seed, and (b) the build runs in the background
#: beside the serving thread on a small machine and must not take every core from it.
ANNOY_BUILD_JOBS = 1
#: a filtered annoy query first asks for this many times k results ...
ANNOY_OVERFETCH = 2
#: ... and, while too few survive the filters, multiplies the fetch size and search_k by this
ANNOY_FETCH_GROWTH = 4
#: a batch of exact queries is split so one score matrix holds at most this many float32 cells (64 MiB)
EXACT_BATCH_CELLS = 1 << 24
#: how far annoy's stored vector may differ from ours (cosine) before a prebuilt index is rejected
PREBUILT_MAX_DEVIATION = 1e-4

_EMPTY_ROWS = np.zeros(0, dtype=np.int64)
_EMPTY_SCORES = np.zeros(0, dtype=np.float32)


class Hits(NamedTuple):
    """Result of one query: int64 rows and float32 cosine scores, best first (ties: lower row first)."""

    rows: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty() -> Hits:
        return Hits(_EMPTY_ROWS, _EMPTY_SCORES)


class VectorIndex(Protocol):
    """What the catalog needs from an index. Queries must be unit float32 vectors of the index's dim."""

    kind: str

    def __len__(self) -> int: ...

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        blocked: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        tie_tolerance: float = 0.0,
    ) -> Hits: ...

    def search_many(
        self,
        queries: np.ndarray,
        k: int,
        *,
        blocked: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        tie_tolerance: float = 0.0,
    ) -> list[Hits]: ...


def top_k(scores: np.ndarray, k: int, tie_tolerance: float = 0.0) -> Hits:
    """The best `k` entries of `scores` (modified: callers pass a scratch array), best first.

    Entries equal to -inf are never returned (that is how filtered rows are marked). Ties are broken by
    the lower row, deterministically; `argpartition` alone would pick arbitrarily among rows tied at the
    k-th score. With `tie_tolerance > 0` every row within that distance of the k-th score is returned
    too (possibly more than k), so a caller can break near-ties by its own key (the catalog: item id).
    """
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return Hits.empty()
    if k < n:
        part = np.argpartition(scores, n - k)[n - k :]
        kth = float(scores[part].min())
    else:
        part = np.arange(n)
        kth = float(scores.min())
    # when fewer than k rows are finite, keep just those; otherwise every row tied (within tolerance) with the k-th
    finite_only = kth == -math.inf
    rows = part[scores[part] > -math.inf] if finite_only else np.flatnonzero(scores >= kth - tie_tolerance)
    order = np.lexsort((rows, -scores[rows]))
    rows = rows[order]
    if tie_tolerance <= 0.0:
        rows = rows[:k]
    return Hits(rows.astype(np.int64, copy=False), scores[rows].astype(np.float32, copy=False))


def _rank(rows: np.ndarray, scores: np.ndarray, k: int, tie_tolerance: float) -> Hits:
    """Order candidate rows best first (ties: lower row), keep k, plus near-ties if tolerance > 0."""
    order = np.lexsort((rows, -scores))
    rows, scores = rows[order], scores[order]
    if rows.shape[0] > k:
        last = k if tie_tolerance <= 0.0 else int(np.count_nonzero(scores >= scores[k - 1] - tie_tolerance))
        rows, scores = rows[:last], scores[:last]
    return Hits(rows, scores)


def _mask(scores: np.ndarray, blocked: np.ndarray | None, exclude: np.ndarray | None) -> None:
    """Set filtered entries of a [n] or [b, n] score array to -inf, in place."""
    n = scores.shape[-1]
    if blocked is not None:
        np.copyto(scores, -np.inf, where=blocked[:n])
    if exclude is not None and exclude.size:
        scores[..., exclude[exclude < n]] = -np.inf


class ExactIndex:
    """Brute-force cosine search over a [n, dim] matrix of unit float32 rows (not copied: a view is fine)."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
        self._vectors = vectors

    def __len__(self) -> int:
        return int(self._vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        blocked: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        tie_tolerance: float = 0.0,
    ) -> Hits:
        scores = self._vectors @ query
        _mask(scores, blocked, exclude)
        return top_k(scores, k, tie_tolerance)

    def search_many(
        self,
        queries: np.ndarray,
        k: int,
        *,
        blocked: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        tie_tolerance: float = 0.0,
    ) -> list[Hits]:
        """One matrix-matrix product per chunk of queries: far cheaper per query than `search` in a loop."""
        n = len(self)
        out: list[Hits] = []
        chunk = max(1, EXACT_BATCH_CELLS // max(n, 1))
        for start in range(0, queries.shape[0], chunk):
            scores = queries[start : start + chunk] @ self._vectors.T
            _mask(scores, blocked, exclude)
            out.extend(top_k(row, k, tie_tolerance) for row in scores)
        return out


class AnnoyIndex:
    """An immutable annoy forest over some rows of a vector matrix (angular metric, seeded build).

    annoy numbers its items 0..m-1; `rows[j]` is the catalog row of annoy item j, so rows that were not
    indexable at build time (blocked) leave no holes in the forest.
    """

    kind = "annoy"

    def __init__(self, index: object, rows: np.ndarray, dim: int, search_k: int, n_trees: int) -> None:
        self._index = index
        self._rows = rows
        self.dim = dim
        self.search_k = search_k
        self.n_trees = n_trees

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        n_trees: int,
        search_k: int,
        seed: int,
        skip: np.ndarray | None = None,
        jobs: int = ANNOY_BUILD_JOBS,
    ) -> AnnoyIndex:
        """Build over the rows of `vectors` not marked in `skip`. Releases the GIL while building trees."""
        import annoy  # a C extension: imported where used so importing the core stays cheap

        dim = int(vectors.shape[1])
        rows = np.arange(vectors.shape[0], dtype=np.int64)
        if skip is not None:
            rows = rows[~skip[: vectors.shape[0]]]
        index = annoy.AnnoyIndex(dim, ANNOY_METRIC)
        index.set_seed(seed)
        for j, row in enumerate(rows.tolist()):
            index.add_item(j, vectors[row])
        index.build(n_trees, n_jobs=jobs)
        return cls(index, rows, dim, search_k, n_trees)

    @classmethod
    def load(cls, path: str | Path, *, vectors: np.ndarray, search_k: int) -> AnnoyIndex:
        """Memory-map a prebuilt forest whose item j is row j of `vectors` (e.g. a model artifact's).

        Raises ValueError when the file does not match `vectors` (item count or stored directions), so a
        stale or foreign file is rebuilt instead of silently answering for the wrong items.
        """
        import annoy

        n, dim = (int(s) for s in vectors.shape)
        index = annoy.AnnoyIndex(dim, ANNOY_METRIC)
        if not index.load(str(path)):
            raise ValueError(f"annoy could not load {path}")
        if index.get_n_items() != n:
            raise ValueError(f"{path} holds {index.get_n_items()} items, the model {n}")
        for row in {0, n // 2, n - 1} if n else ():
            stored = np.asarray(index.get_item_vector(row), dtype=np.float64)
            norm = float(np.linalg.norm(stored))
            if norm == 0.0 or 1.0 - float(stored @ vectors[row]) / norm > PREBUILT_MAX_DEVIATION:
                raise ValueError(f"{path} item {row} does not match the model's vector")
        return cls(index, np.arange(n, dtype=np.int64), dim, search_k, index.get_n_trees())

    def _fetch(self, query: Sequence[float], n: int, search_k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, dists = self._index.get_nns_by_vector(query, n, search_k=search_k, include_distances=True)  # type: ignore[attr-defined]
        d = np.asarray(dists, dtype=np.float32)
        return self._rows[np.asarray(ids, dtype=np.int64)], (1.0 - 0.5 * d * d).astype(np.float32)

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        blocked: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        tie_tolerance: float = 0.0,
    ) -> Hits:
        """Approximate top-k; `blocked`/`exclude` are applied to annoy's answer, widening it as needed."""
        n_excluded = 0 if exclude is None else int(exclude.size)
        return self._search(query, k, blocked, exclude, n_excluded, tie_tolerance)

    def _search(
        self,
        query: np.ndarray,
        k: int,
        blocked: np.ndarray | None,
        exclude: np.ndarray | None,
        n_excluded: int,
        tie_tolerance: float,
    ) -> Hits:
        """`search`, where `blocked` may already include the `exclude`d rows (then `exclude` is None) and
        `n_excluded` is their count either way: it sizes the fetch, so both forms give the same hits."""
        total = len(self)
        if k <= 0 or total == 0:
            return Hits.empty()
        q = query.tolist()
        fetch = min(total, k * ANNOY_OVERFETCH + n_excluded)
        search_k = self.search_k
        while True:
            # annoy returns at most the candidates its search_k visits; -1 visits the whole forest
            rows, scores = self._fetch(q, fetch, -1 if fetch >= total else max(search_k, fetch))
            keep = ~blocked[rows] if blocked is not None else np.ones(rows.shape[0], dtype=bool)
            if exclude is not None and exclude.size:
                keep &= ~np.isin(rows, exclude)
            if int(np.count_nonzero(keep)) >= k or fetch >= total:
                break
            fetch = min(total, fetch * ANNOY_FETCH_GROWTH)
            search_k *= ANNOY_FETCH_GROWTH
        return _rank(rows[keep], scores[keep], k, tie_tolerance)

    def search_many(
        self,
        queries: np.ndarray,
        k: int,
        *,
        blocked: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        tie_tolerance: float = 0.0,
    ) -> list[Hits]:
        """annoy has no batched query: one search per row (the exclusions folded into one mask first)."""
        n_excluded = 0 if exclude is None else int(exclude.size)
        if blocked is not None and n_excluded and len(queries) > 0:
            mask = blocked.copy()
            mask[exclude[(exclude >= 0) & (exclude < mask.shape[0])]] = True
            return [self._search(q, k, mask, None, n_excluded, tie_tolerance) for q in queries]
        return [self._search(q, k, blocked, exclude, n_excluded, tie_tolerance) for q in queries]
