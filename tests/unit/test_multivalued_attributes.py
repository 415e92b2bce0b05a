"""Multi-valued catalog attributes (issue 13 item 6): `"genres": ["Comedy", "Drama"]`.

An attribute value may be a string, a number, a boolean or a list of strings, bounded by the item schema
(at most `MAX_VALUES` values of 1 to `MAX_VALUE_CHARS` characters each). Content vectors and attribute boosts
use every value of a list; single-valued items keep exactly the vectors they had before lists existed, so
trained models and replays do not change.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_reco import schemas
from stream_reco.core.content import ContentEncoder, item_features
from stream_reco.core.events import CatalogItem
from stream_reco.core.items import ItemCatalog
from stream_reco.core.rules import AttributeBoost, Batch, RuleContext
from stream_reco.core.state import VisitorState
from stream_reco.model import artifact as artifact_mod
from stream_reco.model.train import train
from stream_reco.settings import Settings
from tests.unit.core_fixtures import T0, ev, make_settings

MAX_VALUES = 32
MAX_VALUE_CHARS = 256


def item_doc(**attributes: object) -> bytes:
    return orjson.dumps({"item_id": "film-1", "title": "A film", "category": ["Movies", "Comedy"],
                         "price": 9.99, "attributes": attributes})


# ------------------------------------------------------------------------------------------ decoding
def test_list_attribute_is_decoded_as_a_tuple_of_strings() -> None:
    item = schemas.decode_item(item_doc(genres=["Comedy", "Drama"], year=1999, subtitled=True, studio="Acme"))
    assert item.attributes == {"genres": ("Comedy", "Drama"), "year": "1999", "subtitled": "true", "studio": "Acme"}
    # the record round-trips through the schema (model artifacts store items with to_dict)
    doc = item.to_dict()
    assert doc["attributes"]["genres"] == ["Comedy", "Drama"]
    schemas.validate("item", doc)
    assert schemas.decode_item(orjson.dumps(doc)) == item


def test_list_attribute_at_the_bound_is_accepted() -> None:
    values = [f"{n:03d}" + "x" * (MAX_VALUE_CHARS - 3) for n in range(MAX_VALUES)]
    assert schemas.decode_item(item_doc(tags=values)).attributes["tags"] == tuple(values)


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ([f"t{n}" for n in range(MAX_VALUES + 1)], "attributes.tags", str(MAX_VALUES)),
        (["ok", "x" * (MAX_VALUE_CHARS + 1)], "attributes.tags[1]", str(MAX_VALUE_CHARS)),
        (["ok", ""], "attributes.tags[1]", "1"),
        (["ok", 3], "attributes.tags[1]", "string"),
        (["ok", ["nested"]], "attributes.tags[1]", "string"),
    ],
)
def test_list_attribute_beyond_the_bound_is_refused_naming_the_field(value: object, field: str, words: str) -> None:
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.decode_item(item_doc(tags=value))
    assert info.value.field == field
    assert words in info.value.reason
    # the schema's explanation of the bound is passed on
    assert str(MAX_VALUES) in info.value.reason and str(MAX_VALUE_CHARS) in info.value.reason


# ------------------------------------------------------------------------------------------ content vectors
#: SHA-256 of the float32 bytes of `ContentEncoder(32, 7).encode(item)`, computed before lists existed
SINGLE_VALUED = {
    "sku-1": (CatalogItem("sku-1", category=("Movies", "Comedy"), price=12.5,
                          attributes={"genre": "Comedy", "year": "1999", "colour": " Grey "}),
              "c3ae2cf02962e69cff2d97d4cbd66c661127d8bc586aabbf18d9b264474493ba"),
    "sku-2": (CatalogItem("sku-2", category=("Home",), attributes={"brand": "Acme"}),
              "9f7ef00c0390eeacea571642e661d5edd8fd99284b763949a19d5cc7fc91ceb5"),
    "sku-3": (CatalogItem("sku-3"), "79ab28bcc2d2fc74eacbd2f2b3f50c01b1f32e8f6d26a30c06cc1dfe155dce97"),
}


@pytest.mark.parametrize("item_id", sorted(SINGLE_VALUED))
def test_single_valued_vectors_are_bit_identical_to_before(item_id: str) -> None:
    item, digest = SINGLE_VALUED[item_id]
    assert hashlib.sha256(ContentEncoder(32, 7).encode(item).tobytes()).hexdigest() == digest


def test_each_value_of_a_list_is_a_feature_like_a_single_value() -> None:
    multi = CatalogItem("m", attributes={"genres": ("Comedy", " drama ", "COMEDY"), "year": "1999"})
    names = [name for name, _ in item_features(multi)]
    assert names == ["attr:genres=comedy", "attr:genres=drama", "attr:year=1999"]
    single = CatalogItem("s", attributes={"genres": "Comedy", "year": "1999"})
    assert "attr:genres=comedy" in [name for name, _ in item_features(single)]
    # the attribute keeps its share of the weight: its values split it, so a long tag list cannot drown the
    # category (equal total squared weight for one value and for two)
    weights = dict(item_features(multi))
    assert weights["attr:genres=comedy"] ** 2 + weights["attr:genres=drama"] ** 2 == pytest.approx(
        weights["attr:year=1999"] ** 2)
    # the order of the values does not matter
    swapped = CatalogItem("m", attributes={"genres": ("Drama", "Comedy"), "year": "1999"})
    assert item_features(swapped) == item_features(multi)
    # an empty list contributes nothing and does not dilute the other attributes
    assert item_features(CatalogItem("e", attributes={"genres": (), "year": "1999"})) == (("attr:year=1999", 1.0),)


def test_content_vector_of_a_list_item_is_close_to_each_of_its_values() -> None:
    enc = ContentEncoder(64, 3)
    both = enc.encode(CatalogItem("x", attributes={"genres": ("Comedy", "Drama")}))
    comedy = enc.encode(CatalogItem("y", attributes={"genres": "Comedy"}))
    drama = enc.encode(CatalogItem("z", attributes={"genres": "Drama"}))
    horror = enc.encode(CatalogItem("w", attributes={"genres": "Horror"}))
    assert float(both @ comedy) > 0.3 and float(both @ drama) > 0.3
    assert float(both @ horror) < float(both @ comedy) - 0.2
    assert np.isfinite(both).all() and float(both @ both) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ boosts
def test_boost_matches_an_item_whose_list_contains_the_value() -> None:
    settings = make_settings()
    catalog = ItemCatalog(settings)
    rule = AttributeBoost.from_spec("genre=Comedy:1.5,genre=Drama:2")
    batch = Batch(
        ids=["a", "b", "c", "d"],
        items=[CatalogItem("a", attributes={"genre": ("Comedy", "Drama")}),
               CatalogItem("b", attributes={"genre": ("Horror",)}),
               CatalogItem("c", attributes={"genre": "Comedy"}),
               CatalogItem("d", attributes={"genre": ("comedy",)})],  # values match exactly, as single ones do
    )
    ctx = RuleContext(settings, catalog, VisitorState(), T0)
    assert rule(ctx, batch).tolist() == [3.0, 1.0, 1.5, 1.0]


# ------------------------------------------------------------------------------------------ end to end in the core
def test_list_attribute_end_to_end_in_the_core() -> None:
    """decode -> catalog (content vector from each value) -> list, where a boost on one value lifts the item."""
    from stream_reco.core.recommender import Recommender

    def after_a_drama(boosts: str) -> list[str]:
        settings = make_settings(attribute_boosts=boosts, max_category_share=0.0)
        rec = Recommender(settings, ItemCatalog(settings))
        for n in range(8):
            genre = ["Comedy", "Drama"] if n == 4 else ["Drama"]
            doc = {"item_id": f"film-{n}", "title": f"Film {n}", "category": ["Movies"], "attributes": {"genre": genre}}
            rec.upsert_item(schemas.decode_item(orjson.dumps(doc)))
        item = rec.catalog.get("film-4")
        assert item is not None and item.attributes["genre"] == ("Comedy", "Drama")
        enc = ContentEncoder(settings.embedding_dim, settings.seed)
        np.testing.assert_array_equal(rec.catalog.vector("film-4"), enc.encode(item))
        lst = rec.process(ev("view", "film-1", T0, session="s-new"))
        assert lst is not None
        return [i.item_id for i in lst.items if i.item_id != "film-1"]

    plain, boosted = after_a_drama(""), after_a_drama("genre=Comedy:5")
    # its vector uses both values: half comedy, so it is the drama least like the drama just viewed ...
    assert plain[-1] == "film-4", plain
    # ... and the boost matches "Comedy" in its list
    assert boosted[0] == "film-4", boosted


# ------------------------------------------------------------------------------------------ model artifacts
def test_training_and_artifacts_keep_list_attributes(tmp_path: Path) -> None:
    from stream_reco.core.events import Event

    catalog = [CatalogItem(f"i{n}", category=("Shop", f"c{n % 2}"),
                           attributes={"tags": ("a", f"t{n % 3}"), "brand": "Acme"}) for n in range(12)]
    events = [Event(f"e{v}-{k}", "view", f"i{(v + k) % 12}", 1_000_000 + v * 100 + k, session_id=f"s{v}")
              for v in range(40) for k in range(5)]
    settings = Settings.load(env={}, embedding_dim=8)
    art = train(events, catalog, settings, progress=False, version="v-lists")
    path = artifact_mod.save(art, tmp_path)
    loaded = artifact_mod.load(path)
    assert [i.attributes for i in loaded.catalog] == [i.attributes for i in catalog]
    cat = ItemCatalog(settings)
    cat.load_model(loaded, background=False)
    assert cat.get("i1") is not None and cat.get("i1").attributes["tags"] == ("a", "t1")
