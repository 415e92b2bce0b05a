"""The recommender: observe an event, recommend for a visitor. Pure: no I/O, no clock, no Kafka.

The faust worker, the in-process replay, the evaluation and the benchmarks all drive this one class:

    rec = Recommender(settings)            # or Recommender(settings, catalog, store)
    rec.load_model(artifact)               # hot swap: item vectors and popularity/co-visitation priors
    rec.upsert_item(item)                  # catalogue messages
    rec.process(event)                     # observe + the visitor's new list at the event's time

Time comes only from event timestamps (`now_ms`), so replaying a log with the same model and settings
gives the same lists. Per-visitor state goes through a `VisitorStore`: a dict here, a faust table in the
worker. Shop-wide statistics (co-visitation, popularity) live in this object.

The shop clock: `clock` is the latest time an event was applied at. An event is applied at its own
timestamp, but at most the caller's `now_ms` (a worker passes its wall clock plus the allowed skew) or,
without one (replays, evaluation), at most `MAX_CLOCK_STEP_MS` past the clock, so one event stamped 2099 by a
buggy producer counts as one event a day ahead at most: its fair share, instead of decaying every other count
to nothing and ending every visitor's suppressions. Late events are applied at their own (older) time, where decay
gives them their fair, smaller share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from stream_reco.core import login, placements, render
from stream_reco.core.candidates import (
    CandidatePool,
    ann_candidates,
    blend,
    catalogue_candidates,
    gather,
    popular_candidates,
)
from stream_reco.core.caps import ListCaps
from stream_reco.core.events import CatalogItem, Event, Recommendation, RecommendedItem
from stream_reco.core.rank import mmr, stable_order
from stream_reco.core.reasons import Explainer
from stream_reco.core.rules import Batch, Rule, RuleContext, apply_rules, default_rules, excluded_ids
from stream_reco.core.state import MS_PER_DAY, POSITIVE_CODES, VisitorState, event_weight
from stream_reco.core.stats import POPULAR_TOP_CAP, CoVisitation, Popularity, SessionIndex
from stream_reco.core.stats_context import StatsContext, StatsContexts, event_hash
from stream_reco.settings import CoreSettings, Settings, core_settings

if TYPE_CHECKING:
    from stream_reco.core.items import ItemCatalog
    from stream_reco.model.artifact import ModelArtifact

#: MMR re-ranks the best `MMR_POOL_FACTOR * k` candidates after the rules (enough room to diversify,
#: small enough that re-ranking stays cheap)
MMR_POOL_FACTOR = 3
#: a list left short by the rules widens the embedding neighbours this many times, each time by this
#: factor, before sweeping the catalogue (a few cheap searches usually fill it; the sweep is O(catalogue))
#: widening steps (the best-seller ones) a list may take only because its candidates cannot honour the
#: category cap; the rest are for lists the rules left short
CAP_WIDEN_STEPS = 2
ANN_WIDEN_STEPS = 4
ANN_WIDEN_GROWTH = 2
#: a co-visit between the new item and one `d` events back weighs d ** -COVIS_DISTANCE_POWER
COVIS_DISTANCE_POWER = 1.0
#: weight of "viewed before" relative to "viewed after" in co-visitation (1: symmetric)
COVIS_BACKWARD_WEIGHT = 1.0
#: key of the model artifact's training metadata holding the time (ms) of the last event its priors count;
#: events up to then already live in the priors, so replaying them (a warm-up, a worker re-reading the
#: topic) updates visitor state but not the shop statistics again
PRIORS_UNTIL_KEY = "last_event_ms"
#: the most one event may move the shop clock forward (1 day). Why a day: time must still move on after a
#: quiet night or a closed day (a gap up to a day is applied exactly, a longer one within a few events,
#: as replays of sparse logs need), while one event stamped far ahead counts at most 2^(24/168) = 1.10
#: times a current event in popularity (half-life 168 h), ends no purchase suppression (14 days) and
#: decays only its own visitor's interests, once, by at most 21% (72 h). Without `now_ms`, N such events
#: can move the clock N days; a worker passes its wall clock (plus skew) as `now_ms`, which bounds it.
MAX_CLOCK_STEP_MS = 86_400_000
#: event types whose item is on the visitor's screen when the list they trigger is shown: that item is never in it
TRIGGER_EXCLUDED_TYPES = frozenset({"view", "add_to_cart", "click"})


@runtime_checkable
class VisitorStore(Protocol):
    """Where visitor states live. `delete` is optional: a store without it gets an empty state instead."""

    def get(self, key: str) -> VisitorState | None: ...

    def put(self, key: str, state: VisitorState) -> None: ...


class InMemoryVisitorStore:
    """A dict of live `VisitorState` objects (replay, evaluation, tests; a worker uses a faust table)."""

    def __init__(self) -> None:
        self.states: dict[str, VisitorState] = {}

    def get(self, key: str) -> VisitorState | None:
        return self.states.get(key)

    def put(self, key: str, state: VisitorState) -> None:
        self.states[key] = state

    def delete(self, key: str) -> None:
        self.states.pop(key, None)

    def __len__(self) -> int:
        return len(self.states)

    def __contains__(self, key: object) -> bool:
        return key in self.states


class Recommender:
    """Event in, explained list out; see the module docstring for the life cycle."""

    def __init__(
        self,
        settings: CoreSettings | Settings,
        catalog: ItemCatalog | None = None,
        store: VisitorStore | None = None,
    ) -> None:
        settings = core_settings(settings)  # the core never holds connection, security or tool settings
        if catalog is None:
            from stream_reco.core.items import ItemCatalog

            catalog = ItemCatalog(settings)
        self.settings = settings
        self.catalog = catalog
        self.store: VisitorStore = store if store is not None else InMemoryVisitorStore()
        self.covis = CoVisitation(
            settings.covis_neighbours, backward_weight=COVIS_BACKWARD_WEIGHT, max_items=settings.stats_max_items
        )
        self.popularity = Popularity(
            settings.popularity_half_life_h,
            max_items=settings.stats_max_items,
            max_categories=settings.popularity_max_categories,
        )
        #: session-kNN index (shop-wide; learned from every event, also those the model priors count)
        self.sessions = SessionIndex(settings.sknn_max_sessions, settings.sknn_sessions_per_item)
        self.rules: list[Rule] = default_rules(settings)
        self.n_observed = 0
        self.n_duplicates = 0
        self.priors_until: int | None = None  # see PRIORS_UNTIL_KEY
        self.clock: int | None = None  # the shop clock: latest time an event was applied at (module docstring)
        self.n_clamped = 0  # events applied earlier than their timestamp (ahead of the clock or `now_ms`)
        self.last_applied_ms: int | None = None  # the time the latest observed event was applied at

    # --- model and catalogue ---

    def load_model(self, artifact: ModelArtifact) -> None:
        """Hot swap a model: the catalogue's vectors, then the popularity and co-visitation priors."""
        self.catalog.load_model(artifact)
        until = artifact.training.get(PRIORS_UNTIL_KEY) if isinstance(artifact.training, dict) else None
        self.priors_until = int(until) if isinstance(until, int | float) else None
        self.covis.set_prior(artifact.covis)
        categories = {}
        for item_id in sorted(artifact.popularity):
            item = self.catalog.get(item_id)
            categories[item_id] = item.category_path if item is not None else ""
        self.popularity.set_prior(artifact.popularity, categories, as_of=self.priors_until)

    def upsert_item(self, item: CatalogItem) -> None:
        """A catalogue message: searchable at once; out-of-stock or deleted items drop out at once."""
        self.catalog.upsert(item)

    @property
    def model_version(self) -> str:
        return str(getattr(self.catalog, "model_version", "none"))

    # --- learning ---

    def applied_time(self, event: Event, now_ms: int | None = None) -> int:
        """The time `event` would be applied at now: its timestamp, at most `now_ms` when the caller has a
        wall clock (a worker: wall clock plus allowed skew), else at most `MAX_CLOCK_STEP_MS` past the shop
        clock (in-process replays and evaluation, whose only clock is the log)."""
        ts = int(event.timestamp)
        if now_ms is not None:
            # a trusted wall clock bounds the future by itself; the step rule would instead trust the earliest
            # events, and one stamped 1970 after a worker start would hold every later event near 1970
            ts = min(ts, int(now_ms))
        elif self.clock is not None:
            ts = min(ts, self.clock + MAX_CLOCK_STEP_MS)
        return max(ts, 0)

    def observe(self, event: Event, now_ms: int | None = None, learn_stats: bool = True,
                store: VisitorStore | None = None) -> bool:
        """Learn one event: visitor state and shop statistics. False (and no change) for a duplicate.

        The event is applied at `applied_time(event, now_ms)` (`last_applied_ms` says when), which is its
        own timestamp unless it runs ahead of the shop clock or of `now_ms`. With `learn_stats=False` only the
        visitor state (and the shop clock) moves: co-visitation, popularity and the session index are left
        alone, because the statistics feed already counted the event (`learn_stats`). `store`: where this
        event's visitor states are read and written, when not `self.store` (a worker passes a view of its table
        that knows the event's partition, stream/store.py).
        """
        store = self.store if store is None else store
        at = self.applied_time(event, now_ms)
        if at != event.timestamp:
            event = dataclasses.replace(event, timestamp=at)
            clamped = True
        else:
            clamped = False
        key = event.visitor_key
        state = store.get(key)
        merged = False
        if event.user_id and event.session_id and event.session_id != key:
            anon = store.get(event.session_id)
            if anon is not None and login.joinable(anon):  # the session lives here: join it at once
                state = login.join(state, anon, event.user_id, self.settings)
                login.forget(store, event.session_id)
                merged = True
        if state is None:
            state = VisitorState()
        if state.has_seen_event(event.event_id):
            self.n_duplicates += 1
            if merged:
                store.put(key, state)
            return False
        if event.is_shown:  # an impression: what the shop showed moves no state, statistic or clock; dedup only
            state.note_shown(event, self.settings)
            store.put(key, state)
            self.n_observed += 1
            return True

        item = self.catalog.get(event.item_id)
        vector = self.catalog.vector(event.item_id) if item is not None else None
        category = item.category_path if item is not None and item.category else None
        counted = self.priors_until is not None and event.timestamp <= self.priors_until
        # an event from before the visitor's current session was not co-visited with its recent items
        in_session = state.n_events == 0 or event.timestamp >= state.session_start
        if learn_stats and event.event_type != "dismiss" and not counted:
            self._learn_stats(state, event, category or event.page_category, covisit=in_session)
        consumable = event.event_type == "purchase" and item is not None and item.repurchasable and bool(category)
        suppressions = dict(state.purchase_categories) if consumable else None
        state.apply(event, self.settings, vector=vector, category=category)
        if suppressions is not None:
            self._keep_suppressions(state, suppressions)
        if learn_stats and event.event_type != "dismiss" and self.settings.weight_sknn > 0 and in_session:
            self.sessions.add(key, state.session_start, event.item_id)
        store.put(key, state)
        self.n_observed += 1
        self.n_clamped += clamped
        self.clock = at if self.clock is None else max(self.clock, at)
        self.last_applied_ms = at
        return True

    def learn_stats(self, event: Event, now_ms: int | None, contexts: StatsContexts) -> bool:
        """Learn only the shop-wide statistics of an event whose visitor state lives on another worker.

        The statistics feed's path: every worker counts every event of the shop, not only those of its own
        partitions. Learns exactly what `observe` would (same applied time and shop clock, priors skip,
        co-visitation window and weights, in-session rule, popularity, session index, login joins, duplicates),
        with the visitor's past taken from `contexts` (a bounded LRU of light contexts; see
        core/stats_context.py for where the two can differ: only at its bounds). False for a duplicate, and for
        an impression, which teaches the statistics nothing (so its duplicates cannot either).
        """
        if event.is_shown:
            return False
        at = self.applied_time(event, now_ms)
        if at != event.timestamp:
            event = dataclasses.replace(event, timestamp=at)
        key = event.visitor_key
        ctx = contexts.get(key)
        merged = False
        if event.user_id and event.session_id and event.session_id != key:
            anon = contexts.get(event.session_id)
            if anon is not None and not anon.has_user:
                ctx = ctx if ctx is not None else StatsContext()
                contexts.merge(ctx, anon)
                contexts.forget(event.session_id)
                merged = True
        if ctx is None:
            ctx = StatsContext()
        eid = event_hash(event.event_id)
        if ctx.has_seen(eid):
            contexts.n_duplicates += 1
            if merged:
                contexts.put(key, ctx)
            return False
        item = self.catalog.get(event.item_id)
        category = item.category_path if item is not None and item.category else None
        counted = self.priors_until is not None and at <= self.priors_until
        in_session = ctx.n_events == 0 or at >= ctx.session_start
        if event.event_type != "dismiss" and not counted:
            self._learn_stats(ctx, event, category or event.page_category, covisit=in_session)
        contexts.apply(ctx, event, eid, item.item_id if item is not None else None)
        if event.event_type != "dismiss" and self.settings.weight_sknn > 0 and in_session:
            self.sessions.add(key, ctx.session_start, event.item_id)
        contexts.put(key, ctx)
        contexts.n_learned += 1
        self.clock = at if self.clock is None else max(self.clock, at)
        return True

    def _keep_suppressions(self, state: VisitorState, before: dict[str, int]) -> None:
        """Undo what a consumable's purchase did to the category suppressions, and only that.

        `VisitorState.apply` marks the category of every purchase; a repurchasable item's category must
        stay open, so its mark goes. Popping the category would also end a suppression that an earlier
        purchase of a non-repurchasable item there started (and inserting the mark may have evicted
        another category at `owned_cap`), so the suppressions from before the event are restored
        instead: same categories, same start times, less those whose window the event's time has closed.
        """
        window = self.settings.purchase_suppress_days * MS_PER_DAY
        state.purchase_categories.clear()
        state.purchase_categories.update((c, t) for c, t in before.items() if state.last_seen - t < window)

    def _learn_stats(
        self, state: VisitorState | StatsContext, event: Event, category: str | None, covisit: bool = True
    ) -> None:
        """Co-visit the item with the visitor's recent items (closer in time counts more); count it.

        Reads only `state.history`, which a `StatsContext` keeps in the same format (its last `covis_window`).
        """
        recent: list[tuple[str, float]] = []
        taken = {event.item_id}
        window = state.history[-self.settings.covis_window :] if covisit else []
        for distance, h in enumerate(reversed(window), start=1):
            if h[2] in POSITIVE_CODES and h[0] not in taken:
                taken.add(h[0])
                recent.append((h[0], distance**-COVIS_DISTANCE_POWER))
        self.covis.observe(event.item_id, recent)
        self.popularity.add(
            event.item_id, category, abs(event_weight(self.settings, event.event_type)), int(event.timestamp)
        )

    # --- recommending ---

    def recommend(
        self,
        visitor_key: str,
        now_ms: int,
        k: int | None = None,
        page_category: str | None = None,
        exclude_interacted: bool = False,
        *,
        placement: str = placements.HOME,
        item: str | None = None,
        cart: Sequence[str] = (),
        category: str | None = None,
        exclude: Sequence[str] = (),
    ) -> list[RecommendedItem]:
        """The visitor's top `k` (default `list_size`) at time `now_ms` for a placement, each with a score and a reason.

        `placement` (contract "Placements"; core/placements.py): `home`, `product` (needs `item`: items related
        to it, never it), `cart` (complements of `cart`, else of the visitor's own cart; never a cart item) or
        `category` (needs `category`, a path: only its subtree). ValueError for an unknown placement or a
        missing or misplaced argument. `exclude` ids are never listed. Every rule applies in every placement.
        `page_category` scopes the list to that category and its siblings (and seeds cold start);
        without it, lists are scoped to the visitor's current page only when `scope_to_page_category`
        is set. `exclude_interacted` drops every item the visitor interacted with before. Items seen in the
        session take at most `max_seen_slots` of the visible slots (core/caps.py). The list is shorter than `k`
        only when fewer than `k` catalogue items pass the rules (see `_widen`).
        """
        state = self.store.get(visitor_key) or VisitorState()
        return self._recommend(state, now_ms, k, page_category, exclude_interacted, placement=placement, item=item,
                               cart=cart, category=category, exclude=exclude)

    def similar(self, item_id: str, now_ms: int, k: int | None = None) -> Recommendation:
        """Items related to `item_id` for nobody in particular (`GET /items/{item_id}/similar`): the product
        placement of a visitor without any history, so every rule that needs no visitor still applies."""
        items = self._recommend(VisitorState(), now_ms, k, placement=placements.PRODUCT, item=item_id)
        return Recommendation(items=render.describe(self.catalog, items), generated_at=int(now_ms),
                              model_version=self.model_version, placement=placements.PRODUCT)

    def _recommend(
        self,
        state: VisitorState,
        now_ms: int,
        k: int | None = None,
        page_category: str | None = None,
        exclude_interacted: bool = False,
        *,
        placement: str = placements.HOME,
        item: str | None = None,
        cart: Sequence[str] = (),
        category: str | None = None,
        exclude: Sequence[str] = (),
    ) -> list[RecommendedItem]:
        """`recommend` for a visitor state (a stored one, or an empty one for a list personal to nobody)."""
        s = self.settings
        place = placements.resolve(placement, state, now_ms, s, item=item, cart=cart, category=category,
                                   exclude=exclude)
        k = s.list_size if k is None else int(k)
        if k <= 0:
            return []
        scope = page_category
        if scope is None and place.category is None and s.scope_to_page_category and state.session_active(now_ms, s):
            scope = state.page_category  # a category page's own scope replaces the last page's
        ctx = RuleContext(s, self.catalog, state, now_ms, page_category=scope, exclude_interacted=exclude_interacted,
                          category=place.category, exclude=place.exclude)
        n = max(k, s.overfetch * k)
        excluded = excluded_ids(ctx)
        pool = gather(state, self.catalog, self.covis, self.popularity, now_ms, n, excluded,
                      place.category or page_category, s, s.covis_anchor_items, k, sessions=self.sessions,
                      recent=place.placement in placements.OWN_ITEMS_PLACEMENTS)
        placements.anchored_candidates(pool, place, self.covis, self.catalog, n, excluded)
        weights = placements.weights(place.placement, s)
        cap = ListCaps.of(s, k, self.catalog, state, now_ms)
        ids, scores, sources = self._score(pool, ctx, k, n, cap=cap, weights=weights)
        if len(ids) < k or not cap.honoured(ids):
            # filtering left too few, or too few outside a dominant category or the session's items: widen the
            # candidates. The caps alone never pay for more than the best-seller steps (ANN widening and the
            # catalogue sweep are for lists that would otherwise be short).
            verdicts: dict[str, float] = {}  # the rules' multiplier per candidate, kept across re-scores
            for step, _ in enumerate(self._widen(pool, ctx, place.category or scope, excluded, k, n, verdicts)):
                ids, scores, sources = self._score(pool, ctx, k, n, verdicts, cap=cap, weights=weights)
                if len(ids) >= k and (cap.honoured(ids) or step + 1 >= CAP_WIDEN_STEPS):
                    break
        if not ids:
            return []
        pool_size = cap.pool_size(ids, MMR_POOL_FACTOR * k)
        ids, scores, sources = ids[:pool_size], scores[:pool_size], sources[:pool_size]
        picks = mmr(scores, self.catalog.vectors(ids), k, s.mmr_lambda, keep=s.mmr_keep_top,
                    groups=cap.groups(ids), max_per_group=cap.per_category, capped_slots=cap.slots,
                    limited=cap.seen_mask(ids), max_limited=cap.max_seen)
        explainer = Explainer(self.settings, self.catalog, state, now_ms)
        return [
            RecommendedItem(ids[i], float(scores[i]), explainer.reason(ids[i], int(sources[i]), pool)) for i in picks
        ]

    def _widen(
        self,
        pool: CandidatePool,
        ctx: RuleContext,
        scope: str | None,
        exclude: Sequence[str],
        k: int,
        n: int,
        verdicts: dict[str, float],
    ) -> Iterator[None]:
        """Add fallback candidates to `pool` one step at a time (the caller re-scores after each step).

        Only reached when the rules left the list short, or (the first two steps only) when the candidates
        cannot fill the list within the category cap, so other lists cost nothing extra. Cheapest and
        most relevant first: the best-sellers shared by weight (the first step, as it always was, so the
        lists it fills are unchanged), then every best-seller list in full (a suppressed page or session
        category no longer takes the shop-wide list's slots), then embedding neighbours with a doubling
        budget, and last the catalogue sweep, after which every eligible item is a candidate or ranks below
        `MMR_POOL_FACTOR * k` eligible ones that are.
        """
        s, state, now_ms = self.settings, ctx.state, ctx.now_ms
        popular_candidates(pool, state, self.popularity, now_ms, scope, POPULAR_TOP_CAP, s)
        yield
        cap = self.popularity.top_cap
        popular_candidates(pool, state, self.popularity, now_ms, scope, cap, s, min_per_category=cap)
        yield
        if s.weight_ann > 0:
            budget = n
            for _ in range(ANN_WIDEN_STEPS):
                budget = min(ANN_WIDEN_GROWTH * budget, len(self.catalog))
                if not ann_candidates(pool, state, self.catalog, now_ms, budget, exclude, s, min_per_query=budget):
                    break
                yield
                if budget >= len(self.catalog):
                    break
        catalogue_candidates(pool, self.catalog, self.popularity, now_ms, exclude, MMR_POOL_FACTOR * k,
                             lambda ids: self._multipliers(ctx, ids, verdicts), context=scope or state.page_category)
        yield

    def _multipliers(self, ctx: RuleContext, ids: list[str], verdicts: dict[str, float] | None) -> np.ndarray:
        """The rules' multiplier per id; with `verdicts`, each id is judged once per list.

        A rule's answer for an item depends only on the item and the context, so the widening steps of a
        short list, which re-score a growing pool, need not judge the same candidates again.
        """
        if verdicts is None:
            return apply_rules(self.rules, ctx, Batch.of(ids, self.catalog))
        new = [i for i in ids if i not in verdicts]
        if new:
            verdicts.update(zip(new, apply_rules(self.rules, ctx, Batch.of(new, self.catalog)).tolist(), strict=True))
        return np.fromiter((verdicts[i] for i in ids), dtype=np.float64, count=len(ids))

    def _score(
        self,
        pool: CandidatePool,
        ctx: RuleContext,
        k: int,
        n: int,
        verdicts: dict[str, float] | None = None,
        cap: ListCaps | None = None,
        weights: np.ndarray | None = None,
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Blend the sources, then apply the rules best-first in chunks of `n` until `k` survive.

        Returns the survivors in canonical order (score, then id) with their scores and strongest source.
        Rules re-weight scores, so survivors of a chunk are re-sorted; chunks keep the cost of the rules
        proportional to the list, not to the number of candidates. `verdicts`: see `_multipliers`. With a
        category `cap`, chunks go on until the survivors can also fill the list within the cap. `weights`: the
        placement's blend weights (None: the settings').
        """
        if not pool.ids:
            return [], np.zeros(0), np.zeros(0, dtype=np.int64)
        blended, strongest = blend(pool, self.settings, weights)
        order = stable_order(pool.ids, blended)
        kept_ids: list[str] = []
        kept_scores: list[np.ndarray] = []
        kept_sources: list[np.ndarray] = []
        for start in range(0, len(order), n):
            chunk = order[start : start + n]
            ids = [pool.ids[i] for i in chunk]
            mult = self._multipliers(ctx, ids, verdicts)
            keep = np.flatnonzero(mult > 0)
            kept_ids.extend(ids[i] for i in keep)
            kept_scores.append((blended[chunk] * mult)[keep])
            kept_sources.append(strongest[chunk][keep])
            if len(kept_ids) >= MMR_POOL_FACTOR * k and (cap is None or cap.honoured(kept_ids)):
                break
        scores = np.concatenate(kept_scores)
        sources = np.concatenate(kept_sources)
        final = stable_order(kept_ids, scores)
        return [kept_ids[i] for i in final], scores[final], sources[final]

    def recommendation(
        self,
        visitor_key: str,
        now_ms: int,
        trigger: Event | None = None,
        k: int | None = None,
        page_category: str | None = None,
        exclude_interacted: bool = False,
        *,
        placement: str = placements.HOME,
        item: str | None = None,
        cart: Sequence[str] = (),
        category: str | None = None,
        exclude: Sequence[str] = (),
    ) -> Recommendation:
        """The contract record for one visitor: the list plus user and session ids from the state.

        `generated_at` is `now_ms` (the core has no clock); the worker may stamp its own publication time.
        The placement arguments are `recommend`'s. The item of a triggering view or add-to-cart is on the
        visitor's screen, so it is never in the list it triggers (`TRIGGER_EXCLUDED_TYPES`).
        """
        if trigger is not None and trigger.event_type in TRIGGER_EXCLUDED_TYPES:
            exclude = (*exclude, trigger.item_id)
        items = self.recommend(
            visitor_key, now_ms, k=k, page_category=page_category, exclude_interacted=exclude_interacted,
            placement=placement, item=item, cart=cart, category=category, exclude=exclude,
        )
        state = self.store.get(visitor_key)
        user_id = state.user_id if state is not None else (trigger.user_id if trigger is not None else None)
        session_id = state.session_id if state is not None else (trigger.session_id if trigger is not None else None)
        if state is None and trigger is None:
            session_id = visitor_key
        return Recommendation(
            items=render.describe(self.catalog, items),
            generated_at=int(now_ms),
            user_id=user_id,
            session_id=session_id,
            trigger_event_id=trigger.event_id if trigger is not None else None,
            model_version=self.model_version,
            placement=placement,
        )

    def process(self, event: Event, now_ms: int | None = None) -> Recommendation | None:
        """Observe the event, then the visitor's new list at the time it was applied; None for a duplicate, and
        for an impression: the shop just showed a list, and answering each impression with a new one would
        replace the list on screen (and loop with a shop that reports every list it shows)."""
        if not self.observe(event, now_ms=now_ms) or event.is_shown:
            return None
        at = self.last_applied_ms if self.last_applied_ms is not None else int(event.timestamp)
        return self.recommendation(event.visitor_key, at, trigger=event)

    def visitor(self, visitor_key: str) -> VisitorState | None:
        """The stored state of a visitor (None when unknown)."""
        return self.store.get(visitor_key)
