"""The statistics feed: every worker learns the shop-wide statistics from the partitions it does not own.

Why. Visitor state is partitioned (each visitor's events go to one worker), but co-visitation, popularity and
session neighbours are shop-wide: learned from one worker's partitions only, each of N workers knew about 1/N
of the shop, and a visitor's list depended on which worker owned them. A shop scales out when it is big, and
then its lists got worse. So each worker also reads the *other* partitions of the events topic, with a plain
group-less consumer (the pattern the catalog feed uses), and learns statistics (never visitor state) from them.

Why this design and not another (measured and argued in docs/operations.md, "Shop-wide statistics"):
- statistics deltas on an internal topic would need a merge rule per structure (co-visitation pruning and
  popularity decay are not commutative sums once capped) and a second serialisation of the same facts that the
  events topic already holds in order;
- a faust global table is keyed like a table (last write wins per key): one event touches up to
  `2 * covis_window + 1` item keys, every worker writes every key, and faust-streaming's global tables have
  open recovery issues;
- reading the events costs each worker the decode and the statistics update of every shop event (tens of µs;
  the list, which dominates, is still computed only by the visitor's owner), and gives every worker the same
  statistics within a fetch interval of the event.

Who counts what. Each event's statistics are counted once per worker: by the feed while the partition is
not this worker's, by the worker's own path (`StatsRecovery`, ingest) while it is. The hand-over point is
`StatsRecovery.counted` (per partition, the offset below which the statistics hold the partition's events):
the feed reads on from there and moves it; on assignment the worker takes it as the boundary below which its
own path must not count again (the feed may have read ahead of the group's committed offset).

The feed needs each visitor's last few items for co-visitation; it keeps them in a bounded LRU of light
contexts (core/stats_context.py), not in visitor states.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_reco import schemas
from stream_reco.core.recommender import Recommender
from stream_reco.core.stats_context import StatsContexts
from stream_reco.settings import Settings
from stream_reco.stream import admission

log = logging.getLogger(__name__)

#: longest wait of one fetch: the feed's share of the "within 2 s" promise, and how soon it sees a rebalance
FETCH_TIMEOUT_MS = 200
#: records per fetch (bounds the time the feed holds the event loop between two yields)
FETCH_MAX_RECORDS = 500


class StatsFeed:
    """Learns statistics from the events partitions this worker does not own (module docstring)."""

    def __init__(self, settings: Settings, recommender: Callable[[], Recommender], contexts: StatsContexts,
                 counted: dict[int, int], owned: Callable[[], set[int]]) -> None:
        """`recommender` is asked each time (a model swap replaces the catalogue, not the statistics);
        `counted` is shared with the worker's own path (`StatsRecovery.counted`); `owned` says which
        partitions the worker applies itself (the feed leaves those alone)."""
        self.settings = settings
        self.recommender = recommender
        self.contexts = contexts
        self.counted = counted
        self.owned = owned
        self.events = 0
        self.skipped = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._reading: set[int] = set()

    def snapshot(self) -> dict[str, Any]:
        """Counters for the worker's periodic stats line."""
        return {"feed_events": self.events, "feed_partitions": len(self._reading), "feed_contexts": len(self.contexts)}

    async def run(self) -> None:
        """Read until cancelled. Start it once the first assignment is known, so that a start-up does not read
        the partitions the worker is about to own."""
        fetch_bytes = max(self.settings.max_message_bytes * 2, 1_048_576)
        self._consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_bytes=fetch_bytes, max_partition_fetch_bytes=fetch_bytes,
            fetch_max_wait_ms=FETCH_TIMEOUT_MS,
        )
        await self._consumer.start()
        try:
            while True:
                await self._follow_assignment()
                if not self._reading:
                    await asyncio.sleep(FETCH_TIMEOUT_MS / 1000)
                    continue
                batch = await self._consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
                for tp, msgs in batch.items():
                    for msg in msgs:
                        self.learn(tp.partition, msg.offset, msg.key, msg.value, msg.timestamp)
                await asyncio.sleep(0)
        finally:
            await self._consumer.stop()
            self._consumer = None

    async def _follow_assignment(self) -> None:
        """Read exactly the partitions the worker does not own, each from its `counted` offset."""
        assert self._consumer is not None
        wanted = set(range(self.settings.partitions)) - self.owned()
        if wanted == self._reading:
            return
        topic = self.settings.events_topic
        # `assign` replaces the whole assignment and forgets every position (aiokafka 0.14): seek them all, or the
        # partitions kept would be read again from their start
        self._consumer.assign([TopicPartition(topic, p) for p in sorted(wanted)])
        for p in sorted(wanted):
            tp = TopicPartition(topic, p)
            if self.counted.get(p, 0) > 0:
                self._consumer.seek(tp, self.counted[p])
            else:
                await self._consumer.seek_to_beginning(tp)
        log.info("statistics feed reads partitions %s", sorted(wanted))
        self._reading = wanted

    def learn(self, partition: int, offset: int, key: bytes | None, value: bytes | None, record_ms: int) -> bool:
        """Learn one message of a partition this worker does not own; False when it was not counted (owned by
        now, already counted, or a message the owner rejects: the owner dead-letters it, the feed skips it)."""
        if partition in self.owned() or offset < self.counted.get(partition, 0):
            return False
        self.counted[partition] = offset + 1
        reference = admission.reference_ms(record_ms)
        try:
            event = admission.admit(value, key, reference, self.settings)
        except schemas.InvalidMessage:
            self.skipped += 1
            return False
        now_ms = admission.ceiling_ms(reference, self.settings.max_clock_skew_s)
        try:
            learned = self.recommender().learn_stats(event, now_ms, self.contexts)
        except Exception:  # the owner dead-letters what the core fails on; the feed must go on
            self.skipped += 1
            log.exception("statistics feed: partition %d offset %d failed; skipped", partition, offset)
            return False
        self.events += learned
        return learned
