"""The item side of the core: catalog metadata, one unit vector per item, and top-k search over them.

`ItemCatalog` is what the recommender asks "what is this item, where is it in embedding space, what is
near this vector". It owns three things:

* **Metadata** (`CatalogItem` per id) from the catalog topic and the model's catalog snapshot. An item is
  recommendable when the catalog knows it and says it is in stock and not deleted; an item the model knows
  but the catalog has not described yet has a vector (visitors' interests can use it) but is never
  recommended, since nothing could be shown for it. A live catalog message always wins over a model's
  snapshot row, whatever their `updated_at`: stock changes and deletions are often sent with `updated_at` 0
  (or none), and a worker loads its model after reading the catalog topic, so "newer wins" would bring a
  sold-out or deleted item back on every start and swap. A snapshot row only describes items the live
  catalog has never mentioned (and is replaced by the next model's row).
* **Vectors** in a `_Space`: string ids mapped once to dense rows of one float32 matrix. Rows of trained
  items hold the model's vectors; every other item gets a content vector (no model) or a projection of its
  content into the trained space (`core/content.py` explains both), so a new item is recommendable the
  moment the catalog announces it. `load_model` builds a whole new space and swaps it in with one
  reference assignment (hot swap); the item metadata carries over.
* **Search**: an exact numpy scan of the live matrix while the catalogue is small, and an annoy snapshot
  plus an exact *delta* above `settings.exact_index_max_items` (the measured crossover, bench/ann.py).

Snapshot and delta. annoy cannot add items after its build, so an annoy index is an immutable
`_Snapshot` of the matrix at logical time `clock`. Every vector change (a new item, a changed content
vector) and every item coming back into stock stamps its row with a new clock value and puts it in the
delta. A query asks annoy (hiding rows stamped after the snapshot, and blocked rows, over-fetching to make
up for them), searches the delta exactly, and merges the two. Going out of stock or being deleted only
flips the row's `blocked` flag, which both paths check on every query, so such items vanish at once.
When the delta outgrows `settings.delta_rebuild_items`, a background thread builds a new snapshot from the
current matrix and publishes it with one reference assignment; the next query drops from the delta what
the new snapshot covers (rows stamped at or before its clock).

Threads. One owner thread (the recommender's) calls every method; a rebuild thread only reads the
matrix and writes `space.snapshot` once. The hot path takes no lock: it reads the snapshot reference once
per query, and the reader of an immutable object cannot see it half-built. The builder may read a row
while the owner rewrites it, or an old matrix the owner has since outgrown, but any row changed after the
build's clock is hidden from the snapshot and served from the delta, so a torn or stale read is never
returned. `load_model` and `rebuild(background=False)` are meant for the owner thread as well.

Ranking. Scores are cosine similarities, recomputed for the final candidates by one per-row reduction
so identical vectors score identically; results are ordered by score, then item id, so the same inputs
give the same list. annoy is approximate: its recall against the exact index is what bench/ann.py tunes
`annoy_n_trees`/`annoy_search_k` for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stream_reco.core.content import ContentEncoder, Feature, FeatureProjector, item_features
from stream_reco.core.events import CatalogItem
from stream_reco.core.index import AnnoyIndex, ExactIndex
from stream_reco.settings import CoreSettings, Settings, core_settings

if TYPE_CHECKING:
    from stream_reco.model.artifact import ModelArtifact

log = logging.getLogger(__name__)

#: `model_version` of a catalog without a trained model
CONTENT_ONLY = "content-only"
#: rows allocated for a fresh space; the matrix doubles when full (amortised O(1) appends)
INITIAL_CAPACITY = 1024
GROWTH_FACTOR = 2
#: exact search keeps rows within this cosine of the k-th score as candidates, so rows tied up to a few
#: float32 rounding steps (BLAS may sum identical dot products differently by position) are ordered by id
TIE_TOLERANCE = 1e-5
#: after a failed background build, the next one waits until the delta has grown by this factor, so a
#: persistent failure (e.g. out of memory) costs a logarithmic number of attempts, not one per upsert
REBUILD_RETRY_GROWTH = 2


class CatalogError(ValueError):
    """A model or query cannot be used by the catalog; the message says why."""


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What the search index covers: every row stamped at or before `clock`. `index` None means exact
    search of the live matrix (nothing to snapshot: the scan always sees current vectors)."""

    index: AnnoyIndex | None
    clock: int
    rows: int

    @property
    def kind(self) -> str:
        return "exact" if self.index is None else "annoy"


class _Space:
    """The vectors of one model generation. Mutated only by the owner thread, except `snapshot`,
    `build_error` (each written once per build by the builder thread)."""

    def __init__(self, dim: int, version: str, projector: FeatureProjector | None, capacity: int) -> None:
        self.dim = dim
        self.version = version
        self.projector = projector
        capacity = max(capacity, INITIAL_CAPACITY)
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.matrix = np.zeros((capacity, dim), dtype=np.float32)
        #: rows that must never be returned: unknown to the catalog, out of stock or deleted
        self.blocked = np.ones(capacity, dtype=bool)
        #: rows the annoy snapshot must not answer for: blocked, or stamped after the snapshot's clock
        self.hidden = np.ones(capacity, dtype=bool)
        #: clock of the row's last vector change or return to stock
        self.stamp = np.zeros(capacity, dtype=np.int64)
        #: content features per row (None: a trained row whose metadata has not arrived)
        self.features: list[tuple[Feature, ...] | None] = []
        #: rows 0..trained_rows-1 hold the model's vectors and never change
        self.trained_rows = 0
        #: untrained rows per shared feature, to re-project them when the feature's centroid is refined
        self.untrained_by_feature: dict[str, set[int]] = {}
        self.clock = 0
        #: rows stamped after the snapshot (insertion-ordered set)
        self.delta: dict[int, None] = {}
        self._delta_cache: tuple[np.ndarray, np.ndarray] | None = None
        self.snapshot = _Snapshot(None, 0, 0)
        self.synced_to: _Snapshot | None = self.snapshot
        self.builder: threading.Thread | None = None
        self.build_error: BaseException | None = None
        #: delta size when the last build started (retries after a failure wait for it to grow)
        self.delta_at_build = 0

    @property
    def n(self) -> int:
        return len(self.ids)

    def _grow(self, need: int) -> None:
        capacity = self.matrix.shape[0]
        if need <= capacity:
            return
        while capacity < need:
            capacity *= GROWTH_FACTOR
        # fresh arrays, not resize(): a builder thread may still read the old ones
        matrix = np.zeros((capacity, self.dim), dtype=np.float32)
        matrix[: self.n] = self.matrix[: self.n]
        blocked = np.ones(capacity, dtype=bool)
        blocked[: self.n] = self.blocked[: self.n]
        hidden = np.ones(capacity, dtype=bool)
        hidden[: self.n] = self.hidden[: self.n]
        stamp = np.zeros(capacity, dtype=np.int64)
        stamp[: self.n] = self.stamp[: self.n]
        self.matrix, self.blocked, self.hidden, self.stamp = matrix, blocked, hidden, stamp

    def touch(self, row: int) -> None:
        """Stamp a row as changed: the current snapshot no longer answers for it, the delta does."""
        self.clock += 1
        self.stamp[row] = self.clock
        self.hidden[row] = True
        self.delta[row] = None
        self._delta_cache = None

    def add_row(self, item_id: str, vector: np.ndarray, features: tuple[Feature, ...] | None) -> int:
        row = self.n
        self._grow(row + 1)
        self.ids.append(item_id)
        self.row_of[item_id] = row
        self.features.append(features)
        self.matrix[row] = vector
        self.touch(row)
        return row

    def set_vector(self, row: int, vector: np.ndarray) -> None:
        self.matrix[row] = vector
        self.touch(row)

    def set_blocked(self, row: int, blocked: bool) -> None:
        was = bool(self.blocked[row])
        self.blocked[row] = blocked
        if blocked:
            self.hidden[row] = True
        elif was:
            self.touch(row)  # may be missing from the snapshot (blocked rows are not indexed): use the delta

    def sync(self) -> _Snapshot:
        """Adopt the latest published snapshot: drop from the delta what it covers. Owner thread only."""
        snap = self.snapshot
        if snap is not self.synced_to:
            self.synced_to = snap
            n = self.n
            self.hidden[:n] = self.blocked[:n] | (self.stamp[:n] > snap.clock)
            self.delta = {row: None for row in self.delta if self.stamp[row] > snap.clock}
            self._delta_cache = None
        return snap

    def delta_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Delta rows and their vectors (cached until the delta changes)."""
        if self._delta_cache is None:
            rows = np.fromiter(self.delta, dtype=np.int64, count=len(self.delta))
            self._delta_cache = (rows, self.matrix[rows])
        return self._delta_cache


class ItemCatalog:
    """Catalog metadata, item vectors and top-k search; see the module docstring for the design."""

    def __init__(self, settings: CoreSettings | Settings) -> None:
        settings = core_settings(settings)
        self.settings = settings
        self._encoder = ContentEncoder(settings.embedding_dim, settings.seed)
        self._items: dict[str, CatalogItem] = {}
        #: ids whose metadata came from a model's snapshot, not the live catalog (a later model may replace it)
        self._from_model: set[str] = set()
        self._space = _Space(settings.embedding_dim, CONTENT_ONLY, None, INITIAL_CAPACITY)
        #: between begin_bulk_load and end_bulk_load: no background builds
        self._bulk_loading = False

    # ------------------------------------------------------------------ metadata
    @property
    def model_version(self) -> str:
        return self._space.version

    @property
    def dim(self) -> int:
        return self._space.dim

    @property
    def index_kind(self) -> str:
        """Which index answers searches now: "exact" or "annoy" (diagnostics, tests, metrics)."""
        return self._space.snapshot.kind

    @property
    def delta_size(self) -> int:
        """Rows served by the exact delta because the snapshot predates them."""
        space = self._space
        space.sync()
        return len(space.delta) if space.snapshot.index is not None else 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def items(self) -> Iterable[CatalogItem]:
        """Every item the catalog has described, deleted ones included (a live view: owner thread only)."""
        return self._items.values()

    def get(self, item_id: str) -> CatalogItem | None:
        return self._items.get(item_id)

    def get_many(self, item_ids: Iterable[str]) -> list[CatalogItem | None]:
        """`get` for each id (one call instead of one per id: rules look up every candidate)."""
        return list(map(self._items.get, item_ids))

    def is_recommendable(self, item_id: str) -> bool:
        item = self._items.get(item_id)
        return item is not None and item.recommendable

    def category_of(self, item_id: str) -> tuple[str, ...]:
        item = self._items.get(item_id)
        return item.category if item is not None else ()

    # ------------------------------------------------------------------ vectors
    def vector(self, item_id: str) -> np.ndarray | None:
        """The item's unit float32 vector (a copy), or None if neither the model nor the catalog knows it."""
        space = self._space
        row = space.row_of.get(item_id)
        return None if row is None else space.matrix[row].copy()

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """[len(item_ids), dim] float32 vectors; rows of unknown ids are zeros."""
        space = self._space
        found = list(map(space.row_of.get, item_ids))
        if None not in found:  # the usual case: every id known, one gather
            return space.matrix[found] if found else np.zeros((0, space.dim), dtype=np.float32)
        out = np.zeros((len(found), space.dim), dtype=np.float32)
        pos = [i for i, row in enumerate(found) if row is not None]
        if pos:
            out[pos] = space.matrix[[found[i] for i in pos]]
        return out

    # ------------------------------------------------------------------ updates
    def upsert(self, item: CatalogItem) -> None:
        """Add or replace an item's metadata. Searchable at once; out of stock or deleted: hidden at once."""
        space = self._space
        self._items[item.item_id] = item
        self._from_model.discard(item.item_id)  # live from now on: no model snapshot may overwrite it
        self._apply(space, item)
        space.sync()
        self._maybe_rebuild(space)

    def _maybe_rebuild(self, space: _Space) -> None:
        """Start a background build when the delta outgrew `delta_rebuild_items` (not during a bulk load)."""
        pending = len(space.delta)
        if pending > self.settings.delta_rebuild_items and not self._bulk_loading and (
            space.build_error is None or pending >= REBUILD_RETRY_GROWTH * space.delta_at_build
        ):
            self.rebuild(background=True)

    def begin_bulk_load(self) -> None:
        """A bulk load starts (a worker's initial catalogue read): no snapshot builds until `end_bulk_load`.

        Without it, builds run back to back during the load, each made stale by the next
        `delta_rebuild_items` items, and the last one leaves thousands of rows in the exact delta
        (docs/benchmarks.md). Searches stay correct meanwhile: the delta (or the exact scan) serves every
        row the current snapshot does not cover.
        """
        self._bulk_loading = True

    def end_bulk_load(self, background: bool = True) -> None:
        """The bulk load is over: one build over everything that changed during it (see `wait_for_rebuild`)."""
        self._bulk_loading = False
        space = self._space
        space.sync()
        if space.delta:
            self.rebuild(background=background)

    def _apply(self, space: _Space, item: CatalogItem) -> None:
        feats = item_features(item)
        row = space.row_of.get(item.item_id)
        if row is None:
            row = space.add_row(item.item_id, self._untrained_vector(space, item, feats), feats)
            self._register_untrained(space, row, feats)
        elif row < space.trained_rows:
            old = space.features[row]
            if space.projector is not None and old != feats:
                if old is not None:
                    space.projector.remove(old, space.matrix[row])
                space.features[row] = feats
                self._reproject(space, space.projector.add(feats, space.matrix[row]))
        else:
            old = space.features[row]
            if old != feats:
                self._unregister_untrained(space, row, old)
                space.features[row] = feats
                self._register_untrained(space, row, feats)
                space.set_vector(row, self._untrained_vector(space, item, feats))
        space.set_blocked(row, not item.recommendable)

    def _untrained_vector(self, space: _Space, item: CatalogItem, feats: tuple[Feature, ...]) -> np.ndarray:
        """Projection into the trained space when a model is loaded and any feature is known, else content."""
        if space.projector is not None:
            projected = space.projector.project(item.item_id, feats)
            if projected is not None:
                return projected
        return self._encoder.encode(item, feats)

    def _register_untrained(self, space: _Space, row: int, feats: tuple[Feature, ...] | None) -> None:
        if space.projector is None or not feats:
            return
        for name, _ in feats:
            space.untrained_by_feature.setdefault(name, set()).add(row)

    def _unregister_untrained(self, space: _Space, row: int, feats: tuple[Feature, ...] | None) -> None:
        if space.projector is None or not feats:
            return
        for name, _ in feats:
            rows = space.untrained_by_feature.get(name)
            if rows is not None:
                rows.discard(row)
                if not rows:
                    del space.untrained_by_feature[name]

    def _reproject(self, space: _Space, refined: Sequence[str]) -> None:
        """Re-project untrained items carrying a feature whose trained centroid just changed materially.

        Catalog messages arrive in any order: a new item may come before its leaf's trained peers are
        described (a content-vector fallback) or after only one of them (a rough centroid). The projector
        reports a feature each time its count doubles, so each item is re-projected O(log n) times per
        feature during a catalog replay instead of once per message.
        """
        rows: set[int] = set()
        for name in refined:
            rows |= space.untrained_by_feature.get(name, set())
        for row in sorted(rows):
            item = self._items.get(space.ids[row])
            feats = space.features[row]
            if item is not None and feats is not None:
                space.set_vector(row, self._untrained_vector(space, item, feats))

    def load_model(self, artifact: ModelArtifact, background: bool = True) -> None:
        """Swap in a trained model: its vectors, its catalog snapshot, projections for the other items.

        The snapshot describes only items the live catalog has never mentioned (see the module docstring):
        a live message, even a stock-only update or a tombstone with `updated_at` 0, is never overridden.

        A model that cannot be used (wrong dim, non-finite or zero vectors, duplicate ids) raises
        CatalogError and leaves the current model serving. The new space is published with one assignment.
        Above `exact_index_max_items` the model's prebuilt annoy file is memory-mapped when it matches;
        otherwise an annoy snapshot is built, in a background thread when `background` (searches are exact,
        and correct, meanwhile).
        """
        dim = self.settings.embedding_dim
        vectors = np.asarray(artifact.vectors, dtype=np.float32)
        ids = list(artifact.item_ids)
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise CatalogError(f"model {artifact.version}: vectors of shape {vectors.shape}, expected [n, {dim}]")
        if vectors.shape[0] != len(ids) or len(set(ids)) != len(ids):
            raise CatalogError(f"model {artifact.version}: item ids do not match the vector rows one to one")
        norms = np.linalg.norm(vectors, axis=1) if len(ids) else np.ones(0, dtype=np.float32)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise CatalogError(f"model {artifact.version}: some vectors are zero or not finite")
        vectors = (vectors / norms[:, None]).astype(np.float32)

        for item in artifact.catalog:  # the live topic always wins; the snapshot fills in what it never mentioned
            if item.item_id not in self._items or item.item_id in self._from_model:
                self._items[item.item_id] = item
                self._from_model.add(item.item_id)

        m = len(ids)
        projector = FeatureProjector(dim, self._encoder)
        space = _Space(dim, artifact.version, projector, m + len(self._items))
        space.matrix[:m] = vectors
        space.ids = ids
        space.row_of = {item_id: row for row, item_id in enumerate(ids)}
        space.features = [None] * m
        space.trained_rows = m
        for row, item_id in enumerate(ids):
            item = self._items.get(item_id)
            if item is not None:
                feats = item_features(item)
                space.features[row] = feats
                projector.add(feats, vectors[row])
                space.blocked[row] = not item.recommendable
        space.hidden[:m] = space.blocked[:m]
        for item in list(self._items.values()):  # items the model has not seen: projected, in the delta
            if item.item_id not in space.row_of:
                self._apply(space, item)

        needs_annoy = space.n >= self.settings.exact_index_max_items and space.n > 0
        prebuilt = self._load_prebuilt(artifact, vectors) if needs_annoy else None
        if prebuilt is not None:
            space.snapshot = _Snapshot(prebuilt, 0, m)
        else:
            space.snapshot = _Snapshot(None, space.clock, space.n)
        space.sync()
        self._space = space  # the hot swap: one reference assignment
        log.info("loaded model %s: %d trained items, %d other items", artifact.version, m, space.n - m)
        if needs_annoy and prebuilt is None:
            self.rebuild(background=background)

    def _load_prebuilt(self, artifact: ModelArtifact, vectors: np.ndarray) -> AnnoyIndex | None:
        path = artifact.annoy_path
        if path is None:
            return None
        try:
            return AnnoyIndex.load(path, vectors=vectors, search_k=self.settings.annoy_search_k)
        except (OSError, ValueError) as exc:
            log.warning("model %s: prebuilt annoy index not used, rebuilding: %s", artifact.version, exc)
            return None

    # ------------------------------------------------------------------ snapshots
    def rebuild(self, background: bool = False) -> None:
        """Build a fresh search snapshot from the current vectors and publish it atomically.

        Below `exact_index_max_items` this is immediate (exact search needs no structure). Above, an annoy
        forest is built, in a daemon thread when `background`; a background request while a build is
        running is a no-op (the running build's successor is triggered by the delta size again).
        """
        space = self._space
        builder = space.builder
        if builder is not None and builder.is_alive():
            if background:
                return
            builder.join()
        n, clock = space.n, space.clock
        if n < self.settings.exact_index_max_items or n == 0:
            space.snapshot = _Snapshot(None, clock, n)
            space.sync()
            return
        matrix, blocked = space.matrix, space.blocked  # references: the owner replaces, never resizes, them
        space.delta_at_build = len(space.delta)
        settings = self.settings

        def build() -> None:
            try:
                skip = blocked[:n].copy()
                if skip.all():
                    snapshot = _Snapshot(None, clock, n)
                else:
                    index = AnnoyIndex.build(
                        matrix[:n],
                        n_trees=settings.annoy_n_trees,
                        search_k=settings.annoy_search_k,
                        seed=settings.seed,
                        skip=skip,
                    )
                    snapshot = _Snapshot(index, clock, n)
                space.snapshot = snapshot  # publish: one reference assignment
                space.build_error = None
            except Exception as exc:  # a failed build must not kill the worker: the old snapshot serves on
                space.build_error = exc
                log.exception("annoy rebuild of %d items failed", n)

        if background:
            space.builder = threading.Thread(target=build, name="stream-reco-annoy-build", daemon=True)
            space.builder.start()
        else:
            build()
            space.sync()

    def wait_for_rebuild(self, timeout: float | None = None) -> bool:
        """Block until a background rebuild (if any) has finished; False if it is still running."""
        space = self._space
        builder = space.builder
        if builder is not None:
            builder.join(timeout)
            if builder.is_alive():
                return False
        space.sync()
        return True

    @property
    def rebuild_error(self) -> BaseException | None:
        """The exception of the last failed rebuild of the current model, if any."""
        return self._space.build_error

    # ------------------------------------------------------------------ search
    def _unit_queries(self, queries: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != dim:
            raise CatalogError(f"queries must have shape [n, {dim}], got {q.shape}")
        norms = np.linalg.norm(q.astype(np.float64), axis=1)
        ok = np.isfinite(norms) & (norms > 0)
        if ok.all():  # the usual case: the same division, without the masked copies
            return (q / norms[:, None]).astype(np.float32), ok
        out = np.zeros_like(q)
        out[ok] = (q[ok] / norms[ok, None]).astype(np.float32)
        return out, ok

    def _exclude_rows(self, space: _Space, exclude: Collection[str]) -> np.ndarray | None:
        if not exclude:
            return None
        rows = [row for row in (space.row_of.get(i) for i in exclude) if row is not None]
        return np.asarray(rows, dtype=np.int64) if rows else None

    def search(self, query: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """Top-k recommendable items by cosine similarity to `query`, best first, ties by item id.

        `query` need not be unit length; a zero or non-finite query has no direction and finds nothing.
        """
        q = np.asarray(query, dtype=np.float32)
        if q.ndim != 1:
            raise CatalogError(f"query must be one vector, got shape {q.shape}")
        return self.search_many(q[None, :], k, exclude)[0]

    def search_many(self, queries: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[list[tuple[str, float]]]:
        """`search` for each row of `queries`; the exact path scores the whole batch in one matrix product."""
        space = self._space
        units, ok = self._unit_queries(queries, space.dim)
        results: list[list[tuple[str, float]]] = [[] for _ in range(units.shape[0])]
        if k <= 0 or space.n == 0 or not ok.any():
            return results
        snap = space.sync()
        if snap.index is not None and len(space.delta) > self.settings.delta_rebuild_items:
            # a build that finished after the last upsert can leave a delta above the threshold that no
            # upsert will ever shrink (a quiet catalogue): every query would scan it exactly
            self._maybe_rebuild(space)
        excluded = self._exclude_rows(space, exclude)
        valid = np.flatnonzero(ok)
        n = space.n
        if snap.index is None:
            hits = ExactIndex(space.matrix[:n]).search_many(
                units[valid], k, blocked=space.blocked[:n], exclude=excluded, tie_tolerance=TIE_TOLERANCE
            )
            candidates = [h.rows for h in hits]
        else:
            candidates = self._snapshot_candidates(space, snap.index, units[valid], k, excluded)
        for i, q_idx in enumerate(valid):
            results[q_idx] = self._finish(space, units[q_idx], candidates[i], k)
        return results

    def _snapshot_candidates(
        self, space: _Space, index: AnnoyIndex, queries: np.ndarray, k: int, excluded: np.ndarray | None
    ) -> list[np.ndarray]:
        """annoy's answer for rows the snapshot still covers, merged with an exact search of the delta."""
        n = space.n
        from_index = index.search_many(queries, k, blocked=space.hidden[:n], exclude=excluded)
        if not space.delta:
            return [h.rows for h in from_index]
        delta_rows, delta_vectors = space.delta_arrays()
        delta_excluded = None
        if excluded is not None:
            delta_excluded = np.flatnonzero(np.isin(delta_rows, excluded))
        from_delta = ExactIndex(delta_vectors).search_many(
            queries, k, blocked=space.blocked[delta_rows], exclude=delta_excluded, tie_tolerance=TIE_TOLERANCE
        )
        return [np.concatenate((a.rows, delta_rows[d.rows])) for a, d in zip(from_index, from_delta, strict=True)]

    def _finish(self, space: _Space, query: np.ndarray, rows: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Score candidates identically (one reduction per row), order by score then id, keep k."""
        if rows.size == 0:
            return []
        scores = (space.matrix[rows] * query).sum(axis=1, dtype=np.float32)
        ids = space.ids
        # (-score, id) tuples sort natively (no key function); ids are distinct, so nothing is left tied
        ranked = sorted(zip((-scores).tolist(), [ids[r] for r in rows.tolist()], strict=True))
        return [(item_id, -neg) for neg, item_id in ranked[:k]]
