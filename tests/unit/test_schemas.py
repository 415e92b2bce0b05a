"""The schemas and the edge validation layer (`stream_reco.schemas`).

The example documents under `schemas/examples/<kind>/{valid,invalid}/` are the tables: every valid one must
pass, every invalid one must fail naming the field that `schemas/examples/<kind>/expected_fields.json` gives
for it (null: the whole document). Each example is also checked with jsonschema, the reference draft 2020-12
implementation, so the compiled fast-path validator cannot quietly disagree with the standard; hypothesis
then looks for a disagreement, and for any input that makes a decoder raise something other than
`InvalidMessage`.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import pickle
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from stream_reco import schemas
from stream_reco.core.events import EVENT_TYPES, PLACEMENTS, CatalogItem, Event, Recommendation, RecommendedItem
from stream_reco.schemas import InvalidMessage, SchemaLoadError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schemas"
EXAMPLES = SCHEMA_DIR / "examples"
T = 1_764_150_000_000
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_REFERENCE: dict[str, Draft202012Validator] = {}


def reference(kind: str) -> Draft202012Validator:
    """jsonschema's validator for `kind`, built from the very file the fast path compiled."""
    if kind not in _REFERENCE:
        _REFERENCE[kind] = Draft202012Validator(schemas.get_schema(kind))
    return _REFERENCE[kind]


def expected_fields(kind: str) -> dict[str, str | None]:
    return json.loads((EXAMPLES / kind / "expected_fields.json").read_text())


def example_params(validity: str) -> list[Any]:
    return [
        pytest.param(kind, path, id=f"{kind}/{path.stem}")
        for kind in schemas.KINDS
        for path in sorted((EXAMPLES / kind / validity).glob("*.json"))
    ]


def fast_verdict(kind: str, doc: object) -> bool:
    try:
        schemas.validate(kind, doc)
    except InvalidMessage:
        return False
    return True


# --- the schema files themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", schemas.KINDS)
def test_schema_file_is_a_valid_draft_2020_12_schema(kind: str) -> None:
    schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]


def _properties(node: object, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, subschema) declared under a `properties` keyword, at any depth."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for name, sub in value.items():
                    found.append((f"{path}.{name}".lstrip("."), sub))
                    found.extend(_properties(sub, f"{path}.{name}"))
            elif key not in ("if", "else", "then"):  # conditionals restate fields documented at the top
                found.extend(_properties(value, path))
    elif isinstance(node, list):
        for item in node:
            found.extend(_properties(item, path))
    return found


@pytest.mark.parametrize("kind", schemas.KINDS)
def test_every_field_is_described(kind: str) -> None:
    undocumented = [path for path, sub in _properties(schemas.get_schema(kind)) if not sub.get("description")]
    assert not undocumented


def test_schema_fields_match_the_contract() -> None:
    """Names from docs/contracts.md: renaming one breaks every shop, so it must show up here."""
    top = {kind: set(schemas.get_schema(kind)["properties"]) for kind in schemas.KINDS}
    assert top["event"] == {"event_id", "event_type", "user_id", "session_id", "item_id", "timestamp", "context"}
    assert set(schemas.get_schema("event")["properties"]["context"]["properties"]) == {
        "page_category",
        "quantity",
        "price",
        "reason",
        "list_id",
        "shown",
        "position",
    }
    assert schemas.get_schema("event")["properties"]["event_type"]["enum"] == list(EVENT_TYPES)
    assert top["item"] == {
        "item_id",
        "title",
        "category",
        "price",
        "in_stock",
        "repurchasable",
        "attributes",
        "deleted",
        "updated_at",
    }
    assert top["recommendation"] == {
        "list_id",
        "placement",
        "experiment",
        "user_id",
        "session_id",
        "items",
        "generated_at",
        "trigger_event_id",
        "model_version",
        "latency_ms",
    }
    assert set(schemas.get_schema("recommendation")["properties"]["items"]["items"]["properties"]) == {
        "item_id",
        "score",
        "reason",
        "title",
        "price",
        "category",
        "variant",
    }
    assert set(schemas.get_schema("recommendation")["properties"]["experiment"]["properties"]) == {"id", "variant"}
    assert schemas.get_schema("recommendation")["properties"]["placement"]["enum"] == list(PLACEMENTS)
    assert {"error", "field", "topic", "partition", "offset", "raw", "received_at"} <= top["dead_letter"]
    assert set(schemas.get_schema("dead_letter")["required"]) == {
        "error",
        "field",
        "topic",
        "partition",
        "offset",
        "raw",
        "received_at",
    }


def test_dead_letter_raw_bound_matches_the_cap() -> None:
    bound = schemas.get_schema("dead_letter")["properties"]["raw"]["maxLength"]
    assert bound == len(base64.b64encode(b"\0" * schemas.DEAD_LETTER_RAW_CAP))


def test_get_schema_returns_a_copy() -> None:
    schemas.get_schema("event")["properties"].clear()
    assert schemas.get_schema("event")["properties"]


# --- the example tables ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", schemas.KINDS)
def test_examples_are_complete(kind: str) -> None:
    valid = sorted(p.name for p in (EXAMPLES / kind / "valid").glob("*.json"))
    invalid = sorted(p.name for p in (EXAMPLES / kind / "invalid").glob("*.json"))
    assert len(valid) >= 3 and len(invalid) >= 3
    assert sorted(expected_fields(kind)) == invalid, "every invalid example needs its expected field, and only those"


@pytest.mark.parametrize(("kind", "path"), example_params("valid"))
def test_valid_example_passes(kind: str, path: Path) -> None:
    doc = json.loads(path.read_text())
    schemas.validate(kind, doc)
    assert reference(kind).is_valid(doc), "the reference validator disagrees"


@pytest.mark.parametrize(("kind", "path"), example_params("invalid"))
def test_invalid_example_fails_on_its_field(kind: str, path: Path) -> None:
    doc = json.loads(path.read_text())
    with pytest.raises(InvalidMessage) as info:
        schemas.validate(kind, doc)
    assert info.value.field == expected_fields(kind)[path.name], str(info.value)
    assert info.value.reason
    assert not reference(kind).is_valid(doc), "the reference validator disagrees"


_DECODERS = {"event": schemas.decode_event, "item": schemas.decode_item}


@pytest.mark.parametrize(("kind", "path"), [p for p in example_params("valid") if p.values[0] in _DECODERS])
def test_valid_example_decodes(kind: str, path: Path) -> None:
    record = _DECODERS[kind](path.read_bytes())
    assert isinstance(record, Event | CatalogItem)
    schemas.validate(kind, record.to_dict())


@pytest.mark.parametrize(("kind", "path"), [p for p in example_params("invalid") if p.values[0] in _DECODERS])
def test_invalid_example_is_rejected_by_the_decoder(kind: str, path: Path) -> None:
    with pytest.raises(InvalidMessage) as info:
        _DECODERS[kind](path.read_bytes())
    assert info.value.field == expected_fields(kind)[path.name]


# --- decoding ----------------------------------------------------------------------------------------------

EVENT = {"event_id": "e-1", "event_type": "purchase", "user_id": "u-42", "item_id": "sku-1", "timestamp": T}


def test_decode_event_builds_the_record() -> None:
    raw = orjson.dumps({**EVENT, "session_id": "s-1", "context": {"quantity": 2.0, "price": 499, "reason": "x"}})
    event = schemas.decode_event(raw)
    assert event == Event(
        event_id="e-1",
        event_type="purchase",
        item_id="sku-1",
        timestamp=T,
        user_id="u-42",
        session_id="s-1",
        quantity=2,
        price=499.0,
        reason="x",
    )
    assert type(event.quantity) is int and type(event.price) is float
    assert event.visitor_key == "u-42"


def test_decode_event_anonymous_visitor_keyed_by_session() -> None:
    raw = orjson.dumps({**EVENT, "user_id": None, "session_id": "s-9"})
    assert schemas.decode_event(raw).visitor_key == "s-9"


def test_decode_event_ignores_unknown_fields() -> None:
    raw = orjson.dumps({**EVENT, "channel": "app", "context": {"quantity": 1, "coupon": "X"}})
    assert schemas.decode_event(raw) == Event.from_dict({**EVENT, "context": {"quantity": 1}})


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_decode_accepts_bytes_like(wrap: Any) -> None:
    assert schemas.decode_event(wrap(orjson.dumps(EVENT))).event_id == "e-1"


def test_size_limit_is_checked_first_and_named() -> None:
    raw = orjson.dumps({**EVENT, "padding": "x" * 500})
    assert schemas.decode_event(raw, max_bytes=len(raw)).event_id == "e-1"
    with pytest.raises(InvalidMessage) as info:
        schemas.decode_event(raw, max_bytes=len(raw) - 1)
    assert info.value.field is None
    assert str(len(raw)) in str(info.value) and str(len(raw) - 1) in str(info.value)
    with pytest.raises(InvalidMessage, match="larger than the limit"):
        schemas.decode_event(b"{" * 2_000_000)  # not even parsed


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"event_id": "\xed\xa0\x80"}', id="utf8-surrogate"),
        pytest.param(b'{"event_id": "\\ud800"}', id="lone-surrogate-escape"),
        pytest.param(b"NaN", id="nan"),
        pytest.param(b'{"timestamp": NaN}', id="nan-field"),
        pytest.param(b'{"timestamp": Infinity}', id="infinity-field"),
        pytest.param(b'{"timestamp": -Infinity}', id="minus-infinity-field"),
        pytest.param(b'{"timestamp": 1e400}', id="float-overflow"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-array"),
        pytest.param(b'{"a":' * 5_000 + b"1" + b"}" * 5_000, id="deep-object"),
        pytest.param(b"null", id="null"),
        pytest.param(b"42", id="number"),
        pytest.param(b'"an event"', id="string"),
        pytest.param(orjson.dumps([EVENT]), id="array"),
        pytest.param(b"{'event_id': 'e-1'}", id="python-repr"),
        pytest.param(orjson.dumps(EVENT) + b"\n" + orjson.dumps(EVENT), id="two-documents"),
    ],
)
def test_not_a_json_object_is_a_whole_document_error(raw: bytes) -> None:
    with pytest.raises(InvalidMessage) as info:
        schemas.decode_event(raw)
    assert info.value.field is None


@pytest.mark.parametrize(
    ("timestamp", "valid"),
    [
        ("0", True),
        ("4102444800000", True),
        ("-1", False),
        ("4102444800001", False),
        ("1764150000000.0", True),
        ("1764150000000.5", False),
        ("18446744073709551615", False),  # largest u64
        ("100000000000000000000000000000", False),  # beyond 64 bits: orjson makes it a float
        ("1e20", False),
    ],
)
def test_huge_and_edge_timestamps(timestamp: str, valid: bool) -> None:
    raw = orjson.dumps(EVENT).replace(str(T).encode(), timestamp.encode())
    if valid:
        assert schemas.decode_event(raw).timestamp == int(float(timestamp))
    else:
        with pytest.raises(InvalidMessage) as info:
            schemas.decode_event(raw)
        assert info.value.field == "timestamp"


@pytest.mark.parametrize("raw", [None, "a string", 42])
def test_non_bytes_values_are_rejected(raw: Any) -> None:
    with pytest.raises(InvalidMessage) as info:
        schemas.decode_event(raw)
    assert info.value.field is None


def test_decode_item_builds_the_record() -> None:
    raw = orjson.dumps(
        {
            "item_id": "sku-1",
            "title": "Sofa",
            "category": ["Furniture", "Sofas"],
            "price": 499,
            "attributes": {"brand": "N", "width_cm": 210, "assembled": True, "foldable": False},
            "updated_at": T,
        }
    )
    item = schemas.decode_item(raw)
    assert item.category == ("Furniture", "Sofas") and item.price == 499.0 and type(item.price) is float
    assert item.attributes == {"brand": "N", "width_cm": "210", "assembled": "true", "foldable": "false"}
    assert item.recommendable


def test_decode_item_deletion_only() -> None:
    item = schemas.decode_item(b'{"item_id": "sku-1", "deleted": true}')
    assert item.deleted and not item.recommendable and item.title == ""


def test_decode_item_tombstone() -> None:
    with pytest.raises(InvalidMessage, match="tombstone"):
        schemas.decode_item(None)


# --- InvalidMessage and validate() -------------------------------------------------------------------------


def test_invalid_message_shape() -> None:
    err = InvalidMessage("must be bigger than or equal to 1", "context.quantity")
    assert isinstance(err, ValueError)
    assert str(err) == "context.quantity: must be bigger than or equal to 1"
    assert str(InvalidMessage("not valid JSON")) == "not valid JSON"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.reason, copy.field) == (err.reason, err.field)
    long = InvalidMessage("x" * 10_000, "f" * 10_000)
    assert len(long.reason) <= 1_000 and long.field is not None and len(long.field) <= 256


def test_validate_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown message kind") as info:
        schemas.validate("events", {})
    assert not isinstance(info.value, InvalidMessage)


def test_anonymous_session_error_explains_the_rule() -> None:
    with pytest.raises(InvalidMessage, match="anonymous visitor") as info:
        schemas.validate("event", {**EVENT, "user_id": None})
    assert info.value.field == "session_id"


def test_validation_does_not_mutate_the_document() -> None:
    doc = {**EVENT, "context": {}}
    before = orjson.dumps(doc)
    schemas.validate("event", doc)
    assert orjson.dumps(doc) == before


# --- records round-trip through the schemas ----------------------------------------------------------------

ids = st.text(min_size=1, max_size=128)
timestamps = st.integers(min_value=0, max_value=4_102_444_800_000)


@st.composite
def events(draw: st.DrawFn) -> Event:
    user_id = draw(st.none() | st.text(min_size=1, max_size=256))
    session_id = draw(st.text(min_size=1, max_size=256) if user_id is None else st.none() | st.text(min_size=1))
    event_type = draw(st.sampled_from(EVENT_TYPES))
    item_ids = st.text(min_size=1, max_size=256)
    impression = event_type == "impression"
    list_ids = st.text(min_size=1, max_size=256)
    return Event(
        event_id=draw(ids),
        event_type=event_type,
        # an impression may leave item_id out ("" in the record); its items are `shown`
        item_id=draw(st.just("") | item_ids) if impression else draw(item_ids),
        timestamp=draw(timestamps),
        user_id=user_id,
        session_id=session_id,
        page_category=draw(st.none() | st.text(max_size=1024)),
        quantity=draw(st.none() | st.integers(min_value=1, max_value=100_000)),
        price=draw(st.none() | st.floats(min_value=0, max_value=1e9)),
        reason=draw(st.none() | st.text(max_size=256)),
        list_id=draw(list_ids if impression else st.none() | list_ids),
        shown=draw(st.tuples(item_ids) | st.lists(item_ids, min_size=1, max_size=100).map(tuple) if impression
                   else st.none()),
        position=draw(st.none() | st.integers(min_value=1, max_value=1000)),
    )


@FUZZ
@given(events())
def test_event_round_trip(event: Event) -> None:
    doc = event.to_dict()
    schemas.validate("event", doc)
    assert reference("event").is_valid(doc)
    assert schemas.decode_event(schemas.encode(doc)) == event


catalog_items = st.builds(
    CatalogItem,
    item_id=st.text(min_size=1, max_size=256),
    title=st.text(max_size=1024),
    category=st.lists(st.text(min_size=1, max_size=256), max_size=16).map(tuple),
    price=st.none() | st.floats(min_value=0, max_value=1e9),
    in_stock=st.booleans(),
    repurchasable=st.booleans(),
    attributes=st.dictionaries(
        st.text(min_size=1, max_size=128),
        st.text(max_size=1024) | st.lists(st.text(min_size=1, max_size=256), max_size=32).map(tuple),
        max_size=20,
    ),
    deleted=st.booleans(),
    updated_at=timestamps,
)


@FUZZ
@given(catalog_items)
def test_catalog_item_round_trip(item: CatalogItem) -> None:
    doc = item.to_dict()
    schemas.validate("item", doc)
    assert reference("item").is_valid(doc)
    assert schemas.decode_item(schemas.encode(doc)) == item


@FUZZ
@given(
    user_id=st.none() | st.text(min_size=1, max_size=256),
    session_id=st.text(min_size=1, max_size=256),
    items=st.lists(
        st.builds(
            RecommendedItem,
            item_id=st.text(min_size=1, max_size=256),
            score=st.floats(min_value=-1e9, max_value=1e9),
            reason=st.text(max_size=1024),
            title=st.none() | st.text(max_size=1024),
            price=st.none() | st.floats(min_value=0, max_value=1e9),
            category=st.none() | st.lists(st.text(min_size=1, max_size=256), max_size=16).map(tuple),
            variant=st.none() | st.text(min_size=1, max_size=128),
        ),
        max_size=20,
    ),
    generated_at=timestamps,
    trigger_event_id=st.none() | ids,
    latency_ms=st.none() | st.floats(min_value=-1e6, max_value=1e9),
    placement=st.sampled_from(PLACEMENTS),
    experiment=st.none() | st.fixed_dictionaries({"id": ids, "variant": ids}),
)
def test_recommendation_round_trip(
    user_id: str | None,
    session_id: str,
    items: list[RecommendedItem],
    generated_at: int,
    trigger_event_id: str | None,
    latency_ms: float | None,
    placement: str,
    experiment: dict[str, str] | None,
) -> None:
    rec = Recommendation(
        items=tuple(items),
        generated_at=generated_at,
        user_id=user_id,
        session_id=session_id if user_id is None else None,
        trigger_event_id=trigger_event_id,
        model_version="2026-11-26T15:00:00Z-3f2a",
        latency_ms=latency_ms,
        placement=placement,
        experiment=experiment,
    )
    doc = orjson.loads(schemas.encode(rec.to_dict()))
    schemas.validate("recommendation", doc)
    assert reference("recommendation").is_valid(doc)


def test_recommendation_without_visitor_key_is_rejected() -> None:
    """A list must be addressed to someone: the key is user_id or session_id."""
    doc = Recommendation(items=(), generated_at=T).to_dict()
    with pytest.raises(InvalidMessage) as info:
        schemas.validate("recommendation", doc)
    assert info.value.field == "session_id"


def test_default_catalog_item_validates() -> None:
    schemas.validate("item", CatalogItem(item_id="sku-1").to_dict())


# --- dead letters ------------------------------------------------------------------------------------------


def _dead_letter(raw: bytes | None, error: InvalidMessage | str = "bad") -> dict[str, Any]:
    record = schemas.dead_letter_record(raw, error, "shop.events", 2, 41, T)
    schemas.validate("dead_letter", record)
    assert reference("dead_letter").is_valid(record)
    assert orjson.loads(schemas.encode(record)) == record
    return record


def test_dead_letter_from_invalid_message() -> None:
    raw = orjson.dumps({**EVENT, "context": {"quantity": 0}})
    with pytest.raises(InvalidMessage) as info:
        schemas.decode_event(raw)
    record = _dead_letter(raw, info.value)
    assert record["field"] == "context.quantity"
    assert record["error"] == str(info.value)
    assert record["raw"] == raw.decode() and record["raw_encoding"] == "utf-8"
    assert (record["topic"], record["partition"], record["offset"], record["received_at"]) == ("shop.events", 2, 41, T)
    assert record["raw_size"] == len(raw) and record["raw_truncated"] is False


def test_dead_letter_plain_error_and_binary_raw() -> None:
    raw = b"\xff\x00binary\x80"
    record = _dead_letter(raw, "consumer crashed")
    assert record["field"] is None and record["error"] == "consumer crashed"
    assert record["raw_encoding"] == "base64" and base64.b64decode(record["raw"]) == raw


def test_dead_letter_tombstone_and_empty_error() -> None:
    record = _dead_letter(None, "")
    assert record["raw"] == "" and record["raw_size"] == 0 and record["error"]


def test_dead_letter_truncates_huge_text_without_splitting_a_character() -> None:
    cap = schemas.DEAD_LETTER_RAW_CAP
    raw = b"a" * (cap - 1) + "é".encode() * 100_000
    record = _dead_letter(raw)
    assert record["raw_truncated"] is True and record["raw_size"] == len(raw)
    assert record["raw"] == "a" * (cap - 1)  # the cut fell inside "é" and dropped it whole
    assert record["raw_encoding"] == "utf-8"


def test_dead_letter_truncates_huge_binary() -> None:
    raw = b"\xff" * 1_000_000
    record = _dead_letter(raw)
    assert record["raw_truncated"] is True and record["raw_size"] == 1_000_000
    assert base64.b64decode(record["raw"]) == raw[: schemas.DEAD_LETTER_RAW_CAP]


def test_dead_letter_from_a_replayed_file_line() -> None:
    record = schemas.dead_letter_record(b"{}", InvalidMessage("is required", "event_id"), "events.jsonl", -1, 7, T)
    schemas.validate("dead_letter", record)


@FUZZ
@given(st.binary(max_size=2_000))
def test_dead_letter_of_any_bytes_validates_and_keeps_them(raw: bytes) -> None:
    record = _dead_letter(raw)
    kept = base64.b64decode(record["raw"]) if record["raw_encoding"] == "base64" else record["raw"].encode()
    assert kept == raw


# --- fuzzing: nothing but InvalidMessage, and the fast path agrees with the reference ----------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)


def _decode_or_invalid(decoder: Any, raw: bytes) -> None:
    try:
        decoder(raw)
    except InvalidMessage as err:
        assert err.reason
        schemas.validate("dead_letter", schemas.dead_letter_record(raw, err, "t", 0, 0, T))


@FUZZ
@given(st.binary(max_size=4_096))
def test_decoders_on_arbitrary_bytes(raw: bytes) -> None:
    _decode_or_invalid(schemas.decode_event, raw)
    _decode_or_invalid(schemas.decode_item, raw)


@FUZZ
@given(json_values)
def test_decoders_on_arbitrary_json(value: object) -> None:
    raw = json.dumps(value).encode()  # the standard library writes integers of any size
    _decode_or_invalid(schemas.decode_event, raw)
    _decode_or_invalid(schemas.decode_item, raw)


def _lengths(low: int, high: int) -> list[str]:
    """Strings exactly at the length bounds [low, high] and one past each."""
    return ["x" * n for n in sorted({max(low - 1, 0), low, high, high + 1})]


_OVERSIZED: list[Any] = [
    "x" * 4096,
    "x" * 4097,
    [None] * 256,
    [None] * 257,
    {str(i): None for i in range(64)},
    {str(i): None for i in range(65)},
]
_DELETE = object()

# Edge values per field path: each rule's boundary from both sides, wrong types, and removal.
EVENT_EDGES: dict[tuple[str, ...], list[Any]] = {
    ("event_id",): [*_lengths(1, 128), 1, None, _DELETE],
    ("event_type",): [*EVENT_TYPES, "wishlist", "", "VIEW", None, _DELETE],
    ("user_id",): [None, *_lengths(1, 256), 42, _DELETE],
    ("session_id",): [None, *_lengths(1, 256), 42, _DELETE],
    ("item_id",): [*_lengths(1, 256), 7, _DELETE],
    ("timestamp",): [-1, 0, 4_102_444_800_000, 4_102_444_800_001, 1e3, 1.5, True, "1", 2**64, 1e300, _DELETE],
    ("context",): [None, {}, "x", [], _DELETE],
    ("context", "quantity"): [0, 1, 100_000, 100_001, 2.0, 1.5, None, True, "1"],
    ("context", "price"): [-0.01, -0.0, 0, 1e9, 1e9 + 1, None, False, "1"],
    ("context", "page_category"): [None, *_lengths(0, 1024), 1],
    ("context", "reason"): [None, *_lengths(0, 256), ["x"]],
    ("context", "list_id"): [None, *_lengths(1, 256), 1],
    ("context", "shown"): [None, [], ["x"], ["x"] * 100, ["x"] * 101, [""], ["x" * 256], ["x" * 257], [1], "x"],
    ("context", "position"): [0, 1, 1000, 1001, 2.0, 1.5, None, True, "1"],
    ("context", "unknown"): _OVERSIZED,
    ("context", "k" * 128): [1],
    ("context", "k" * 129): [1],
    ("unknown",): _OVERSIZED,
    ("k" * 128,): [1],
    ("k" * 129,): [1],
}
ITEM_EDGES: dict[tuple[str, ...], list[Any]] = {
    ("item_id",): [*_lengths(1, 256), 1, None, _DELETE],
    ("title",): [*_lengths(0, 1024), None, 1, _DELETE],
    ("category",): [[], ["x" * 256], ["x" * 257], [""], ["c"] * 16, ["c"] * 17, "c", None, _DELETE],
    ("price",): [-0.01, -0.0, 0, 1e9, 1e9 + 1, None, True, "1", _DELETE],
    ("in_stock",): [True, False, None, 0, 1, "true", _DELETE],
    ("repurchasable",): [True, False, None, 0, _DELETE],
    ("deleted",): [True, False, None, 0, 1, "true", _DELETE],
    ("attributes",): [{}, {"": "x"}, {"k" * 128: "x"}, {"k" * 129: "x"}, {str(i): 1 for i in range(129)}, None],
    ("attributes", "a"): [*_lengths(0, 1024), 1e15, 1e15 + 1e3, -1e15, -1e15 - 1e3, True, None, [], {}],
    # a multi-valued attribute: at most 32 strings of 1-256 characters
    ("attributes", "tags"): [["x"], ["x" * 256], ["x" * 257], [""], ["t"] * 32, ["t"] * 33, [1], [True], [["x"]]],
    ("updated_at",): [-1, 0, 4_102_444_800_000, 4_102_444_800_001, 2.0, 1.5, True, _DELETE],
    ("unknown",): _OVERSIZED,
    ("k" * 129,): [1],
}
EVENT_BASES = [
    EVENT,
    {**EVENT, "user_id": None, "session_id": "s-1", "context": {"quantity": 1, "price": 9.5}},
    {  # as many properties as allowed, at both levels
        **EVENT,
        **{f"x{i:02d}": i for i in range(58)},
        "context": {"quantity": 1, **{f"c{i:02d}": i for i in range(31)}},
    },
    # feedback events: an impression (no item_id, the list shown) and a click from a list
    {"event_id": "e-2", "event_type": "impression", "session_id": "s-1", "timestamp": T,
     "context": {"list_id": "l-1", "shown": ["sku-1", "sku-2"]}},
    {**EVENT, "event_type": "click", "context": {"list_id": "l-1", "position": 2}},
]
ITEM_BASES = [
    {"item_id": "sku-1"},
    {"item_id": "sku-1", "title": "Sofa", "category": ["Furniture"], "price": 1.0},
    {"item_id": "sku-1", **{f"x{i:02d}": i for i in range(62)}, "attributes": {f"a{i:03d}": i for i in range(128)}},
]


def _edited(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    if value is _DELETE:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return doc


def _edge_cases(kind: str, bases: list[dict[str, Any]], edges: dict[tuple[str, ...], list[Any]]) -> list[Any]:
    return [
        pytest.param(kind, _edited(base, path, value), id=f"{kind}{b}-{'.'.join(path)[:20]}-{i}")
        for b, base in enumerate(bases)
        for path, values in edges.items()
        for i, value in enumerate(values)
    ]


@pytest.mark.parametrize(
    ("kind", "doc"), _edge_cases("event", EVENT_BASES, EVENT_EDGES) + _edge_cases("item", ITEM_BASES, ITEM_EDGES)
)
def test_validators_agree_at_every_boundary(kind: str, doc: dict[str, Any]) -> None:
    """The compiled validator and the reference give the same verdict at each rule's edge."""
    assert fast_verdict(kind, doc) == reference(kind).is_valid(doc)


_unknown_fields = st.dictionaries(st.text(max_size=3) | st.text(min_size=128, max_size=129), json_values, max_size=3)


@st.composite
def _near_valid(
    draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]], edges: dict[tuple[str, ...], list[Any]]
) -> dict[str, Any]:
    """A generated valid document with one or two fields set to edge values, arbitrary JSON, or removed, and
    sometimes unknown fields added: combinations the boundary table does not list."""
    doc = draw(base)
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(sorted(edges)))
        value = draw(st.sampled_from(edges[path]) | json_values)
        doc = _edited(doc, path, value)
    if draw(st.integers(0, 3)) == 0:
        doc.update(draw(_unknown_fields))
    return doc


@FUZZ
@given(_near_valid(events().map(Event.to_dict), EVENT_EDGES))
def test_event_validators_agree(doc: dict[str, Any]) -> None:
    assert fast_verdict("event", doc) == reference("event").is_valid(doc)
    _decode_or_invalid(schemas.decode_event, json.dumps(doc).encode())


@FUZZ
@given(_near_valid(catalog_items.map(CatalogItem.to_dict), ITEM_EDGES))
def test_item_validators_agree(doc: dict[str, Any]) -> None:
    assert fast_verdict("item", doc) == reference("item").is_valid(doc)
    _decode_or_invalid(schemas.decode_item, json.dumps(doc).encode())


# --- loading -----------------------------------------------------------------------------------------------


@pytest.fixture
def schema_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the schema folder, selected by STREAM_RECO_SCHEMA_DIR; the real registry comes back after."""
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, target, ignore=shutil.ignore_patterns("examples"))
    monkeypatch.setattr(schemas, "_registry", None)
    monkeypatch.setenv(schemas.SCHEMA_DIR_ENV, str(target))
    return target


def test_default_schema_dir_is_beside_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source checkout or editable install has no stream_reco/_schemas: the repository's folder is used,
    so an edited schema counts without reinstalling."""
    monkeypatch.delenv(schemas.SCHEMA_DIR_ENV, raising=False)
    assert not (ROOT / "stream_reco" / schemas.PACKAGED_SCHEMA_DIR).exists()
    assert schemas.schema_dir() == SCHEMA_DIR


def test_schema_dir_override(schema_copy: Path) -> None:
    assert schemas.load_schemas() == schema_copy.resolve()
    assert schemas.decode_event(orjson.dumps(EVENT)).event_id == "e-1"


# --- packaging: a wheel carries the schemas, and an installed package finds them --------------------------

PACKAGED = f"stream_reco.{schemas.PACKAGED_SCHEMA_DIR}"
SUBPROCESS_TIMEOUT_S = 60


def test_wheel_config_lists_every_package_and_maps_the_schema_folder() -> None:
    """pyproject.toml lists packages by hand (discovery cannot coexist with the schema mapping), so a new
    package folder left off the list would silently be missing from the wheel."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_root = ROOT / "stream_reco"
    on_disk = {"stream_reco"} | {
        "stream_reco." + ".".join(d.relative_to(package_root).parts)
        for d in package_root.rglob("*")
        if d.is_dir() and "__pycache__" not in d.parts
    }
    assert set(tool["packages"]) == on_disk | {PACKAGED}
    assert ROOT / tool["package-dir"][PACKAGED] == SCHEMA_DIR
    shipped = {f.name for f in SCHEMA_DIR.iterdir() if any(fnmatch(f.name, g) for g in tool["package-data"][PACKAGED])}
    assert shipped == {f"{kind}.schema.json" for kind in schemas.KINDS}


_INSTALLED_PROBE = """
import json, os, sys
from stream_reco import schemas
found = {"module": schemas.__file__, "default": str(schemas.schema_dir())}
os.environ[schemas.SCHEMA_DIR_ENV] = sys.argv[1]
found["override"] = str(schemas.schema_dir())
del os.environ[schemas.SCHEMA_DIR_ENV]
found["event_id"] = schemas.decode_event(sys.argv[2].encode()).event_id
try:
    schemas.decode_event(sys.argv[3].encode())
except schemas.InvalidMessage as err:
    found["rejected_field"] = err.field
print(json.dumps(found))
"""


def test_installed_package_reads_its_packaged_schemas(tmp_path: Path) -> None:
    """The layout a wheel installs (stream_reco/_schemas inside site-packages), run from outside the checkout:
    the packaged copy is used, not a `schemas/` folder that another distribution put beside it, and the
    environment override still wins."""
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "stream_reco", site / "stream_reco", ignore=shutil.ignore_patterns("__pycache__"))
    packaged = site / "stream_reco" / schemas.PACKAGED_SCHEMA_DIR
    packaged.mkdir()
    for kind in schemas.KINDS:
        shutil.copy(SCHEMA_DIR / f"{kind}.schema.json", packaged)
    (site / "schemas").mkdir()  # a decoy: loading from here would fail
    (site / "schemas" / "event.schema.json").write_text("not json")
    override = tmp_path / "pinned"
    env = {k: v for k, v in os.environ.items() if k != schemas.SCHEMA_DIR_ENV} | {"PYTHONPATH": str(site)}
    valid = orjson.dumps(EVENT).decode()
    invalid = orjson.dumps({**EVENT, "context": {"quantity": 0}}).decode()
    proc = subprocess.run([sys.executable, "-c", _INSTALLED_PROBE, str(override), valid, invalid], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found == {
        "module": str(site / "stream_reco" / "schemas.py"),
        "default": str(packaged.resolve()),
        "override": str(override.resolve()),
        "event_id": EVENT["event_id"],
        "rejected_field": "context.quantity",
    }


def test_missing_schema_dir(schema_copy: Path) -> None:
    shutil.rmtree(schema_copy)
    with pytest.raises(SchemaLoadError, match="STREAM_RECO_SCHEMA_DIR"):
        schemas.load_schemas()


def _edit(path: Path, change: Any) -> None:
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema))


def test_invalid_schema_fails_at_load(schema_copy: Path) -> None:
    _edit(schema_copy / "item.schema.json", lambda s: s["properties"]["price"].update(minimum="zero"))
    with pytest.raises(SchemaLoadError, match=r"item\.schema\.json"):
        schemas.load_schemas()


def test_keyword_the_fast_path_would_ignore_fails_at_load(schema_copy: Path) -> None:
    _edit(schema_copy / "event.schema.json", lambda s: s.update(dependentRequired={"price": ["quantity"]}))
    with pytest.raises(SchemaLoadError, match="dependentRequired"):
        schemas.load_schemas()


def test_remote_references_are_refused(schema_copy: Path) -> None:
    _edit(schema_copy / "event.schema.json", lambda s: s.update({"$ref": "https://example.com/other.json"}))
    with pytest.raises(SchemaLoadError):
        schemas.load_schemas()


def test_edited_schema_is_what_validates(schema_copy: Path) -> None:
    """No rule lives in code: tightening a file is all it takes."""
    _edit(schema_copy / "event.schema.json", lambda s: s["properties"]["event_id"].update(maxLength=3))
    schemas.reload_schemas()
    with pytest.raises(InvalidMessage) as info:
        schemas.decode_event(orjson.dumps(EVENT | {"event_id": "e-1234"}))
    assert info.value.field == "event_id"
