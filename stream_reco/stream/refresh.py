"""No stale lists: when an item goes out of stock or is deleted, the visitors whose current pushed list shows
it get a new list without it, even if they do nothing (docs/contracts.md, "Recommendation").

    shop.catalog --(catalog feed: item now unavailable)--> withdrawn(item)
        --> PushedLists.showing(item) on this worker's partitions --> a fresh list each (trigger: null)

The catalogue feed runs on every worker; each refreshes only the visitors of the partitions it owns (the
lists it published), so every visitor is refreshed once. The new lists are computed under the apply lock, in
chunks of `CHUNK` visitors, so events keep flowing between chunks; a withdrawn item's visitors are done within a
second unless the item is in very many lists (bench: the stock refresh section measures it). The lists
reflect the catalogue at the time they are computed: a list never shows an item the catalogue marked
unavailable before it (the core's rules), so a refresh racing with the visitor's own next list is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from aiokafka import AIOKafkaConsumer

from stream_reco.settings import Settings
from stream_reco.stream.pushed import PushedLists
from stream_reco.stream.store import WorkerStats

log = logging.getLogger(__name__)

#: visitors refreshed per hold of the apply lock (~1.5 ms of CPU each): events wait at most ~0.1 s for a chunk
CHUNK = 64


class StockRefresh:
    """Republishes the lists that show a withdrawn item (module docstring)."""

    def __init__(self, pushed: PushedLists, publish: Callable[[str], Awaitable[None]],
                 owns: Callable[[str], bool], apply_lock: asyncio.Lock, stats: WorkerStats) -> None:
        """`publish(visitor)` computes and publishes a visitor's list now; `owns(visitor)`: whether the visitor's
        partition is this worker's now (a list published before a rebalance is the new owner's business)."""
        self.pushed = pushed
        self.publish = publish
        self.owns = owns
        self.apply_lock = apply_lock
        self.stats = stats
        self.pending: set[str] = set()
        self.wake = asyncio.Event()

    def withdrawn(self, item_id: str) -> None:
        """The catalogue marked `item_id` out of stock or deleted: refresh the lists that show it."""
        self.pending.add(item_id)
        self.wake.set()

    async def run(self) -> None:
        """Forever: wait for withdrawn items, then refresh the lists showing them."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            await self.refresh_pending()

    async def learn_pushed(self, settings: Settings) -> int:
        """Fill the index from the recommendations topic: the lists published before this worker started (or
        took its partitions over) are still the visitors' current lists there, and must be corrected too.

        Reads every partition of the (compacted) topic up to its end once, keeping the latest list of each
        visitor this worker owns, unless the worker has published a newer one meanwhile (already in the index).
        Runs beside the event path; returns the number of lists learned."""
        consumer = AIOKafkaConsumer(settings.recommendations_topic, **settings.kafka_client_kwargs(), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        latest: dict[str, tuple[str, ...]] = {}
        try:
            ends = await consumer.end_offsets(sorted(consumer.assignment()))
            pending = {tp for tp, end in ends.items() if end > 0}
            while pending:
                batches = await consumer.getmany(timeout_ms=500, max_records=2_000)
                for records in batches.values():
                    for msg in records:
                        key = msg.key.decode("utf-8", "replace") if msg.key else None
                        if key is not None and self.owns(key):
                            latest[key] = _shown(msg.value)
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        finally:
            await consumer.stop()
        learned = 0
        for key, items in latest.items():
            if items and self.pushed.items_of(key) is None:  # not published since the worker started
                self.pushed.record(key, items)
                learned += 1
        self.stats.counts["pushed_lists_learned"] += learned
        return learned

    async def refresh_pending(self) -> int:
        """Refresh every list that shows a pending item; the number of lists republished."""
        items, self.pending = self.pending, set()
        visitors: set[str] = set()
        for item in items:
            visitors |= self.pushed.showing(item)
        mine = []
        for visitor in sorted(visitors):
            if self.owns(visitor):
                mine.append(visitor)
            else:
                self.pushed.forget(visitor)
        done = 0
        for start in range(0, len(mine), CHUNK):
            async with self.apply_lock:
                for visitor in mine[start:start + CHUNK]:
                    try:
                        await self.publish(visitor)
                        done += 1
                    except Exception:  # one visitor's list must not stop the others' refresh
                        self.stats.counts["failed_lists"] += 1
                        log.exception("refreshing the list of visitor %r failed", visitor)
            await asyncio.sleep(0)  # let the event path take the lock between chunks
        self.stats.counts["lists_refreshed"] += done
        return done


def _shown(value: bytes | None) -> tuple[str, ...]:
    """The item ids of a published list ((), for a tombstone or a record that is not one of our lists)."""
    try:
        doc = orjson.loads(value) if value else None
        return tuple(str(item["item_id"]) for item in doc["items"]) if isinstance(doc, dict) else ()
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ()
