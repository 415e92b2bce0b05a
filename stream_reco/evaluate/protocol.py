"""The prequential (test-then-learn) protocol of docs/evaluation.md, shared by every method.

1. The log is sorted by time (stable) — `loaders.load_log` does it.
2. The first `train_fraction` of events is the training part; every method `fit`s on it.
3. The rest is replayed in time order. For each target event every method is asked for the visitor's
   top-K list *before* it learns the event, and the rank of the event's item is recorded; then every
   method `learn`s the event (non-targets are only learned).
4. Two variants in the same pass (their learning is identical, only the question differs):
   - all:   every target, lists as the method gives them;
   - novel: targets whose item the visitor has not interacted with before (train or test, any event
            kind), with the visitor's earlier items removed from every method's list.
5. Each variant is also split into visitors seen in the training part and new ones.

Our method is wrapped as `StreamRecoMethod` (train an artifact on the training part, load it into the core
`Recommender`, replay the training part through `observe`), so it answers through the same interface as
the baselines. `QualityTracker` watches our lists for coverage, personalisation, diversity and rule
violations.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from stream_reco.core.events import CatalogItem, Event
from stream_reco.evaluate.baselines import Method
from stream_reco.evaluate.loaders import LogRecord
from stream_reco.evaluate.metrics import RankAccumulator, personalisation, rank_of
from stream_reco.settings import Settings

VARIANTS: tuple[str, ...] = ("all", "novel")
GROUPS: tuple[str, ...] = ("overall", "seen", "new")
OURS = "stream_reco"


class ProtocolError(ValueError):
    """The log cannot be split into a non-empty training and test part."""


def split(records: Sequence[LogRecord], train_fraction: float) -> tuple[Sequence[LogRecord], Sequence[LogRecord]]:
    """The first `train_fraction` of the (time-sorted) events, and the rest."""
    if not 0.0 < train_fraction < 1.0:
        raise ProtocolError(f"train fraction must be within (0, 1), got {train_fraction}")
    cut = int(len(records) * train_fraction)
    return records[:cut], records[cut:]


class Interactions:
    """Items each visitor has touched so far (any event kind), joined on login like the core does."""

    def __init__(self) -> None:
        self.items: defaultdict[str, set[str]] = defaultdict(set)

    def add(self, event: Event) -> None:
        key = event.visitor_key
        if event.user_id is not None and event.session_id is not None and event.session_id in self.items:
            # an anonymous session that logs in: its history becomes the user's
            self.items[key] |= self.items.pop(event.session_id)
        self.items[key].add(event.item_id)

    def of(self, visitor: str) -> AbstractSet[str]:
        return self.items.get(visitor, frozenset())


@dataclass
class MethodResult:
    """Ranks of one method per variant and visitor group, plus its timings."""

    name: str
    k: int
    ranks: dict[str, dict[str, RankAccumulator]] = field(default_factory=dict)
    fit_s: float = 0.0
    test_s: float = 0.0
    requests: int = 0

    def __post_init__(self) -> None:
        if not self.ranks:
            self.ranks = {v: {g: RankAccumulator(self.k) for g in GROUPS} for v in VARIANTS}

    def add(self, variant: str, seen: bool, rank: int | None) -> None:
        groups = self.ranks[variant]
        groups["overall"].add(rank)
        groups["seen" if seen else "new"].add(rank)


# A list observer: (method name, variant, record being predicted, list shown)
ListObserver = Callable[[str, str, LogRecord, list[str]], None]


@dataclass
class ProtocolResult:
    methods: dict[str, MethodResult]
    n_events: int
    n_train: int
    n_test: int
    train_visitors: int
    elapsed_s: float


def run_protocol(
    records: Sequence[LogRecord],
    methods: Sequence[Method],
    *,
    k: int = 20,
    train_fraction: float = 0.8,
    observers: Sequence[ListObserver] = (),
    learn_observers: Sequence[Callable[[LogRecord], None]] = (),
    progress: bool = True,
    desc: str = "test-then-learn",
) -> ProtocolResult:
    """Fit every method on the training part, then test-then-learn over the rest (both variants at once)."""
    started = time.perf_counter()
    train, test = split(records, train_fraction)
    if not train or not test:
        raise ProtocolError(f"{len(records)} events are too few to split into a training and a test part")
    interactions = Interactions()
    for record in train:
        interactions.add(record.event)
        for observe in learn_observers:
            observe(record)
    train_visitors = {r.event.visitor_key for r in train}
    results = {m.name: MethodResult(m.name, k) for m in methods}
    for method in methods:
        t0 = time.perf_counter()
        method.fit(train)
        results[method.name].fit_s = time.perf_counter() - t0

    clock = time.perf_counter
    for record in tqdm(test, desc=desc, unit="ev", disable=not progress, mininterval=1.0):
        event = record.event
        visitor = event.visitor_key
        if record.target:
            seen = visitor in train_visitors
            earlier = interactions.of(visitor)
            novel = event.item_id not in earlier
            for method in methods:
                result = results[method.name]
                t0 = clock()
                shown = method.recommend(visitor, event.timestamp, k)
                result.add("all", seen, rank_of(event.item_id, shown))
                if novel:
                    shown_novel = method.recommend(visitor, event.timestamp, k, earlier)
                    result.add("novel", seen, rank_of(event.item_id, shown_novel))
                result.test_s += clock() - t0
                result.requests += 2 if novel else 1
                for observe in observers:
                    observe(method.name, "all", record, shown)
                    if novel:
                        observe(method.name, "novel", record, shown_novel)
        for method in methods:
            t0 = clock()
            method.learn(record)
            results[method.name].test_s += clock() - t0
        for observe_learn in learn_observers:
            observe_learn(record)
        interactions.add(event)
    return ProtocolResult(
        methods=results,
        n_events=len(records),
        n_train=len(train),
        n_test=len(test),
        train_visitors=len(train_visitors),
        elapsed_s=time.perf_counter() - started,
    )


class QualityTracker:
    """Coverage, personalisation, intra-list diversity and rule violations of one method's lists.

    Rules (docs/evaluation.md): never show an item the visitor dismissed, an item that is out of stock or
    deleted, or an item the visitor bought that is not repurchasable. Items absent from the catalog follow
    the contract's defaults (in stock, not repurchasable). It learns dismissals and purchases from the same
    stream as the methods (`learn` is a protocol learn-observer) and checks every list (`observe`).
    """

    def __init__(self, method: str, catalog: Sequence[CatalogItem], n_known_items: int, k: int,
                 sample_visitors: int, seed: int) -> None:
        self.method = method
        self.catalog = {item.item_id: item for item in catalog}
        self.n_known_items = max(1, n_known_items)
        self.k = k
        self.sample_visitors = sample_visitors
        self.seed = seed
        self.dismissed: defaultdict[str, set[str]] = defaultdict(set)
        self.purchased: defaultdict[str, set[str]] = defaultdict(set)
        self.shown: set[str] = set()
        self.last_list: dict[str, list[str]] = {}
        self.lists = 0
        self.categories_sum = 0
        self.categorised_lists = 0
        self.violations: dict[str, int] = {"dismissed": 0, "out_of_stock": 0, "purchased": 0}
        self.examples: list[dict[str, Any]] = []

    def learn(self, record: LogRecord) -> None:
        event = record.event
        key = event.visitor_key
        if event.user_id is not None and event.session_id is not None:
            for sets in (self.dismissed, self.purchased):
                if event.session_id in sets:
                    sets[key] |= sets.pop(event.session_id)
        if event.event_type == "dismiss":
            self.dismissed[key].add(event.item_id)
        elif event.event_type == "purchase":
            self.purchased[key].add(event.item_id)

    def observe(self, method: str, variant: str, record: LogRecord, shown: list[str]) -> None:
        if method != self.method:
            return
        visitor = record.event.visitor_key
        self.lists += 1
        self.shown.update(shown)
        if variant == "all":
            self.last_list[visitor] = shown
        dismissed = self.dismissed.get(visitor, ())
        purchased = self.purchased.get(visitor, ())
        categories: set[str] = set()
        for item_id in shown:
            item = self.catalog.get(item_id)
            if item is not None and item.category:
                categories.add(item.category_path)
            broken = None
            if item_id in dismissed:
                broken = "dismissed"
            elif item is not None and not item.recommendable:
                broken = "out_of_stock"
            elif item_id in purchased and not (item is not None and item.repurchasable):
                broken = "purchased"
            if broken:
                self.violations[broken] += 1
                if len(self.examples) < 5:
                    self.examples.append({"rule": broken, "visitor": visitor, "item_id": item_id,
                                          "timestamp": record.event.timestamp})
        if categories:
            self.categories_sum += len(categories)
            self.categorised_lists += 1

    def summary(self) -> dict[str, Any]:
        visitors = sorted(self.last_list)
        rng = random.Random(self.seed)
        sample = rng.sample(visitors, min(self.sample_visitors, len(visitors)))
        return {
            "lists": self.lists,
            "catalog_coverage": round(len(self.shown) / self.n_known_items, 6),
            "personalisation": round(personalisation([self.last_list[v] for v in sample], self.k), 6),
            "personalisation_visitors": len(sample),
            "intra_list_diversity": (round(self.categories_sum / self.categorised_lists, 4)
                                     if self.categorised_lists else None),
            "violations": {**self.violations, "total": sum(self.violations.values())},
            "violation_examples": self.examples,
        }


class StreamRecoMethod:
    """Our core `Recommender` behind the protocol's interface.

    `fit` trains an artifact on the training part with `stream_reco.model.train.train`, loads it, and
    replays the training part through `observe`, so visitor state and statistics are warm when the test
    starts, exactly as a worker that consumed the same history would be.

    Catalogue. With an explicit catalogue (`catalog_upfront`, e.g. a shop's catalog.jsonl) every item is
    upserted before training, as the catalog topic would have announced it. A catalogue derived from the
    log itself (the shared datasets) is announced item by item when the item first appears in the stream,
    after the list for that event was asked for: otherwise our method alone would know items the log has
    not shown yet. Items the dataset says nothing about get a bare catalogue entry (the core recommends only
    items the catalogue describes).

    No `page_category` is passed when asking: the target event's page is the target item's own category,
    which would leak the answer; the core still knows the pages of the visitor's earlier events.
    """

    name = OURS

    def __init__(
        self,
        settings: Settings,
        catalog: Sequence[CatalogItem],
        *,
        catalog_upfront: bool = False,
        progress: bool = True,
    ) -> None:
        self.settings = settings
        self.catalog = {item.item_id: item for item in catalog}
        self.catalog_upfront = catalog_upfront
        self.progress = progress
        self.recommender: Any = None
        self.artifact: Any = None
        self.train_s = 0.0
        self._announced: set[str] = set()

    def _item(self, item_id: str) -> CatalogItem:
        return self.catalog.get(item_id) or CatalogItem(item_id=item_id)

    def _announce(self, item_id: str) -> None:
        if item_id not in self._announced:
            self._announced.add(item_id)
            self.recommender.upsert_item(self._item(item_id))

    def fit(self, records: Sequence[LogRecord]) -> None:
        from stream_reco.core.recommender import Recommender
        from stream_reco.model.train import train

        if self.catalog_upfront:
            known = list(self.catalog.values())
        else:
            seen: dict[str, None] = dict.fromkeys(r.event.item_id for r in records)
            known = [self._item(item_id) for item_id in seen]
        t0 = time.perf_counter()
        self.artifact = train(records, known, self.settings, progress=self.progress)
        self.train_s = time.perf_counter() - t0
        self.recommender = Recommender(self.settings)
        for item in known:
            self._announce(item.item_id)
        self.recommender.load_model(self.artifact)
        for record in tqdm(records, desc="warm up stream_reco", unit="ev", disable=not self.progress,
                           mininterval=1.0):
            self.recommender.observe(record.event)

    def learn(self, record: LogRecord) -> None:
        self._announce(record.event.item_id)
        self.recommender.observe(record.event)

    def recommend(self, visitor: str, now_ms: int, k: int, exclude: AbstractSet[str] | None = None) -> list[str]:
        if not exclude:
            return [r.item_id for r in self.recommender.recommend(visitor, now_ms, k=k)]
        # the core excludes what it remembers of the visitor; the protocol's set is authoritative, so ask for
        # a little more and filter what the core's bounded history may have forgotten
        extra = min(len(exclude), k)
        items = self.recommender.recommend(visitor, now_ms, k=k + extra, exclude_interacted=True)
        return [r.item_id for r in items if r.item_id not in exclude][:k]
