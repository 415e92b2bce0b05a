"""Rebuilding the statistics a worker keeps only in memory, from the events topic itself.

Why this exists. Visitor state lives in a changelogged faust table and comes back after a restart or a
rebalance. The shop-wide statistics (`Recommender.covis`, `.popularity` and `.sessions`, core/stats.py) do not:
they are learned from every event a worker applies and live in its memory only. Without this module a
restarted worker starts them empty, and its lists differ from an uninterrupted run's (measured: after one
`kill -9` at 40 % of a 2.5 k-event replay, 103 of 156 visitors' final lists differed;
tests/integration/test_reliability_crash.py). Keeping them in a changelogged table instead was rejected:
they are keyed by item, not by visitor, so every worker would write every key (last write wins across
workers), and one event touches up to `2 * covis_window + 1` keys (write amplification of ~20).

What it does. The events topic is the source of truth, so the statistics are rebuilt from it:

1. Before a worker applies the first event of an events partition it has not applied so far (a start, or a
   partition handed over by a rebalance), it reads that partition from its beginning up to that event's
   offset (the committed offset) and replays it through a *shadow* `Recommender`: same catalogue, its own
   in-memory visitor store (so each event sees the visitor history it saw the first time, which
   co-visitation needs) and the live statistics objects, so they learn exactly what they would have learned.
   Offsets this worker already counted before (a partition that comes back) only rebuild shadow state.
2. After a crash, the changelog may be *ahead* of the committed offset: events applied (and written to
   the changelog) but not yet committed are delivered again, and the table already reflects them. The core
   would drop them as duplicates, so their statistics would be lost and their lists (perhaps lost in the
   crash) never published again. So the rebuild also scans on from the committed offset and decides, *per
   visitor*, which redelivered events the table already holds (stream/region.py says how). The held events
   are applied by the shadow (learning statistics in order) and the worker republishes the shadow's list for
   each: the list the dead worker computed or would have; the others are applied to the table as usual, each
   exactly once. From the last held event on (the end of the *recovery region*), table and log agree, and the
   shadow is dropped.

3. The consumer can also *skip* messages: faust-streaming 0.15.3 dropped buffered events of a partition that
   stayed with the same worker across a rebalance and went on after them (seen in
   tests/integration/test_reliability_scale.py: the first event after the rebalance was offset 19, the last
   applied 17, and 18 was never delivered again). So whenever a partition's first delivered offset is beyond
   the next one this worker expects (or, at first sight, for the messages just before it), the rebuild looks
   at the last `MISSED_WINDOW` messages before it: those after the last one the table holds were never
   applied by anyone, and the worker applies them now, in order, before the delivered one. Messages skipped
   *and* committed are found by `acknowledged_unseen` (called by stream/repairs.py).

Login joins across partitions travel on the internal joins topic (stream/joins.py). They change visitor state,
never statistics, so the rebuild below the committed offset does not read them: the shadow's copy of a user who
joined a session from another partition lacks that session, and co-visitation relearned from that user's later
events pairs them with the user's own history only (statistics differ slightly from an uninterrupted run's).
In the recovery region it matters more: the shadow republishes lists, and a list for a redelivered login that
lacked the session could show an item the session bought. So for every held login of the region whose join the
table holds, the rebuild reads that join's state from the joins topic (same partition number; validated like
any join record) and the shadow merges it right after the login (`ShadowRecommender`, stream/region.py).

Cost and limits: a rebuild reads the partition's retained events once (~tens of µs per event); events that
retention deleted are not counted again; the catalogue used is today's, not the one of the time. With several
partitions per worker the order in which partitions are rebuilt differs from the original interleaving, so
the rebuilt statistics equal the original ones up to float rounding and pruning order (exactly with one
partition). See docs/operations.md.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiokafka import ConsumerRecord

from stream_reco.core.events import Event
from stream_reco.core.recommender import Recommender, VisitorStore
from stream_reco.core.stats_context import StatsContexts
from stream_reco.settings import Settings
from stream_reco.stream import admission, log_reader, region
from stream_reco.stream.log_reader import FETCH_MAX_RECORDS, FETCH_TIMEOUT_MS
from stream_reco.stream.region import BytesVisitorStore, ShadowRecommender

__all__ = ["MISSED_WINDOW", "REGION_SCAN_SLACK", "BytesVisitorStore", "ShadowRecommender", "StatsRecovery"]

log = logging.getLogger(__name__)

#: the scan for the recovery region stops after this many events in a row that the table does not hold.
#: Inside the region only events whose state moved to another key (a session joined at login) look absent,
#: never thousands in a row; past it, nothing is held, and a worker down for long must not read hours of log.
REGION_SCAN_SLACK = 2_000
#: how far before the first delivered offset the rebuild looks for messages the consumer skipped: more than
#: faust ever holds in its buffers (a batch plus the stream buffer), which is what a rebalance can drop
MISSED_WINDOW = 10_000
#: with statistics from a snapshot or the feed, the rebuild still reads this many events before the skip window:
#: the shadow's visitors need recent history (co-visitation pairs an event with the visitor's last items)
CONTEXT_EVENTS = 10_000


class StatsRecovery:
    """Per events partition: rebuild statistics on first sight, replay redelivered events through a shadow."""

    def __init__(self, settings: Settings, recommender: Recommender, store: VisitorStore) -> None:
        self.settings = settings
        self.recommender = recommender
        self.store = store
        #: per partition, the offset after the last message this worker has applied (skip detection)
        self.next_offset: dict[int, int] = {}
        #: per partition, the offset below which the live statistics hold the partition's events, whoever counted
        #: them (the statistics feed, a snapshot, or this worker's own path); the feed reads on from here
        self.counted: dict[int, int] = {}
        #: per owned partition, `counted` when this worker took it: its own path counts statistics from here
        #: (below, the feed or the snapshot did; the feed may have read past the group's committed offset)
        self.boundary: dict[int, int] = {}
        #: light per-visitor contexts for statistics learned without a visitor state (the feed's; app.py sets it)
        self.contexts = StatsContexts(settings, max_visitors=settings.stats_feed_max_visitors)
        #: partitions in a recovery region, with the shadow that holds their visitors as of the log position
        self.shadows: dict[int, Recommender] = {}
        #: per partition in a recovery region, the offset after the last event the table held at the rebuild
        self.region_end: dict[int, int] = {}
        #: per partition in a recovery region, the offsets of the events the table held (the shadow applies those)
        self.held: dict[int, set[int]] = {}
        self.rebuilt_events = 0
        self.rebuild_s = 0.0
        self.replayed = 0
        self.missed = 0
        #: events the rebuild skipped because the core raised on them (the live worker dead-lettered them)
        self.failed = 0

    async def before(self, partition: int, offset: int, delivered: bool = True) -> list[ConsumerRecord]:
        """Call before the message at (`partition`, `offset`) is handled (valid or not).

        Returns earlier messages of the partition to handle first, in order: those never applied, and
        redelivered ones of a recovery region that the consumer jumped over (the shadow applies those).
        `delivered=False`: no message is at hand, `offset` is the committed one (see `acknowledged_unseen`)."""
        expected = self.next_offset.get(partition)
        if expected is None:
            log.info("partition %d: first %s at offset %d", partition, "event" if delivered else "position", offset)
        missed: list[ConsumerRecord] = []
        if expected is None or offset > expected:
            missed = await self._rebuild(partition, applied_below=expected or 0, upto=offset)
        self.next_offset[partition] = max(expected or 0, offset + 1 if delivered else offset)
        return missed

    def learns(self, partition: int, offset: int) -> bool:
        """Whether applying the message at (`partition`, `offset`) counts its statistics: not when the feed or
        the snapshot already did (`boundary`). Also records it as counted (for the feed and the snapshot)."""
        self.counted[partition] = max(self.counted.get(partition, 0), offset + 1)
        return offset >= self.boundary.get(partition, 0)

    def assigned(self, partitions: set[int]) -> None:
        """Partitions this worker now applies: its own path counts their statistics from `counted` on."""
        for p in partitions:
            if p not in self.boundary:
                self.boundary[p] = self.counted.get(p, 0)

    def revoked(self, partitions: set[int]) -> None:
        """Partitions this worker no longer applies: their shadows go, and the statistics feed takes them on from
        what this worker applied (their counted offsets stay, so nothing is counted twice)."""
        self.forget(partitions)
        for p in partitions:
            self.counted[p] = max(self.counted.get(p, 0), self.next_offset.get(p, 0))
            self.boundary.pop(p, None)

    def region_of(self, partition: int, offset: int) -> tuple[bool, Recommender | None]:
        """Whether the table already holds the message at (`partition`, `offset`), a redelivered event of a
        recovery region, and the shadow that replays it. No shadow for a held event when the rebuild did not read
        the partition from its start (`_rebuild`): then the worker relists the visitor from the table's state."""
        if partition not in self.region_end:
            return False, None
        if offset >= self.region_end[partition]:
            self.forget({partition})  # the table and the log agree from here on
            log.info("partition %d: recovery region passed at offset %d (%d redelivered events replayed)",
                     partition, offset, self.replayed)
            return False, None
        if offset not in self.held.get(partition, ()):
            return False, None  # an event of the region the table does not hold: the worker applies it
        self.replayed += 1
        return True, self.shadows.get(partition)

    def learn_held(self, event: Event, now_ms: int) -> None:
        """The statistics of a held event of a region without a shadow (its state is in the table already)."""
        self.recommender.learn_stats(event, now_ms, self.contexts)

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: their shadows go (their counted offsets stay, so nothing is counted twice)."""
        for p in partitions:
            self.shadows.pop(p, None)
            self.region_end.pop(p, None)
            self.held.pop(p, None)

    def _shadow(self) -> ShadowRecommender:
        """A recommender with its own visitor store and the live statistics (`learn_stats` decides per event)."""
        live = self.recommender
        shadow = ShadowRecommender(self.settings, catalog=live.catalog, store=BytesVisitorStore())
        shadow.rules = live.rules
        shadow.covis, shadow.popularity, shadow.sessions = live.covis, live.popularity, live.sessions
        return shadow

    async def _rebuild(self, partition: int, applied_below: int, upto: int) -> list[ConsumerRecord]:
        """Replay the events of `partition` before `upto` through a shadow, then scan on for the end of the
        recovery region. Returns the messages before `upto` that were never applied (the consumer skipped them;
        looked for from `applied_below` on, what this worker applied itself), for the worker to apply now.

        The statistics learn the events from `boundary` on (below it the feed or a snapshot counted them). With
        no boundary the partition is read from its start (statistics from nothing, as without a snapshot);
        with one, from the skip window (or `CONTEXT_EVENTS` before the boundary, if earlier): restart time does
        not grow with retention."""
        # a recovery region still open here (a crash's redelivered events) that the consumer then jumped over
        prev_region_end = self.region_end.get(partition, 0)
        self.forget({partition})
        # upto == 0 (no committed offset: a worker killed before its first commit) still scans for the
        # recovery region: the changelog may hold events that were applied but never committed
        began = time.monotonic()
        counted_below = self.boundary.get(partition, 0)
        # with a boundary (a snapshot or the feed counted what is below it) the read starts at the skip window,
        # or earlier to give the events from the boundary on `CONTEXT_EVENTS` of visitor history; the shadow
        # learns nothing before that, and nothing at all when the boundary is past `upto` (a snapshot taken at
        # or after the last commit: the usual restart), since only events below `upto` reach it
        start = max(0, min(counted_below - CONTEXT_EVENTS, upto - MISSED_WINDOW)) if counted_below else 0
        learn_from = (upto if counted_below >= upto else counted_below - CONTEXT_EVENTS) if counted_below else 0
        shadow = self._shadow()
        n = 0
        first: int | None = None
        region_end = upto
        scanned_absent = 0
        # the last messages before `upto` wait here before the shadow learns them: those the table does not hold
        # were never applied (see the module docstring), and only the worker may apply them
        window: deque[tuple[ConsumerRecord, Event | None]] = deque()
        # the messages from `upto` on, up to where the scan stopped: the recovery region is among them
        tail: list[tuple[int, Event | None]] = []

        def learn(msg: ConsumerRecord, record: Event | None) -> None:
            """The shadow applies one event, at most at the time the live worker could have applied it (its
            record time plus the skew), learning its statistics unless they were counted before (`boundary`);
            an event the core fails on was dead-lettered live: skipped here too."""
            nonlocal n
            if record is None or msg.offset < learn_from:
                return
            now_ms = admission.ceiling_ms(admission.reference_ms(msg.timestamp), self.settings.max_clock_skew_s)
            counts = msg.offset >= counted_below
            try:
                shadow.observe(record, now_ms=now_ms, learn_stats=counts)
            except Exception:
                self.failed += 1
                log.exception("partition %d: the statistics rebuild skipped offset %d, which the core failed on",
                              partition, msg.offset)
                return
            n += counts

        consumer, tp = log_reader.partition_reader(self.settings, partition)
        await consumer.start()
        try:
            consumer.assign([tp])
            if start:
                consumer.seek(tp, start)
            else:
                await consumer.seek_to_beginning(tp)
            high = (await consumer.end_offsets([tp]))[tp]
            scanning = True
            while scanning and await consumer.position(tp) < high:
                batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
                for msg in batch.get(tp, ()):
                    first = msg.offset if first is None else first
                    record = self._decode(msg)
                    if msg.offset >= upto:  # past the committed offset: does the table already hold it?
                        tail.append((msg.offset, record))
                        if record is not None and region.held(self.store, record):
                            scanned_absent = 0
                        else:
                            scanned_absent += 1
                            if scanned_absent >= REGION_SCAN_SLACK:
                                scanning = False
                                break
                        continue
                    if msg.offset < applied_below:
                        learn(msg, record)
                        continue
                    window.append((msg, record))
                    if len(window) > MISSED_WINDOW:
                        learn(*window.popleft())
        finally:
            await consumer.stop()
        in_window = region.applied([(msg.offset, record) for msg, record in window], self.store, shadow.store,
                                   partition, self.settings.partitions)
        held = [msg for msg, _ in window if msg.offset in in_window]
        replay: list[ConsumerRecord] = []
        if held and held[0].offset < prev_region_end:
            # the jump went over part of a recovery region: events a dead worker applied but never committed,
            # whose lists may never have gone out. Like every redelivered event of a region, the shadow applies
            # them (statistics in log order) and the worker republishes their lists; the rest of the held ones
            # go the same way, so that the order is kept
            replay = held
            region_end = max(region_end, held[-1].offset + 1)
        else:
            for msg, record in window:
                if msg.offset in in_window:
                    learn(msg, record)
        missed = [msg for msg, _ in window if msg.offset not in in_window]
        in_region = region.applied(tail, self.store, shadow.store, partition, self.settings.partitions)
        if in_region:
            region_end = max(region_end, max(in_region) + 1)
        if region_end > upto or replay:
            if start == 0:
                self.shadows[partition] = shadow
            # else the shadow lacks the history of visitors older than `start`: a list it computed could show an
            # item such a visitor bought; the table's state is ahead but holds everything (region_of)
            self.region_end[partition] = region_end
            self.held[partition] = in_region | {msg.offset for msg in replay}
            logins = {e.event_id for offset, e in tail
                      if offset in in_region and e is not None and region.joined(self.store, e)}
            if logins:
                shadow.pending_joins = await log_reader.join_states(self.settings, partition, logins,
                                                                    self.recommender.catalog.dim)
        elapsed = time.monotonic() - began
        self.rebuilt_events += n
        self.rebuild_s += elapsed
        self.missed += len(missed)
        if first is not None and first > start:
            log.warning("partition %d: events before offset %d are gone (retention); statistics are rebuilt "
                        "from the retained ones only", partition, first)
        if missed:
            log.warning("partition %d: %d messages (offsets %d-%d) were never applied: the consumer skipped them; "
                        "applying them now", partition, len(missed), missed[0].offset, missed[-1].offset)
        if replay:
            log.warning("partition %d: the consumer skipped %d redelivered events of the recovery region (offsets "
                        "%d-%d); replaying them", partition, len(replay), replay[0].offset, replay[-1].offset)
        log.info("partition %d: statistics rebuilt from %d events (offsets < %d, counted from %d) in %.2f s; "
                 "recovery region up to offset %d", partition, n, upto, counted_below, elapsed, region_end)
        return replay + missed

    async def acknowledged_unseen(self, committed: Mapping[int, int]) -> list[ConsumerRecord]:
        """Messages the consumer committed although this worker never applied them: apply these now.

        faust-streaming 0.15.3 skips *and acknowledges* a message whose consumer generation is not the app's
        current one, or that arrives while flow control is off (streams.py, `_py_aiter`); the next commit
        then moves past it. A skip in the middle of a partition is caught by `before` when the next message
        arrives; a skip at the end of a burst has no next message (seen in test_reliability_scale.py: the
        last events of three visitors never applied). The committed offset tells: this worker acknowledges
        an event only after applying it, so committed offsets beyond `next_offset` were skipped."""
        missed: list[ConsumerRecord] = []
        for partition, offset in sorted(committed.items()):
            expected = self.next_offset.get(partition)
            if expected is None:
                # nothing delivered since the partition came here: a worker that skipped (and committed) the
                # partition's last events before it died or handed the partition over leaves nothing to
                # deliver, so the first-sight rebuild `before` would do never happens. Do it here.
                if offset > 0:
                    missed.extend(await self.before(partition, offset, delivered=False))
                continue
            if offset <= expected:
                continue
            found = [msg for msg in await log_reader.read(self.settings, partition, expected, offset)
                     if not ((record := self._decode(msg)) is not None and region.held(self.store, record))]
            self.next_offset[partition] = offset
            if found:
                log.warning("partition %d: %d messages (offsets %d-%d) were committed but never applied: the "
                            "consumer skipped them; applying them now", partition, len(found), found[0].offset,
                            found[-1].offset)
                self.missed += len(found)
                missed.extend(found)
        return missed

    def _decode(self, msg: ConsumerRecord) -> Event | None:
        """The event, or None for a message the worker rejects (`region.decode`)."""
        return region.decode(msg, self.settings)

    def snapshot(self) -> dict[str, Any]:
        return {"stats_rebuilt_events": self.rebuilt_events, "stats_rebuild_s": round(self.rebuild_s, 2),
                "recovery_replayed": self.replayed, "missed_applied": self.missed, "rebuild_failed": self.failed}

