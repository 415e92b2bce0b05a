"""Shop-wide statistics learned from the stream: item co-visitation and decayed popularity.

Both are incremental (one small update per event), bounded and deterministic: every ordering breaks
ties by item id and no result depends on set or dict iteration order of unordered inputs. Priors from a
model artifact sit beside the streamed counts, so a hot swap replaces the priors without
double-counting what the stream taught.

Bounds (no input can grow them without limit): co-visitation keeps the top `covis_neighbours` per item
and at most `max_items` items (the least recently co-visited are dropped first); popularity keeps at
most `max_items` item counts (the lowest dropped), a top list of `top_cap` per category and at most
`max_categories` categories (those whose best item is weakest dropped; never the shop-wide one), each
keyed by its bounded `limits.category_key`; the session-kNN index keeps `max_sessions` sessions of at
most `max_session_items` items each and forgets items whose sessions are all gone.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Mapping, Sequence

from stream_reco.core.events import CATEGORY_SEP
from stream_reco.core.limits import category_key

MS_PER_HOUR = 3_600_000
#: an item's neighbour map may grow to this multiple of the cap before it is pruned back (amortises sorting)
PRUNE_SLACK = 2.0
#: items kept per category in the popularity top lists (more than any list needs after filtering)
POPULAR_TOP_CAP = 200
#: rescale the stored popularity counts once the growth exponent passes this many half-lives (no overflow)
RESCALE_HALF_LIVES = 64.0
GLOBAL = ""  # the category key of shop-wide popularity
#: a capped map may grow this fraction past its cap before it is pruned back (amortises the pruning)
CAP_SLACK = 0.1
#: items one session-kNN session keeps (longer sessions are bots or crawlers; the first items stay)
SKNN_SESSION_ITEMS_CAP = 500
#: item lists of the session-kNN index are swept for items whose sessions are all gone at this many items
#: (and then at twice the number left), so dead items cost amortised O(1)
SKNN_SWEEP_MIN_ITEMS = 10_000


def _pruned_size(cap: int) -> int:
    """The size a capped map may reach before it is pruned back to `cap`."""
    return cap + max(1, int(cap * CAP_SLACK))


def _top(items: Iterable[tuple[str, float]], n: int) -> list[tuple[str, float]]:
    """Best `n` by score, ties by item id (deterministic)."""
    return heapq.nsmallest(n, items, key=lambda kv: (-kv[1], kv[0]))


class CoVisitation:
    """Symmetric item-to-item co-visitation weights ("viewed this also viewed").

    Streamed weights live in `pairs` and are pruned to the strongest `max_neighbours` per item (once an
    item's map exceeds `PRUNE_SLACK` times that). Priors from the model artifact are kept apart and
    replaced on every model load; a lookup adds the two, scaled by `prior_weight`. The streamed `pairs` (in
    their order) are what core/stats_snapshot.py saves: a new learned field must be saved there too.
    """

    def __init__(
        self,
        max_neighbours: int,
        prior_weight: float = 1.0,
        backward_weight: float = 1.0,
        max_items: int = 1_000_000,
    ) -> None:
        self.max_neighbours = max(1, int(max_neighbours))
        self.max_items = max(1, int(max_items))
        self.prior_weight = prior_weight
        self.backward_weight = backward_weight
        self.pairs: dict[str, dict[str, float]] = {}
        self.prior: dict[str, dict[str, float]] = {}
        self._limit = max(self.max_neighbours + 1, int(self.max_neighbours * PRUNE_SLACK))

    def set_prior(self, covis: Mapping[str, Sequence[tuple[str, float]]]) -> None:
        """Replace the artifact priors (each item's strongest `max_neighbours` are kept)."""
        self.prior = {
            item: dict(_top(((str(n), float(w)) for n, w in nbrs if n != item), self.max_neighbours))
            for item, nbrs in covis.items()
        }

    def add(self, a: str, b: str, weight: float, backward: float = 1.0) -> None:
        """Strengthen a -> b by `weight` and b -> a by `weight * backward` (1: symmetric)."""
        if a == b or weight <= 0:
            return
        for x, y, w in ((a, b, weight), (b, a, weight * backward)):
            if w <= 0:
                continue
            nbrs = self.pairs.pop(x, None)  # re-inserted last: `pairs` runs least recently co-visited first
            if nbrs is None:
                nbrs = {}
            nbrs[y] = nbrs.get(y, 0.0) + w
            if len(nbrs) > self._limit:
                nbrs = dict(_top(nbrs.items(), self.max_neighbours))
            self.pairs[x] = nbrs
        if len(self.pairs) > _pruned_size(self.max_items):
            for gone in list(self.pairs)[: len(self.pairs) - self.max_items]:
                del self.pairs[gone]

    def observe(self, item: str, recent: Sequence[tuple[str, float]]) -> None:
        """Co-visit `item` with each of the visitor's earlier items, each with its own weight.

        Forward (earlier item -> `item`, what people view *next*) gets the full weight, backward
        `backward_weight` of it: on session logs the next item is the better predictor.
        """
        for other, w in recent:
            self.add(other, item, w, self.backward_weight)

    def neighbours(self, item: str) -> dict[str, float]:
        """Streamed plus prior weights of `item`'s neighbours (a new dict; empty for an unknown item)."""
        streamed = self.pairs.get(item)
        prior = self.prior.get(item)
        if not prior:
            return dict(streamed) if streamed else {}
        out = {n: w * self.prior_weight for n, w in prior.items()}
        if streamed:
            for n, w in streamed.items():
                out[n] = out.get(n, 0.0) + w
        return out

    def top_neighbours(self, item: str, n: int) -> list[tuple[str, float]]:
        return _top(self.neighbours(item).items(), n)

    @property
    def n_pairs(self) -> int:
        return sum(len(v) for v in self.pairs.values())


class _TopTracker:
    """The `cap` highest-scoring items of one category, kept exact and sorted under score increases.

    Correct because stored popularity scores only ever grow (decay is applied by rescaling the clock, not
    by lowering scores), so an item outside the top can only enter it by beating the current minimum.
    `order` holds (-score, item) ascending, i.e. best first with ties by id, so a top-n query is a slice;
    an update is a bisect plus a C-level list move of at most `cap` entries.
    """

    __slots__ = ("cap", "members", "order")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.members: dict[str, float] = {}
        self.order: list[tuple[float, str]] = []

    def offer(self, item: str, score: float) -> None:
        old = self.members.get(item)
        if old is not None:
            del self.order[bisect.bisect_left(self.order, (-old, item))]
        elif len(self.members) >= self.cap:
            worst = self.order[-1]
            if (-score, item) >= worst:
                return
            self.order.pop()
            del self.members[worst[1]]
        self.members[item] = score
        bisect.insort(self.order, (-score, item))

    def top(self, n: int) -> list[tuple[str, float]]:
        return [(item, -neg) for neg, item in self.order[:n]]

    def rescale(self, factor: float) -> None:
        for k in self.members:
            self.members[k] *= factor
        self.order = sorted((neg * factor, item) for neg, item in self.order)  # rounding may tie scores


def category_prefixes(category_path: str) -> list[str]:
    """Every ancestor path of a category, itself included, then the global key.

    "A/B/C" -> ["A/B/C", "A/B", "A", ""]: an item counts towards each level, so best-sellers of a parent
    page ("Furniture/Living room") include its sub-categories' items. The path is first bounded
    (`limits.category_key`: at most 8 levels and 256 characters), so one event adds at most 9 keys.
    """
    out = []
    path = category_key(category_path)
    while path:
        out.append(path)
        path = path.rsplit(CATEGORY_SEP, 1)[0] if CATEGORY_SEP in path else ""
    out.append(GLOBAL)
    return out


class DecayedCounts:
    """Per-item counts with exponential time decay, plus a top list per category (and a global one).

    A count added at time t is stored as w * 2^((t - ref) / half_life): adding in any order gives the
    same result (replays are deterministic), and the score at time `now` is the stored value times
    2^(-(now - ref) / half_life), the same factor for every item, so decay never reorders items and the
    top lists stay exact without touching every item on every event. core/stats_snapshot.py saves `ref`,
    `scores` and each tracker's `order` (members follow from it): a new learned field must be saved there too.
    """

    def __init__(
        self,
        half_life_h: float,
        top_cap: int = POPULAR_TOP_CAP,
        max_items: int = 1_000_000,
        max_categories: int = 10_000,
    ) -> None:
        self.half_life_ms = max(half_life_h, 1e-9) * MS_PER_HOUR
        self.top_cap = top_cap
        self.max_items = max(1, int(max_items))
        self.max_categories = max(2, int(max_categories))
        self.ref: int | None = None
        self.scores: dict[str, float] = {}
        self.tops: dict[str, _TopTracker] = {}

    def add(self, item: str, category_path: str | None, weight: float, ts: int) -> None:
        if weight <= 0:
            return
        if self.ref is None:
            self.ref = int(ts)
        exponent = (ts - self.ref) / self.half_life_ms
        if exponent > RESCALE_HALF_LIVES:
            self._rescale(int(ts))
            exponent = 0.0
        score = self.scores.get(item, 0.0) + weight * 2.0**exponent
        self.scores[item] = score
        for cat in category_prefixes(category_path or ""):
            tracker = self.tops.get(cat)
            if tracker is None:
                if len(self.tops) >= self.max_categories:
                    self._drop_weakest_categories()
                tracker = self.tops[cat] = _TopTracker(self.top_cap)
            tracker.offer(item, score)
        if len(self.scores) > _pruned_size(self.max_items):
            self._drop_weakest_items()

    def _drop_weakest_categories(self) -> None:
        """Make room for new categories: drop the tenth whose best item is weakest (never GLOBAL)."""
        ranked = sorted(
            (t.order[0][0] if t.order else 0.0, cat) for cat, t in self.tops.items() if cat != GLOBAL
        )  # (-best score, path): weakest last
        n = max(1, int(self.max_categories * CAP_SLACK))
        for _, cat in ranked[-n:]:
            del self.tops[cat]

    def _drop_weakest_items(self) -> None:
        """Back to `max_items` counts: the lowest go (their top-list entries stay until pushed out)."""
        keep = heapq.nsmallest(self.max_items, self.scores.items(), key=lambda kv: (-kv[1], kv[0]))
        self.scores = dict(keep)

    def _rescale(self, new_ref: int) -> None:
        assert self.ref is not None
        factor = 2.0 ** (-(new_ref - self.ref) / self.half_life_ms)
        for k in self.scores:
            self.scores[k] *= factor
        for t in self.tops.values():
            t.rescale(factor)
        self.ref = new_ref

    def _now_factor(self, now_ms: int) -> float:
        if self.ref is None:
            return 0.0
        # A query older than the reference time (an out-of-order event from long before every count) must not
        # grow the counts, as in interests.decay_factor: 2 ** (decades / half-life) overflowed (OverflowError) and
        # crashed the worker on a valid event with timestamp 0 (tests/integration/test_reliability_bad_input.py).
        return 2.0 ** (-max(now_ms - self.ref, 0) / self.half_life_ms)

    def score(self, item: str, now_ms: int) -> float:
        """Decayed count of `item` at `now_ms`."""
        return self.scores.get(item, 0.0) * self._now_factor(now_ms)

    def top(self, category: str, n: int, now_ms: int) -> list[tuple[str, float]]:
        """The `n` most popular items of `category` (GLOBAL for all) with decayed counts at `now_ms`."""
        tracker = self.tops.get(category)
        if tracker is None:
            return []
        f = self._now_factor(now_ms)
        return [(k, v * f) for k, v in tracker.top(n)]

    def categories(self) -> list[str]:
        return sorted(self.tops)


class Popularity:
    """Decayed popularity from the stream plus the model artifact's prior counts.

    The prior is a separate `DecayedCounts` so a model hot swap replaces it cleanly; its counts are
    dated at the first event seen after the load (or the first query, if no event comes first), so they
    fade at the same half-life as streamed counts instead of dominating forever.
    """

    def __init__(
        self,
        half_life_h: float,
        top_cap: int = POPULAR_TOP_CAP,
        max_items: int = 1_000_000,
        max_categories: int = 10_000,
    ) -> None:
        self.half_life_h = half_life_h
        self.top_cap = top_cap
        self.max_items = max_items
        self.max_categories = max_categories
        self.stream = self._counts()
        self.prior = self._counts()
        self._pending_prior: list[tuple[str, str, float]] = []
        self.clock: int | None = None  # latest event time seen

    def set_prior(
        self, popularity: Mapping[str, float], category_of: Mapping[str, str], as_of: int | None = None
    ) -> None:
        """Replace the prior with `popularity` ({item: decayed count}); `category_of` gives item paths.

        `as_of` is the time the counts are valid at (the end of the training log) when the model says so;
        otherwise the latest event seen, or the first one to come.
        """
        self.prior = self._counts()
        self._pending_prior = [
            (item, category_of.get(item, ""), float(w)) for item, w in sorted(popularity.items()) if w > 0
        ]
        when = as_of if as_of is not None else self.clock
        if when is not None:
            self._materialise(when)

    def _counts(self) -> DecayedCounts:
        return DecayedCounts(self.half_life_h, self.top_cap, self.max_items, self.max_categories)

    def _materialise(self, ts: int) -> None:
        for item, cat, w in self._pending_prior:
            self.prior.add(item, cat, w, ts)
        self._pending_prior = []

    def add(self, item: str, category_path: str | None, weight: float, ts: int) -> None:
        if self._pending_prior:
            self._materialise(ts)
        self.clock = ts if self.clock is None else max(self.clock, ts)
        self.stream.add(item, category_path, weight, ts)

    def score(self, item: str, now_ms: int) -> float:
        if self._pending_prior:
            self._materialise(now_ms)
        return self.stream.score(item, now_ms) + self.prior.score(item, now_ms)

    def top(self, category: str, n: int, now_ms: int) -> list[tuple[str, float]]:
        """The `n` most popular items of a category path (GLOBAL: the whole shop), streamed + prior."""
        if self._pending_prior:
            self._materialise(now_ms)
        category = category_key(category)
        a = self.stream.top(category, n, now_ms)
        b = self.prior.top(category, n, now_ms)
        if not b:
            return a
        in_a, in_b = dict(a), dict(b)
        merged: dict[str, float] = {}
        # an item in only one top list may still have counts on the other side: add them exactly
        for k in [*in_a, *(k for k in in_b if k not in in_a)]:
            sa = in_a[k] if k in in_a else self.stream.score(k, now_ms)
            sb = in_b[k] if k in in_b else self.prior.score(k, now_ms)
            merged[k] = sa + sb
        return _top(merged.items(), n)


class SessionIndex:
    """Recent sessions' item sets, and per item the latest sessions that contain it (session-kNN).

    A session is keyed by (visitor key, session start ms), so re-learning an event (a replay after a
    restart) changes nothing: item sets are sets. Bounded: the oldest sessions beyond `max_sessions` are
    forgotten (item lists skip them lazily) and each item remembers at most `per_item` sessions.
    Deterministic: sessions get increasing ids in stream order and every ordering breaks ties by id.
    core/stats_snapshot.py saves every field but the caps: a new learned field must be saved there too.
    """

    def __init__(self, max_sessions: int, per_item: int, max_session_items: int = SKNN_SESSION_ITEMS_CAP) -> None:
        self.max_sessions = max(1, int(max_sessions))
        self.per_item = max(1, int(per_item))
        self.max_session_items = max(1, int(max_session_items))
        self._sweep_at = SKNN_SWEEP_MIN_ITEMS
        self.ids: dict[tuple[str, int], int] = {}  # session key -> id
        self.keys: dict[int, tuple[str, int]] = {}  # id -> session key (insertion order: oldest first)
        self.items: dict[int, dict[str, None]] = {}  # id -> its distinct items, in first-view order
        self.by_item: dict[str, list[int]] = {}  # item -> ids of its latest sessions, oldest first
        self._next = 0

    def add(self, visitor: str, session_start: int, item: str) -> None:
        """`item` was interacted with in the visitor's session that started at `session_start`."""
        key = (visitor, int(session_start))
        sid = self.ids.get(key)
        if sid is None:
            sid = self.ids[key] = self._next
            self._next += 1
            self.keys[sid] = key
            self.items[sid] = {}
            while len(self.keys) > self.max_sessions:
                old = next(iter(self.keys))
                del self.ids[self.keys.pop(old)]
                del self.items[old]
        items = self.items[sid]
        if item in items or len(items) >= self.max_session_items:
            return
        items[item] = None
        lst = self.by_item.get(item)
        if lst is None:
            if len(self.by_item) >= self._sweep_at:
                self._sweep()
            lst = self.by_item[item] = []
        lst.append(sid)
        if len(lst) > 2 * self.per_item:  # amortised trim
            del lst[: len(lst) - self.per_item]

    def _sweep(self) -> None:
        """Forget the items whose remembered sessions are all gone (amortised: the threshold doubles)."""
        live = self.items
        self.by_item = {
            item: kept for item, sids in self.by_item.items() if (kept := [s for s in sids if s in live])
        }
        self._sweep_at = max(SKNN_SWEEP_MIN_ITEMS, 2 * len(self.by_item))

    def session_id(self, visitor: str, session_start: int) -> int | None:
        return self.ids.get((visitor, int(session_start)))

    def neighbours(
        self, items: Sequence[str], k: int, own: int | None = None, recency_half_items: float = 0.0
    ) -> list[tuple[int, float, str]]:
        """The `k` sessions most similar to the session `items` (oldest first): (id, similarity, anchor).

        Similarity is the cosine between the query's item weights and the session's item set; with
        `recency_half_items` > 0 a query item's weight halves every that many items back (the latest items
        say most about what comes next). `anchor` is the latest query item the session shares. Candidate
        sessions are the latest `per_item` sessions of each item; `own` (the asking session) is skipped.
        Best first, ties by the newer session.
        """
        query = list(dict.fromkeys(reversed(items)))  # distinct, latest first
        if not query or k <= 0:
            return []
        if recency_half_items > 0:
            weights = [0.5 ** (r / recency_half_items) for r in range(len(query))]
        else:
            weights = [1.0] * len(query)
        overlap: dict[int, float] = {}
        anchor: dict[int, str] = {}
        live = self.items
        for item, w in zip(query, weights, strict=True):
            for sid in self.by_item.get(item, ())[-self.per_item :]:
                if sid != own and sid in live:
                    if sid in overlap:
                        overlap[sid] += w
                    else:
                        overlap[sid] = w
                        anchor[sid] = item
        if not overlap:
            return []
        qn = sum(w * w for w in weights) ** 0.5
        sims = [(sid, o / (qn * len(live[sid]) ** 0.5), anchor[sid]) for sid, o in overlap.items()]
        return heapq.nsmallest(k, sims, key=lambda p: (-p[1], -p[0]))

    def scores(
        self,
        items: Sequence[str],
        k: int,
        own: int | None = None,
        recency_half_items: float = 0.0,
        proximity_half_items: float = 0.0,
    ) -> dict[str, float]:
        """Session-kNN item scores: the summed similarity of the `k` nearest sessions containing each item.

        With `proximity_half_items` > 0 an item of a neighbour session counts less the farther it was viewed
        from the shared anchor item (halving every that many items), as in STAN.
        """
        out: dict[str, float] = {}
        for sid, sim, anchor in self.neighbours(items, k, own, recency_half_items):
            members = self.items[sid]
            if proximity_half_items > 0:
                order = list(members)
                at = order.index(anchor)
                for pos, item in enumerate(order):
                    out[item] = out.get(item, 0.0) + sim * 0.5 ** (abs(pos - at) / proximity_half_items)
            else:
                for item in members:
                    out[item] = out.get(item, 0.0) + sim
        return out

    def __len__(self) -> int:
        return len(self.items)
