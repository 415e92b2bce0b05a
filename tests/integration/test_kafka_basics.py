"""Plain Kafka against the real broker, below any worker: the guarantees everything else is built on.

If one of these fails, no failure higher up (a worker that loses or repeats events, a list that is never
updated) can be trusted to mean what it seems to, so each is checked here on its own:

- the topics created from the settings have the configured partition count, and the recommendations topic
  is compacted (the latest list per visitor is what the contract keeps);
- a consumer group that commits after part of the stream and is replaced resumes at exactly the committed
  offsets: nothing lost, nothing read twice;
- a message that breaks the schema is rejected by the validation layer with the failing field named, also
  when its bytes travelled through the broker.

Every test uses `unique_settings` (fresh topics and group), so tests never see each other's messages.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import ConsumerRecord, TopicPartition

from stream_reco import schemas
from stream_reco.schemas import InvalidMessage
from stream_reco.settings import Settings
from stream_reco.shop.client import EventProducer
from stream_reco.shop.tail import assign_all_partitions
from stream_reco.stream.topics import ensure_topics_async, joins_topic

pytestmark = pytest.mark.integration

T0 = 1764150000000
CONSUME_TIMEOUT_S = 10.0
# After the expected count arrived, keep polling this long: a duplicate or an extra message would show up.
SETTLE_MS = 500
POLL_MS = 200
TOTAL_EVENTS = 30
FIRST_BATCH = 12  # consumed and committed by the first group member; the rest is for its replacement


def ev(n: int, **fields: Any) -> dict[str, Any]:
    """A valid contract event; one visitor per event so the stream spreads over every partition."""
    return {"event_id": f"e-{n}", "event_type": "view", "user_id": f"u-{n}", "item_id": f"sku-{n}",
            "timestamp": T0 + n, **fields}


def _group_consumer(settings: Settings, topic: str, auto_offset_reset: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=settings.app_id,
                                enable_auto_commit=False, auto_offset_reset=auto_offset_reset)
    consumer.subscribe([topic])
    return consumer


async def _take(consumer: AIOKafkaConsumer, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    """Exactly `count` records (never more: `max_records` caps each poll), or TimeoutError."""
    out: list[ConsumerRecord[bytes, bytes]] = []
    async with asyncio.timeout(CONSUME_TIMEOUT_S):
        while len(out) < count:
            batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=count - len(out))
            out.extend(r for records in batches.values() for r in records)
    return out


async def _drain(consumer: AIOKafkaConsumer, expected: int) -> list[ConsumerRecord[bytes, bytes]]:
    """Everything the consumer is given until `expected` arrived, then for `SETTLE_MS` more."""
    out: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while len(out) < expected and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=POLL_MS)
        out.extend(r for records in batches.values() for r in records)
    batches = await consumer.getmany(timeout_ms=SETTLE_MS)
    out.extend(r for records in batches.values() for r in records)
    return out


def _event_id(record: ConsumerRecord[bytes, bytes]) -> str:
    assert record.value is not None
    return str(orjson.loads(record.value)["event_id"])


async def _described(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, dict[str, Any]]:
    """Topic metadata once the broker serves all of `topics`: its metadata cache follows a creation a moment
    later, and until then a topic reads as unknown."""
    async with asyncio.timeout(CONSUME_TIMEOUT_S):
        while True:
            described = {t["topic"]: t for t in await admin.describe_topics(topics)}
            if sorted(described) == sorted(topics) and all(t["error_code"] == 0 for t in described.values()):
                return described
            await asyncio.sleep(POLL_MS / 1000)


async def _cleanup_policies(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, str]:
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in topics])
    policy: dict[str, str] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            assert resource["error_code"] == 0, resource
            entries = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
            policy[resource["resource_name"]] = entries["cleanup.policy"]
    return policy


def test_topics_from_settings_have_partitions_and_compaction(unique_settings: Settings) -> None:
    s = unique_settings
    topics = [s.events_topic, s.catalog_topic, s.recommendations_topic, s.dead_letter_topic, joins_topic(s)]

    async def go() -> None:
        assert sorted(await ensure_topics_async(s)) == sorted(topics)
        admin = AIOKafkaAdminClient(**s.kafka_client_kwargs())
        await admin.start()
        try:
            described = await _described(admin, topics)
            for name, topic in described.items():
                assert sorted(p["partition"] for p in topic["partitions"]) == list(range(s.partitions)), name
            policy = await _cleanup_policies(admin, [s.recommendations_topic, s.events_topic])
        finally:
            await admin.close()
        # compaction on the list topic, the broker's default (delete) on the event log
        assert policy == {s.recommendations_topic: "compact", s.events_topic: "delete"}
        # a second worker starting finds them all: nothing is reported as created twice
        assert await ensure_topics_async(s) == []

    asyncio.run(go())


def test_a_failed_topic_creation_is_reported(unique_settings: Settings) -> None:
    """The broker's per-topic error codes are read, not swallowed: a bad setting fails at once."""
    from aiokafka.errors import KafkaError

    with pytest.raises(KafkaError, match="InvalidPartitionsError"):
        asyncio.run(ensure_topics_async(unique_settings.replace(partitions=0)))


def test_committed_offsets_survive_a_consumer_restart(unique_settings: Settings) -> None:
    s = unique_settings
    events = [ev(n) for n in range(TOTAL_EVENTS)]
    all_ids = {e["event_id"] for e in events}
    tps = [TopicPartition(s.events_topic, p) for p in range(s.partitions)]

    async def go() -> None:
        await ensure_topics_async(s)
        async with EventProducer(s) as producer:
            for e in events:
                await producer.send_event(e)
        # first member: read part of the stream, commit exactly what it read, leave
        first = _group_consumer(s, s.events_topic, "earliest")
        await first.start()
        try:
            taken = await _take(first, FIRST_BATCH)
            positions = {tp: await first.position(tp) for tp in tps}
            await first.commit(positions)
            committed = {tp: await first.committed(tp) for tp in tps}
            ends = await first.end_offsets(tps)
        finally:
            await first.stop()
        assert len(taken) == FIRST_BATCH
        assert sum(ends.values()) == TOTAL_EVENTS
        assert all(end > 0 for end in ends.values())  # the stream spans every partition
        assert sum(c or 0 for c in committed.values()) == FIRST_BATCH
        for tp in tps:  # the committed offset is one past the last record read from that partition
            read = [r.offset for r in taken if r.partition == tp.partition]
            assert committed[tp] == (max(read) + 1 if read else 0), tp

        # its replacement in the same group: "none" fails if any partition lacked a committed offset, so
        # what it reads can only come from the commits, not from an offset reset
        second = _group_consumer(s, s.events_topic, "none")
        await second.start()
        try:
            rest = await _drain(second, TOTAL_EVENTS - FIRST_BATCH)
        finally:
            await second.stop()
        for tp in tps:
            offsets = sorted(r.offset for r in rest if r.partition == tp.partition)
            assert offsets == list(range(committed[tp] or 0, ends[tp])), tp
        first_ids = [_event_id(r) for r in taken]
        rest_ids = [_event_id(r) for r in rest]
        assert len(set(first_ids)) == FIRST_BATCH and len(set(rest_ids)) == len(rest_ids)  # no duplicates
        assert set(first_ids).isdisjoint(rest_ids)
        assert set(first_ids) | set(rest_ids) == all_ids  # none missing
        assert len(rest_ids) == TOTAL_EVENTS - FIRST_BATCH

    asyncio.run(go())


# (what breaks the contract, the field the rejection must name)
INVALID_EVENTS: list[tuple[dict[str, Any], str]] = [
    (ev(1, event_type="wishlist"), "event_type"),
    (ev(2, context={"quantity": 0}), "context.quantity"),
    ({k: v for k, v in ev(3).items() if k != "item_id"}, "item_id"),
    (ev(4, user_id=None), "session_id"),  # no visitor key at all
    (ev(5, timestamp=str(T0)), "timestamp"),
]


def test_invalid_event_through_the_broker_is_rejected_naming_the_field(unique_settings: Settings) -> None:
    """Raw bytes, sent past the project's producer (which would refuse them), as a careless shop would."""
    s = unique_settings
    valid = ev(0)
    sent = [valid] + [doc for doc, _ in INVALID_EVENTS]
    expected_field = {doc["event_id"]: field for doc, field in INVALID_EVENTS}

    async def go() -> list[ConsumerRecord[bytes, bytes]]:
        await ensure_topics_async(s)
        producer = AIOKafkaProducer(**s.kafka_client_kwargs())
        await producer.start()
        try:
            for doc in sent:
                await producer.send_and_wait(s.events_topic, orjson.dumps(doc), key=doc["event_id"].encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(**s.kafka_client_kwargs(), group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            await assign_all_partitions(consumer, s.events_topic, CONSUME_TIMEOUT_S)
            return await _drain(consumer, len(sent))
        finally:
            await consumer.stop()

    records = asyncio.run(go())
    assert sorted(_event_id(r) for r in records) == sorted(doc["event_id"] for doc in sent)
    rejected: dict[str, InvalidMessage] = {}
    for record in records:
        event_id = _event_id(record)
        if event_id == valid["event_id"]:
            assert schemas.decode_event(record.value).event_id == event_id
            continue
        with pytest.raises(InvalidMessage) as info:
            schemas.decode_event(record.value)
        rejected[event_id] = info.value
    assert {event_id: err.field for event_id, err in rejected.items()} == expected_field
    for event_id, err in rejected.items():
        assert str(err).startswith(f"{expected_field[event_id]}: "), str(err)  # the message names the field
