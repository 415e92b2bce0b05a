"""The producer clients against a real broker: right topic, key and bytes; invalid messages never sent.
Also the any-language path of docs/producing.md, with kcat."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from stream_reco import schemas
from stream_reco.core.events import CatalogItem, Event
from stream_reco.schemas import InvalidMessage
from stream_reco.settings import Settings
from stream_reco.shop.client import EventProducer, SyncEventProducer
from stream_reco.shop.tail import assign_all_partitions
from stream_reco.stream.topics import ensure_topics_async

pytestmark = pytest.mark.integration

T0 = 1764150000000
CONSUME_TIMEOUT_S = 20.0
KCAT_TIMEOUT_S = 30.0


async def consume(settings: Settings, topic: str, expected: int,
                  timeout_s: float = CONSUME_TIMEOUT_S) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every message of the topic; see `consume_records`."""
    return [(m.key, m.value) for m in await consume_records(settings, topic, expected, timeout_s)]


async def consume_records(settings: Settings, topic: str, expected: int,
                          timeout_s: float = CONSUME_TIMEOUT_S) -> list[ConsumerRecord[bytes, bytes]]:
    """Every message of the topic, waiting until `expected` are there (then a little more, so an unexpected
    extra message would be seen)."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = await assign_all_partitions(consumer, topic, timeout_s)
        await consumer.seek_to_beginning(*tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            out.extend(m for ms in batches.values() for m in ms)
            if len(out) >= expected:
                batches = await consumer.getmany(timeout_ms=300)
                out.extend(m for ms in batches.values() for m in ms)
                break
        return out
    finally:
        await consumer.stop()


async def total_messages(settings: Settings, topic: str) -> int:
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=None)
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return 0
        tps = await assign_all_partitions(consumer, topic, CONSUME_TIMEOUT_S)
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def ev(n: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"e-{n}", "event_type": "view", "item_id": f"sku-{n}", "timestamp": T0 + n, **fields}


def test_async_producer_sends_with_contract_keys_and_bytes(unique_settings: Settings) -> None:
    s = unique_settings
    logged_in = ev(1, user_id="u-42", session_id="s-1", context={"page_category": "Furniture/Living room/Sofas"})
    anonymous = ev(2, session_id="s-9")
    typed = Event(event_id="e-3", event_type="purchase", item_id="sku-3", timestamp=T0, user_id="u-7", quantity=2,
                  price=9.5)
    item = {"item_id": "sku-1", "title": "Three-seat sofa, grey", "category": ["Furniture", "Living room", "Sofas"],
            "price": 499.0, "in_stock": True}

    async def go() -> None:
        await ensure_topics_async(s)
        async with EventProducer(s) as producer:
            delivered = await producer.send_event(logged_in)
            await producer.send_event(anonymous)
            await producer.send_event(typed)
            await producer.send_item(item)
            await producer.send_item(CatalogItem(item_id="sku-2", deleted=True))
            metadata = await delivered
            assert metadata.topic == s.events_topic
        events = await consume(s, s.events_topic, 3)
        items = await consume(s, s.catalog_topic, 2)
        assert sorted(events) == sorted([
            (b"u-42", orjson.dumps(logged_in)),
            (b"s-9", orjson.dumps(anonymous)),
            (b"u-7", orjson.dumps(typed.to_dict())),
        ])
        assert sorted(items) == sorted([
            (b"sku-1", orjson.dumps(item)),
            (b"sku-2", orjson.dumps(CatalogItem(item_id="sku-2", deleted=True).to_dict())),
        ])
        for _, value in events:  # what the worker will decode
            schemas.decode_event(value)

    asyncio.run(go())


def test_invalid_messages_are_refused_and_never_sent(unique_settings: Settings) -> None:
    s = unique_settings.replace(max_message_bytes=2_000)

    async def go() -> None:
        await ensure_topics_async(s)
        async with EventProducer(s) as producer:
            with pytest.raises(InvalidMessage) as bad_type:
                await producer.send_event(ev(1, user_id="u-1", event_type="like"))
            assert bad_type.value.field == "event_type"
            with pytest.raises(InvalidMessage) as no_visitor:
                await producer.send_event(ev(2))
            assert no_visitor.value.field == "session_id"
            with pytest.raises(InvalidMessage, match="larger than the limit"):
                big = {"page_category": "x" * 1_000, "note": "y" * 1_500}
                await producer.send_event(ev(3, user_id="u-1", context=big))
            with pytest.raises(InvalidMessage):
                await producer.send_item({"title": "no id"})
            assert producer.sent == 0
        assert await total_messages(s, s.events_topic) == 0
        assert await total_messages(s, s.catalog_topic) == 0

    asyncio.run(go())


def test_sync_producer_from_plain_code(unique_settings: Settings) -> None:
    s = unique_settings
    asyncio.run(ensure_topics_async(s))
    events = [ev(n, user_id="u-1") for n in range(20)]  # one visitor: must arrive in order
    with SyncEventProducer(s) as producer:
        metadata = producer.send_item({"item_id": "sku-0"}, wait=True)
        assert metadata.topic == s.catalog_topic
        futures = [producer.send_event(e) for e in events]
        with pytest.raises(InvalidMessage):
            producer.send_event({"event_id": "e-x"})
        producer.flush()
        assert all(f.done() and f.exception() is None for f in futures)
    got = asyncio.run(consume(s, s.events_topic, len(events)))
    assert got == [(b"u-1", orjson.dumps(e)) for e in events]
    producer.stop()  # stopping twice is harmless


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (apt-get install -y kcat)")
def test_kcat_produces_contract_events(unique_settings: Settings) -> None:
    """The any-language recipe of docs/producing.md: key|JSON lines piped into kcat, with the Java-compatible
    partitioner, so each visitor lands on the partition our own client (and a Java producer) would use."""
    s = unique_settings
    asyncio.run(ensure_topics_async(s))
    docs = [ev(1, user_id="u-42", context={"page_category": "Kitchen/Appliances/Stand mixers"}),
            ev(2, session_id="s-anon")]
    keys = [b"u-42", b"s-anon"]
    lines = b"".join(k + b"|" + orjson.dumps(d) + b"\n" for k, d in zip(keys, docs, strict=True))
    subprocess.run(["kcat", "-b", s.bootstrap, "-t", s.events_topic, "-P", "-K", "|",
                    "-X", "partitioner=murmur2_random"], input=lines, check=True, timeout=KCAT_TIMEOUT_S)
    records = asyncio.run(consume_records(s, s.events_topic, 2))
    assert sorted((r.key, r.value) for r in records) == sorted(zip(keys, (orjson.dumps(d) for d in docs), strict=True))
    assert sorted(schemas.decode_event(r.value).visitor_key for r in records) == ["s-anon", "u-42"]
    partitions = list(range(s.partitions))
    for r in records:
        assert r.partition == DefaultPartitioner()(r.key, partitions, partitions), r.key


KCAT_CATALOG = [
    {"item_id": f"{kind}-{i}", "title": f"{path[-1]} model {i}", "category": path, "price": 20.0 + i,
     "in_stock": True}
    for kind, path in {"mixer": ["Kitchen", "Appliances", "Stand mixers"],
                       "sofa": ["Furniture", "Living room", "Sofas"]}.items()
    for i in range(6)
]
LIST_TIMEOUT_S = 60.0


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (apt-get install -y kcat)")
def test_kcat_events_are_acted_on_by_a_worker(unique_settings: Settings, tmp_path: Path) -> None:
    """Accepted *and acted on*: events produced by kcat, exactly as docs/producing.md shows, make a running
    worker publish a list for each of them (trigger_event_id = the kcat event's id), with reasons, and none of
    them is dead-lettered."""
    from .harness import TopicReader, WorkerProcess, send_items

    s = unique_settings.replace(data_dir=str(tmp_path), web_port=0)
    asyncio.run(ensure_topics_async(s))
    send_items(s, KCAT_CATALOG)
    worker = WorkerProcess(s, name="kcat worker")
    try:
        worker.wait_ready()
        # two rounds, each waited for: the worker publishes one list per visitor and batch (a burst of one
        # visitor's events yields a single list), and every kcat event here should have a list of its own
        rounds = [
            [ev(11, user_id="u-kcat", session_id="s-kcat-1", item_id="mixer-1",
                context={"page_category": "Kitchen/Appliances/Stand mixers"}),
             ev(12, session_id="s-kcat-anon", item_id="sofa-2",
                context={"page_category": "Furniture/Living room/Sofas"})],
            [ev(13, user_id="u-kcat", session_id="s-kcat-1", item_id="mixer-3")],
        ]
        reader = TopicReader(s, s.recommendations_topic)

        def triggered(visitor: str) -> set[str]:
            return {d["trigger_event_id"] for d in reader.lists_for(visitor)}

        for docs in rounds:
            keys = [(d.get("user_id") or d["session_id"]).encode() for d in docs]
            lines = b"".join(k + b"|" + orjson.dumps(d) + b"\n" for k, d in zip(keys, docs, strict=True))
            subprocess.run(["kcat", "-b", s.bootstrap, "-t", s.events_topic, "-P", "-K", "|",
                            "-X", "partitioner=murmur2_random"], input=lines, check=True, timeout=KCAT_TIMEOUT_S)
            wanted = {d["event_id"]: k.decode() for d, k in zip(docs, keys, strict=True)}
            reader.wait_for(lambda _, w=wanted: all(e in triggered(v) for e, v in w.items()),
                            timeout=LIST_TIMEOUT_S)
            for event_id, visitor in wanted.items():
                lists = [d for d in reader.lists_for(visitor) if d["trigger_event_id"] == event_id]
                assert lists, f"no list for kcat event {event_id} of {visitor}; worker said:\n{worker.output()}"
                items = lists[-1]["items"]
                assert items, lists[-1]
                assert all(i["reason"] for i in items), items
                assert {i["item_id"] for i in items} <= {i["item_id"] for i in KCAT_CATALOG}
        assert triggered("u-kcat") == {"e-11", "e-13"}
        assert triggered("s-kcat-anon") == {"e-12"}
        assert reader.lists_for("u-kcat")[-1]["user_id"] == "u-kcat"
        assert reader.lists_for("s-kcat-anon")[-1]["session_id"] == "s-kcat-anon"
        assert asyncio.run(total_messages(s, s.dead_letter_topic)) == 0
    finally:
        worker.stop()
    assert not worker.crashed(), worker.output()
