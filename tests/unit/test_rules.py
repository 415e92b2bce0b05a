"""Each business rule on its own, then the composed pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stream_reco.core.events import CatalogItem
from stream_reco.core.rules import (
    AttributeBoost,
    Batch,
    ExcludeInteracted,
    NotDismissed,
    NotPurchased,
    PageScope,
    Recommendable,
    RuleContext,
    SuppressPurchasedCategories,
    ViewedPenalty,
    apply_rules,
    default_rules,
    excluded_ids,
    in_scope,
    parse_attribute_boosts,
)
from stream_reco.core.state import VisitorState
from stream_reco.settings import SettingsError
from tests.unit.core_fixtures import DAY, MINUTE, T0, ev, item_id, make_catalog, make_items, make_settings

MIXER, MIXER2, KETTLE, SOFA = item_id(0, 0), item_id(0, 1), item_id(1, 0), item_id(3, 0)


@pytest.fixture
def settings():
    return make_settings()


@pytest.fixture
def catalog(settings):
    return make_catalog(settings)


def ctx_for(settings, catalog, state=None, now=T0 + MINUTE, **kw):
    return RuleContext(settings, catalog, state or VisitorState(), now, **kw)


def run(rule, ctx, ids):
    out = rule(ctx, Batch.of(ids, ctx.catalog))
    return None if out is None else out.tolist()


def test_recommendable_drops_unknown_out_of_stock_and_deleted(settings, catalog):
    catalog.upsert(dataclasses.replace(catalog.get(KETTLE), in_stock=False))
    catalog.upsert(dataclasses.replace(catalog.get(SOFA), deleted=True))
    assert run(Recommendable(), ctx_for(settings, catalog), [MIXER, KETTLE, SOFA, "ghost"]) == [1, 0, 0, 0]


def test_not_dismissed(settings, catalog):
    state = VisitorState()
    assert run(NotDismissed(), ctx_for(settings, catalog, state), [MIXER]) is None  # nothing to do
    state.apply(ev("dismiss", MIXER, T0), settings)
    assert run(NotDismissed(), ctx_for(settings, catalog, state), [MIXER, KETTLE]) == [0, 1]


def test_not_purchased_unless_repurchasable(settings, catalog):
    state = VisitorState()
    state.apply(ev("purchase", MIXER, T0), settings)
    state.apply(ev("purchase", KETTLE, T0), settings)
    catalog.upsert(dataclasses.replace(catalog.get(KETTLE), repurchasable=True))
    assert run(NotPurchased(), ctx_for(settings, catalog, state), [MIXER, KETTLE, SOFA]) == [0, 1, 1]


def test_purchase_category_suppressed_for_the_window_only(settings, catalog):
    state = VisitorState()
    cat = catalog.get(MIXER).category_path
    state.apply(ev("purchase", MIXER, T0), settings, category=cat)
    rule = SuppressPurchasedCategories(days=2.0)
    assert run(rule, ctx_for(settings, catalog, state, now=T0 + DAY), [MIXER2, KETTLE]) == [0, 1]
    assert run(rule, ctx_for(settings, catalog, state, now=T0 + 2 * DAY + 1), [MIXER2, KETTLE]) is None
    assert run(SuppressPurchasedCategories(days=0), ctx_for(settings, catalog, state), [MIXER2]) is None


def test_viewed_penalty_only_for_current_session(settings, catalog):
    state = VisitorState()
    state.apply(ev("view", MIXER, T0), settings)
    rule = ViewedPenalty(0.5)
    assert run(rule, ctx_for(settings, catalog, state), [MIXER, KETTLE]) == [0.5, 1.0]
    later = T0 + settings.session_gap_s * 1000 + MINUTE
    assert run(rule, ctx_for(settings, catalog, state, now=later), [MIXER, KETTLE]) is None
    assert run(ViewedPenalty(1.0), ctx_for(settings, catalog, state), [MIXER]) is None


@pytest.mark.parametrize(
    ("path", "page", "expected"),
    [
        ("Kitchen/Appliances/Kettles", "Kitchen/Appliances/Stand mixers", True),  # sibling
        ("Kitchen/Appliances/Stand mixers", "Kitchen/Appliances/Stand mixers", True),  # itself
        ("Kitchen/Cookware/Pans", "Kitchen/Appliances/Stand mixers", False),  # cousin
        ("Kitchen/Cookware/Pans", "Kitchen/Appliances", True),  # sibling subtree of a mid-level page
        ("Kitchen/Cookware/Pans", "Kitchen", True),  # top-level page scopes to its subtree
        ("Garden/Tools/Spades", "Kitchen", False),
    ],
)
def test_in_scope(path, page, expected):
    assert in_scope(path, page) is expected


def test_page_scope_rule(settings, catalog):
    page = "Kitchen/Appliances/Stand mixers"
    assert run(PageScope(), ctx_for(settings, catalog), [MIXER]) is None  # no page: no scoping
    got = run(PageScope(), ctx_for(settings, catalog, page_category=page), [MIXER, KETTLE, SOFA, "ghost"])
    assert got == [1, 1, 0, 0]


def test_attribute_boosts_parse_and_multiply(settings, catalog):
    assert parse_attribute_boosts("brand=Acme:1.5, colour=grey:0.8") == (
        ("brand", "Acme", 1.5),
        ("colour", "grey", 0.8),
    )
    assert parse_attribute_boosts("") == ()
    rule = AttributeBoost.from_spec("brand=Acme:1.5,brand=Other:0.5")
    # fixture items: n % 3 == 0 -> Acme
    assert run(rule, ctx_for(settings, catalog), [item_id(0, 0), item_id(0, 1), "ghost"]) == [1.5, 0.5, 1.0]
    assert run(AttributeBoost(()), ctx_for(settings, catalog), [MIXER]) is None


@pytest.mark.parametrize("spec", ["brand", "brand=Acme", "brand=Acme:x", "=v:1", "a=b:-1"])
def test_attribute_boost_rejects_bad_specs(spec):
    with pytest.raises(SettingsError):
        parse_attribute_boosts(spec)


def test_exclude_interacted_only_when_asked(settings, catalog):
    state = VisitorState()
    state.apply(ev("view", MIXER, T0), settings)
    state.apply(ev("dismiss", SOFA, T0), settings)
    assert run(ExcludeInteracted(), ctx_for(settings, catalog, state), [MIXER]) is None
    got = run(ExcludeInteracted(), ctx_for(settings, catalog, state, exclude_interacted=True), [MIXER, KETTLE, SOFA])
    assert got == [0, 1, 0]


def test_default_pipeline_follows_settings(settings):
    names = [r.name for r in default_rules(settings)]
    assert names[:4] == ["recommendable", "not_dismissed", "not_purchased", "exclude_interacted"]
    assert "attribute_boost" not in names
    off = settings.replace(purchase_suppress_days=0.0, viewed_penalty=1.0, attribute_boosts="brand=Acme:2")
    names = [r.name for r in default_rules(off)]
    assert "suppress_purchased_categories" not in names and "viewed_penalty" not in names
    assert "attribute_boost" in names


def test_rules_compose_by_multiplying_and_filters_win(settings, catalog):
    state = VisitorState()
    state.apply(ev("view", MIXER, T0), settings)
    state.apply(ev("dismiss", MIXER2, T0), settings)
    rules = default_rules(settings.replace(attribute_boosts="brand=Acme:3"))
    ctx = ctx_for(settings, catalog, state)
    mult = apply_rules(rules, ctx, Batch.of([MIXER, MIXER2, KETTLE], catalog))
    assert mult.tolist() == pytest.approx([settings.viewed_penalty * 3, 0.0, 3.0])
    assert isinstance(mult, np.ndarray)


def test_excluded_ids_spares_repurchasable(settings, catalog):
    state = VisitorState()
    state.apply(ev("purchase", MIXER, T0), settings)
    state.apply(ev("purchase", KETTLE, T0), settings)
    state.apply(ev("dismiss", SOFA, T0), settings)
    state.apply(ev("view", MIXER2, T0), settings)
    catalog.upsert(dataclasses.replace(catalog.get(KETTLE), repurchasable=True))
    assert excluded_ids(ctx_for(settings, catalog, state)) == [SOFA, MIXER]
    assert excluded_ids(ctx_for(settings, catalog, state, exclude_interacted=True)) == [SOFA, MIXER, KETTLE, MIXER2]


def test_fixture_catalog_is_as_expected():
    items = make_items()
    assert len({i.item_id for i in items}) == len(items)
    assert isinstance(items[0], CatalogItem)
