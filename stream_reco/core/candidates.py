"""Candidate generation: five sources, each over-fetched, normalised and blended.

* **Embedding neighbours** (ANN): one query for the session (recency-weighted mean of the session's item
  vectors) and one per interest vector, all in one `catalog.search_many` call. Querying per interest
  rather than with one averaged vector keeps recall (an average lands between interests) and gives
  diversity for free.
* **Co-visitation**: neighbours of the visitor's last few distinct items, the latest weighing most
  ("viewed this also viewed"); the strongest single signal on session-shaped logs.
* **Popularity**: decayed best-sellers of the session's categories and the page's category, plus the
  shop-wide list; this is the cold-start source and the filler when the others run dry.
* **Session neighbours** (session-kNN): items of the recent sessions most similar (cosine on item sets)
  to the visitor's current session, each scored by the summed similarity of the sessions holding it.
* **Recently viewed**: the visitor's own last few distinct items, the latest first (repeat consumption:
  people come back to what they just looked at). The `viewed_penalty` rule still down-weights them, and
  the "novel" question (`exclude_interacted`) drops them with every other seen item.

When the rules leave a list short, the recommender widens these sources step by step and, as a last
resort, sweeps the catalogue (`catalogue_candidates`), so a list is full whenever enough eligible items
exist.

Each source's scores are scaled to [0, 1] by that source's best candidate, so the blend weights
(`weight_ann`, `weight_covis`, `weight_popular`, `weight_recent`, `weight_sknn`) compare like with like.
Every candidate remembers the evidence of its strongest source, which `explain` turns into a sentence.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from stream_reco.core.events import CATEGORY_SEP
from stream_reco.core.interests import MIN_NORM
from stream_reco.core.state import CODE_TYPES, POSITIVE_CODES, VisitorState, event_weight
from stream_reco.core.stats import GLOBAL, CoVisitation, Popularity, SessionIndex
from stream_reco.settings import CoreSettings

if TYPE_CHECKING:
    from stream_reco.core.items import ItemCatalog

SOURCE_ANN, SOURCE_COVIS, SOURCE_POPULAR, SOURCE_RECENT, SOURCE_SKNN, SOURCE_FILL = 0, 1, 2, 3, 4, 5
#: the page's relations (core/placements.py): co-visited with the page's item(s), embedding neighbours of the item
SOURCE_RELATED, SOURCE_SIMILAR = 6, 7
N_SOURCES = 8
#: blend weight of the catalogue sweep's fill (items nobody bought yet, nearest the visitor's category
#: first): far below every real signal, so a fill item only ever takes a slot no signal could fill
FILL_WEIGHT = 1e-4
SESSION_QUERY = -1  # ann evidence: the item came from the session query (>= 0: that interest's index)

#: the session vector weighs its items by recency: the weight halves every this many items back
SESSION_RECENCY_HALF_ITEMS = 3.0
#: interests lighter than this share of the strongest one are not queried (faded side interests)
MIN_INTEREST_SHARE = 0.05
#: weight of the page category's best-sellers relative to the session's main category
PAGE_CATEGORY_WEIGHT = 1.0
#: weight of the shop-wide best-sellers relative to category best-sellers (they fill, not lead)
GLOBAL_POPULAR_WEIGHT = 0.25
#: session categories whose best-sellers are fetched (the most visited ones)
POPULAR_CATEGORIES = 3
#: the r-th most recent anchor item (r = 0, 1, ...) weighs (r + 1) ** -ANCHOR_RECENCY_POWER
ANCHOR_RECENCY_POWER = 1.0
#: session-kNN: a session item's weight in the query halves every this many items back (0: all equal)
SKNN_RECENCY_HALF_ITEMS = 0.0
#: session-kNN: a neighbour session's item counts half every this many items away from the shared one (0: off)
SKNN_PROXIMITY_HALF_ITEMS = 0.0
#: the r-th most recently viewed item (r = 0, 1, ...) scores (r + 1) ** -RECENT_RECENCY_POWER
RECENT_RECENCY_POWER = 1.0


@dataclass(slots=True)
class CandidatePool:
    """Candidates with one normalised score per source and the evidence behind each source's score."""

    ids: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    ann: dict[str, float] = field(default_factory=dict)  # item -> best weighted cosine
    ann_query: dict[str, int] = field(default_factory=dict)  # item -> SESSION_QUERY or interest index
    covis: dict[str, float] = field(default_factory=dict)  # item -> score
    #: (anchor item, recency weight, its neighbour weights) behind the co-visitation scores
    covis_anchors: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)
    popular: dict[str, float] = field(default_factory=dict)  # item -> weighted, scaled popularity
    popular_category: dict[str, str] = field(default_factory=dict)  # item -> category path (GLOBAL: shop)
    recent: dict[str, float] = field(default_factory=dict)  # item -> recency score of the visitor's own item
    sknn: dict[str, float] = field(default_factory=dict)  # item -> summed similarity of neighbour sessions
    fill: dict[str, float] = field(default_factory=dict)  # item -> closeness of its category to the visitor's
    related: dict[str, float] = field(default_factory=dict)  # item -> co-visits with the page's item(s)
    related_anchor: dict[str, str] = field(default_factory=dict)  # item -> the page item it was co-visited most with
    similar: dict[str, float] = field(default_factory=dict)  # item -> cosine to the page's item
    similar_anchor: dict[str, str] = field(default_factory=dict)  # item -> that page item

    def _add(self, item: str) -> None:
        if item not in self.index:
            self.index[item] = len(self.ids)
            self.ids.append(item)

    def covis_anchor(self, item: str) -> str | None:
        """The recent item whose co-visits contributed most to `item` (ties: the most recent one)."""
        if item not in self.covis or not self.covis_anchors:
            return None
        return max(self.covis_anchors, key=lambda m: m[1] * m[2].get(item, 0.0))[0]

    def source_matrix(self) -> np.ndarray:
        """[n, N_SOURCES] scores per source, each source scaled to [0, 1] by its best candidate."""
        m = np.zeros((len(self.ids), N_SOURCES), dtype=np.float64)
        for col, src in ((SOURCE_ANN, self.ann), (SOURCE_COVIS, self.covis), (SOURCE_POPULAR, self.popular),
                         (SOURCE_RECENT, self.recent), (SOURCE_SKNN, self.sknn), (SOURCE_FILL, self.fill),
                         (SOURCE_RELATED, self.related), (SOURCE_SIMILAR, self.similar)):
            if not src:
                continue
            rows = np.fromiter((self.index[i] for i in src), dtype=np.int64, count=len(src))
            vals = np.fromiter(src.values(), dtype=np.float64, count=len(src))
            top = vals.max()
            if top > 0:
                m[rows, col] = np.clip(vals / top, 0.0, 1.0)
        return m


def session_vector(state: VisitorState, catalog: ItemCatalog, now_ms: int, settings: CoreSettings) -> np.ndarray | None:
    """Recency- and event-weighted mean of the current session's item vectors (unit), None without any.

    Computed from the history on demand, so items the catalogue learns about after they were viewed
    count as soon as they are known.
    """
    hist = [h for h in state.session_history(now_ms, settings) if h[2] in POSITIVE_CODES]
    if not hist:
        return None
    vecs = catalog.vectors([h[0] for h in hist])
    n = len(hist)
    recency = 0.5 ** (np.arange(n - 1, -1, -1, dtype=np.float64) / SESSION_RECENCY_HALF_ITEMS)
    kinds = np.array([event_weight(settings, CODE_TYPES[h[2]]) for h in hist], dtype=np.float64)
    v = (recency * kinds).astype(np.float32) @ vecs
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32) if norm > MIN_NORM else None


def ann_candidates(
    pool: CandidatePool,
    state: VisitorState,
    catalog: ItemCatalog,
    now_ms: int,
    n: int,
    exclude: Sequence[str],
    settings: CoreSettings,
    min_per_query: int = 1,
) -> int:
    """Neighbours of the session vector and of each live interest, one batched search.

    The `n` slots are shared by the queries (at least `min_per_query` each, usually the list size).
    Returns the number of queries, so a caller widening the search knows when there is nothing to widen.
    """
    queries: list[np.ndarray] = []
    weights: list[float] = []
    tags: list[int] = []
    sv = session_vector(state, catalog, now_ms, settings)
    if sv is not None:
        queries.append(sv)
        weights.append(1.0)
        tags.append(SESSION_QUERY)
    iw = state.interest_weights(now_ms, settings)
    if iw:
        top = max(iw)
        for idx, (it, w) in enumerate(zip(state.interests, iw, strict=True)):
            share = w / top if top > 0 else 0.0
            if share >= MIN_INTEREST_SHARE:
                queries.append(it.vector)
                weights.append(share)
                tags.append(idx)
    if not queries:
        return 0
    per_query = max(min_per_query, n // len(queries))  # the budget is shared, so more interests cost no more
    results = catalog.search_many(np.stack(queries).astype(np.float32), per_query, exclude=exclude)
    for qw, tag, hits in zip(weights, tags, results, strict=True):
        for item, sim in hits:
            s = qw * float(sim)
            if s <= 0:
                continue
            old = pool.ann.get(item)
            if old is None or s > old:
                pool._add(item)
                pool.ann[item] = s
                pool.ann_query[item] = tag
    return len(queries)


def covis_anchors(state: VisitorState, n: int) -> list[tuple[str, float]]:
    """The visitor's last `n` distinct positively-interacted items with recency weights (r+1)^-power."""
    return [(h[0], (r + 1) ** -ANCHOR_RECENCY_POWER) for r, h in enumerate(state.recent_items(n))]


def covis_candidates(
    pool: CandidatePool,
    state: VisitorState,
    covis: CoVisitation,
    n_anchors: int,
    n: int,
) -> None:
    """Items co-visited with the visitor's recent items, weighted by anchor recency.

    The evidence (the anchor that contributed most) is looked up later, and only for the items that make
    the list (`CandidatePool.covis_anchor`), which is far cheaper than tracking it for every neighbour.
    """
    maps = [(anchor, w, covis.neighbours(anchor)) for anchor, w in covis_anchors(state, n_anchors)]
    scores: dict[str, float] = {}
    for _, w, nbrs in maps:
        for item, cw in nbrs.items():
            scores[item] = scores.get(item, 0.0) + w * cw
    if not scores:
        return
    pool.covis_anchors = maps
    top = heapq.nsmallest(n, scores.items(), key=_best_first) if len(scores) > n else sorted(
        scores.items(), key=_best_first
    )
    for item, s in top:
        pool._add(item)
        pool.covis[item] = s


def recent_candidates(pool: CandidatePool, state: VisitorState, n: int, exclude: Sequence[str]) -> None:
    """The visitor's last `n` distinct positively-interacted items, the r-th latest scoring (r+1)^-power.

    Items in `exclude` (what the hard rules or the "novel" question remove anyway) are skipped.
    """
    if n <= 0:
        return
    skip = set(exclude)
    for r, h in enumerate(state.recent_items(n)):
        if h[0] not in skip:
            pool._add(h[0])
            pool.recent[h[0]] = (r + 1) ** -RECENT_RECENCY_POWER


def sknn_candidates(
    pool: CandidatePool,
    state: VisitorState,
    sessions: SessionIndex,
    now_ms: int,
    n: int,
    settings: CoreSettings,
) -> None:
    """The best `n` items of the `sknn_neighbours` recent sessions most similar to the current one."""
    hist = state.session_history(now_ms, settings)
    items = [h[0] for h in hist if h[2] in POSITIVE_CODES]
    if not items:
        return
    visitor = state.user_id or state.session_id
    own = sessions.session_id(visitor, state.session_start) if visitor is not None else None
    scores = sessions.scores(items, settings.sknn_neighbours, own, SKNN_RECENCY_HALF_ITEMS, SKNN_PROXIMITY_HALF_ITEMS)
    if not scores:
        return
    top = heapq.nsmallest(n, scores.items(), key=_best_first) if len(scores) > n else sorted(
        scores.items(), key=_best_first
    )
    for item, sc in top:
        pool._add(item)
        pool.sknn[item] = sc


def _best_first(kv: tuple[str, float]) -> tuple[float, str]:
    return (-kv[1], kv[0])


def popular_categories(
    state: VisitorState, now_ms: int, page_category: str | None, settings: CoreSettings
) -> list[tuple[str, float]]:
    """(category path, weight) whose best-sellers to fetch: session categories, the page's, global."""
    counts = state.session_category_counts(now_ms, settings)
    out: dict[str, float] = {}
    if counts:
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:POPULAR_CATEGORIES]
        most = top[0][1]
        for cat, c in top:
            out[cat] = c / most
    page = page_category or (state.page_category if state.session_active(now_ms, settings) else None)
    if page:
        out[page] = max(out.get(page, 0.0), PAGE_CATEGORY_WEIGHT)
    out[GLOBAL] = max(out.get(GLOBAL, 0.0), GLOBAL_POPULAR_WEIGHT)
    return list(out.items())


def popular_candidates(
    pool: CandidatePool,
    state: VisitorState,
    popularity: Popularity,
    now_ms: int,
    page_category: str | None,
    n: int,
    settings: CoreSettings,
    min_per_category: int = 1,
) -> None:
    """Best-sellers of the visitor's categories, each list scaled by its own best, times its weight.

    The categories share `n` slots by weight (at least `min_per_category` each): side categories fill,
    not flood.
    """
    cats = popular_categories(state, now_ms, page_category, settings)
    total = sum(cw for _, cw in cats)
    for cat, cw in cats:
        ranked = popularity.top(cat, max(min_per_category, round(n * cw / total)), now_ms)
        if not ranked:
            continue
        top = ranked[0][1]
        if top <= 0:
            continue
        for item, s in ranked:
            v = cw * s / top
            old = pool.popular.get(item)
            if old is None or v > old:
                pool._add(item)
                pool.popular[item] = v
                pool.popular_category[item] = cat


def catalogue_candidates(
    pool: CandidatePool,
    catalog: ItemCatalog,
    popularity: Popularity,
    now_ms: int,
    exclude: Sequence[str],
    n: int,
    multipliers: Callable[[list[str]], np.ndarray],
    context: str | None = None,
) -> int:
    """The best `n` recommendable items that are not candidates yet, by shop-wide popularity: the last resort.

    Bounded sources (capped best-seller lists, a few ANN neighbours per query) can all land in suppressed,
    out-of-scope or sold-out items; only a sweep of the catalogue can promise a full list whenever enough
    eligible items exist. `multipliers` (the rules' verdict on a list of ids, 0 = removed) is asked once
    for the whole sweep, and only the best `n` survivors by popularity times multiplier (ties by id, as
    the final ordering) join the pool, so it grows by at most `n` however large the catalogue. Items with
    shop-wide popularity score as shop-wide best-sellers. It costs O(catalogue), so the recommender
    reaches for it only when every other source has left the list short. Returns the number of items added.

    Items nobody bought yet are ordered by how much of the `context` category path (the page the visitor
    is on) they share, then by id, so a cold visitor on the stand mixers page is offered the other stand
    mixers, then other appliances, before anything else; they join as fill (`pool.fill`, the closeness,
    weighted `FILL_WEIGHT`), explained as "More in ...".
    """
    skip = set(exclude)
    ids = [it.item_id for it in catalog.items() if it.recommendable and it.item_id not in pool.index
           and it.item_id not in skip]
    if not ids or n <= 0:
        return 0
    mult = multipliers(ids)
    want = context.split(CATEGORY_SEP) if context else []

    def closeness(item_id: str) -> float:
        if not want:
            return 0.0
        shared = 0
        for a, b in zip(catalog.category_of(item_id), want, strict=False):
            if a != b:
                break
            shared += 1
        return shared / len(want)

    survivors = [(i, float(m), popularity.score(i, now_ms), closeness(i))
                 for i, m in zip(ids, mult.tolist(), strict=True) if m > 0]
    chosen = heapq.nsmallest(n, survivors, key=lambda x: (-x[1] * x[2], -x[3], x[0]))
    top = popularity.top(GLOBAL, 1, now_ms)
    best = top[0][1] if top else 0.0
    for i, _, score, near in chosen:
        pool._add(i)
        if score > 0 and best > 0:
            pool.popular[i] = GLOBAL_POPULAR_WEIGHT * min(score / best, 1.0)
            pool.popular_category[i] = GLOBAL
        else:
            pool.fill[i] = near
    return len(chosen)


def gather(
    state: VisitorState,
    catalog: ItemCatalog,
    covis: CoVisitation,
    popularity: Popularity,
    now_ms: int,
    n: int,
    exclude: Sequence[str],
    page_category: str | None,
    settings: CoreSettings,
    n_anchors: int,
    k: int,
    sessions: SessionIndex | None = None,
    recent: bool = True,
) -> CandidatePool:
    """Every enabled source for one visitor, about `n` candidates from each, for a list of `k`.

    `recent=False` leaves out the visitor's own recent items (a product or cart shelf shows the page's
    relations, not what the visitor just looked at).
    """
    pool = CandidatePool()
    if settings.weight_covis > 0:
        covis_candidates(pool, state, covis, n_anchors, n)
    if settings.weight_sknn > 0 and sessions is not None:
        sknn_candidates(pool, state, sessions, now_ms, n, settings)
    if settings.weight_ann > 0:
        ann_candidates(pool, state, catalog, now_ms, n, exclude, settings, min_per_query=k)
    if settings.weight_popular > 0 or not pool.ids:
        popular_candidates(pool, state, popularity, now_ms, page_category, n, settings, min_per_category=k)
    if recent and settings.weight_recent > 0:
        recent_candidates(pool, state, settings.recent_items, exclude)
    return pool


def blend(
    pool: CandidatePool, settings: CoreSettings, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Blended score per candidate and the index of the source that contributed most to it.

    `weights` (one per source, `N_SOURCES`; the fill's is ignored) replace the settings' blend weights: a
    placement other than home weighs the page's relations (core/placements.py).
    """
    m = pool.source_matrix()
    if weights is None:
        w = np.zeros(N_SOURCES, dtype=np.float64)
        w[:SOURCE_FILL] = [settings.weight_ann, settings.weight_covis, settings.weight_popular,
                           settings.weight_recent, settings.weight_sknn]
    else:
        w = np.array(weights, dtype=np.float64)
    w = np.maximum(w, 0.0)
    w[SOURCE_FILL] = 0.0
    if w.any():
        w[SOURCE_FILL] = FILL_WEIGHT
    else:  # all weights off: popularity still has to fill the list
        w[SOURCE_POPULAR] = 1.0
    contrib = m * w
    # the first sources summed as one contiguous block, exactly as before the page's relations existed (the
    # same rounding, so home lists did not move by an ulp), then the relations added
    total = np.ascontiguousarray(contrib[:, :SOURCE_RELATED]).sum(axis=1)
    total += contrib[:, SOURCE_RELATED:].sum(axis=1)
    return total, np.argmax(contrib, axis=1)
