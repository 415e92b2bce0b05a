"""Item embeddings from an event log: PPMI of visitor-window co-occurrence, factorised by truncated SVD.

Why this method. The logs we train on are session-shaped and sparse (most items have a handful of events),
the machine has 2 cores and no GPU, and the only dependencies are numpy and scipy. Co-occurrence within a
visitor's recent window is the signal that works on such logs (it is what COVIS and SKNN exploit); PPMI
(positive pointwise mutual information, with word2vec's context-distribution smoothing) removes the
popularity bias of raw counts, and a truncated SVD of the PPMI matrix is the closed-form equivalent of
skip-gram with negative sampling (Levy & Goldberg, 2014). It is deterministic with a seeded sketch,
trains JD (26k items) in seconds, and needs no epochs or learning rates to tune. ALS (`implicit`) was not
worth a new dependency: on visitor-window data it factorises the same co-occurrence with more knobs.

Steps (`train`):
1. Order each visitor's events by time (dismissals are left out: they are negative feedback). Each event
   pairs with the same visitor's previous `covis_window` events; a pair at distance d counts
   sqrt(w_a * w_b) / d, where w is the event type's weight (`weight_view`, `weight_add_to_cart`,
   `weight_purchase`; non-target kinds such as Taobao `fav` arrive as views). Counts are symmetric.
2. PPMI with smoothing `train_ppmi_smoothing`, then a randomised truncated SVD with k = `embedding_dim`
   (`scipy.sparse.linalg.svds` was 10x slower for the same factors); item vectors are
   U * sqrt(S) (the usual eigenvalue weighting), L2-normalised.
3. Items with few interactions have noisy vectors. Their vector is blended with the content vector the
   core would give them (`core.content.FeatureProjector`: the mean trained vector of the catalogue
   features they carry, e.g. their category), with the co-occurrence share n / (n + train_cold_interactions)
   for n interactions. Items with no co-occurrence at all (the only event of a visitor) take the
   projection, or the hashed content vector (`core.content.ContentEncoder`) when nothing is known.
4. Priors for the core: popularity (decayed counts at the end of the log, `popularity_half_life_h`,
   weighted like the core's stream statistics) and co-visitation (the strongest `covis_neighbours` per item,
   counted with the core's own rule: distinct recent items, weight 1/distance).

The artifact is written by `stream_reco.model.artifact.save`; `stream-reco train` is the command.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import scipy.sparse as sp
from scipy.linalg import solve_triangular
from tqdm import tqdm

from stream_reco.core.content import ContentEncoder, FeatureProjector, item_features, normalise
from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.recommender import PRIORS_UNTIL_KEY
from stream_reco.model.artifact import ModelArtifact, models_dir, new_version, save
from stream_reco.settings import Settings

log = logging.getLogger(__name__)

METHOD = "ppmi-svd"
MS_PER_HOUR = 3_600_000
#: randomised SVD: extra sketch columns and power iterations (accuracy of the leading factors)
RSVD_OVERSAMPLE = 16
RSVD_POWER_ITERATIONS = 5
#: relative ridge of the Cholesky QR (keeps rank-deficient sketches factorisable)
CHOLESKY_RIDGE = 1e-12
#: vectors shorter than this are treated as "no co-occurrence signal"
MIN_NORM = 1e-9
#: decimals kept in the JSON priors (smaller files, no meaningful precision lost)
PRIOR_DECIMALS = 6
#: popularity priors below this are dropped (they would not change any ranking)
MIN_POPULARITY = 1e-6


class TrainError(ValueError):
    """The log cannot be trained on (e.g. it has no positive events)."""


def _event_of(record: Any) -> Event:
    """Accept contract events and evaluation `LogRecord`s alike (anything with an `.event`)."""
    return record if isinstance(record, Event) else record.event


def _type_weights(settings: Settings) -> dict[str, float]:
    return {
        "view": settings.weight_view,
        "click": settings.weight_view,  # a click is an interest like a view (core/state.py `event_weight`)
        "add_to_cart": settings.weight_add_to_cart,
        "purchase": settings.weight_purchase,
    }


class _Log:
    """The positive events as parallel arrays, sorted by (visitor, time, file order)."""

    def __init__(self, events: Iterable[Event], weights: dict[str, float], progress: bool) -> None:
        item_index: dict[str, int] = {}
        visitor_index: dict[str, int] = {}
        items: list[int] = []
        visitors: list[int] = []
        times: list[int] = []
        w: list[float] = []
        self.n_events = 0
        self.last_event_ms = 0  # the priors cover the log up to here (the core skips re-counting them)
        for event in tqdm(events, desc="train: read", unit="ev", disable=not progress, mininterval=1.0):
            self.n_events += 1
            self.last_event_ms = max(self.last_event_ms, int(event.timestamp))
            weight = weights.get(event.event_type)
            if weight is None or weight <= 0:
                continue  # dismissals and non-positive weights carry no co-occurrence
            items.append(item_index.setdefault(event.item_id, len(item_index)))
            visitors.append(visitor_index.setdefault(event.visitor_key, len(visitor_index)))
            times.append(int(event.timestamp))
            w.append(weight)
        self.item_ids = list(item_index)
        self.n_visitors = len(visitor_index)
        order = np.lexsort((np.arange(len(items)), np.asarray(times, dtype=np.int64), np.asarray(visitors)))
        self.items = np.asarray(items, dtype=np.int64)[order]
        self.visitors = np.asarray(visitors, dtype=np.int64)[order]
        self.times = np.asarray(times, dtype=np.int64)[order]
        self.weights = np.asarray(w, dtype=np.float64)[order]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def _window_pairs(log_: _Log, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(event position, earlier item, distance, later item) for every pair of a visitor's events within
    `window`, keeping for each (event, earlier item) only the nearest occurrence and dropping self-pairs."""
    n = log_.items.shape[0]
    pos_parts, other_parts, dist_parts = [], [], []
    for d in range(1, window + 1):
        if d >= n:
            break
        later = np.arange(d, n)
        same = log_.visitors[later] == log_.visitors[later - d]
        later = later[same]
        earlier_items = log_.items[later - d]
        keep = earlier_items != log_.items[later]
        pos_parts.append(later[keep])
        other_parts.append(earlier_items[keep])
        dist_parts.append(np.full(int(keep.sum()), d, dtype=np.int64))
    if not pos_parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    pos = np.concatenate(pos_parts)
    other = np.concatenate(other_parts)
    dist = np.concatenate(dist_parts)
    order = np.lexsort((dist, other, pos))  # nearest first within each (event, other item)
    pos, other, dist = pos[order], other[order], dist[order]
    first = np.ones(pos.shape[0], dtype=bool)
    first[1:] = (pos[1:] != pos[:-1]) | (other[1:] != other[:-1])
    pos, other, dist = pos[first], other[first], dist[first]
    return pos, other, dist, log_.items[pos]


def _symmetric(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int) -> sp.csr_matrix:
    m = sp.coo_matrix(
        (np.concatenate((vals, vals)), (np.concatenate((rows, cols)), np.concatenate((cols, rows)))), shape=(n, n)
    ).tocsr()
    m.sum_duplicates()
    return m


def ppmi(counts: sp.csr_matrix, smoothing: float) -> sp.csr_matrix:
    """Positive PMI of a symmetric co-occurrence matrix, context counts raised to `smoothing` (0.75).

    PMI(i, j) = log(#(i, j) * sum_c #(c)^a / (#(i) * #(j)^a)); negative values (pairs seen less often than
    chance) are dropped, which keeps the matrix sparse and the factorisation about the affinities.
    """
    coo = counts.tocoo()
    row_sums = np.asarray(counts.sum(axis=1)).ravel()
    context = row_sums**smoothing
    total_context = context.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(coo.data * total_context / (row_sums[coo.row] * context[coo.col]))
    keep = np.isfinite(pmi) & (pmi > 0)
    return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)


def orthonormalise(block: np.ndarray) -> np.ndarray:
    """An orthonormal basis of a tall, thin block's columns by Cholesky QR, done twice for accuracy.

    LAPACK's Householder QR of a [20k, 80] block takes ~0.3-1 s here; the Gram matrix route takes ~20 ms.
    A ridge of `CHOLESKY_RIDGE` x trace keeps the factorisation defined when columns are dependent.
    """
    q = np.asarray(block, dtype=np.float64)
    for _ in range(2):
        gram = q.T @ q
        gram[np.diag_indices_from(gram)] += CHOLESKY_RIDGE * max(float(np.trace(gram)), MIN_NORM)
        lower = np.linalg.cholesky(gram)
        q = solve_triangular(lower, q.T, lower=True).T
    return q


def randomized_svd(matrix: sp.csr_matrix, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k left singular vectors and values by randomised range finding (Halko, Martinsson, Tropp 2011).

    A seeded Gaussian sketch with `RSVD_OVERSAMPLE` extra columns and `RSVD_POWER_ITERATIONS` power
    iterations: on PPMI matrices it matches ARPACK's leading factors to within noise at a fraction of the
    time (JD: about 2 s instead of 25 s on 2 cores), and it is deterministic for a seed.
    """
    n_rows, n_cols = matrix.shape
    width = min(k + RSVD_OVERSAMPLE, n_rows, n_cols)
    sketch = np.random.default_rng(seed).standard_normal((n_cols, width))
    q = orthonormalise(matrix @ sketch)
    transposed = matrix.T.tocsr()
    for _ in range(RSVD_POWER_ITERATIONS):
        q = orthonormalise(transposed @ q)
        q = orthonormalise(matrix @ q)
    small = np.asarray((transposed @ q).T)  # q.T @ matrix, [width, n_cols]
    # left singular vectors of the small matrix from the eigen-decomposition of its [width, width] Gram
    # matrix: LAPACK's SVD of the wide [width, n_cols] matrix is seconds here, this is milliseconds
    eigenvalues, u_small = np.linalg.eigh(small @ small.T)
    order = np.argsort(-eigenvalues)[:k]
    return q @ u_small[:, order], np.sqrt(np.maximum(eigenvalues[order], 0.0))


def factorise(matrix: sp.csr_matrix, dim: int, seed: int) -> np.ndarray:
    """[n, dim] item factors U * sqrt(S) of the truncated SVD (zero columns when the rank is lower)."""
    n = matrix.shape[0]
    out = np.zeros((n, dim), dtype=np.float64)
    if n == 0 or matrix.nnz == 0:
        return out
    if n <= dim + RSVD_OVERSAMPLE:
        # tiny: the eigen-decomposition of the [n, n] Gram matrix is exact (its SVD would be too, but LAPACK's
        # SVD was measured seconds slower than eigh here, even for a 2000 x 2000 matrix)
        dense = matrix.toarray()
        eigenvalues, u = np.linalg.eigh(dense @ dense.T)
        order = np.argsort(-eigenvalues)
        u, s = u[:, order], np.sqrt(np.maximum(eigenvalues[order], 0.0))
    else:
        u, s = randomized_svd(matrix.astype(np.float64), dim, seed)
    r = min(dim, s.shape[0])
    out[:, :r] = u[:, :r] * np.sqrt(np.maximum(s[:r], 0.0))
    return out


def _popularity(log_: _Log, half_life_h: float) -> dict[str, float]:
    """Each item's weighted event count decayed to the time of the log's last event."""
    if log_.times.size == 0:
        return {}
    end = int(log_.times.max())
    decay = np.exp2(-(end - log_.times) / (half_life_h * MS_PER_HOUR)) * log_.weights
    totals = np.bincount(log_.items, weights=decay, minlength=log_.n_items)
    return {
        log_.item_ids[i]: round(float(v), PRIOR_DECIMALS)
        for i, v in enumerate(totals.tolist())
        if v >= MIN_POPULARITY
    }


def _covis(counts: sp.csr_matrix, item_ids: Sequence[str], neighbours: int) -> dict[str, list[tuple[str, float]]]:
    """Each item's strongest `neighbours` co-visited items, strongest first (ties by id)."""
    out: dict[str, list[tuple[str, float]]] = {}
    indptr, indices, data = counts.indptr, counts.indices, counts.data
    for i, item in enumerate(item_ids):
        lo, hi = indptr[i], indptr[i + 1]
        if lo == hi:
            continue
        pairs = sorted(
            ((item_ids[j], round(float(w), PRIOR_DECIMALS)) for j, w in zip(indices[lo:hi], data[lo:hi], strict=True)),
            key=lambda p: (-p[1], p[0]),
        )
        out[item] = pairs[:neighbours]
    return out


def _blend_content(
    cf: np.ndarray,
    interactions: np.ndarray,
    item_ids: Sequence[str],
    catalog: dict[str, CatalogItem],
    settings: Settings,
) -> tuple[np.ndarray, dict[str, int]]:
    """Unit vectors: co-occurrence for well-known items, blended towards content for rarely seen ones."""
    dim = cf.shape[1]
    encoder = ContentEncoder(dim, settings.seed)
    projector = FeatureProjector(dim, encoder)
    norms = np.linalg.norm(cf, axis=1)
    has_cf = norms > MIN_NORM
    unit = np.zeros_like(cf)
    unit[has_cf] = cf[has_cf] / norms[has_cf, None]
    features: list[tuple[tuple[str, float], ...]] = []
    for i, item_id in enumerate(item_ids):
        item = catalog.get(item_id)
        feats = item_features(item) if item is not None else ()
        features.append(feats)
        # only items whose own vector is trustworthy define where a feature sits in the trained space
        if feats and has_cf[i] and interactions[i] >= settings.train_cold_interactions:
            projector.add(feats, unit[i])
    out = np.zeros((len(item_ids), dim), dtype=np.float32)
    stats = {"collaborative": 0, "blended": 0, "content_only": 0}
    cold = settings.train_cold_interactions
    for i, item_id in enumerate(item_ids):
        projected = projector.project(item_id, features[i]) if features[i] else None
        if has_cf[i] and projected is not None and cold > 0:
            share = interactions[i] / (interactions[i] + cold)
            v = normalise(share * unit[i] + (1.0 - share) * projected)
            stats["blended"] += 1
        elif has_cf[i]:
            v = normalise(unit[i])
            stats["collaborative"] += 1
        else:
            v = projected
            stats["content_only"] += 1
        if v is None:
            item = catalog.get(item_id) or CatalogItem(item_id=item_id)
            v = encoder.encode(item)
        out[i] = v
    return out, stats


def train(
    records: Iterable[Any],
    catalog: Iterable[CatalogItem] | None,
    settings: Settings,
    *,
    progress: bool = True,
    version: str | None = None,
) -> ModelArtifact:
    """Learn item vectors and priors from `records` (contract `Event`s or `LogRecord`s); nothing is written.

    Every item with a positive event gets a finite unit vector; the artifact carries the catalogue items
    given, the popularity and co-visitation priors, the settings used and training metadata.
    """
    started = time.time()
    t0 = time.perf_counter()
    catalog_items = {item.item_id: item for item in (catalog or ())}
    log_ = _Log((_event_of(r) for r in records), _type_weights(settings), progress)
    if log_.n_items == 0:
        raise TrainError("the log has no view, add-to-cart or purchase events to learn from")
    dim = settings.embedding_dim
    pos, other, dist, later = _window_pairs(log_, settings.covis_window)
    # type-weighted, distance-discounted pairs for the embedding; the core's own rule for the prior
    pair_weight = np.sqrt(log_.weights[pos] * log_.weights[pos - dist]) / dist
    emb_counts = _symmetric(later, other, pair_weight, log_.n_items)
    covis_counts = _symmetric(later, other, 1.0 / dist, log_.n_items)
    interactions = np.bincount(log_.items, minlength=log_.n_items).astype(np.float64)

    with tqdm(total=3, desc="train: factorise", disable=not progress, leave=False) as bar:
        matrix = ppmi(emb_counts, settings.train_ppmi_smoothing)
        bar.update()
        cf = factorise(matrix, dim, settings.seed)
        bar.update()
        vectors, blend_stats = _blend_content(cf, interactions, log_.item_ids, catalog_items, settings)
        bar.update()

    artifact = ModelArtifact(
        version=version or new_version(started),
        item_ids=list(log_.item_ids),
        vectors=vectors,
        catalog=list(catalog_items.values()),
        popularity=_popularity(log_, settings.popularity_half_life_h),
        covis=_covis(covis_counts, log_.item_ids, settings.covis_neighbours),
        settings=_model_settings(settings),
        training={
            "method": METHOD,
            "n_events": log_.n_events,
            PRIORS_UNTIL_KEY: log_.last_event_ms,
            "n_positive_events": int(log_.items.shape[0]),
            "n_items": log_.n_items,
            "n_visitors": log_.n_visitors,
            "n_pairs": int(pos.shape[0]),
            "ppmi_nnz": int(matrix.nnz),
            "vectors": blend_stats,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "elapsed_s": round(time.perf_counter() - t0, 3),
            "parameters": {
                "dim": dim,
                "window": settings.covis_window,
                "ppmi_smoothing": settings.train_ppmi_smoothing,
                "cold_interactions": settings.train_cold_interactions,
                "weights": _type_weights(settings),
                "covis_neighbours": settings.covis_neighbours,
                "popularity_half_life_h": settings.popularity_half_life_h,
                "seed": settings.seed,
            },
        },
    )
    log.info("trained %s: %d items from %d events in %.1fs", artifact.version, log_.n_items, log_.n_events,
             artifact.training["elapsed_s"])
    return artifact


def _model_settings(settings: Settings) -> dict[str, Any]:
    """The settings a worker must share with the model (the vector space and the priors' meaning)."""
    keys = ("embedding_dim", "seed", "covis_window", "covis_neighbours", "popularity_half_life_h",
            "weight_view", "weight_add_to_cart", "weight_purchase")
    return {k: getattr(settings, k) for k in keys}


def build_annoy(artifact: ModelArtifact, settings: Settings) -> Any:
    """An annoy forest over the artifact's vectors (item j = row j, angular, seeded), as the core loads it."""
    import annoy  # a C extension: imported only when an index is asked for

    from stream_reco.core.index import ANNOY_METRIC

    index = annoy.AnnoyIndex(artifact.dim, ANNOY_METRIC)
    index.set_seed(settings.seed)
    for row, vector in enumerate(artifact.vectors):
        index.add_item(row, vector)
    index.build(settings.annoy_n_trees)
    artifact.training["annoy"] = {"n_trees": settings.annoy_n_trees, "metric": ANNOY_METRIC}
    return index


def train_and_save(
    records: Iterable[Any],
    catalog: Iterable[CatalogItem] | None,
    settings: Settings,
    out: str | Path | None = None,
    *,
    annoy: bool | None = None,
    progress: bool = True,
) -> tuple[ModelArtifact, Path]:
    """`train`, then write the artifact under `out` (default: `<data_dir>/models`)."""
    artifact = train(records, catalog, settings, progress=progress)
    index = build_annoy(artifact, settings) if (settings.train_build_annoy if annoy is None else annoy) else None
    path = save(artifact, Path(out) if out is not None else models_dir(settings.data_path), annoy_index=index)
    return artifact, path


@click.command("train")
@click.argument("log_path", metavar="LOG")
@click.option("--catalog", type=click.Path(exists=True, dir_okay=False), help="Contract catalog JSONL.")
@click.option("--out", type=click.Path(file_okay=False), help="Models folder (default: <data_dir>/models).")
@click.option("--annoy/--no-annoy", default=None, help="Prebuild the annoy index (default: train_build_annoy).")
@click.option("--max-events", type=int, default=None, help="Train on the first N events by time only.")
@click.pass_obj
def train_cmd(state: Any, log_path: str, catalog: str | None, out: str | None, annoy: bool | None,
              max_events: int | None) -> None:
    """Learn item embeddings from LOG (JSONL, or a shared dataset file or name) and write a model artifact."""
    from stream_reco.evaluate.loaders import LogFormatError, load_log, resolve_log_path

    settings: Settings = state.settings
    try:
        loaded = load_log(resolve_log_path(log_path, settings.shared_data_dir), catalog, max_events=max_events)
    except (LogFormatError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        artifact, path = train_and_save(loaded.records, loaded.catalog, settings, out, annoy=annoy)
    except TrainError as exc:
        raise click.ClickException(str(exc)) from exc
    t = artifact.training
    click.echo(f"model {artifact.version}: {t['n_items']} items from {t['n_events']} events "
               f"in {t['elapsed_s']:.1f}s -> {path}")


__all__ = ["TrainError", "build_annoy", "factorise", "ppmi", "train", "train_and_save", "train_cmd"]
