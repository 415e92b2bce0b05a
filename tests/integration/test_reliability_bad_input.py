"""Bad input through the real broker: thousands of malformed or hostile messages, interleaved with valid events.

Properties checked end to end (a real worker, real topics):
- every bad message lands on the dead-letter topic, at its own (partition, offset), with the same reason and
  field the validator gives (`schemas.decode_event`, then the edge checks of stream/admission.py: events keyed by
  another visitor and events from the future are bad too), and an oversized one with a reason naming the limit;
- no worker crashes, and the worker keeps its partitions (it is still running at the end);
- every valid event is processed: each visitor's latest list is triggered by its last valid event, including
  events for items the catalogue does not know (valid: kept in the history, not dead-lettered) and valid but
  hostile ones (deeply nested or long unknown fields, extreme but allowed timestamps, odd Unicode).

Messages come from hypothesis strategies, derandomized (a fixed seed derived from the test), so CI sees the
same messages on every run. hypothesis only *generates* here: the whole stream is produced at once and checked
afterwards, because one broker round trip per example would take hours. The default run sends
`CI_MESSAGES`; `pytest -m slow` sends `SLOW_MESSAGES`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from stream_reco import schemas
from stream_reco.settings import Settings
from stream_reco.stream import admission
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, send_items

pytestmark = pytest.mark.integration

CI_MESSAGES = 2_000
MIN_BAD_KINDS = 17  # of the 17 kinds of bad_message(): CI's 2 k messages draw every one
SLOW_MESSAGES = 10_000
#: a small limit keeps oversized messages cheap to produce; the worker must enforce whatever the setting says
MAX_MESSAGE_BYTES = 64 * 1024
#: examples hypothesis draws per batch of messages (small, so no example exceeds hypothesis' data budget)
MESSAGES_PER_EXAMPLE = 20
#: spare examples in case hypothesis discards some (overrun); the surplus is cut off
EXAMPLE_HEADROOM = 1.5
#: 2 k messages drain in ~20 s, 10 k in ~1-2 min on 2 busy cores
DRAIN_TIMEOUT_S = 600.0
T0 = 1_764_150_000_000
MAX_TIMESTAMP = 4_102_444_800_000  # event.schema.json: epoch_ms maximum
CLOCK_SKEW_S = Settings.load(env={}).max_clock_skew_s  # the workers here run with the default
ORJSON_MAX_DEPTH = 1024  # orjson refuses deeper documents: "not valid JSON"
ORJSON_MAX_DUMP_DEPTH = 200  # orjson.dumps stops at 255 levels; valid deep documents stay below

#: one in three messages is valid (one of those hostile but valid), the rest bad
MESSAGE_MIX = ("bad", "bad", "bad", "bad", "bad", "bad", "valid", "valid", "hostile_valid")
ITEMS = [f"fz-item-{i}" for i in range(24)]
USERS = [f"u-fz-{i}" for i in range(16)]
SESSIONS = [f"s-fz-{i}" for i in range(8)]
EVENT_TYPES = ("view", "add_to_cart", "purchase", "dismiss")


def catalog() -> list[dict[str, Any]]:
    cats = (["Home", "Kitchen", "Kettles"], ["Home", "Garden", "Spades"], ["Toys", "Outdoor", "Kites"])
    return [{"item_id": item, "title": f"Item {i}", "category": cats[i % len(cats)], "price": 10.0 + i,
             "in_stock": True, "updated_at": T0} for i, item in enumerate(ITEMS)]


@dataclass
class Message:
    """One message to produce, what kind it is, and (for valid events) whose it is."""

    kind: str
    key: bytes | None
    value: bytes | None
    valid: bool
    visitor: str | None = None
    event_id: str | None = None


# --- valid events -------------------------------------------------------------------------------------------

visitors = st.sampled_from(USERS + SESSIONS)
# items the catalogue knows, and a few it does not know yet (valid: kept in history, not dead-lettered)
items = st.one_of(st.sampled_from(ITEMS), st.integers(0, 5).map(lambda i: f"fz-unknown-{i}"))
odd_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


def valid_context(event_type: str) -> st.SearchStrategy[dict[str, Any] | None]:
    base: dict[str, st.SearchStrategy[Any]] = {"page_category": st.sampled_from(
        ["Home/Kitchen/Kettles", "Home/Garden", "", "Toys/Outdoor/Kites"])}
    if event_type in ("add_to_cart", "purchase"):
        base["quantity"] = st.integers(1, 100_000)
        base["price"] = st.one_of(st.integers(0, 1_000_000_000), st.floats(0, 1e9, allow_nan=False))
    if event_type == "dismiss":
        base["reason"] = st.text(max_size=256)
    return st.one_of(st.none(), st.fixed_dictionaries({}, optional=base))


@st.composite
def valid_event(draw: st.DrawFn) -> dict[str, Any]:
    """A contract event (event_id and timestamp are filled in later so that they are unique and ordered)."""
    visitor = draw(visitors)
    event_type = draw(st.sampled_from(EVENT_TYPES))
    doc: dict[str, Any] = {"event_type": event_type, "item_id": draw(items)}
    if visitor.startswith("u-"):
        doc["user_id"] = visitor
        if draw(st.booleans()):
            doc["session_id"] = f"own-{visitor}"  # a user's own session: no cross-visitor join
    else:
        doc["session_id"] = visitor
        if draw(st.booleans()):
            doc["user_id"] = None
    ctx = draw(valid_context(event_type))
    if ctx is not None:
        doc["context"] = ctx
    return doc


@st.composite
def hostile_but_valid(draw: st.DrawFn) -> dict[str, Any]:
    """Valid by the contract, yet unusual: the worker must take these in its stride."""
    doc = draw(valid_event())
    trick = draw(st.sampled_from(["deep_unknown", "long_unknown", "unicode", "many_fields", "extreme_time"]))
    if trick == "deep_unknown":  # unknown fields are accepted whatever their depth (below orjson's limit)
        depth = draw(st.integers(10, ORJSON_MAX_DUMP_DEPTH))
        doc["x_nested"] = orjson.loads(b'{"a":' * depth + b"1" + b"}" * depth)
    elif trick == "long_unknown":
        doc["x_blob"] = "z" * draw(st.integers(1000, 4096))
    elif trick == "unicode":
        doc.setdefault("context", {})
        doc["context"] = {**(doc["context"] or {}), "page_category": draw(odd_text), "x_note": draw(odd_text)}
    elif trick == "many_fields":
        for i in range(draw(st.integers(1, 50))):
            doc[f"x_field_{i}"] = i
    else:
        doc["_timestamp"] = draw(st.sampled_from([0, 1]))  # the far future is refused ("future" below)
    return doc


# --- bad messages -------------------------------------------------------------------------------------------

WRONG_TYPES: dict[str, list[Any]] = {
    "event_id": [1, None, [], {}, True, ""],
    "event_type": [1, None, "", "View", "teleport", ["view"]],
    "item_id": [2, None, "", {"id": "x"}, False],
    "timestamp": ["1764150000000", 1.5, None, True, -1, MAX_TIMESTAMP + 1, [T0]],
    "user_id": [3, [], {}, ""],
    "context": [[], "ctx", 7, True],
}
CONTEXT_WRONG: dict[str, list[Any]] = {
    "quantity": ["1", 1.5, 0, -1, 100_001, True],
    "price": ["9.99", -0.01, 1e10, {}],
    "page_category": [1, ["a"], {"x": "y"}, "p" * 1025],
    "reason": [5, "r" * 257],
}


@st.composite
def bad_message(draw: st.DrawFn, max_bytes: int) -> tuple[str, bytes | None]:
    """(kind, value) of one message the worker must reject."""
    kind = draw(st.sampled_from(["invalid_json", "invalid_utf8", "wrong_type", "context_wrong", "missing_field",
                                 "unknown_type", "oversized", "deep_nesting", "extreme_number", "huge_string",
                                 "not_object", "random_bytes", "too_many_fields", "tombstone",
                                 "forged_control", "future", "mis_keyed"]))
    doc = draw(valid_event())
    doc["event_id"] = f"bad-{draw(st.integers(0, 10**9))}"
    doc["timestamp"] = T0
    if kind == "invalid_json":
        text = orjson.dumps(doc)
        cut = draw(st.integers(1, len(text) - 1))
        return kind, draw(st.sampled_from([text[:cut], text + b"}", b"{'single': 'quotes'}", b"{NaN}",
                                           text.replace(b":", b"=", 1), b""]))
    if kind == "invalid_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        return kind, orjson.dumps(doc).replace(b'"event_type"', b'"event' + bad + b'_type"', 1)
    if kind == "wrong_type":
        name = draw(st.sampled_from(sorted(WRONG_TYPES)))
        doc[name] = draw(st.sampled_from(WRONG_TYPES[name]))
        if name == "user_id":
            doc.pop("session_id", None)
        return kind, orjson.dumps(doc)
    if kind == "context_wrong":
        name = draw(st.sampled_from(sorted(CONTEXT_WRONG)))
        doc["context"] = {name: draw(st.sampled_from(CONTEXT_WRONG[name]))}
        return kind, orjson.dumps(doc)
    if kind == "missing_field":
        name = draw(st.sampled_from(["event_id", "event_type", "item_id", "timestamp", "visitor"]))
        if name == "visitor":  # an anonymous event must carry a session id
            doc.pop("user_id", None)
            doc.pop("session_id", None)
        else:
            del doc[name]
        return kind, orjson.dumps(doc)
    if kind == "unknown_type":
        doc["event_type"] = draw(st.text(min_size=1, max_size=20).filter(lambda t: t not in EVENT_TYPES))
        return kind, orjson.dumps(doc)
    if kind == "oversized":  # valid JSON, valid event: only its size is wrong
        pad = draw(st.integers(1, 4096))
        body = orjson.dumps(doc)
        return kind, body[:-1] + b" " * (max_bytes - len(body) + pad) + b"}"
    if kind == "deep_nesting":
        depth = ORJSON_MAX_DEPTH + draw(st.integers(1, 2000))
        where = draw(st.sampled_from(["unknown", "context", "root"]))
        if where == "root":
            return kind, b"[" * depth + b"]" * depth
        nested = b'{"a":' * depth + b"1" + b"}" * depth
        field = b'"context"' if where == "context" else b'"x_deep"'
        return kind, orjson.dumps(doc)[:-1] + b"," + field + b":" + nested + b"}"
    if kind == "extreme_number":
        text = draw(st.sampled_from(["-1", "1e300", "-1e300", str(2**64), str(-(2**70)), "Infinity", "1e999",
                                     "4102444800001", "12345678901234567890123"]))
        return kind, orjson.dumps(doc).replace(b'"timestamp":' + str(T0).encode(),
                                               b'"timestamp":' + text.encode(), 1)
    if kind == "huge_string":
        name = draw(st.sampled_from(["event_id", "item_id", "user_id", "x_unknown", "name"]))
        size = draw(st.integers(1, 20_000))
        if name == "name":  # property names are bounded too
            doc["n" * (129 + size % 1000)] = 1
        elif name == "x_unknown":
            doc[name] = "u" * (4097 + size)
        else:
            doc[name] = "s" * ({"event_id": 129, "item_id": 257, "user_id": 257}[name] + size)
            if name == "user_id":
                doc.pop("session_id", None)
        return kind, orjson.dumps(doc)
    if kind == "not_object":
        int64 = st.integers(-(2**63), 2**63 - 1)
        scalar_or_list = st.one_of(st.lists(int64, max_size=5), st.text(max_size=20), int64, st.none(), st.booleans())
        return kind, orjson.dumps(draw(scalar_or_list))
    if kind == "random_bytes":
        return kind, draw(st.binary(max_size=200))
    if kind == "too_many_fields":
        for i in range(65):
            doc[f"x_{i}"] = i
        return kind, orjson.dumps(doc)
    if kind == "future":  # valid by the schema, but beyond the tolerated clock skew (stream/admission.py)
        doc["timestamp"] = draw(st.sampled_from([MAX_TIMESTAMP, 4_070_908_800_000]))
        return kind, orjson.dumps(doc)
    if kind == "mis_keyed":  # valid by the schema; its key (set in message()) is another visitor's
        return kind, orjson.dumps(doc)
    if kind == "forged_control":  # looks like a worker's login-join record (stream/joins.py) but is malformed
        body = draw(st.sampled_from([
            {"stream_reco": "teleport", "session_id": "s", "user_id": "u", "login_event_id": "e", "timestamp": 1},
            {"stream_reco": "join_request", "user_id": "u", "login_event_id": "e", "timestamp": 1},
            {"stream_reco": "join_request", "session_id": "s", "user_id": "u", "login_event_id": "e",
             "timestamp": -5},
            {"stream_reco": "join_state", "session_id": "s", "user_id": "u", "login_event_id": "e", "timestamp": 1,
             "state": {"f": 99}},
            {"stream_reco": "join_state", "session_id": "s", "user_id": "u", "login_event_id": "e", "timestamp": 1,
             "state": "not a state"},
            {"stream_reco": "join_request", "session_id": "s" * 300, "user_id": "u", "login_event_id": "e",
             "timestamp": 1},
        ]))
        return kind, orjson.dumps(body)
    return kind, None  # tombstone: a message without a value


@st.composite
def message(draw: st.DrawFn, max_bytes: int) -> tuple[str, Any]:
    """Mostly bad messages, with valid ones interleaved (about one in three)."""
    choice = draw(st.sampled_from(MESSAGE_MIX))
    if choice == "valid":
        return "valid", draw(valid_event())
    if choice == "hostile_valid":
        return "hostile_valid", draw(hostile_but_valid())
    kind, value = draw(bad_message(max_bytes))
    key = draw(st.one_of(visitors.map(str.encode), st.none(), st.binary(min_size=1, max_size=8)))
    if kind in ("future", "mis_keyed"):
        doc = orjson.loads(value)  # type: ignore[arg-type]
        own = doc.get("user_id") or doc["session_id"]
        key = (own if kind == "future" else draw(visitors.filter(lambda v: v != own))).encode()
    if value is None and key is None:  # Kafka needs a key or a value: a tombstone has the key only
        key = b"tombstone"
    return kind, (key, value)


def generate(n: int, max_bytes: int) -> list[Message]:
    """`n` messages from the strategies above, the same ones on every run (derandomized)."""
    drawn: list[tuple[str, Any]] = []
    examples = int(n / MESSAGES_PER_EXAMPLE * EXAMPLE_HEADROOM) + 1

    @hsettings(max_examples=examples, derandomize=True, database=None, deadline=None,
               phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(message(max_bytes), min_size=MESSAGES_PER_EXAMPLE, max_size=MESSAGES_PER_EXAMPLE))
    def collect(batch: list[tuple[str, Any]]) -> None:
        drawn.extend(batch)

    collect()
    assert len(drawn) >= n, f"hypothesis produced only {len(drawn)} of {n} messages"
    out: list[Message] = []
    for i, (kind, payload) in enumerate(drawn[:n]):
        if kind in ("valid", "hostile_valid"):
            doc = dict(payload)
            doc["event_id"] = f"fz-{i}"
            doc["timestamp"] = doc.pop("_timestamp", T0 + i * 1000)
            visitor = doc.get("user_id") or doc["session_id"]
            out.append(Message(kind, visitor.encode(), orjson.dumps(doc), True, visitor, doc["event_id"]))
        else:
            key, value = payload
            out.append(Message(kind, key, value, False))
    return out


def oracle(msg: Message, max_bytes: int) -> schemas.InvalidMessage | None:
    """What the validator and the edge checks say about a message (None: valid); the worker must report exactly
    this. A worker's login-join record is no event: on the events topic it is a bad message like any other."""
    try:
        event = schemas.decode_event(msg.value, max_bytes=max_bytes)
        admission.check_event(event, msg.key, admission.reference_ms(None), CLOCK_SKEW_S)
    except schemas.InvalidMessage as exc:
        return exc
    return None


async def produce_all(settings: Settings, messages: list[Message]) -> list[tuple[int, int]]:
    """Produce in order; return each message's (partition, offset)."""
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), linger_ms=5,
                                max_request_size=max_bytes_on_wire(settings))
    await producer.start()
    try:
        futures = [await producer.send(settings.events_topic, value=m.value, key=m.key) for m in messages]
        await producer.flush()
        metas = [await f for f in futures]
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


def max_bytes_on_wire(settings: Settings) -> int:
    """Oversized messages must reach the worker (which rejects them), so the producer must not."""
    return max(settings.max_message_bytes * 4, 1_048_576)


def check_bad_input(settings: Settings, n: int) -> None:
    max_bytes = settings.max_message_bytes
    messages = generate(n, max_bytes)
    verdicts = [oracle(m, max_bytes) for m in messages]
    wrong = [(m.kind, m.value[:200] if m.value else m.value) for m, v in zip(messages, verdicts, strict=True)
             if m.valid != (v is None)]
    assert not wrong, f"test bug: {len(wrong)} generated messages are not what their kind says: {wrong[:3]}"
    bad = [m for m in messages if not m.valid]
    kinds = {m.kind for m in bad}
    assert len(kinds) >= MIN_BAD_KINDS, f"every kind of bad message is represented: {sorted(kinds)}"
    last_valid: dict[str, str] = {}
    for m in messages:
        if m.valid:
            assert m.visitor is not None and m.event_id is not None
            last_valid[m.visitor] = m.event_id

    ensure_topics(settings)
    send_items(settings, catalog())
    worker = WorkerProcess(settings, name="fuzzed")
    try:
        worker.wait_ready()
        positions = asyncio.run(produce_all(settings, messages))
        expected_dead = {pos: v for pos, m, v in zip(positions, messages, verdicts, strict=True) if not m.valid}
        lists = TopicReader(settings, settings.recommendations_topic)
        dlq = TopicReader(settings, settings.dead_letter_topic)

        def all_lists(_: list) -> bool:
            latest = lists.latest()
            return all(latest.get(k, {}).get("trigger_event_id") == e for k, e in last_valid.items())

        lists.wait_for(all_lists, timeout=DRAIN_TIMEOUT_S)
        dlq.wait_for(lambda r: len(r) >= len(expected_dead), timeout=DRAIN_TIMEOUT_S)
        assert worker.proc.poll() is None, f"the worker died:\n{worker.output()}"
    finally:
        worker.stop()
    assert not worker.crashed(), worker.output()

    latest = lists.latest()
    missed = {k: (e, latest.get(k, {}).get("trigger_event_id")) for k, e in last_valid.items()
              if latest.get(k, {}).get("trigger_event_id") != e}
    assert not missed, f"visitors whose last valid event did not trigger their latest list: {missed}"

    records = [orjson.loads(v) for _, v in dlq.records]
    by_position = {(r["partition"], r["offset"]): r for r in records}
    assert len(by_position) == len(records), "one dead letter per rejected message"
    assert set(by_position) == set(expected_dead), (
        f"dead letters at {len(set(by_position) - set(expected_dead))} unexpected positions, "
        f"{len(set(expected_dead) - set(by_position))} rejected messages missing")
    for pos, exc in expected_dead.items():
        record = by_position[pos]
        schemas.validate("dead_letter", record)
        assert record["topic"] == settings.events_topic
        assert exc is not None and record["error"] == str(exc) and record["field"] == exc.field, (record, exc)
    oversized = [by_position[p] for p, m in zip(positions, messages, strict=True) if m.kind == "oversized"]
    assert oversized and all(f"limit of {max_bytes} bytes" in r["error"] for r in oversized)
    unknown_items = sum(1 for m in messages if m.valid and b"fz-unknown-" in (m.value or b""))
    assert unknown_items > 0, "events for items the catalogue does not know were sent (and not dead-lettered)"
    print(f"bad input: {len(messages)} messages, {len(bad)} dead-lettered ({len(kinds)} kinds), "
          f"{len(messages) - len(bad)} valid for {len(last_valid)} visitors")


@pytest.fixture
def fuzz_settings(unique_settings: Settings, tmp_path: Path) -> Settings:
    return unique_settings.replace(data_dir=str(tmp_path), web_port=0, max_message_bytes=MAX_MESSAGE_BYTES)


def test_bad_input_is_dead_lettered_and_valid_events_processed(fuzz_settings: Settings) -> None:
    check_bad_input(fuzz_settings, CI_MESSAGES)


@pytest.mark.slow
def test_bad_input_fuzz_10k(fuzz_settings: Settings) -> None:
    check_bad_input(fuzz_settings, SLOW_MESSAGES)


def test_generation_is_deterministic() -> None:
    """The same messages on every run: CI failures reproduce."""
    first = [(m.kind, m.key, m.value) for m in generate(200, MAX_MESSAGE_BYTES)]
    again = [(m.kind, m.key, m.value) for m in generate(200, MAX_MESSAGE_BYTES)]
    assert first == again
