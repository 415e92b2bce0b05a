"""Reading the events and joins topics directly, beside faust's consumer: group-less aiokafka consumers for the
statistics rebuild (stream/recovery.py) and the broker's log end offsets for the repairs and the login joins.

faust's consumer may be the thing that is wedged (stream/repairs.py), so nothing here goes through it.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from stream_reco import schemas
from stream_reco.settings import Settings
from stream_reco.stream import joins, topics

log = logging.getLogger(__name__)

#: how long one fetch of the rebuild waits for data before it checks whether the target offset is reached
FETCH_TIMEOUT_MS = 500
#: records per fetch of the rebuild (bounds the time between two yields to the event loop)
FETCH_MAX_RECORDS = 2_000
#: longest wait for the broker's log end offsets in a delivery check or a join (the next one asks again)
DELIVERY_QUERY_TIMEOUT_S = 5.0


def partition_reader(settings: Settings, partition: int) -> tuple[AIOKafkaConsumer, TopicPartition]:
    """A group-less consumer (not started) for one events partition, fetching messages up to the size limit."""
    fetch_bytes = max(settings.max_message_bytes * 2, 1_048_576)
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_bytes=fetch_bytes, max_partition_fetch_bytes=fetch_bytes,
    )
    return consumer, TopicPartition(settings.events_topic, partition)


async def read(settings: Settings, partition: int, start: int, end: int) -> list[ConsumerRecord]:
    """The messages of events partition `partition` at offsets [start, end)."""
    consumer, tp = partition_reader(settings, partition)
    out: list[ConsumerRecord] = []
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        end = min(end, (await consumer.end_offsets([tp]))[tp])
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
            out.extend(msg for msg in batch.get(tp, ()) if msg.offset < end)
    finally:
        await consumer.stop()
    return out


async def join_states(settings: Settings, partition: int, logins: set[str], dim: int | None
                      ) -> dict[str, joins.Control]:
    """The join states of these login event ids on joins partition `partition`, validated as the worker
    validates them (an invalid one is skipped: the worker dead-lettered it)."""
    consumer, _ = partition_reader(settings, partition)
    tp = TopicPartition(topics.joins_topic(settings), partition)
    found: dict[str, joins.Control] = {}
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
            for msg in batch.get(tp, ()):
                try:
                    control = joins.parse_record(msg.key, msg.value, settings.max_message_bytes, dim=dim)
                except schemas.InvalidMessage:
                    continue
                if control.kind == joins.JOIN_STATE and control.login_event_id in logins:
                    found[control.login_event_id] = control
    except Exception as exc:  # the joins are only needed for the lists of this region: go on without
        log.warning("partition %d: joins topic unreadable (%r); the region's lists lack joined sessions",
                    partition, exc)
    finally:
        await consumer.stop()
    return found


class LogEnds:
    """The log end offsets of events partitions, asked with a client of its own (started on first use): faust's
    consumer may be the thing that is wedged (`DeliveryWatch`, stream/repairs.py), so its thread is not asked."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, partitions: list[int]) -> dict[int, int]:
        """The log end offset of each events partition."""
        async with self._lock:  # the delivery check and the joins agent ask concurrently: one client
            if self._client is None:
                client, _ = partition_reader(self.settings, 0)
                await client.start()
                self._client = client
        topic = self.settings.events_topic
        ends = await self._client.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: off for tp, off in ends.items()}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.stop()
            self._client = None
