"""Lists a page can render, and lists with an identity (docs/contracts.md, "Recommendation").

Each listed item carries the catalog's title, price and category path, so a page needs no catalog lookup;
each list carries a unique `list_id` (impressions and clicks echo it), its `placement` and its `experiment`.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream_reco import schemas
from stream_reco.core import render
from stream_reco.core.events import CatalogItem, Recommendation, RecommendedItem
from stream_reco.core.items import ItemCatalog
from stream_reco.core.recommender import Recommender
from tests.unit.core_fixtures import LEAVES, T0, ev, item_id, make_catalog, make_settings

SOFA = LEAVES.index(("Furniture", "Living room", "Sofas"))


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """A published document without what differs between two publications of the same list."""
    return {k: v for k, v in doc.items() if k not in ("list_id", "generated_at", "latency_ms")}


@pytest.fixture
def catalog() -> ItemCatalog:
    cat = ItemCatalog(make_settings())
    cat.upsert(CatalogItem("sofa-1", title="Three-seat sofa, grey", category=("Furniture", "Living room", "Sofas"),
                           price=499.0))
    cat.upsert(CatalogItem("mug-1", title="Mug", category=("Kitchen",)))  # no price
    return cat


# ------------------------------------------------------------------------------------------ render.describe
def test_describe_copies_title_price_and_category_from_the_catalog(catalog: ItemCatalog) -> None:
    out = render.describe(catalog, [RecommendedItem("sofa-1", 0.83, "Because you viewed 3 sofas today")])
    assert out == (
        RecommendedItem("sofa-1", 0.83, "Because you viewed 3 sofas today", title="Three-seat sofa, grey",
                        price=499.0, category=("Furniture", "Living room", "Sofas")),
    )
    assert out[0].to_dict() == {
        "item_id": "sofa-1", "score": 0.83, "reason": "Because you viewed 3 sofas today",
        "title": "Three-seat sofa, grey", "price": 499.0, "category": ["Furniture", "Living room", "Sofas"],
    }
    assert list(out[0].to_dict()) == ["item_id", "score", "reason", "title", "price", "category"]


def test_describe_omits_what_the_catalog_does_not_know(catalog: ItemCatalog) -> None:
    given = [RecommendedItem("ghost", 0.5, "r"), RecommendedItem("mug-1", 0.4, "r")]
    unknown, no_price = render.describe(catalog, given)
    assert unknown.to_dict() == {"item_id": "ghost", "score": 0.5, "reason": "r"}
    assert no_price.to_dict() == {"item_id": "mug-1", "score": 0.4, "reason": "r", "title": "Mug",
                                  "category": ["Kitchen"]}
    for item in (unknown, no_price):
        doc = Recommendation(items=(item,), generated_at=T0, session_id="s").to_dict()
        schemas.validate("recommendation", doc)


def test_describe_keeps_order_score_reason_and_variant(catalog: ItemCatalog) -> None:
    given = [RecommendedItem("mug-1", 0.9, "a", variant="personal"), RecommendedItem("sofa-1", 0.1, "b")]
    out = render.describe(catalog, given)
    assert [(i.item_id, i.score, i.reason, i.variant) for i in out] == [
        ("mug-1", 0.9, "a", "personal"), ("sofa-1", 0.1, "b", None)]
    assert out[0].to_dict()["variant"] == "personal" and "variant" not in out[1].to_dict()


def test_recommendation_items_carry_what_a_page_renders() -> None:
    settings = make_settings()
    rec = Recommender(settings, make_catalog(settings))
    lst = rec.process(ev("view", item_id(SOFA, 1), T0, session="s-r"))
    assert lst is not None and lst.items
    for it in lst.items:
        known = rec.catalog.get(it.item_id)
        assert known is not None
        assert (it.title, it.price, it.category) == (known.title, known.price, known.category)
        d = it.to_dict()
        assert d["title"] == known.title and d["price"] == known.price and d["category"] == list(known.category)


# ------------------------------------------------------------------------------------------ list identity
def test_list_ids_are_unique_per_list_and_stable_within_one() -> None:
    settings = make_settings()
    rec = Recommender(settings, make_catalog(settings))
    lists = [rec.recommendation("s-same", T0) for _ in range(50)]
    ids = [x.list_id for x in lists]
    assert len(set(ids)) == len(ids), "every list gets its own id, even with equal contents"
    assert all(i.startswith("l-") and 3 <= len(i) <= 128 for i in ids)
    one = lists[0]
    assert one.to_dict()["list_id"] == one.to_dict()["list_id"] == one.list_id  # stable within one list
    assert orjson.loads(schemas.encode(one.to_dict()))["list_id"] == one.list_id
    # equal contents compare equal: the id names a publication, not the contents
    assert lists[0] == lists[1] and comparable(lists[0].to_dict()) == comparable(lists[1].to_dict())


def test_a_caller_may_pass_a_list_id() -> None:
    assert Recommendation(items=(), generated_at=T0, session_id="s", list_id="l-mine").to_dict()["list_id"] == "l-mine"


def test_recommendation_document_shape_follows_the_contract() -> None:
    rec = Recommendation(items=(RecommendedItem("a", 1.0, "r"),), generated_at=T0, user_id="u", session_id="s",
                         trigger_event_id="e", model_version="m", latency_ms=1.5)
    doc = rec.to_dict()
    assert list(doc) == ["list_id", "placement", "user_id", "session_id", "experiment", "items", "generated_at",
                         "trigger_event_id", "model_version", "latency_ms"]
    assert doc["placement"] == "home" and doc["experiment"] is None
    schemas.validate("recommendation", doc)


def test_experiment_and_interleaved_variants_are_emitted_when_set() -> None:
    rec = Recommendation(
        items=(RecommendedItem("a", 1.0, "r", variant="control"), RecommendedItem("b", 0.5, "r", variant="diverse")),
        generated_at=T0, session_id="s", placement="product",
        experiment={"id": "ranking-2026-12", "variant": "interleaved"},
    )
    doc = orjson.loads(schemas.encode(rec.to_dict()))
    assert doc["placement"] == "product"
    assert doc["experiment"] == {"id": "ranking-2026-12", "variant": "interleaved"}
    assert [i["variant"] for i in doc["items"]] == ["control", "diverse"]
    schemas.validate("recommendation", doc)


# ------------------------------------------------------------------------------------------ schema
def _doc(**changes: Any) -> dict[str, Any]:
    doc = Recommendation(items=(RecommendedItem("a", 1.0, "r", title="T", price=1.0, category=("C",)),),
                         generated_at=T0, session_id="s").to_dict()
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"list_id": ""}, "list_id"),
        ({"list_id": 5}, "list_id"),
        ({"placement": "sidebar"}, "placement"),
        ({"experiment": {"id": "x"}}, "experiment.variant"),
        ({"experiment": "x"}, "experiment"),
        ({"items": [{"item_id": "a", "score": 1.0, "reason": "r", "price": "1"}]}, "items[0].price"),
        ({"items": [{"item_id": "a", "score": 1.0, "reason": "r", "category": "A/B"}]}, "items[0].category"),
        ({"items": [{"item_id": "a", "score": 1.0, "reason": "r", "title": 3}]}, "items[0].title"),
        ({"items": [{"item_id": "a", "score": 1.0, "reason": "r", "variant": ""}]}, "items[0].variant"),
    ],
)
def test_schema_refuses_bad_new_fields(change: dict[str, Any], field: str) -> None:
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.validate("recommendation", _doc(**change))
    assert info.value.field == field


def test_schema_requires_list_id_and_placement_of_what_workers_emit() -> None:
    for missing in ("list_id", "placement"):
        doc = _doc()
        del doc[missing]
        with pytest.raises(schemas.InvalidMessage) as info:
            schemas.validate("recommendation", doc)
        assert info.value.field == missing
    doc = _doc()
    del doc["experiment"]  # absent means no experiment, like null
    schemas.validate("recommendation", doc)
