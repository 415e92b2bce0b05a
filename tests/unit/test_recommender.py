"""Recommender behaviour end to end on a small deterministic shop (real ItemCatalog, in-memory store).

The whole suite runs twice, once on the exact index and once on annoy (the `make_rec` fixture is
parametrised by `index_kind`, and checks that the catalogue really answers with the index it names), so
every behaviour below is asserted against both.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from stream_reco.core.events import Event, Recommendation
from stream_reco.core.index import AnnoyIndex, ExactIndex
from stream_reco.core.recommender import InMemoryVisitorStore, Recommender, VisitorStore
from stream_reco.core.state import VisitorState
from tests.unit.core_fixtures import (
    DAY,
    INDEX_KINDS,
    ITEMS_PER_LEAF,
    LEAVES,
    MINUTE,
    T0,
    ev,
    item_id,
    make_artifact,
    make_catalog,
    make_settings,
)

MIXERS, KETTLES, PANS, SOFAS, TABLES, BEDS, SPADES, ROSES = range(8)


def leaf(item: str) -> int:
    return int(item[1 : item.index("-")])


def path(li: int) -> str:
    return "/".join(LEAVES[li])


class BytesStore:
    """A store that keeps only `to_bytes()`, like the faust table: every read deserialises."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> VisitorState | None:
        b = self.data.get(key)
        return None if b is None else VisitorState.from_bytes(b)

    def put(self, key: str, state: VisitorState) -> None:
        self.data[key] = state.to_bytes()


MakeRec = Callable[..., Recommender]


@pytest.fixture(params=INDEX_KINDS)
def index_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_rec(index_kind: str) -> MakeRec:
    """`make_rec(store=None, **setting_overrides)`: a recommender over the fixture shop on `index_kind`."""

    def build(store: VisitorStore | None = None, **overrides: object) -> Recommender:
        settings = make_settings(index_kind, **overrides)
        rec = Recommender(settings, make_catalog(settings), store)
        assert rec.catalog.index_kind == index_kind
        return rec

    return build


def warm_shop(rec: Recommender, start: int = T0) -> int:
    """Other visitors browse: best-sellers per leaf (item 00 most, then 01, ...) and co-visits.

    Returns the time after the warm-up.
    """
    t = start
    for li in range(len(LEAVES)):
        for v in range(3):
            for n in range(ITEMS_PER_LEAF // 2):
                for _ in range(ITEMS_PER_LEAF // 2 - n):
                    rec.observe(ev("view", item_id(li, n), t, session=f"w{li}-{v}"))
                    t += 1000
    # past every warm-up session, and within a day of the shop's latest event: the shop clock moves at most
    # a day per event (recommender.MAX_CLOCK_STEP_MS), so a visitor arriving later would be applied earlier
    return t + DAY // 2


def items_of(lst) -> list[str]:
    return [r.item_id for r in lst]


def test_views_in_one_category_lean_the_list_there(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    for n in (3, 4, 5):
        rec.observe(ev("view", item_id(KETTLES, n), t, session="me"))
        t += MINUTE
    lst = rec.recommend("me", t)
    assert len(lst) == rec.settings.list_size
    counts = Counter(leaf(r.item_id) for r in lst)
    # kettles lead, up to the category cap (4 of 10 by default); the rest is diverse
    cap = int(rec.settings.max_category_share * rec.settings.list_size)
    assert counts[KETTLES] == cap == max(counts.values()), counts
    assert leaf(items_of(lst)[0]) == KETTLES
    kettle_reasons = {r.reason for r in lst if leaf(r.item_id) == KETTLES}
    assert all("Kettle model" in why or why == "You viewed this recently" for why in kettle_reasons), kettle_reasons


def test_category_cap_is_what_keeps_a_strong_lean_from_filling_the_list(make_rec: MakeRec):
    uncapped, capped = make_rec(max_category_share=0.0), make_rec(max_category_share=0.3)
    for rec in (uncapped, capped):
        t = warm_shop(rec)
        for n in (3, 4, 5):
            rec.observe(ev("view", item_id(KETTLES, n), t, session="me"))
            t += MINUTE
    free_list = uncapped.recommend("me", t)
    assert any(r.reason == "Because you viewed 3 kettles" for r in free_list)
    free = Counter(leaf(i) for i in items_of(free_list))
    held = Counter(leaf(i) for i in items_of(capped.recommend("me", t)))
    assert free[KETTLES] >= 5, free  # without the cap, five or more kettles: the list the cap prevents
    assert held[KETTLES] == 3 and max(held.values()) == 3, held
    assert sum(held.values()) == capped.settings.list_size


def test_list_has_no_duplicates_and_honours_k(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    rec.observe(ev("view", item_id(SOFAS, 1), t, session="me"))
    for k in (1, 5, 20):
        lst = rec.recommend("me", t, k=k)
        assert len(lst) == k and len(set(items_of(lst))) == k
    assert rec.recommend("me", t, k=0) == []


def test_dismissed_item_never_returns(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    target = item_id(KETTLES, 0)  # the kettle best-seller, co-visited with every kettle
    rec.observe(ev("view", item_id(KETTLES, 1), t, session="me"))
    assert target in items_of(rec.recommend("me", t + 1, k=20))
    rec.observe(ev("dismiss", target, t + 2, session="me"))
    for n in range(2, 8):
        rec.observe(ev("view", item_id(KETTLES, n), t + n * MINUTE, session="me"))
        assert target not in items_of(rec.recommend("me", t + n * MINUTE, k=40))
    assert target not in items_of(rec.recommend("me", t + 30 * DAY, k=40, page_category=path(KETTLES)))


def test_purchase_suppresses_category_for_the_window_then_it_returns(make_rec: MakeRec):
    rec = make_rec(purchase_suppress_days=3.0)
    t = warm_shop(rec)
    rec.observe(ev("view", item_id(SOFAS, 2), t, user="u", session="a"))
    rec.observe(ev("purchase", item_id(SOFAS, 2), t + MINUTE, user="u", session="a"))
    for day in (0, 1, 2):
        now = t + 2 * MINUTE + day * DAY
        lst = rec.recommend("u", now, k=20, page_category=path(SOFAS))
        assert all(leaf(i) != SOFAS for i in items_of(lst)), day
    later = t + 2 * MINUTE + 3 * DAY + 1
    lst = rec.recommend("u", later, k=20, page_category=path(SOFAS))
    assert any(leaf(i) == SOFAS for i in items_of(lst))
    assert item_id(SOFAS, 2) not in items_of(lst)  # the purchased item itself stays out


def test_repurchasable_item_and_category_stay_open(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    coffee = item_id(PANS, 0)
    rec.upsert_item(dataclasses.replace(rec.catalog.get(coffee), repurchasable=True))
    rec.observe(ev("purchase", coffee, t, session="me"))
    lst = items_of(rec.recommend("me", t + 1, k=20, page_category=path(PANS)))
    assert coffee in lst and any(leaf(i) == PANS and i != coffee for i in lst)


def test_repurchasable_purchase_keeps_an_earlier_purchase_suppression(make_rec: MakeRec):
    rec = make_rec(purchase_suppress_days=3.0)
    t = warm_shop(rec)
    cleaner = item_id(SOFAS, 9)  # a consumable sold in the sofa category
    rec.upsert_item(dataclasses.replace(rec.catalog.get(cleaner), repurchasable=True))
    bought = t + MINUTE
    rec.observe(ev("view", item_id(SOFAS, 2), t, user="u", session="a"))
    rec.observe(ev("purchase", item_id(SOFAS, 2), bought, user="u", session="a"))
    rec.observe(ev("purchase", cleaner, t + DAY, user="u", session="b"))
    # the suppression the sofa started survives, with its own start: the consumable neither ends nor extends it
    assert rec.visitor("u").purchase_categories == {path(SOFAS): bought}
    lst = items_of(rec.recommend("u", t + DAY + 1, k=40))
    assert len(lst) == 40 and not [i for i in lst if leaf(i) == SOFAS]
    reopened = items_of(rec.recommend("u", bought + 3 * DAY, k=20, page_category=path(SOFAS)))
    assert any(leaf(i) == SOFAS for i in reopened)  # the window counts from the sofa, not the cleaner


def test_repurchasable_purchase_does_not_evict_another_suppression_at_the_cap(make_rec: MakeRec):
    rec = make_rec(owned_cap=2)
    t = warm_shop(rec)
    coffee = item_id(PANS, 0)
    rec.upsert_item(dataclasses.replace(rec.catalog.get(coffee), repurchasable=True))
    rec.observe(ev("purchase", item_id(SOFAS, 2), t, session="me"))
    rec.observe(ev("purchase", item_id(BEDS, 2), t + MINUTE, session="me"))
    rec.observe(ev("purchase", coffee, t + 2 * MINUTE, session="me"))
    assert rec.visitor("me").purchase_categories == {path(SOFAS): t, path(BEDS): t + MINUTE}
    lst = items_of(rec.recommend("me", t + 3 * MINUTE, k=40))
    assert not [i for i in lst if leaf(i) in (SOFAS, BEDS)]


def rule_breaches(rec: Recommender, visitor: str, items: list[str], now: int) -> list[str]:
    """Every way `items` breaks a hard rule, worked out from the catalogue and the visitor's purchases
    (not from the rules module or the state's suppression marks, so a defect there shows up here)."""
    state = rec.visitor(visitor) or VisitorState()
    window = rec.settings.purchase_suppress_days * DAY
    suppressed = set()
    for bought, when in state.purchased.items():
        it = rec.catalog.get(bought)
        if it is not None and not it.repurchasable and now - when < window:
            suppressed.add(it.category_path)
    out = [f"duplicate {i}" for i, c in Counter(items).items() if c > 1]
    for i in items:
        it = rec.catalog.get(i)
        if it is None or not it.recommendable:
            out.append(f"not recommendable {i}")
        elif i in state.dismissed:
            out.append(f"dismissed {i}")
        elif i in state.purchased and not it.repurchasable:
            out.append(f"purchased {i}")
        elif it.category_path in suppressed:
            out.append(f"suppressed {i}")
    return out


def suppress_three_leaves(rec: Recommender, t: int) -> None:
    """'me' browses with the sofa page open and buys in the sofa, coffee-table and bed categories."""
    for j, li in enumerate((SOFAS, TABLES, BEDS)):
        rec.observe(ev("view", item_id(li, 7), t + 2 * j, session="me", page_category=path(SOFAS)))
        rec.observe(ev("purchase", item_id(li, 7), t + 2 * j + 1, session="me", page_category=path(SOFAS)))


def take_out_of_stock(rec: Recommender, items: list[str]) -> None:
    for i in items:
        rec.upsert_item(dataclasses.replace(rec.catalog.get(i), in_stock=False))


def test_suppressed_page_category_and_sold_out_best_sellers_still_give_a_full_list(make_rec: MakeRec):
    # The page's and the session's categories are suppressed and the shop-wide best-sellers sold out, so
    # the best-sellers' shared slots and the first embedding neighbours leave the list short (6 of 10
    # before the widening); the fallback must keep going.
    rec = make_rec()
    t = warm_shop(rec)
    suppress_three_leaves(rec, t)
    take_out_of_stock(rec, [i for i, _ in rec.popularity.top("", 24, t)])
    now = t + 10
    lst = items_of(rec.recommend("me", now))
    assert len(lst) == rec.settings.list_size
    assert rule_breaches(rec, "me", lst, now) == []


def test_list_fills_from_embedding_neighbours_when_no_best_seller_is_left(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    suppress_three_leaves(rec, t)
    take_out_of_stock(rec, [i for i, _ in rec.popularity.top("", 200, t)])  # every item with any sales
    now = t + 10
    # a list of 3 fetches 3 neighbours per query (session + 3 interests), all in the suppressed leaves
    # (nothing at all before the widening); the wider search finds unsuppressed ones
    lst = rec.recommend("me", now, k=3)
    assert len(lst) == 3
    assert rule_breaches(rec, "me", items_of(lst), now) == []
    assert all(r.score > 0 for r in lst)  # ranked neighbours, not the catalogue sweep's unscored filler


def test_cold_visitor_list_fills_from_the_catalogue_when_every_best_seller_is_sold_out(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    take_out_of_stock(rec, [i for i, _ in rec.popularity.top("", 200, t)])
    lst = items_of(rec.recommend("nobody", t, k=20))
    assert len(lst) == 20  # no vector, no co-visits, no sales left: only the catalogue sweep has items
    assert rule_breaches(rec, "nobody", lst, t) == []


def test_catalogue_fill_starts_in_the_page_category_and_says_so(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    take_out_of_stock(rec, [i for i, _ in rec.popularity.top("", 200, t)])
    lst = rec.recommend("nobody", t, k=5, page_category=path(KETTLES))
    leaves = [leaf(r.item_id) for r in lst]
    # the page's own category first (up to the category cap), then its sibling under the same parent
    assert leaves == [KETTLES] * 4 + [MIXERS], leaves
    assert [r.reason for r in lst] == ["More in Kettles"] * 4 + ["More in Stand mixers"]


def test_short_list_holds_every_eligible_item_when_too_few_exist(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    suppress_three_leaves(rec, t)
    take_out_of_stock(rec, [item_id(KETTLES, n) for n in range(0, ITEMS_PER_LEAF, 2)])
    rec.observe(ev("dismiss", item_id(MIXERS, 0), t + 10, session="me"))
    now = t + 11
    # scoped to kitchen appliances (mixers and kettles): 6 kettles in stock and 11 mixers not dismissed
    lst = items_of(rec.recommend("me", now, k=40, page_category=path(KETTLES)))
    eligible = [item_id(KETTLES, n) for n in range(1, ITEMS_PER_LEAF, 2)] + [
        item_id(MIXERS, n) for n in range(1, ITEMS_PER_LEAF)
    ]
    assert sorted(lst) == sorted(eligible)


def test_full_lists_never_reach_the_fallback(make_rec: MakeRec, monkeypatch: pytest.MonkeyPatch):
    # the widening is for short lists only: a list the first pass fills costs nothing extra (and stays
    # exactly what it was, which the evaluation numbers rely on)
    rec = make_rec()
    t = warm_shop(rec)
    rec.observe(ev("view", item_id(KETTLES, 3), t, session="me"))
    expected = items_of(rec.recommend("me", t + 1))

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a full list widened its candidates")

    monkeypatch.setattr(Recommender, "_widen", fail)
    assert items_of(rec.recommend("me", t + 1)) == expected
    assert len(expected) == rec.settings.list_size


def test_the_suite_searches_with_the_index_it_names(
    make_rec: MakeRec, index_kind: str, monkeypatch: pytest.MonkeyPatch
):
    calls = Counter()
    for cls in (AnnoyIndex, ExactIndex):
        original = cls.search_many

        def counted(self, *args, _original=original, _kind=cls.kind, **kwargs):
            calls[_kind] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "search_many", counted)
    rec = make_rec()
    rec.observe(ev("view", item_id(KETTLES, 3), T0, session="me"))
    assert len(rec.recommend("me", T0 + 1)) == rec.settings.list_size
    if index_kind == "annoy":
        # annoy answers alone: nothing changed since the build, so there is no delta for an exact search
        assert rec.catalog.delta_size == 0 and calls["annoy"] >= 1 and calls["exact"] == 0
    else:
        assert calls["annoy"] == 0 and calls["exact"] >= 1


def test_out_of_stock_is_gone_at_once_and_back_when_restocked(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    rec.observe(ev("view", item_id(BEDS, 3), t, session="me"))
    lst = items_of(rec.recommend("me", t, k=20))
    victim = lst[0]
    rec.upsert_item(dataclasses.replace(rec.catalog.get(victim), in_stock=False))
    assert victim not in items_of(rec.recommend("me", t, k=40))
    rec.upsert_item(dataclasses.replace(rec.catalog.get(victim), in_stock=True))
    assert victim in items_of(rec.recommend("me", t, k=20))
    rec.upsert_item(dataclasses.replace(rec.catalog.get(victim), deleted=True))
    assert victim not in items_of(rec.recommend("me", t, k=40))


def test_anonymous_visitor_gets_category_best_sellers_changing_with_the_session(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    first = rec.recommend("newcomer", t, page_category=path(SOFAS))
    assert items_of(first)[0] == item_id(SOFAS, 0)
    assert first[0].reason == "Popular in Sofas this week"
    cold = rec.recommend("nobody", t)
    assert len(cold) == rec.settings.list_size  # shop-wide best-sellers when nothing is known
    lists = []
    for n, li in enumerate((ROSES, ROSES, SPADES)):
        rec.observe(ev("view", item_id(li, 5 + n), t + n * MINUTE, session="anon"))
        lists.append(items_of(rec.recommend("anon", t + n * MINUTE)))
    assert lists[0] != lists[2]
    assert Counter(leaf(i) for i in lists[1])[ROSES] >= 3


def test_login_joins_the_session_history_to_the_user(make_rec: MakeRec):
    store = InMemoryVisitorStore()
    rec = make_rec(store)
    t = warm_shop(rec)
    rec.observe(ev("view", item_id(BEDS, 1), t, user="u7", session="old"))
    rec.observe(ev("dismiss", item_id(MIXERS, 0), t + MINUTE, session="anon-s"))
    rec.observe(ev("view", item_id(KETTLES, 2), t + 2 * MINUTE, session="anon-s"))
    assert "anon-s" in store
    rec.observe(ev("view", item_id(KETTLES, 3), t + 3 * MINUTE, user="u7", session="anon-s"))
    assert "anon-s" not in store  # the session's own key is no longer needed
    state = rec.visitor("u7")
    assert [h[0] for h in state.history] == [item_id(BEDS, 1), item_id(MIXERS, 0), item_id(KETTLES, 2),
                                              item_id(KETTLES, 3)]
    assert item_id(MIXERS, 0) in state.dismissed
    rec_record = rec.recommendation("u7", t + 3 * MINUTE)
    assert rec_record.user_id == "u7" and rec_record.session_id == "anon-s"
    assert item_id(MIXERS, 0) not in items_of(rec_record.items)
    assert any("kettle" in r.reason.lower() for r in rec_record.items)  # the session's kettles count


def test_login_without_store_delete_leaves_an_empty_state(make_rec: MakeRec):
    store = BytesStore()
    rec = make_rec(store)
    rec.observe(ev("view", item_id(BEDS, 1), T0, session="s"))
    rec.observe(ev("view", item_id(BEDS, 2), T0 + 1, user="u", session="s"))
    assert VisitorState.from_bytes(store.data["s"]).n_events == 0
    assert rec.visitor("u").n_events == 2


def test_duplicates_are_ignored(make_rec: MakeRec):
    rec = make_rec()
    e = ev("view", item_id(SOFAS, 1), T0, session="me", event_id="dup-1")
    assert rec.observe(e) is True
    before = rec.visitor("me").to_bytes()
    covis_before = dict(rec.covis.pairs)
    assert rec.observe(e) is False
    assert rec.process(e) is None
    assert rec.visitor("me").to_bytes() == before
    assert rec.covis.pairs == covis_before
    assert rec.n_duplicates == 2


def test_unknown_item_counts_and_joins_once_known(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    rec.observe(ev("view", "brand-new", t, session="me", page_category=path(ROSES)))
    state = rec.visitor("me")
    assert state.n_events == 1 and state.n_unknown == 1 and state.history[0][0] == "brand-new"
    assert Counter(leaf(i) for i in items_of(rec.recommend("me", t)))[ROSES] >= 1  # from the page category
    new_item = dataclasses.replace(rec.catalog.get(item_id(ROSES, 0)), item_id="brand-new", title="New rose")
    rec.upsert_item(new_item)
    assert rec.catalog.vector("brand-new") is not None  # the session vector now uses it


def test_determinism_two_runs_give_equal_lists(make_rec: MakeRec):
    def run() -> list[Recommendation]:
        rec = make_rec()
        t = warm_shop(rec)
        out = []
        for n in range(12):
            e = ev("view", item_id((n * 3) % len(LEAVES), n % ITEMS_PER_LEAF), t + n * MINUTE,
                   session="v" + str(n % 3), event_id=f"d{n}")
            out.append(rec.process(e))
        return out

    a, b = run(), run()
    # list ids are random (a new one per list): compare everything else
    assert [{**x.to_dict(), "list_id": None} for x in a] == [{**x.to_dict(), "list_id": None} for x in b]


def test_bytes_store_gives_the_same_lists_as_the_memory_store(make_rec: MakeRec):
    events = []
    t = T0
    for n in range(30):
        kind = "dismiss" if n % 11 == 5 else ("purchase" if n % 13 == 7 else "view")
        events.append(ev(kind, item_id(n % 4, n % ITEMS_PER_LEAF), t + n * MINUTE, session=f"s{n % 2}",
                         event_id=f"b{n}"))
    a, b = make_rec(), make_rec(BytesStore())
    for e in events:
        ra, rb = a.process(e), b.process(e)
        assert ra is not None and rb is not None
        assert items_of(ra.items) == items_of(rb.items)
        assert [x.score for x in ra.items] == pytest.approx([x.score for x in rb.items])


def test_different_visitors_get_different_lists(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    for n in range(3):
        rec.observe(ev("view", item_id(MIXERS, n + 4), t + n, session="baker"))
        rec.observe(ev("view", item_id(ROSES, n + 4), t + n, session="gardener"))
    a, b = set(items_of(rec.recommend("baker", t + 5))), set(items_of(rec.recommend("gardener", t + 5)))
    assert len(a & b) <= 2


def test_covisitation_explains_with_the_anchor_title(make_rec: MakeRec):
    rec = make_rec(weight_ann=0.0, weight_popular=0.0)
    for v in range(5):
        rec.observe(ev("view", item_id(SOFAS, 1), T0 + v * 10, session=f"o{v}"))
        rec.observe(ev("view", item_id(TABLES, 1), T0 + v * 10 + 1, session=f"o{v}"))
    rec.observe(ev("view", item_id(SOFAS, 1), T0 + 100, session="me"))
    lst = rec.recommend("me", T0 + 101)
    assert lst[0].item_id == item_id(TABLES, 1)
    assert lst[0].reason == f"Often viewed with {rec.catalog.get(item_id(SOFAS, 1)).title}"


def test_model_priors_feed_candidates_and_hot_swap_replaces_them(make_rec: MakeRec, index_kind: str):
    rec = make_rec(weight_ann=0.0)
    art = make_artifact(version="v2")
    art.covis = {item_id(BEDS, 0): [(item_id(SPADES, 7), 5.0)]}
    art.popularity = {item_id(ROSES, 9): 10.0}
    rec.load_model(art)
    assert rec.catalog.wait_for_rebuild(timeout=30) and rec.catalog.index_kind == index_kind  # swap kept the kind
    assert rec.model_version == "v2"
    rec.observe(ev("view", item_id(BEDS, 0), T0, session="me"))
    got = items_of(rec.recommend("me", T0))
    assert got[0] == item_id(SPADES, 7)
    assert item_id(ROSES, 9) in got
    art3 = dataclasses.replace(make_artifact(version="v3"), covis={}, popularity={})
    rec.load_model(art3)
    assert rec.catalog.wait_for_rebuild(timeout=30)
    assert item_id(SPADES, 7) not in items_of(rec.recommend("me", T0))
    assert rec.recommendation("me", T0).model_version == "v3"


def test_exclude_interacted_removes_every_earlier_item(make_rec: MakeRec):
    rec = make_rec()
    t = warm_shop(rec)
    seen = [item_id(KETTLES, n) for n in range(4)]
    for n, i in enumerate(seen):
        rec.observe(ev("view", i, t + n, session="me"))
    assert set(seen) & set(items_of(rec.recommend("me", t + 5, k=20, exclude_interacted=False)))
    lst = items_of(rec.recommend("me", t + 5, k=20, exclude_interacted=True))
    assert len(lst) == 20 and not set(seen) & set(lst)


def test_page_scope_limits_to_category_and_siblings(make_rec: MakeRec):
    rec = make_rec(scope_to_page_category=True)
    t = warm_shop(rec)
    rec.observe(ev("view", item_id(ROSES, 1), t, session="me"))
    rec.observe(ev("view", item_id(MIXERS, 1), t + 1, session="me", page_category=path(MIXERS)))
    lst = items_of(rec.recommend("me", t + 2, k=20))
    assert lst and {leaf(i) for i in lst} <= {MIXERS, KETTLES}
    explicit = items_of(rec.recommend("me", t + 2, k=10, page_category=path(SOFAS)))
    assert {leaf(i) for i in explicit} <= {SOFAS, TABLES}


def test_attribute_boost_lifts_matching_items(make_rec: MakeRec):
    # the category cap off: the rule on its own (with the cap, the boosted Acme item still rises to the
    # top, but the fixture's only other Acme items sit in the capped category)
    plain, boosted = make_rec(max_category_share=0.0), make_rec(attribute_boosts="brand=Acme:3", max_category_share=0.0)
    t = 0
    for rec in (plain, boosted):
        t = warm_shop(rec)
        rec.observe(ev("view", item_id(BEDS, 5), t, session="me"))

    def acme(lst: list[str]) -> int:
        return sum(rec_item_brand(boosted, i) == "Acme" for i in lst)

    assert acme(items_of(boosted.recommend("me", t, k=5))) > acme(items_of(plain.recommend("me", t, k=5)))


def rec_item_brand(rec: Recommender, item: str) -> str:
    return rec.catalog.get(item).attributes.get("brand", "")


def test_mmr_diversifies_across_categories(make_rec: MakeRec):
    same = make_rec(mmr_lambda=1.0, weight_popular=0.0, weight_covis=0.0)
    diverse = make_rec(mmr_lambda=0.3, weight_popular=0.0, weight_covis=0.0)
    for rec in (same, diverse):
        rec.observe(ev("view", item_id(PANS, 1), T0, session="me"))
        rec.observe(ev("view", item_id(BEDS, 1), T0 + 1, session="me"))

    def cats(r: Recommender) -> int:
        return len({leaf(i) for i in items_of(r.recommend("me", T0 + 2, k=6))})

    assert cats(diverse) >= cats(same)
    assert cats(diverse) >= 2


def test_recommendation_record_and_process(make_rec: MakeRec):
    rec = make_rec()
    e = ev("view", item_id(SOFAS, 1), T0, user="u1", session="s1", event_id="t-1")
    out = rec.process(e)
    assert isinstance(out, Recommendation)
    assert out.user_id == "u1" and out.session_id == "s1" and out.trigger_event_id == "t-1"
    assert out.generated_at == T0 and out.model_version == "test-v1"
    assert all(r.reason and np.isfinite(r.score) for r in out.items)
    anon = rec.recommendation("who", T0)
    assert anon.user_id is None and anon.session_id == "who"


def test_state_stays_bounded_over_a_long_history(make_rec: MakeRec):
    rec = make_rec(history_cap=20, owned_cap=30)
    for n in range(500):
        kind = ("view", "add_to_cart", "purchase", "dismiss")[n % 4]
        rec.observe(ev(kind, item_id(n % 8, n % ITEMS_PER_LEAF), T0 + n * MINUTE, user="heavy"))
    state = rec.visitor("heavy")
    assert len(state.history) == 20 and len(state.seen) <= 30
    assert len(state.interests) <= rec.settings.max_interests
    assert len(state.event_ids) <= rec.settings.dedup_window
    assert len(state.to_bytes()) < 8000


def test_default_recommender_builds_its_own_catalog(index_kind: str):
    rec = Recommender(make_settings(index_kind))
    rec.load_model(make_artifact())
    assert rec.catalog.wait_for_rebuild(timeout=30) and rec.catalog.index_kind == index_kind
    assert len(rec.catalog) > 0
    e = Event(event_id="x", event_type="view", item_id=item_id(0, 0), timestamp=T0, session_id="s")
    assert rec.process(e) is not None


def test_events_already_in_the_model_priors_are_not_counted_twice(make_rec: MakeRec):
    rec = make_rec()
    art = make_artifact(version="v-priors")
    art.covis = {item_id(BEDS, 0): [(item_id(BEDS, 1), 1.0)]}
    art.training = {"last_event_ms": T0 + MINUTE}
    rec.load_model(art)
    rec.observe(ev("view", item_id(BEDS, 0), T0, session="replayed"))
    rec.observe(ev("view", item_id(BEDS, 1), T0 + 1, session="replayed"))
    assert rec.covis.pairs == {}  # already in the prior
    assert rec.visitor("replayed").n_events == 2  # but the visitor's state is warm
    rec.observe(ev("view", item_id(BEDS, 0), T0 + 2 * MINUTE, session="new"))
    rec.observe(ev("view", item_id(BEDS, 2), T0 + 2 * MINUTE + 1, session="new"))
    assert rec.covis.pairs[item_id(BEDS, 0)] == {item_id(BEDS, 2): 1.0}
