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
   crash) never published again. So the rebuild also scans on from the committed offset for the last event
   the table evidently holds (its event_id is in its visitor's state), which ends the *recovery region*.
   Changelog writes of one partition reach Kafka in order, so everything before that event was applied
   too, even an anonymous visitor's event whose session state was later joined into a user and deleted (its
   own key then shows nothing, which is why the region is found by the last evident event and not event by
   event). Redelivered events of the region are applied by the shadow instead (learning statistics in
   order), and the worker republishes the shadow's list for each: the list the dead worker computed or
   would have. From the region's end on, table and log agree, and the shadow is dropped.

3. The consumer can also *skip* messages: faust-streaming 0.15.3 dropped buffered events of a partition that
   stayed with the same worker across a rebalance and went on after them (seen in
   tests/integration/test_reliability_scale.py: the first event after the rebalance was offset 19, the last
   applied 17, and 18 was never delivered again). So whenever a partition's first delivered offset is beyond
   the next one this worker expects (or, at first sight, for the messages just before it), the rebuild looks
   at the last `MISSED_WINDOW` messages before it: those after the last one the table holds were never
   applied by anyone, and the worker applies them now, in order, before the delivered one.

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

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from stream_reco import schemas
from stream_reco.core.events import Event
from stream_reco.core.recommender import Recommender, VisitorStore
from stream_reco.core.state import VisitorState
from stream_reco.core.stats import CoVisitation, Popularity, SessionIndex
from stream_reco.settings import Settings
from stream_reco.stream import joins

log = logging.getLogger(__name__)

#: how long one fetch of the rebuild waits for data before it checks whether the target offset is reached
FETCH_TIMEOUT_MS = 500
#: records per fetch of the rebuild (bounds the time between two yields to the event loop)
FETCH_MAX_RECORDS = 2_000
#: the scan for the recovery region stops after this many events in a row that the table does not hold.
#: Inside the region only events whose state moved to another key (a session joined at login) look absent,
#: never thousands in a row; past it, nothing is held, and a worker down for long must not read hours of log.
REGION_SCAN_SLACK = 2_000
#: how far before the first delivered offset the rebuild looks for messages the consumer skipped: more than
#: faust ever holds in its buffers (a batch plus the stream buffer), which is what a rebalance can drop
MISSED_WINDOW = 10_000


class BytesVisitorStore:
    """Visitor states kept serialised, like the worker's table: a shadow of a big partition costs what the
    table costs (~1.7 kB per visitor on the simulated shop) instead of ~4x that as live objects."""

    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}

    def get(self, key: str) -> VisitorState | None:
        raw = self.states.get(key)
        return VisitorState.from_bytes(raw) if raw is not None else None

    def put(self, key: str, state: VisitorState) -> None:
        self.states[key] = state.to_bytes()

    def delete(self, key: str) -> None:
        self.states.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self.states

    def __len__(self) -> int:
        return len(self.states)


class StatsRecovery:
    """Per events partition: rebuild statistics on first sight, replay redelivered events through a shadow."""

    def __init__(self, settings: Settings, recommender: Recommender, store: VisitorStore) -> None:
        self.settings = settings
        self.recommender = recommender
        self.store = store
        #: per partition, the offset after the last message this worker has applied (statistics counted below)
        self.next_offset: dict[int, int] = {}
        #: partitions in a recovery region, with the shadow that holds their visitors as of the log position
        self.shadows: dict[int, Recommender] = {}
        #: per partition in a recovery region, the offset after the last event the table held at the rebuild
        self.region_end: dict[int, int] = {}
        self.rebuilt_events = 0
        self.rebuild_s = 0.0
        self.replayed = 0
        self.missed = 0
        self._ends_client: AIOKafkaConsumer | None = None

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
            missed = await self._rebuild(partition, counted_below=expected or 0, upto=offset)
        self.next_offset[partition] = max(expected or 0, offset + 1 if delivered else offset)
        return missed

    def shadow_for(self, partition: int, offset: int) -> Recommender | None:
        """The shadow that applies the message at (`partition`, `offset`), or None outside a recovery region."""
        shadow = self.shadows.get(partition)
        if shadow is None:
            return None
        if offset >= self.region_end.get(partition, 0):
            self.forget({partition})  # the table and the log agree from here on
            log.info("partition %d: recovery region passed at offset %d (%d redelivered events replayed)",
                     partition, offset, self.replayed)
            return None
        self.replayed += 1
        return shadow

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: their shadows go (their counted offsets stay, so nothing is counted twice)."""
        for p in partitions:
            self.shadows.pop(p, None)
            self.region_end.pop(p, None)

    def _shadow(self) -> Recommender:
        shadow = Recommender(self.settings, catalog=self.recommender.catalog, store=BytesVisitorStore())
        shadow.rules = self.recommender.rules
        return shadow

    async def _rebuild(self, partition: int, counted_below: int, upto: int) -> list[ConsumerRecord]:
        """Replay events [0, upto) of `partition` through a shadow (statistics learn those >= counted_below),
        then scan on for the end of the recovery region. Returns the messages before `upto` that were never
        applied (the consumer skipped them), for the worker to apply now."""
        # a recovery region still open here (a crash's redelivered events) that the consumer then jumped over
        prev_region_end = self.region_end.get(partition, 0)
        self.forget({partition})
        # upto == 0 (no committed offset: a worker killed before its first commit) still scans for the
        # recovery region: the changelog may hold events that were applied but never committed
        began = time.monotonic()
        shadow = self._shadow()
        live = self.recommender
        # below counted_below the live statistics already hold these events: learn into throwaway ones
        shadow.covis = CoVisitation(self.settings.covis_neighbours)
        shadow.popularity = Popularity(self.settings.popularity_half_life_h)
        shadow.sessions = SessionIndex(self.settings.sknn_max_sessions, self.settings.sknn_sessions_per_item)
        learning = False
        n = 0
        first: int | None = None
        region_end = upto
        scanned_absent = 0
        # the last messages before `upto` wait here before the shadow learns them: those after the last one
        # the table holds were never applied (see the module docstring), and only the worker may apply them
        window: deque[tuple[ConsumerRecord, Event | joins.Control | None]] = deque()
        settings = self.settings

        def learn(record: Event | joins.Control | None) -> None:
            nonlocal n
            if isinstance(record, joins.Control):
                joins.apply(record, shadow.store, settings)  # what it sent is in the log already
            elif record is not None:
                shadow.observe(record)
            n += record is not None

        consumer, tp = self._partition_reader(partition)
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            high = (await consumer.end_offsets([tp]))[tp]
            scanning = True
            while scanning and await consumer.position(tp) < high:
                batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
                for msg in batch.get(tp, ()):
                    first = msg.offset if first is None else first
                    record = self._decode(msg.value)
                    if msg.offset >= upto:  # past the committed offset: does the table already hold it?
                        if record is not None and self._held(record):
                            region_end, scanned_absent = msg.offset + 1, 0
                        else:
                            scanned_absent += 1
                            if scanned_absent >= REGION_SCAN_SLACK:
                                scanning = False
                                break
                        continue
                    if msg.offset < counted_below:
                        learn(record)
                        continue
                    if not learning:
                        _share_statistics(shadow, live)
                        learning = True
                    window.append((msg, record))
                    if len(window) > MISSED_WINDOW:
                        learn(window.popleft()[1])
        finally:
            await consumer.stop()
        # from here on (the window, then the recovery region) the shadow learns into the live statistics,
        # also when no message lay in [counted_below, upto) to switch it above (upto == 0 after an early kill)
        _share_statistics(shadow, live)
        held_upto = len(window)  # the window's messages up to the last one the table holds were applied
        while held_upto and not (window[held_upto - 1][1] is not None and self._held(window[held_upto - 1][1])):
            held_upto -= 1
        held = [msg for msg, _ in list(window)[:held_upto]]
        replay: list[ConsumerRecord] = []
        if held and held[0].offset < prev_region_end:
            # the jump went over part of a recovery region: events a dead worker applied but never committed,
            # whose lists may never have gone out. Like every redelivered event of a region, the shadow applies
            # them (statistics in log order) and the worker republishes their lists; the rest of the held ones
            # go the same way, so that the order is kept
            replay = held
            region_end = max(region_end, held[-1].offset + 1)
        else:
            for _, record in list(window)[:held_upto]:
                learn(record)
        missed = [msg for i, (msg, _) in enumerate(window) if i >= held_upto]
        if region_end > upto or replay:
            self.shadows[partition] = shadow
            self.region_end[partition] = region_end
        elapsed = time.monotonic() - began
        self.rebuilt_events += n
        self.rebuild_s += elapsed
        self.missed += len(missed)
        if first:
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
            found = [msg for msg in await self._read(partition, expected, offset)
                     if not ((record := self._decode(msg.value)) is not None and self._held(record))]
            self.next_offset[partition] = offset
            if found:
                log.warning("partition %d: %d messages (offsets %d-%d) were committed but never applied: the "
                            "consumer skipped them; applying them now", partition, len(found), found[0].offset,
                            found[-1].offset)
                self.missed += len(found)
                missed.extend(found)
        return missed

    async def _read(self, partition: int, start: int, end: int) -> list[ConsumerRecord]:
        """The messages of `partition` at offsets [start, end)."""
        consumer, tp = self._partition_reader(partition)
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

    async def log_ends(self, partitions: list[int]) -> dict[int, int]:
        """The log end offset of each events partition, asked with this module's own client: faust's consumer
        may be the thing that is wedged (`DeliveryWatch`), so its thread is not asked."""
        if self._ends_client is None:
            client, _ = self._partition_reader(0)
            await client.start()
            self._ends_client = client
        topic = self.settings.events_topic
        ends = await self._ends_client.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: off for tp, off in ends.items()}

    async def close(self) -> None:
        if self._ends_client is not None:
            await self._ends_client.stop()
            self._ends_client = None

    def _partition_reader(self, partition: int) -> tuple[AIOKafkaConsumer, TopicPartition]:
        """A group-less consumer (not started) for one events partition, fetching messages up to the size limit."""
        fetch_bytes = max(self.settings.max_message_bytes * 2, 1_048_576)
        consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_bytes=fetch_bytes, max_partition_fetch_bytes=fetch_bytes,
        )
        return consumer, TopicPartition(self.settings.events_topic, partition)

    def _decode(self, raw: bytes | None) -> Event | joins.Control | None:
        """An event or a control record; None for a message the worker rejects."""
        try:
            return schemas.decode_event(raw, max_bytes=self.settings.max_message_bytes)
        except schemas.InvalidMessage:
            if not joins.is_control(raw):
                return None
            try:
                return joins.parse(raw, self.settings.max_message_bytes)  # type: ignore[arg-type]
            except schemas.InvalidMessage:
                return None

    def _held(self, record: Event | joins.Control) -> bool:
        """Whether the table already reflects this record (evidence that it was applied before a crash)."""
        if isinstance(record, joins.Control):
            return joins.state_holds(record, self.store)
        state = self.store.get(record.visitor_key)
        return state is not None and state.has_seen_event(record.event_id)

    def snapshot(self) -> dict[str, Any]:
        return {"stats_rebuilt_events": self.rebuilt_events, "stats_rebuild_s": round(self.rebuild_s, 2),
                "recovery_replayed": self.replayed, "missed_applied": self.missed}


def _share_statistics(shadow: Recommender, live: Recommender) -> None:
    """From here on the shadow learns into the live shop-wide statistics (every one `observe` updates)."""
    shadow.covis, shadow.popularity, shadow.sessions = live.covis, live.popularity, live.sessions


class StallWatch:
    """Decides when faust's table recovery is stuck, so that the worker restarts itself.

    faust-streaming 0.15.3 can wait forever for changelog records it never fetches ("No event received for
    active tp ... since recovery start", faust-streaming/faust#155; seen in test_reliability_scale.py after a
    third worker joined: the worker that kept two of its partitions never finished recovering them and never
    processed another event). A fresh process recovers the same changelogs fine (the kill -9 tests), and a
    restart is safe: offsets were committed only for applied events, and the changelogs hold the state. So a
    worker whose recovery has made no progress (same records remaining) for `stall_s` restarts."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._remaining: int | None = None
        self._since = 0.0

    def stalled(self, now: float, in_recovery: bool, remaining: int) -> bool:
        """Whether recovery has been stuck at `remaining` records for `stall_s` seconds by `now`."""
        if not in_recovery or remaining <= 0 or self.stall_s <= 0:
            self._remaining = None
            return False
        if remaining != self._remaining:
            self._remaining, self._since = remaining, now
            return False
        return now - self._since >= self.stall_s


class DeliveryWatch:
    """Finds partitions whose events stop reaching the worker although the log holds more of them.

    faust-streaming 0.15.3 wedges in two more ways seen in the reliability tests: right after a rebalance the
    consumer hands a partition's next messages to the stream (its read offset moves on) but they never reach
    the agent and are never acknowledged, so nothing fetches them again until the next rebalance
    (test_reliability_scale.py); and a freshly started worker, assigned a partition with 1,200 events waiting,
    receives none of them for minutes (test_reliability_crash.py, about one run in five). A partition is
    *pending* when its log ends beyond the worker's position (the next offset it expects); pending without
    progress for `grace_s` is a stall. The first time, the worker seeks the consumer back to its position
    (an event that was only slow then arrives twice; the second is a duplicate that changes nothing); if that
    does not help within another `grace_s`, the partition is *stuck* and the worker restarts itself."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        #: per partition: the position last seen, since when, and whether it was rewound at that position
        self._since: dict[int, tuple[int, float, bool]] = {}

    def reset(self) -> None:
        """Forget every clock: the worker was busy, so time without progress so far proves nothing."""
        self._since.clear()

    def check(self, now: float, position: Mapping[int, int], end: Mapping[int, int]) -> tuple[list[int], list[int]]:
        """(partitions to rewind to `position[p]`, partitions still stalled after a rewind)."""
        rewind: list[int] = []
        stuck: list[int] = []
        for partition in sorted(set(self._since) | set(position)):
            at = position.get(partition)
            log_end = end.get(partition)
            if self.grace_s <= 0 or at is None or log_end is None or log_end <= at:
                self._since.pop(partition, None)
                continue
            seen = self._since.get(partition)
            if seen is None or seen[0] != at:
                self._since[partition] = (at, now, False)
            elif now - seen[1] >= self.grace_s:
                (stuck if seen[2] else rewind).append(partition)
                self._since[partition] = (at, now, True)
        return rewind, stuck
