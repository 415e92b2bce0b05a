"""A deterministic synthetic shop: a category tree, a catalog, visitors with latent tastes, and their events.

Why synthetic data at all: tests, the demo and the benchmarks need a shop whose structure is known, so a
recommender can be checked for *beating popularity for the right reason* — visitors here repeatedly browse
within one to three taste categories and near their own price band, so co-viewed items cluster and a
personal model has signal that global popularity lacks. Everything is drawn from one seeded
``numpy.random.Generator``: the same size and seed give byte-identical files on every machine.

What the simulation models:

* a three-level category tree with readable names (``Furniture/Living room/Sofas``); larger sizes add
  variants of the hand-written leaves (``Compact sofas``, ``Premium sofas 2``) so names stay readable;
* items with a brand, series and colour, prices log-normal around a per-leaf median, a Zipf popularity
  inside each leaf;
* visitors who prefer 1-3 leaves (often siblings), a price band and a favourite brand slot; their sessions
  mostly stay in one taste leaf, sometimes wander into a sibling leaf or a random popular one;
* views that lead to add-to-carts (more likely near the visitor's price band), purchases at the end of a
  session, dismissals (more likely far from the band, with a reason);
* anonymous visitors (``session_id`` only) and registered ones who arrive anonymously and log in during their
  first session: from then on their events carry both ``user_id`` and that ``session_id``, which is the
  contract's signal to join the session's history to the user;
* stock that changes: some items go out of stock for a while and a few are discontinued. The initial
  catalog goes to ``catalog.jsonl``; every later change is a full contract item with its ``updated_at`` in
  ``catalog_updates.jsonl`` (time-ordered). Visitors never cart or buy an item that is out of stock at
  that moment, and never see a discontinued one.

Files written by :func:`write_shop` (``stream-reco simulate --out DIR``):

* ``DIR/catalog.jsonl`` — contract items, the catalog as of the first event;
* ``DIR/events.jsonl`` — contract events in time order;
* ``DIR/catalog_updates.jsonl`` — contract items, time-ordered stock changes and deletions;
* ``DIR/manifest.json`` — size, seed, counts and the time range (no wall-clock values, so it is
  byte-identical too).

The large size never holds the events in memory: sessions are generated in start-time order and a small
heap holds only the events of sessions still running, which are flushed as soon as no later session can
precede them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson

from stream_reco.settings import Settings

# A fixed origin (2025-11-01T00:00:00Z) so the output never depends on the clock.
SIM_START_MS = 1_761_955_200_000
DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# Output file names inside --out DIR (the first two are fixed by the contract).
CATALOG_FILE = "catalog.jsonl"
EVENTS_FILE = "events.jsonl"
UPDATES_FILE = "catalog_updates.jsonl"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1

# Sizes at or above this many visitors get a progress bar by default.
PROGRESS_MIN_VISITORS = 50_000
PROGRESS_UPDATE_EVERY = 2_000  # sessions between progress bar updates (tqdm overhead matters at 1 M)


@dataclass(frozen=True)
class SizeSpec:
    """How big a simulated shop is. Events per visitor: about (1 + extra_sessions) * 5.7."""

    items: int
    visitors: int
    leaves: int  # leaf categories (the hand-written tree has ~120; more are generated variants)
    days: int
    extra_sessions: float  # mean sessions per visitor beyond the first


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(items=200, visitors=50, leaves=20, days=7, extra_sessions=6.5),
    "small": SizeSpec(items=2_000, visitors=1_000, leaves=100, days=14, extra_sessions=4.2),
    "medium": SizeSpec(items=100_000, visitors=100_000, leaves=2_000, days=30, extra_sessions=1.2),
    "large": SizeSpec(items=1_000_000, visitors=1_000_000, leaves=10_000, days=30, extra_sessions=0.8),
}


@dataclass(frozen=True)
class Behaviour:
    """The knobs of visitor behaviour, named so tests and docs can refer to them."""

    anonymous_share: float = 0.3  # visitors who never log in
    login_share: float = 0.35  # of registered visitors: first session starts anonymous, logs in mid-session
    taste_counts: tuple[int, ...] = (1, 2, 3)
    taste_count_p: tuple[float, ...] = (0.4, 0.4, 0.2)
    taste_weights: tuple[float, ...] = (0.6, 0.3, 0.1)  # how often each taste leaf is a session's focus
    taste_sibling_p: float = 0.6  # an extra taste leaf is a sibling (same parent) of the first one
    explore_p: float = 0.12  # a session's focus is a random popular leaf, not a taste
    sibling_session_p: float = 0.25  # a session also browses one sibling leaf of its focus
    sibling_view_share: float = 0.2  # share of such a session's views in the sibling leaf
    jump_view_p: float = 0.08  # a view of a popular item anywhere in the shop (home page, promotions)
    mean_views: float = 5.0  # views per session (1 + geometric)
    max_views: int = 30
    mean_gap_s: float = 40.0  # time between a visitor's consecutive actions
    cart_p: float = 0.12  # add-to-cart chance after a view of an item right in the price band
    dismiss_base_p: float = 0.015
    dismiss_far_p: float = 0.06  # extra dismissal chance for an item far outside the price band
    purchase_p: float = 0.5  # a session with a non-empty cart ends in a purchase
    page_category_p: float = 0.85  # views made from a category page (others: search, home page)
    out_of_stock_view_factor: float = 0.3  # out-of-stock items are viewed less
    price_band_sd: float = 0.45  # spread of visitors' preferred log-price offset from a leaf's median
    price_tolerance: float = 0.35  # width of a visitor's price band, in log-price
    brand_boost: float = 2.5  # view weight multiplier for the visitor's favourite brand slot
    leaf_zipf: float = 0.8  # popularity of leaves
    item_zipf: float = 0.9  # popularity of items inside a leaf
    leaf_price_sd: float = 0.4  # log-normal spread of leaf medians around the top category's median
    outage_share: float = 0.05  # items that go out of stock once during the log
    outage_mean_days: float = 2.0
    discontinued_share: float = 0.005  # items deleted during the log
    activity_sd: float = 0.7  # log-normal spread of visitors' activity (heavy and light users)


BEHAVIOUR = Behaviour()
DISMISS_REASONS = ("not_interested", "too_expensive", "already_owned")

# Relative traffic per hour of day (UTC): quiet nights, a lunch bump and an evening peak.
HOURLY_TRAFFIC = (
    0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 0.9, 1.0, 1.0, 1.1,
    1.3, 1.2, 1.0, 1.0, 1.1, 1.3, 1.6, 1.9, 2.0, 1.7, 1.1, 0.6,
)  # fmt: skip


@dataclass(frozen=True)
class TopCategory:
    name: str
    median_price: float
    price_sd: float  # log-normal spread of item prices inside a leaf
    repurchasable: bool
    brands: tuple[str, ...]
    mids: dict[str, tuple[str, ...]]


# The hand-written tree: top level -> mid level -> leaves. Brands are invented.
TREE: tuple[TopCategory, ...] = (
    TopCategory("Furniture", 260.0, 0.45, False, ("Nordhus", "Birchwood", "Lindqvist", "Oakhaven", "Sundby"), {
        "Living room": ("Sofas", "Armchairs", "Coffee tables", "TV benches", "Bookcases"),
        "Bedroom": ("Beds", "Mattresses", "Wardrobes", "Bedside tables"),
        "Dining": ("Dining tables", "Dining chairs", "Sideboards"),
        "Home office": ("Desks", "Office chairs", "Filing cabinets"),
    }),
    TopCategory("Kitchen", 55.0, 0.5, False, ("Culina", "Brightway", "Ferro", "Maison Roux", "Kestrel"), {
        "Appliances": ("Stand mixers", "Blenders", "Kettles", "Toasters", "Coffee machines"),
        "Cookware": ("Frying pans", "Saucepans", "Casseroles", "Woks"),
        "Knives": ("Chef's knives", "Knife sets", "Knife sharpeners"),
        "Tableware": ("Plates", "Glasses", "Cutlery sets", "Mugs"),
    }),
    TopCategory("Electronics", 140.0, 0.6, False, ("Voltra", "Sonique", "Pixelon", "Arcwave", "Nimbus"), {
        "Audio": ("Headphones", "Bluetooth speakers", "Soundbars", "Turntables"),
        "Computers": ("Laptops", "Monitors", "Keyboards", "Mice"),
        "Phones": ("Smartphones", "Phone cases", "Chargers"),
        "TV & video": ("Televisions", "Projectors", "Streaming sticks"),
    }),
    TopCategory("Garden", 35.0, 0.55, False, ("Greenthumb", "Hedgerow", "Terra", "Willow & Co"), {
        "Tools": ("Spades", "Pruning shears", "Garden hoses", "Wheelbarrows"),
        "Outdoor furniture": ("Garden chairs", "Parasols", "Sun loungers"),
        "Plants & seeds": ("Flower seeds", "Bulbs", "Potting soil"),
    }),
    TopCategory("Sports", 45.0, 0.55, False, ("Stridex", "Peakline", "Velo", "Kinetic"), {
        "Running": ("Running shoes", "Running jackets", "Sports watches"),
        "Cycling": ("Bikes", "Bike helmets", "Bike lights"),
        "Fitness": ("Yoga mats", "Dumbbells", "Resistance bands"),
    }),
    TopCategory("Fashion", 40.0, 0.5, False, ("Atelier Nine", "Harbour", "Loom", "Vantage"), {
        "Women": ("Dresses", "Jeans", "Coats", "Handbags"),
        "Men": ("Shirts", "Trousers", "Jackets", "Sneakers"),
        "Accessories": ("Scarves", "Belts", "Sunglasses"),
    }),
    TopCategory("Grocery", 6.0, 0.4, True, ("Good Harvest", "Roastery", "Pantry Co", "Olivia"), {
        "Coffee & tea": ("Coffee beans", "Ground coffee", "Tea"),
        "Pantry": ("Pasta", "Olive oil", "Spices"),
        "Snacks": ("Chocolate", "Crisps", "Nuts"),
    }),
    TopCategory("Beauty", 15.0, 0.45, True, ("Lumen", "Petal", "Aqua Pura"), {
        "Skin care": ("Moisturisers", "Cleansers", "Sun cream"),
        "Hair care": ("Shampoo", "Conditioner", "Hair oils"),
    }),
    TopCategory("Toys", 25.0, 0.5, False, ("Brickle", "Playwise", "Tumble"), {
        "Building": ("Building sets", "Marble runs"),
        "Games": ("Board games", "Puzzles", "Card games"),
        "Outdoor play": ("Scooters", "Trampolines"),
    }),
    TopCategory("Books", 14.0, 0.3, False, ("Quill Press", "Lantern Books", "Meridian"), {
        "Fiction": ("Crime novels", "Science fiction", "Romance novels"),
        "Non-fiction": ("Cookbooks", "Biographies", "Travel guides"),
    }),
)  # fmt: skip

# Leaf names whose singular is not the naive one (used in titles).
SINGULAR = {
    "Jeans": "jeans", "Trousers": "trousers", "Sunglasses": "sunglasses", "Science fiction": "science fiction novel",
    "Tea": "tea", "Pasta": "pasta", "Olive oil": "olive oil", "Spices": "spice mix", "Chocolate": "chocolate",
    "Potting soil": "potting soil", "Sun cream": "sun cream", "Shampoo": "shampoo", "Conditioner": "conditioner",
    "Ground coffee": "ground coffee", "Coffee beans": "coffee beans", "Flower seeds": "flower seeds",
    "Glasses": "glass set", "Mice": "mouse", "Chef's knives": "chef's knife", "Knife sets": "knife set",
}  # fmt: skip

# Extra leaves for the larger sizes are variants of the hand-written ones.
VARIANT_WORDS = (
    "Compact", "Premium", "Classic", "Modern", "Vintage", "Eco", "Pro", "Travel", "Kids'", "Smart",
    "Outdoor", "Mini", "Deluxe", "Budget", "Designer", "Nordic",
)  # fmt: skip
SERIES = (
    "Oslo", "Linnea", "Aurora", "Fjord", "Ember", "Harlow", "Juniper", "Kodiak", "Lumi", "Marlow", "Nova",
    "Orla", "Pico", "Quinta", "Rowan", "Sable", "Tova", "Umber", "Vale", "Wren", "Yara", "Zephyr", "Astra",
    "Bramble", "Cove", "Dune", "Elm", "Flint", "Garnet", "Haze",
)  # fmt: skip
COLOURS = ("grey", "black", "white", "oak", "navy", "green", "red", "beige", "blue", "yellow", "pink", "silver")
MAX_MODEL_NUMBER = 900  # titles carry a model number 100..999 so they read like real listings


def _singular(leaf: str) -> str:
    if leaf in SINGULAR:
        return SINGULAR[leaf]
    low = leaf.lower()
    for plural, single in (("ives", "ife"), ("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("xes", "x")):
        if low.endswith(plural):
            return low[: -len(plural)] + single
    return low[:-1] if low.endswith("s") and not low.endswith("ss") else low


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit ints, so distinct inputs give distinct ids."""
    x &= 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _csr(groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Members of each group as (order, offsets): members of g are order[offsets[g]:offsets[g + 1]]."""
    order = np.argsort(groups, kind="stable").astype(np.int64)
    offsets = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(groups, minlength=n_groups), out=offsets[1:])
    return order, offsets


@dataclass
class SimulationResult:
    """What :func:`write_shop` wrote."""

    out_dir: Path
    size: str
    seed: int
    items: int
    events: int
    catalog_updates: int
    elapsed_s: float
    counts_by_type: dict[str, int]

    @property
    def catalog_path(self) -> Path:
        return self.out_dir / CATALOG_FILE

    @property
    def events_path(self) -> Path:
        return self.out_dir / EVENTS_FILE

    @property
    def updates_path(self) -> Path:
        return self.out_dir / UPDATES_FILE


class ShopSimulator:
    """The structure of one synthetic shop (tree, items, visitors, sessions) and iterators over its documents.

    Construction draws every structural choice from ``seed``; :meth:`events` uses a second generator
    derived from the same seed, so catalog, updates and events can be read in any order, any number of
    times, and always come out the same.

    >>> sim = ShopSimulator("tiny", seed=7)
    >>> next(sim.catalog())["title"]
    'Vantage Haze trousers 948, black'
    """

    def __init__(self, size: str = "tiny", seed: int = 42, behaviour: Behaviour = BEHAVIOUR) -> None:
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
        self.size = size
        self.seed = int(seed)
        self.spec = SIZES[size]
        self.b = behaviour
        rng = np.random.default_rng([self.seed, 0])
        self._build_tree(rng)
        self._build_items(rng)
        self._build_visitors(rng)
        self._build_sessions(rng)
        self._build_stock(rng)
        self._prepare_sampling()

    # --- structure -------------------------------------------------------------------------------------

    def _build_tree(self, rng: np.random.Generator) -> None:
        base: list[tuple[int, str, str]] = []  # (top index, mid name, leaf name)
        for t, top in enumerate(TREE):
            for mid, leaves in top.mids.items():
                base.extend((t, mid, leaf) for leaf in leaves)
        n = self.spec.leaves
        if n <= len(base):  # a subset of the hand-written leaves, in tree order
            chosen = np.sort(rng.choice(len(base), size=n, replace=False))
            specs = [(*base[i], base[i][2], _singular(base[i][2])) for i in chosen]
        else:  # every hand-written leaf, then variants of them round-robin
            specs = [(t, mid, leaf, leaf, _singular(leaf)) for t, mid, leaf in base]
            for k in range(n - len(base)):
                t, mid, leaf = base[k % len(base)]
                v = k // len(base)
                word = VARIANT_WORDS[v % len(VARIANT_WORDS)]
                suffix = f" {v // len(VARIANT_WORDS) + 1}" if v >= len(VARIANT_WORDS) else ""
                specs.append((t, mid, leaf, f"{word} {leaf.lower()}{suffix}", f"{word.lower()} {_singular(leaf)}"))
        mids: dict[tuple[int, str], int] = {}
        self.leaf_top = np.array([s[0] for s in specs], dtype=np.int64)
        self.leaf_mid = np.array([mids.setdefault((s[0], s[1]), len(mids)) for s in specs], dtype=np.int64)
        self.leaf_category: list[list[str]] = [[TREE[s[0]].name, s[1], s[3]] for s in specs]
        self.leaf_path: list[str] = ["/".join(c) for c in self.leaf_category]
        self.leaf_noun: list[str] = [s[4] for s in specs]
        self.n_leaves = len(specs)
        self.mid_leaves, self.mid_off = _csr(self.leaf_mid, len(mids))
        rank = rng.permutation(self.n_leaves)
        pop = 1.0 / (rank + 1.0) ** self.b.leaf_zipf
        self.leaf_pop = pop / pop.sum()
        top_median = np.array([TREE[t].median_price for t in self.leaf_top])
        self.leaf_median = top_median * rng.lognormal(0.0, self.b.leaf_price_sd, self.n_leaves)

    def _build_items(self, rng: np.random.Generator) -> None:
        n = self.spec.items
        # every leaf gets at least one item; the rest follow leaf popularity (flattened a little)
        size_w = np.sqrt(self.leaf_pop)
        rest = rng.choice(self.n_leaves, size=max(n - self.n_leaves, 0), p=size_w / size_w.sum())
        leaf = np.concatenate([np.arange(min(n, self.n_leaves)), rest])
        self.item_leaf = rng.permutation(leaf).astype(np.int64)  # ids do not give the category away
        top_sd = np.array([t.price_sd for t in TREE])[self.leaf_top[self.item_leaf]]
        raw = self.leaf_median[self.item_leaf] * np.exp(rng.normal(0.0, 1.0, n) * top_sd)
        self.item_price = np.where(raw >= 5.0, np.round(raw) - 0.01, np.round(raw, 1) + 0.09).round(2)
        self.item_price = np.maximum(self.item_price, 0.49)
        self.item_lz = np.log(self.item_price) - np.log(self.leaf_median[self.item_leaf])
        n_brands = np.array([len(t.brands) for t in TREE])[self.leaf_top[self.item_leaf]]
        self.item_brand = (rng.random(n) * n_brands).astype(np.int64)
        self.item_series = rng.integers(0, len(SERIES), n)
        self.item_colour = rng.integers(0, len(COLOURS), n)
        self.item_model = rng.integers(100, 100 + MAX_MODEL_NUMBER, n)
        self.leaf_items, self.leaf_off = _csr(self.item_leaf, self.n_leaves)
        pop = np.empty(n)
        for lf in range(self.n_leaves):  # Zipf popularity inside each leaf, random order of ranks
            members = self.leaf_items[self.leaf_off[lf] : self.leaf_off[lf + 1]]
            pop[members] = 1.0 / (rng.permutation(len(members)) + 1.0) ** self.b.item_zipf
        self.item_pop = pop
        self._id_width = len(str(max(n - 1, 1)))

    def _build_visitors(self, rng: np.random.Generator) -> None:
        n, b = self.spec.visitors, self.b
        self.v_anonymous = rng.random(n) < b.anonymous_share
        self.v_login = ~self.v_anonymous & (rng.random(n) < b.login_share)
        self.v_price = rng.normal(0.0, b.price_band_sd, n)
        self.v_brand = rng.integers(0, 1 << 16, n)  # favourite brand slot (modulo the top's brand count)
        k = rng.choice(b.taste_counts, size=n, p=b.taste_count_p)
        first = rng.choice(self.n_leaves, size=n, p=self.leaf_pop)
        tastes = np.full((n, max(b.taste_counts)), -1, dtype=np.int64)
        tastes[:, 0] = first
        extra_sibling = rng.random(tastes.shape) < b.taste_sibling_p
        extra_pick = rng.random(tastes.shape)
        extra_popular = rng.choice(self.n_leaves, size=tastes.shape, p=self.leaf_pop)
        for j in range(1, tastes.shape[1]):
            mid = self.leaf_mid[first]
            lo, hi = self.mid_off[mid], self.mid_off[mid + 1]
            sibling = self.mid_leaves[lo + (extra_pick[:, j] * (hi - lo)).astype(np.int64)]
            tastes[:, j] = np.where(extra_sibling[:, j], sibling, extra_popular[:, j])
        tastes[np.arange(tastes.shape[1])[None, :] >= k[:, None]] = -1
        self.v_tastes = tastes
        self._visitor_width = len(str(max(n - 1, 1)))

    def _build_sessions(self, rng: np.random.Generator) -> None:
        spec, b = self.spec, self.b
        activity = rng.lognormal(-0.5 * b.activity_sd**2, b.activity_sd, spec.visitors)
        per_visitor = 1 + rng.poisson(spec.extra_sessions * activity)
        visitor = np.repeat(np.arange(spec.visitors, dtype=np.int64), per_visitor)
        hours = np.array(HOURLY_TRAFFIC)
        day = rng.integers(0, spec.days, visitor.size)
        hour = rng.choice(24, size=visitor.size, p=hours / hours.sum())
        start = SIM_START_MS + day * DAY_MS + hour * HOUR_MS + rng.integers(0, HOUR_MS, visitor.size)
        order = np.lexsort((visitor, start))  # by start time; ties by visitor, for determinism
        self.s_visitor = visitor[order]
        self.s_start = start[order]
        # a visitor's first session (in time) is the one where a login-type visitor logs in
        first = np.zeros(visitor.size, dtype=bool)
        _, first_idx = np.unique(self.s_visitor, return_index=True)
        first[first_idx] = True
        self.s_first = first
        self.end_ms = SIM_START_MS + spec.days * DAY_MS

    def _build_stock(self, rng: np.random.Generator) -> None:
        n, b, never = self.spec.items, self.b, np.iinfo(np.int64).max
        span = self.end_ms - SIM_START_MS
        self.out_start = np.full(n, never, dtype=np.int64)
        self.out_end = np.full(n, never, dtype=np.int64)
        self.deleted_at = np.full(n, never, dtype=np.int64)
        out = np.flatnonzero(rng.random(n) < b.outage_share)
        self.out_start[out] = SIM_START_MS + rng.integers(0, span, out.size)
        self.out_end[out] = self.out_start[out] + (rng.exponential(b.outage_mean_days, out.size) * DAY_MS).astype(
            np.int64
        ) + HOUR_MS
        gone = np.flatnonzero(rng.random(n) < b.discontinued_share)
        self.deleted_at[gone] = SIM_START_MS + rng.integers(0, span, gone.size)

    # --- documents -------------------------------------------------------------------------------------

    def item_id(self, i: int) -> str:
        return f"sku-{i:0{self._id_width}d}"

    def visitor_id(self, v: int) -> str:
        return f"u-{v:0{self._visitor_width}d}"

    def session_id(self, s: int) -> str:
        return f"s-{_mix64(s + self.seed * 0x9E3779B97F4A7C15):016x}"

    def in_stock(self, i: int, t: int) -> bool:
        return bool(not (self.out_start[i] <= t < self.out_end[i]) and t < self.deleted_at[i])

    def item_doc(self, i: int, in_stock: bool = True, deleted: bool = False, updated_at: int = SIM_START_MS) -> dict[
        str, Any
    ]:
        """Contract item ``i`` with the given stock state."""
        lf = int(self.item_leaf[i])
        top = TREE[int(self.leaf_top[lf])]
        brand = top.brands[int(self.item_brand[i])]
        colour = COLOURS[int(self.item_colour[i])]
        title = f"{brand} {SERIES[int(self.item_series[i])]} {self.leaf_noun[lf]} {int(self.item_model[i])}, {colour}"
        return {
            "item_id": self.item_id(i),
            "title": title,
            "category": list(self.leaf_category[lf]),
            "price": float(self.item_price[i]),
            "in_stock": in_stock,
            "repurchasable": top.repurchasable,
            "attributes": {"brand": brand, "colour": colour},
            "deleted": deleted,
            "updated_at": updated_at,
        }

    def catalog(self) -> Iterator[dict[str, Any]]:
        """The catalog as of the start of the log (every item exists and is in stock then)."""
        for i in range(self.spec.items):
            yield self.item_doc(i)

    def catalog_updates(self) -> Iterator[dict[str, Any]]:
        """Stock changes and discontinuations as full contract items, ordered by ``updated_at``."""
        n = self.spec.items
        ids = np.arange(n)
        changes = [  # (time, item, kind) with kind 0 = out of stock, 1 = back in stock, 2 = deleted
            (self.out_start, ids, np.zeros(n, dtype=np.int64)),
            (self.out_end, ids, np.ones(n, dtype=np.int64)),
            (self.deleted_at, ids, np.full(n, 2, dtype=np.int64)),
        ]
        t = np.concatenate([c[0] for c in changes])
        item = np.concatenate([c[1] for c in changes])
        kind = np.concatenate([c[2] for c in changes])
        keep = t < self.end_ms
        t, item, kind = t[keep], item[keep], kind[keep]
        order = np.lexsort((kind, item, t))
        for ts, i, k in zip(t[order].tolist(), item[order].tolist(), kind[order].tolist(), strict=True):
            if k != 2 and ts >= self.deleted_at[i]:
                continue  # a discontinued item has no stock changes after its deletion
            deleted = k == 2
            yield self.item_doc(i, in_stock=not deleted and self.in_stock(i, ts), deleted=deleted, updated_at=ts)

    # --- events ----------------------------------------------------------------------------------------

    @property
    def n_sessions(self) -> int:
        return int(self.s_visitor.size)

    def events(self, progress: Any = None) -> Iterator[dict[str, Any]]:
        """All events in time order (ties: generation order). ``progress`` (optional) gets ``update(n)``
        calls with the number of sessions generated, e.g. a tqdm bar."""
        rng = np.random.default_rng([self.seed, 1])
        pending: list[tuple[int, int, dict[str, Any]]] = []  # heap of (timestamp, sequence, event)
        seq = itertools.count()
        n_out = 0
        width = 9
        done_since_update = 0
        for s in range(self.n_sessions):
            start = int(self.s_start[s])
            while pending and pending[0][0] < start:  # no later session can start before these
                doc = heapq.heappop(pending)[2]
                doc["event_id"] = f"e{self.seed}-{n_out:0{width}d}"
                n_out += 1
                yield doc
            for doc in self._session(rng, s, start):
                heapq.heappush(pending, (doc["timestamp"], next(seq), doc))
            done_since_update += 1
            if progress is not None and done_since_update >= PROGRESS_UPDATE_EVERY:
                progress.update(done_since_update)
                done_since_update = 0
        while pending:
            doc = heapq.heappop(pending)[2]
            doc["event_id"] = f"e{self.seed}-{n_out:0{width}d}"
            n_out += 1
            yield doc
        if progress is not None and done_since_update:
            progress.update(done_since_update)

    def _prepare_sampling(self) -> None:
        """Per-item arrays in leaf order, so a session reads a leaf's items as slices (views, no copies),
        and cumulative weights for the draws that repeat in every session."""
        order = self.leaf_items
        self._lz_by_leaf = self.item_lz[order]
        self._pop_by_leaf = self.item_pop[order]
        self._brand_by_leaf = self.item_brand[order]
        self._deleted_by_leaf = self.deleted_at[order]
        self._out_start_by_leaf = self.out_start[order]
        self._out_end_by_leaf = self.out_end[order]
        self._leaf_n_brands = np.array([len(t.brands) for t in TREE])[self.leaf_top]
        self._leaf_pop_cdf = np.cumsum(self.leaf_pop)
        leaf_pop_total = np.add.reduceat(self._pop_by_leaf, self.leaf_off[:-1])
        self._item_pop_cdf = np.cumsum(self.item_pop * (self.leaf_pop / leaf_pop_total)[self.item_leaf])
        self._repurchasable = [t.repurchasable for t in TREE]

    @staticmethod
    def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
        """``n`` indices drawn with replacement by cumulative weights ``cdf`` (faster than rng.choice(p=))."""
        return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), cdf.size - 1)

    def _session(self, rng: np.random.Generator, s: int, start: int) -> list[dict[str, Any]]:
        """One session's events (without event ids), in time order."""
        b = self.b
        v = int(self.s_visitor[s])
        tastes = self.v_tastes[v][self.v_tastes[v] >= 0]
        if rng.random() < b.explore_p:
            focus = int(self._draw(rng, self._leaf_pop_cdf, 1)[0])
        else:
            w = b.taste_weights[: tastes.size]
            focus = int(tastes[min(int(np.searchsorted(np.cumsum(w), rng.random() * sum(w), side="right")),
                                   tastes.size - 1)])
        leaves = [focus]
        if rng.random() < b.sibling_session_p:
            mid = self.leaf_mid[focus]
            siblings = self.mid_leaves[self.mid_off[mid] : self.mid_off[mid + 1]]
            if siblings.size > 1:
                leaves.append(int(rng.choice(siblings[siblings != focus])))
        # candidate items (positions in leaf order) and their view weights at the session's start
        shares = (1.0,) if len(leaves) == 1 else (1.0 - b.sibling_view_share, b.sibling_view_share)
        price_pref = float(self.v_price[v])
        positions, weights = [], []
        for lf, share in zip(leaves, shares, strict=True):
            lo, hi = int(self.leaf_off[lf]), int(self.leaf_off[lf + 1])
            affinity = np.exp(-0.5 * ((self._lz_by_leaf[lo:hi] - price_pref) / b.price_tolerance) ** 2)
            w = self._pop_by_leaf[lo:hi] * (0.05 + affinity)
            w[self._brand_by_leaf[lo:hi] == self.v_brand[v] % self._leaf_n_brands[lf]] *= b.brand_boost
            w[self._deleted_by_leaf[lo:hi] <= start] = 0.0
            w[(self._out_start_by_leaf[lo:hi] <= start) & (start < self._out_end_by_leaf[lo:hi])] *= (
                b.out_of_stock_view_factor
            )
            total = w.sum()
            if total > 0:
                positions.append(np.arange(lo, hi))
                weights.append(w * (share / total))
        if not positions:
            return []
        cdf = np.cumsum(np.concatenate(weights))
        n_views = min(int(rng.geometric(1.0 / b.mean_views)), b.max_views)
        logs_in = bool(self.v_login[v] and self.s_first[s])
        if logs_in:
            n_views = max(n_views, 2)  # room for events before and after the login
        picked = self.leaf_items[np.concatenate(positions)[self._draw(rng, cdf, n_views)]]
        jumps = rng.random(n_views) < b.jump_view_p
        if jumps.any():
            picked[jumps] = self._draw(rng, self._item_pop_cdf, int(jumps.sum()))
        jump_l = jumps.tolist()
        picks = picked.tolist()
        lz_l = self.item_lz[picked].tolist()
        price_l = self.item_price[picked].tolist()
        deleted_l = self.deleted_at[picked].tolist()
        out_l = self.out_start[picked].tolist()
        back_l = self.out_end[picked].tolist()
        path_l = [self.leaf_path[lf] for lf in self.item_leaf[picked].tolist()]
        gaps = np.maximum(rng.exponential(b.mean_gap_s * 1000.0, 3 * n_views + 2), 1000.0).astype(np.int64).tolist()
        u = rng.random((n_views, 4)).tolist()  # per view: cart, dismiss, page context, reason
        actions: list[tuple[int, str, int, dict[str, Any]]] = []
        stock: dict[int, tuple[int, int, int]] = {}  # item -> (out of stock from, back at, deleted at)
        t = start
        cart: list[int] = []
        g = iter(gaps)
        for k, i in enumerate(picks):
            if k:
                t += next(g)
            if t >= deleted_l[k]:
                continue
            stock[i] = (out_l[k], back_l[k], deleted_l[k])
            affinity = math.exp(-0.5 * ((lz_l[k] - price_pref) / b.price_tolerance) ** 2)
            from_page = u[k][2] < b.page_category_p and not jump_l[k]
            ctx: dict[str, Any] = {"page_category": path_l[k]} if from_page else {}
            actions.append((t, "view", i, ctx))
            in_stock = not (out_l[k] <= t < back_l[k])
            if u[k][0] < b.cart_p * affinity and in_stock and i not in cart:
                t += next(g)
                cart.append(i)
                actions.append((t, "add_to_cart", i, {"quantity": 1, "price": price_l[k]}))
            elif u[k][1] < b.dismiss_base_p + b.dismiss_far_p * (1.0 - affinity):
                t += next(g)
                if lz_l[k] > price_pref + b.price_tolerance:
                    reason = "too_expensive"
                else:
                    reason = DISMISS_REASONS[0] if u[k][3] < 0.8 else DISMISS_REASONS[2]
                actions.append((t, "dismiss", i, {"reason": reason}))
        if cart and rng.random() < b.purchase_p:
            t += next(g)
            for i in cart:
                out_from, back_at, deleted_at = stock[i]
                if not (out_from <= t < back_at) and t < deleted_at:
                    repurchasable = self._repurchasable[int(self.leaf_top[self.item_leaf[i]])]
                    qty = int(rng.integers(1, 4)) if repurchasable else 1
                    actions.append((t, "purchase", i, {"quantity": qty, "price": float(self.item_price[i])}))
                    t += 1000
        login_at = 1 + int(rng.integers(0, len(actions) - 1)) if logs_in and len(actions) >= 2 else len(actions)
        session_id = self.session_id(s)
        user_id = None if self.v_anonymous[v] else self.visitor_id(v)
        out = []
        for k, (ts, etype, i, ctx) in enumerate(actions):
            doc: dict[str, Any] = {"event_id": "", "event_type": etype}
            if user_id is not None and not (logs_in and k < login_at):
                doc["user_id"] = user_id
            doc["session_id"] = session_id
            doc["item_id"] = self.item_id(i)
            doc["timestamp"] = ts
            if ctx:
                doc["context"] = ctx
            out.append(doc)
        return out


def simulate(size: str = "tiny", seed: int = 42) -> tuple[list[dict[str, Any]], Iterator[dict[str, Any]]]:
    """The initial catalog (a list of contract items) and the events (a lazy, time-ordered iterator).

    For tests and in-process use; the stock changes are in ``ShopSimulator(size, seed).catalog_updates()``.
    For the large size prefer :func:`write_shop` or iterate ``ShopSimulator.catalog()`` lazily.

    >>> catalog, events = simulate("tiny", seed=1)
    >>> len(catalog), next(events)["event_type"]
    (200, 'view')
    """
    sim = ShopSimulator(size, seed)
    return list(sim.catalog()), sim.events()


def _write_jsonl(path: Path, docs: Iterator[dict[str, Any]], counter: dict[str, int] | None = None) -> int:
    """Write docs as JSON lines under a temporary name, then rename: a crash never leaves a file that
    looks complete."""
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    dumps, opt = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    with open(tmp, "wb", buffering=1 << 20) as f:
        for doc in docs:
            f.write(dumps(doc, option=opt))
            n += 1
            if counter is not None:
                counter[doc["event_type"]] = counter.get(doc["event_type"], 0) + 1
    os.replace(tmp, path)
    return n


def write_shop(out_dir: str | os.PathLike[str], size: str = "tiny", seed: int = 42,
               progress: bool | None = None) -> SimulationResult:
    """Write ``catalog.jsonl``, ``events.jsonl``, ``catalog_updates.jsonl`` and ``manifest.json`` to
    ``out_dir``, streaming (memory does not grow with the number of events). ``progress`` None: a
    progress bar for the medium and large sizes."""
    began = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sim = ShopSimulator(size, seed)
    show = sim.spec.visitors >= PROGRESS_MIN_VISITORS if progress is None else progress
    n_items = _write_jsonl(out / CATALOG_FILE, sim.catalog())
    n_updates = _write_jsonl(out / UPDATES_FILE, sim.catalog_updates())
    counts: dict[str, int] = {}
    if show:
        from tqdm import tqdm

        with tqdm(total=sim.n_sessions, unit="session", desc=f"simulate {size}", dynamic_ncols=True) as bar:
            n_events = _write_jsonl(out / EVENTS_FILE, sim.events(progress=bar), counts)
    else:
        n_events = _write_jsonl(out / EVENTS_FILE, sim.events(), counts)
    result = SimulationResult(out, size, sim.seed, n_items, n_events, n_updates, 0.0, dict(sorted(counts.items())))
    manifest = {
        "format": MANIFEST_FORMAT,
        "size": size,
        "seed": sim.seed,
        "spec": asdict(sim.spec),
        "files": {"catalog": CATALOG_FILE, "events": EVENTS_FILE, "catalog_updates": UPDATES_FILE},
        "counts": {"items": n_items, "events": n_events, "catalog_updates": n_updates,
                   "visitors": sim.spec.visitors, "sessions": sim.n_sessions, "events_by_type": result.counts_by_type},
        "time_range_ms": [SIM_START_MS, sim.end_ms],
    }
    (out / MANIFEST_FILE).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    result.elapsed_s = time.perf_counter() - began
    return result


@click.command("simulate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write catalog.jsonl, events.jsonl, catalog_updates.jsonl and manifest.json to.")
@click.option("--size", type=click.Choice(list(SIZES)), default="small", show_default=True,
              help="tiny ~2k events (tests), small ~30k (demo), medium ~100k items/visitors, large ~1M.")
@click.option("--seed", type=int, default=None, help="Random seed (default: the `seed` setting).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: for medium and large).")
@click.pass_obj
def simulate_cmd(state: Any, out_dir: str, size: str, seed: int | None, progress: bool | None) -> None:
    """Write a deterministic synthetic shop: same size and seed, byte-identical files."""
    if seed is None:
        seed = state.settings.seed if state is not None else Settings().seed
    r = write_shop(out_dir, size=size, seed=seed, progress=progress)
    by_type = ", ".join(f"{k} {v}" for k, v in r.counts_by_type.items())
    click.echo(f"wrote {r.items} items, {r.events} events ({by_type}) and {r.catalog_updates} catalog updates "
               f"to {r.out_dir} in {r.elapsed_s:.1f} s (size {size}, seed {seed})")
