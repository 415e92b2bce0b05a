"""Placements (contract "Placements") and the seen-in-session promise, in the core, on the exact and annoy index.

Every test takes `make_rec` from the behavioural suite (tests/unit/test_recommender.py), which is parametrised
over both search indexes and checks that the catalogue answers with the one it names.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stream_reco.core import explain
from stream_reco.core.placements import visitor_cart
from stream_reco.core.rank import mmr
from stream_reco.core.recommender import Recommender
from stream_reco.core.state import VisitorState
from tests.unit.core_fixtures import MINUTE, T0, ev, item_id, make_settings
from tests.unit.test_recommender import (
    LEAVES,
    MakeRec,
    index_kind,
    leaf,
    make_rec,
    path,
    warm_shop,
)

#: the behavioural suite's fixtures, parametrised over the exact and the annoy index (used by name by the tests)
SHARED_FIXTURES = (index_kind, make_rec)
MIXERS, KETTLES, PANS, SOFAS, TABLES, BEDS, SPADES, ROSES = range(8)
PLACEMENT_ARGS: dict[str, dict[str, object]] = {
    "home": {},
    "product": {"item": item_id(SOFAS, 0)},
    "cart": {"cart": (item_id(SOFAS, 0),)},
    "category": {"category": "Furniture"},
}


def title(li: int, n: int) -> str:
    return f"{LEAVES[li][-1][:-1]} model {n}"


def shop(rec: Recommender) -> int:
    """The behavioural suite's warm shop, plus shoppers who look at a sofa and then at the coffee table of the
    same number (so coffee tables are co-viewed with sofas: a sofa's complements). Returns the time after."""
    t = warm_shop(rec)
    for v in range(4):
        for n in range(4):
            rec.observe(ev("view", item_id(SOFAS, n), t, session=f"x{v}-{n}"))
            rec.observe(ev("view", item_id(TABLES, n), t + 1000, session=f"x{v}-{n}"))
            t += 2000
    return t + 2 * MINUTE


def items_of(lst) -> list[str]:
    return [r.item_id for r in lst]


# --- product ---


def test_product_lists_the_items_relations_never_the_item_and_names_it_in_reasons(make_rec: MakeRec):
    rec = make_rec()
    t = shop(rec)
    sofa = item_id(SOFAS, 0)
    lst = rec.recommend("cold", t, placement="product", item=sofa)
    assert len(lst) == rec.settings.list_size
    assert sofa not in items_of(lst)
    # a cold visitor: every item is there because of the sofa, and its reason says so
    allowed = {explain.often_viewed_with(title(SOFAS, 0)), explain.similar_to(title(SOFAS, 0))}
    assert {r.reason for r in lst} <= allowed, {r.reason for r in lst}
    assert explain.similar_to("Sofa model 0") == "Similar to Sofa model 0"
    # the coffee table co-viewed with that sofa is among them, explained by the co-views
    table = next(r for r in lst if r.item_id == item_id(TABLES, 0))
    assert table.reason == "Often viewed with Sofa model 0"


def test_product_is_personalised_by_the_visitors_session(make_rec: MakeRec):
    rec = make_rec()
    t = shop(rec)
    sofa = item_id(SOFAS, 0)
    for n in (5, 6, 7):  # this visitor browses coffee tables
        rec.observe(ev("view", item_id(TABLES, n), t + n, session="tables"))
    cold = rec.recommend("cold", t + MINUTE, placement="product", item=sofa)
    warm = rec.recommend("tables", t + MINUTE, placement="product", item=sofa)
    assert sofa not in items_of(warm)
    n_tables = [sum(leaf(i) == TABLES for i in items_of(lst)) for lst in (cold, warm)]
    assert n_tables[1] > n_tables[0], n_tables


def test_product_of_an_item_the_catalogue_does_not_know_falls_back_to_the_rules_list(make_rec: MakeRec):
    rec = make_rec()
    t = shop(rec)
    rec.observe(ev("dismiss", item_id(SOFAS, 0), t, session="me"))
    lst = rec.recommend("me", t + MINUTE, placement="product", item="not-in-the-catalogue")
    assert len(lst) == rec.settings.list_size
    assert item_id(SOFAS, 0) not in items_of(lst)
    assert all(r.reason for r in lst)


def test_similar_is_the_product_placement_for_nobody_in_particular(make_rec: MakeRec):
    rec = make_rec()
    t = shop(rec)
    sofa = item_id(SOFAS, 0)
    rec.observe(ev("dismiss", item_id(SOFAS, 1), t, session="me"))  # one visitor's dismissal is not everyone's
    record = rec.similar(sofa, t + 1, k=5)
    assert record.placement == "product" and len(record.items) == 5
    assert sofa not in [r.item_id for r in record.items]
    assert [r.item_id for r in record.items] == items_of(rec.recommend("cold", t + 1, k=5, placement="product",
                                                                       item=sofa))


# --- cart ---


def test_cart_lists_complements_never_a_cart_item(make_rec: MakeRec):
    rec = make_rec()
    t = shop(rec)
    cart = (item_id(SOFAS, 0), item_id(SOFAS, 1))
    lst = rec.recommend("cold", t, placement="cart", cart=cart)
    assert len(lst) == rec.settings.list_size
    assert not set(cart) & set(items_of(lst))
    got = {r.item_id: r.reason for r in lst}
    assert got[item_id(TABLES, 0)] == "Often viewed with Sofa model 0"
    assert got[item_id(TABLES, 1)] == "Often viewed with Sofa model 1"
    # complements, not look-alikes: no item is there for its embedding similarity
    assert not any(r.reason.startswith("Similar to ") for r in lst)


def test_cart_without_items_uses_the_visitors_cart(make_rec: MakeRec):
    rec = make_rec(purchase_suppress_days=0.0)
    t = shop(rec)
    rec.observe(ev("add_to_cart", item_id(SOFAS, 0), t, session="me"))
    rec.observe(ev("add_to_cart", item_id(SOFAS, 1), t + 1, session="me"))
    rec.observe(ev("purchase", item_id(SOFAS, 1), t + 2, session="me"))
    assert visitor_cart(rec.visitor("me"), t + 3, rec.settings) == [item_id(SOFAS, 0)]
    lst = rec.recommend("me", t + 3, placement="cart")
    assert item_id(SOFAS, 0) not in items_of(lst) and item_id(SOFAS, 1) not in items_of(lst)
    assert {r.item_id: r.reason for r in lst}[item_id(TABLES, 0)] == "Often viewed with Sofa model 0"
    # an empty cart, or cart items nobody knows: still a full list, never an error
    assert len(rec.recommend("nobody", t, placement="cart")) == rec.settings.list_size
    assert len(rec.recommend("nobody", t, placement="cart", cart=("ghost-1", "ghost-2"))) == rec.settings.list_size


def test_visitor_cart_is_this_sessions_adds_not_bought_since():
    settings = make_settings()
    gap = settings.session_gap_s * 1000
    state = VisitorState()
    state.apply(ev("add_to_cart", "old", T0), settings)  # an earlier session's cart
    t = T0 + gap + 1
    for n, (kind, item) in enumerate([("view", "x"), ("add_to_cart", "a"), ("add_to_cart", "b"),
                                      ("purchase", "b"), ("add_to_cart", "a")]):
        state.apply(ev(kind, item, t + n), settings)
    assert visitor_cart(state, t + 10, settings) == ["a"]
    assert visitor_cart(state, t + 10 + gap + 1, settings) == []  # the session ended


# --- category ---


@pytest.mark.parametrize("scope", ["Furniture", "Furniture/Living room", path(SOFAS)])
def test_category_lists_only_the_subtree(make_rec: MakeRec, scope: str):
    rec = make_rec()
    t = shop(rec)
    rec.observe(ev("view", item_id(KETTLES, 1), t, session="me"))  # a visitor whose taste is elsewhere
    for who in ("me", "cold"):
        lst = rec.recommend(who, t + MINUTE, placement="category", category=scope)
        assert len(lst) == rec.settings.list_size
        assert all("/".join(LEAVES[leaf(i)]).startswith(scope) for i in items_of(lst)), items_of(lst)
        assert all(r.reason for r in lst)


def test_category_page_scope_replaces_the_last_pages_scope(make_rec: MakeRec):
    rec = make_rec(scope_to_page_category=True)
    t = shop(rec)
    rec.observe(ev("view", item_id(KETTLES, 1), t, session="me", page_category=path(KETTLES)))
    lst = rec.recommend("me", t + 1, placement="category", category="Garden")
    assert len(lst) == rec.settings.list_size and {leaf(i) for i in items_of(lst)} <= {SPADES, ROSES}


def test_category_scope_is_a_subtree_not_a_string_prefix(make_rec: MakeRec):
    rec = make_rec()
    t = shop(rec)
    assert rec.recommend("me", t, placement="category", category="Furniture/Living") == []


# --- every rule in every placement ---


@pytest.mark.parametrize("placement", list(PLACEMENT_ARGS))
def test_dismissed_bought_sold_out_and_excluded_items_never_listed(make_rec: MakeRec, placement: str):
    rec = make_rec(purchase_suppress_days=0.0)
    t = shop(rec)
    rec.observe(ev("view", item_id(TABLES, 6), t, session="me"))
    args = PLACEMENT_ARGS[placement]
    before = items_of(rec.recommend("me", t + 1, placement=placement, **args))
    assert len(before) == rec.settings.list_size
    dismissed, bought, sold_out, excluded = before[:4]
    rec.observe(ev("dismiss", dismissed, t + 2, session="me"))
    rec.observe(ev("purchase", bought, t + 3, session="me"))
    rec.upsert_item(dataclasses.replace(rec.catalog.get(sold_out), in_stock=False))
    after = rec.recommend("me", t + 4, placement=placement, exclude=[excluded], **args)
    assert len(after) == rec.settings.list_size
    assert not {dismissed, bought, sold_out, excluded} & set(items_of(after))
    assert all(r.reason for r in after)


@pytest.mark.parametrize("placement", list(PLACEMENT_ARGS))
def test_a_purchase_suppresses_its_category_in_every_placement(make_rec: MakeRec, placement: str):
    rec = make_rec()
    t = shop(rec)
    rec.observe(ev("purchase", item_id(TABLES, 9), t, session="me"))
    args = PLACEMENT_ARGS[placement]
    lst = rec.recommend("me", t + 1, placement=placement, **args)
    assert lst and TABLES not in {leaf(i) for i in items_of(lst)}


@pytest.mark.parametrize("placement", list(PLACEMENT_ARGS))
def test_category_cap_holds_in_every_placement(make_rec: MakeRec, placement: str):
    rec = make_rec()
    t = shop(rec)
    lst = rec.recommend("cold", t, placement=placement, **PLACEMENT_ARGS[placement])
    cap = int(rec.settings.max_category_share * rec.settings.list_size)
    counts = [sum(leaf(i) == li for i in items_of(lst)) for li in range(len(LEAVES))]
    assert max(counts) <= cap, counts


# --- arguments ---


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"placement": "basket"}, "unknown placement 'basket'"),
    ({"placement": "product"}, "placement 'product' needs the item"),
    ({"placement": "category"}, "placement 'category' needs a category path"),
    ({"placement": "category", "category": "/"}, "placement 'category' needs a category path"),
    ({"placement": "home", "item": "x"}, "item goes with placement 'product'"),
    ({"placement": "product", "item": "x", "cart": ("y",)}, "cart goes with placement 'cart'"),
    ({"placement": "cart", "category": "Furniture"}, "category goes with placement 'category'"),
])
def test_bad_placement_arguments_raise_value_error_with_a_message(make_rec: MakeRec, kwargs, message: str):
    rec = make_rec()
    with pytest.raises(ValueError, match=message):
        rec.recommend("me", T0, **kwargs)
    with pytest.raises(ValueError, match=message):
        rec.recommendation("me", T0, **kwargs)


def test_recommendation_carries_its_placement(make_rec: MakeRec):
    rec = make_rec()
    t = shop(rec)
    record = rec.recommendation("me", t, placement="product", item=item_id(SOFAS, 0), k=5)
    assert record.placement == "product" and len(record.items) == 5
    assert item_id(SOFAS, 0) not in [r.item_id for r in record.items]
    assert rec.recommendation("me", t).placement == "home"


# --- seen in session ---


def browse(rec: Recommender, t: int, items: list[str], session: str = "me") -> int:
    for n, i in enumerate(items):
        rec.observe(ev("view", i, t + n * MINUTE, session=session))
    return t + len(items) * MINUTE


@pytest.mark.parametrize("event_type", ["view", "add_to_cart"])
def test_the_triggering_item_is_never_in_the_list_it_triggers(make_rec: MakeRec, event_type: str):
    rec = make_rec(max_seen_slots=10)  # no seen cap: the trigger rule alone keeps it out
    t = shop(rec)
    t = browse(rec, t, [item_id(BEDS, 2), item_id(ROSES, 3)])
    trigger = ev(event_type, item_id(SOFAS, 4), t, session="me")
    record = rec.process(trigger)
    assert record is not None and len(record.items) == rec.settings.list_size
    assert trigger.item_id not in [r.item_id for r in record.items]
    # without the rule it would lead the list ("You viewed this recently")
    assert rec.recommend("me", t)[0].item_id == trigger.item_id
    # on a product page the page's item is never listed either, triggered or not
    page = rec.recommendation("me", t, trigger=trigger, placement="product", item=item_id(BEDS, 2))
    assert not {trigger.item_id, item_id(BEDS, 2)} & {r.item_id for r in page.items}


@pytest.mark.parametrize("max_seen", [0, 1, 2])
def test_seen_items_take_at_most_max_seen_slots_of_the_visible_list(make_rec: MakeRec, max_seen: int):
    rec = make_rec(max_seen_slots=max_seen)
    t = shop(rec)
    mine = [item_id(BEDS, 2), item_id(ROSES, 3), item_id(SOFAS, 4), item_id(BEDS, 6), item_id(SPADES, 1)]
    t = browse(rec, t, mine)
    for placement, args in PLACEMENT_ARGS.items():
        lst = items_of(rec.recommend("me", t, placement=placement, **args))
        assert len(lst) == rec.settings.list_size
        assert sum(i in mine for i in lst[: rec.settings.list_size]) <= max_seen, (placement, lst)
    # without the cap the recent source brings back three of them (the "3 of 10 slots")
    uncapped = make_rec(max_seen_slots=10)
    browse(uncapped, shop(uncapped), mine)
    assert sum(i in mine for i in items_of(uncapped.recommend("me", t))) == 3


def test_seen_cap_binds_only_the_visible_slots_of_a_longer_list(make_rec: MakeRec):
    rec = make_rec(max_seen_slots=1)
    t = shop(rec)
    mine = [item_id(BEDS, 2), item_id(ROSES, 3), item_id(SOFAS, 4)]
    t = browse(rec, t, mine)
    lst = items_of(rec.recommend("me", t, k=20))
    assert sum(i in mine for i in lst[:10]) <= 1
    assert sum(i in mine for i in lst) >= 2  # after the visible ten, plain ranking


def test_mmr_seen_limit_is_a_hard_cap_that_never_shortens_the_list():
    scores = np.array([1.0, 0.9, 0.8, 0.7, 0.6])
    vectors = np.eye(5, dtype=np.float32)
    seen = np.array([True, True, True, False, False])
    assert mmr(scores, vectors, 4, 1.0, limited=seen, max_limited=1).tolist() == [0, 3, 4, 1]
    assert mmr(scores, vectors, 4, 1.0, limited=seen, max_limited=0).tolist() == [3, 4, 0, 1]
    assert mmr(scores, vectors, 4, 1.0, limited=seen, max_limited=1, capped_slots=2).tolist() == [0, 3, 1, 2]
    assert mmr(scores, vectors, 4, 1.0, limited=None).tolist() == [0, 1, 2, 3]

