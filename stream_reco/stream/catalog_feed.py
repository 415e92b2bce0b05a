"""The catalogue feed: every worker reads the whole catalog topic, then follows it, and says when it caught up.

    shop.catalog --(every worker reads every partition)--> Recommender.upsert_item(item)

The catalog is read by a plain aiokafka consumer without a group, from the beginning, on every worker: every
worker needs every item, and the catalog topic is compacted so this stays cheap. The initial read loads in bulk
(one search index build at the end); `ready` is set once it is built, and events wait for it (`wait_ready`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

from stream_reco import schemas
from stream_reco.core.events import CatalogItem
from stream_reco.core.recommender import Recommender
from stream_reco.settings import Settings
from stream_reco.stream import admission
from stream_reco.stream.store import WorkerStats

log = logging.getLogger(__name__)


class CatalogFeed:
    """The catalog consumer of one worker, and its readiness (module docstring)."""

    def __init__(self, settings: Settings, recommender: Recommender, stats: WorkerStats,
                 dead_letter: Callable[[Any, bytes | None, schemas.InvalidMessage], Awaitable[None]],
                 withdrawn: Callable[[str], None] = lambda item_id: None) -> None:
        """`dead_letter` sends a bad catalogue record to the dead-letter topic (stream/ingest.py); `withdrawn` is
        told of every item that goes out of stock or is deleted after the initial read (stream/refresh.py)."""
        self.settings = settings
        self.recommender = recommender
        self.stats = stats
        self.dead_letter = dead_letter
        self.withdrawn = withdrawn
        #: set once the initial catalogue read is done and its search index built
        self.ready = asyncio.Event()

    async def consume(self) -> None:
        """Read the whole catalog topic on every worker, then follow it; signal readiness once caught up."""
        settings = self.settings
        # subscribing without a group makes aiokafka assign every partition of the topic to this consumer
        consumer = AIOKafkaConsumer(
            settings.catalog_topic,
            **settings.kafka_client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=max(settings.max_message_bytes * 2, 1_048_576),
            max_partition_fetch_bytes=max(settings.max_message_bytes * 2, 1_048_576),
        )
        await consumer.start()
        try:
            end = await consumer.end_offsets(sorted(consumer.assignment()))
            pending = {tp for tp, off in end.items() if off > 0}
            if pending:
                self.recommender.catalog.begin_bulk_load()  # one index build at the end, not one per 1000 items
            else:
                self._mark_ready()
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=self.settings.batch_size * 4)
                for messages in batches.values():
                    for msg in messages:
                        await self._apply(msg)
                if pending:
                    pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
                    if not pending:
                        await self._end_load()
                        self._mark_ready()
        finally:
            await consumer.stop()

    async def _apply(self, msg: Any) -> None:
        if msg.value is None and msg.key:
            # a tombstone on the compacted catalog topic is Kafka's way of deleting the key's item
            self._upsert(CatalogItem(item_id=msg.key.decode("utf-8", "replace"), deleted=True))
            return
        raw = msg.value or b""
        try:
            item = schemas.decode_item(raw, max_bytes=self.settings.max_message_bytes)
            admission.check_item(item, msg.key)  # else compaction keeps it under another item's key
        except schemas.InvalidMessage as exc:
            await self.dead_letter(msg, raw, exc)
            return
        self._upsert(item)

    def _upsert(self, item: CatalogItem) -> None:
        self.recommender.upsert_item(item)
        self.stats.counts["catalog_updates"] += 1
        if (item.deleted or not item.in_stock) and self.ready.is_set():  # before, no list was published
            self.withdrawn(item.item_id)

    async def _end_load(self) -> None:
        """The initial catalogue read is done: build its search index once, and be ready when it is built.

        The build runs in a thread (annoy releases the GIL while it builds trees), so the event loop keeps
        heartbeats and fetches going; searches before it finishes would be correct (exact), only slow.
        """
        catalog = self.recommender.catalog
        started = time.monotonic()
        catalog.end_bulk_load(background=True)
        while not catalog.wait_for_rebuild(timeout=0):
            await asyncio.sleep(0.05)
        log.info("catalog index built (%s) in %.1f s", catalog.index_kind, time.monotonic() - started)

    def _mark_ready(self) -> None:
        self.ready.set()
        log.info("catalog loaded: %d items", self.stats.counts["catalog_updates"])

    async def wait_ready(self) -> None:
        """Wait until the catalogue caught up, at most `catalog_wait_s` (then events are processed anyway)."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout=self.settings.catalog_wait_s)
        except TimeoutError:
            log.warning("catalog not caught up after %.0f s; processing events anyway", self.settings.catalog_wait_s)
