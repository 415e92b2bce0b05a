"""Property-based fuzz of the edge decoders (issue 11): whatever a producer sends, `decode_event` / `decode_item`
return a record that satisfies the schema, or raise `InvalidMessage` with a reason (and a field path or None),
never any other exception; and the dead-letter record built for any rejected bytes is itself schema-valid.

Three kinds of input: arbitrary bytes, arbitrary JSON values (stdlib-serialised, so they include NaN, huge
integers and lone surrogates, which orjson must refuse cleanly), and near-valid documents: a valid event or
item with one field replaced, removed or added. A record that is decoded must also be valid for jsonschema,
the reference draft 2020-12 validator, on the original document, so the compiled validator cannot be laxer.
Derandomised (the same examples on every run) and capped to keep the whole file to a few seconds.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from stream_reco import schemas
from stream_reco.core.events import CatalogItem, Event
from stream_reco.schemas import InvalidMessage

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

MAX_MS = 4_102_444_800_000
EVENT_TYPES = ("view", "add_to_cart", "purchase", "dismiss")
_REFERENCE: dict[str, Draft202012Validator] = {}


def reference(kind: str) -> Draft202012Validator:
    if kind not in _REFERENCE:
        _REFERENCE[kind] = Draft202012Validator(schemas.get_schema(kind))
    return _REFERENCE[kind]


# JSON values as a producer could send them: big integers, non-finite floats and any code point included
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# boundary values of the schemas' bounds, the likeliest to be off by one in a validator
edges = st.sampled_from([
    -1, 0, 1, 0.5, 2.0, 1e9, 1e9 + 1, 100_000, 100_001, MAX_MS, MAX_MS + 1, MAX_MS + 0.5, -0.0, 2**63, 2**64,
    True, False, "", "x", "x" * 128, "x" * 129, "x" * 256, "x" * 257, "x" * 1024, "x" * 1025, [], {}, ["x"] * 17,
    "view", "purchase", "\u0000", "\ud800",
])
mutation_values = json_values | edges


def dumps(value: Any) -> bytes:
    """Serialise like an arbitrary producer: stdlib json writes NaN, Infinity, big ints and lone surrogates."""
    return json.dumps(value).encode("utf-8", "surrogatepass")


def check_invalid(exc: InvalidMessage) -> None:
    assert isinstance(exc.reason, str) and exc.reason
    assert exc.field is None or (isinstance(exc.field, str) and exc.field)


def check_event(raw: bytes, doc: object = None) -> Event | None:
    """decode_event's contract on `raw`; `doc` is the document `raw` encodes, when there is one."""
    try:
        event = schemas.decode_event(raw)
    except InvalidMessage as exc:
        check_invalid(exc)
        return None
    assert isinstance(event, Event)
    assert event.event_type in EVENT_TYPES and type(event.timestamp) is int and 0 <= event.timestamp <= MAX_MS
    assert event.visitor_key and event.event_id and event.item_id
    assert event.quantity is None or (type(event.quantity) is int and 1 <= event.quantity <= 100_000)
    assert event.price is None or (type(event.price) is float and 0 <= event.price <= 1e9)
    schemas.validate("event", event.to_dict())  # the record itself satisfies the schema
    parsed = orjson.loads(raw) if doc is None else doc
    assert reference("event").is_valid(parsed), f"decoded, but invalid for the reference validator: {parsed!r}"
    return event


def check_item(raw: bytes, doc: object = None) -> CatalogItem | None:
    try:
        item = schemas.decode_item(raw)
    except InvalidMessage as exc:
        check_invalid(exc)
        return None
    assert isinstance(item, CatalogItem) and item.item_id
    assert type(item.updated_at) is int and 0 <= item.updated_at <= MAX_MS
    assert item.price is None or (type(item.price) is float and math.isfinite(item.price))
    assert all(type(v) is str or (type(v) is tuple and all(type(x) is str for x in v))
               for v in item.attributes.values())
    schemas.validate("item", item.to_dict())
    parsed = orjson.loads(raw) if doc is None else doc
    assert reference("item").is_valid(parsed), f"decoded, but invalid for the reference validator: {parsed!r}"
    return item


def check_dead_letter(raw: bytes, error: InvalidMessage | str) -> None:
    record = schemas.dead_letter_record(raw, error, topic="shop.events", partition=0, offset=7, received_at=1)
    schemas.validate("dead_letter", record)
    assert reference("dead_letter").is_valid(record)
    assert record["raw_size"] == len(raw) and orjson.loads(orjson.dumps(record)) == record


# ------------------------------------------------------------------------------------------ any bytes
@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(raw: bytes) -> None:
    check_event(raw)
    check_item(raw)
    check_dead_letter(raw, InvalidMessage("fuzz", None))


@FUZZ
@given(json_values)
def test_any_json_value(value: Any) -> None:
    raw = dumps(value)
    check_event(raw)
    check_item(raw)


# ------------------------------------------------------------------------------------------ near-valid
ids = st.text(min_size=1, max_size=20)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": draw(ids),
        "event_type": draw(st.sampled_from(EVENT_TYPES)),
        "item_id": draw(ids),
        "timestamp": draw(st.integers(0, MAX_MS)),
    }
    if draw(st.booleans()):
        doc["user_id"] = draw(ids)
    if "user_id" not in doc or draw(st.booleans()):
        doc["session_id"] = draw(ids)
    if draw(st.booleans()):
        doc["context"] = {"page_category": draw(st.text(max_size=30)), "quantity": draw(st.integers(1, 100_000)),
                          "price": draw(st.floats(0, 1e9)), "reason": draw(st.text(max_size=10))}
    return doc


@st.composite
def valid_items(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "item_id": draw(ids),
        "title": draw(st.text(max_size=30)),
        "category": draw(st.lists(st.text(min_size=1, max_size=10), max_size=4)),
        "price": draw(st.floats(0, 1e9)),
        "in_stock": draw(st.booleans()),
        "repurchasable": draw(st.booleans()),
        "attributes": draw(st.dictionaries(st.text(min_size=1, max_size=8),
                                           st.text(max_size=8) | st.integers(-10**15, 10**15) | st.booleans()
                                           | st.lists(st.text(min_size=1, max_size=8), max_size=4),
                                           max_size=3)),
        "deleted": draw(st.booleans()),
        "updated_at": draw(st.integers(0, MAX_MS)),
    }


EVENT_PATHS = ("event_id", "event_type", "item_id", "timestamp", "user_id", "session_id", "context",
               "context.page_category", "context.quantity", "context.price", "context.reason", "unknown_field",
               "context.unknown_field")
ITEM_PATHS = ("item_id", "title", "category", "price", "in_stock", "repurchasable", "attributes", "deleted",
              "updated_at", "attributes.brand", "unknown_field")


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]], paths: tuple[str, ...]) -> dict[str, Any]:
    """A valid document with one field (maybe nested one level) set to another value, or removed."""
    doc = draw(base)
    path = draw(st.sampled_from(paths)).split(".")
    parent = doc
    if len(path) == 2:
        if not isinstance(doc.get(path[0]), dict):
            doc[path[0]] = {}
        parent = doc[path[0]]
    if draw(st.booleans()) and path[-1] in parent:
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(mutation_values)
    return doc


@FUZZ
@given(valid_events())
def test_valid_events_decode(doc: dict[str, Any]) -> None:
    assert check_event(orjson.dumps(doc), doc) is not None


@FUZZ
@given(valid_items())
def test_valid_items_decode(doc: dict[str, Any]) -> None:
    assert check_item(orjson.dumps(doc), doc) is not None


@FUZZ
@given(mutated(valid_events(), EVENT_PATHS))
def test_near_valid_events(doc: dict[str, Any]) -> None:
    raw = dumps(doc)
    event = check_event(raw, doc if _plain_json(doc) else None)
    if event is None:
        try:
            schemas.decode_event(raw)
        except InvalidMessage as exc:
            check_dead_letter(raw, exc)


@FUZZ
@given(mutated(valid_items(), ITEM_PATHS))
def test_near_valid_items(doc: dict[str, Any]) -> None:
    raw = dumps(doc)
    item = check_item(raw, doc if _plain_json(doc) else None)
    if item is None:
        try:
            schemas.decode_item(raw)
        except InvalidMessage as exc:
            check_dead_letter(raw, exc)


def _plain_json(doc: object) -> bool:
    """True when `doc` survives an orjson round trip unchanged (no NaN, huge ints or lone surrogates): the
    reference validator may then judge `doc` itself."""
    try:
        return orjson.loads(dumps(doc)) == doc
    except (orjson.JSONDecodeError, TypeError):
        return False
