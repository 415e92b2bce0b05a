"""No stale lists: when an item goes out of stock or is deleted, the visitors whose current pushed list shows
it get a new list without it, even if they do nothing (docs/contracts.md, "Recommendation").

    shop.catalog --(catalog feed: item now unavailable)--> withdrawn(item)
        --> PushedLists.showing(item) on this worker's partitions
        --> at once: each list republished without the item (trigger_event_id null), from its published bytes
        --> then, at most a quarter of the worker's time: each list computed afresh (full length again)

The catalogue feed runs on every worker; each refreshes only the visitors of the partitions it owns (the
lists it published), so every visitor is refreshed once. Computing a list costs ~1.5-5 ms of CPU, and a
best-seller can be in tens of thousands of lists (bench: the `pages` section), so the first pass only drops
the withdrawn items from the list as published (~0.1 ms each: parse, filter, send); the full recomputation that
brings the list back to its length follows in the background, in small chunks under the apply lock that use
at most a quarter of the time, so events keep their latency. A list the visitor's own next event replaced is
not recomputed. A recomputed list reflects the catalogue at that time: it never shows an item the catalogue marked
unavailable before it (the core's rules), so a refresh racing with the visitor's own next list is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from aiokafka import AIOKafkaConsumer

from stream_reco.settings import Settings
from stream_reco.stream.pushed import PushedLists
from stream_reco.stream.store import WorkerStats

log = logging.getLogger(__name__)

#: full recomputations per hold of the apply lock (~1.5-5 ms each): an event waits at most ~10-40 ms for one
CHUNK = 8
#: the background recomputation rests this many times as long as each chunk took: it uses at most a quarter of
#: the worker's time, so the event path keeps its latency while a best-seller's lists are recomputed
REFILL_REST = 3.0
#: lists the first pass republishes per hold of the lock (~0.1-0.3 ms each, no list computed)
DROP_CHUNK = 128


class StockRefresh:
    """Republishes the lists that show a withdrawn item (module docstring)."""

    def __init__(self, pushed: PushedLists, publish: Callable[[str], Awaitable[None]],
                 drop_withdrawn: Callable[[str, bytes], Awaitable[bytes | None]],
                 owns: Callable[[str], bool], apply_lock: asyncio.Lock, stats: WorkerStats) -> None:
        """`publish(visitor)` computes and publishes a visitor's list now; `drop_withdrawn(visitor, document)`
        republishes a published list without its unavailable items and returns the new bytes (None when it
        had none); `owns(visitor)`: whether the visitor's partition is this worker's now (a list published
        before a rebalance is the new owner's business)."""
        self.pushed = pushed
        self.publish = publish
        self.drop_withdrawn = drop_withdrawn
        self.owns = owns
        self.apply_lock = apply_lock
        self.stats = stats
        self.pending: set[str] = set()
        self.wake = asyncio.Event()
        #: lists republished shorter, to compute afresh: visitor -> the bytes the first pass published
        self.refill: dict[str, bytes] = {}
        self.refill_wake = asyncio.Event()
        #: a first pass is running
        self.dropping = False

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

    async def run_refill(self) -> None:
        """Forever: compute afresh the lists the first pass shortened (`refill_some`)."""
        while True:
            await self.refill_wake.wait()
            self.refill_wake.clear()
            while self.refill:
                if self.pending or self.dropping:  # a first pass goes first: it is what the 1 s promise is about
                    await asyncio.sleep(0.05)
                    continue
                await self.refill_some()

    async def learn_pushed(self, settings: Settings) -> int:
        """Fill the index from the recommendations topic: the lists published before this worker started (or
        took its partitions over) are still the visitors' current lists there, and must be corrected too.

        Reads every partition of the (compacted) topic up to its end once, keeping the latest list of each
        visitor this worker owns, unless the worker has published a newer one meanwhile (already in the index).
        Runs beside the event path; returns the number of lists learned."""
        consumer = AIOKafkaConsumer(settings.recommendations_topic, **settings.kafka_client_kwargs(), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        latest: dict[str, tuple[tuple[str, ...], bytes]] = {}
        try:
            ends = await consumer.end_offsets(sorted(consumer.assignment()))
            pending = {tp for tp, end in ends.items() if end > 0}
            while pending:
                batches = await consumer.getmany(timeout_ms=500, max_records=2_000)
                for records in batches.values():
                    for msg in records:
                        key = msg.key.decode("utf-8", "replace") if msg.key else None
                        if key is not None and self.owns(key):
                            latest[key] = (_shown(msg.value), msg.value)
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        finally:
            await consumer.stop()
        learned = 0
        for key, (items, document) in latest.items():
            if items and self.pushed.items_of(key) is None:  # not published since the worker started
                self.pushed.record(key, items, document)
                learned += 1
        self.stats.counts["pushed_lists_learned"] += learned
        return learned

    async def refresh_pending(self) -> int:
        """The first pass: every list that shows a pending item, republished without it; the number of lists."""
        self.dropping = True
        try:
            return await self._drop_pending()
        finally:
            self.dropping = False

    async def _drop_pending(self) -> int:
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
        for start in range(0, len(mine), DROP_CHUNK):
            async with self.apply_lock:
                for visitor in mine[start:start + DROP_CHUNK]:
                    done += await self._drop_one(visitor)
            await asyncio.sleep(0)  # let the event path take the lock between chunks
        self.stats.counts["lists_refreshed"] += done
        if self.refill:
            self.refill_wake.set()
        return done

    async def _drop_one(self, visitor: str) -> int:
        document = self.pushed.document(visitor)
        try:
            if document is None:  # nothing to drop from: compute it now
                await self.publish(visitor)
                return 1
            shorter = await self.drop_withdrawn(visitor, document)
            if shorter is not None:
                self.refill[visitor] = shorter
            return int(shorter is not None)
        except Exception:  # one visitor's list must not stop the others' refresh
            self.stats.counts["failed_lists"] += 1
            log.exception("refreshing the list of visitor %r failed", visitor)
            return 0

    async def refill_some(self) -> int:
        """The second pass, one chunk: compute afresh up to `CHUNK` shortened lists that no newer list replaced,
        then rest `REFILL_REST` times as long (at most a quarter of the worker's time goes here)."""
        chunk = [self.refill.popitem() for _ in range(min(CHUNK, len(self.refill)))]
        began = time.monotonic()
        done = 0
        async with self.apply_lock:
            for visitor, shorter in chunk:
                if self.pushed.document(visitor) is not shorter:  # replaced by the visitor's own next list
                    continue
                try:
                    await self.publish(visitor)
                    done += 1
                except Exception:
                    self.stats.counts["failed_lists"] += 1
                    log.exception("recomputing the list of visitor %r failed", visitor)
        self.stats.counts["lists_refilled"] += done
        await asyncio.sleep(REFILL_REST * (time.monotonic() - began))
        return done


def _shown(value: bytes | None) -> tuple[str, ...]:
    """The item ids of a published list ((), for a tombstone or a record that is not one of our lists)."""
    try:
        doc = orjson.loads(value) if value else None
        return tuple(str(item["item_id"]) for item in doc["items"]) if isinstance(doc, dict) else ()
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ()
