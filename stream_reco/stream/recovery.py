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
   visitor*, which redelivered events the table already holds (`_applied`): a visitor's state reflects that
   visitor's events in log order up to some point (one consumer applies a partition in order), so every event
   of the visitor up to the last one whose event_id its state holds was applied, and the later ones were not.
   Only an event's *first* occurrence is evidence: a producer's duplicate of an event applied long ago is in
   the state whatever happened to the events before it (issue 11, defect 4: taking it as evidence hid an
   unapplied purchase). An anonymous session joined into a user by a login later in the log (same partition)
   counts as that user's: its own key then shows nothing. The held events are applied by the shadow (learning
   statistics in order) and the worker republishes the shadow's list for each: the list the dead worker
   computed or would have; the others are applied to the table as usual, each exactly once. From the last
   held event on (the end of the *recovery region*), table and log agree, and the shadow is dropped.

3. The consumer can also *skip* messages: faust-streaming 0.15.3 dropped buffered events of a partition that
   stayed with the same worker across a rebalance and went on after them (seen in
   tests/integration/test_reliability_scale.py: the first event after the rebalance was offset 19, the last
   applied 17, and 18 was never delivered again). So whenever a partition's first delivered offset is beyond
   the next one this worker expects (or, at first sight, for the messages just before it), the rebuild looks
   at the last `MISSED_WINDOW` messages before it: those after the last one the table holds were never
   applied by anyone, and the worker applies them now, in order, before the delivered one.

Login joins across partitions travel on the internal joins topic (stream/joins.py). They change visitor state,
never statistics, so the rebuild below the committed offset does not read them: the shadow's copy of a user who
joined a session from another partition lacks that session, and co-visitation relearned from that user's later
events pairs them with the user's own history only (statistics differ slightly from an uninterrupted run's).
In the recovery region it matters more: the shadow republishes lists, and a list for a redelivered login that
lacked the session could show an item the session bought. So for every held login of the region whose join the
table holds, the rebuild reads that join's state from the joins topic (same partition number; validated like
any join record) and the shadow merges it right after the login (`ShadowRecommender`).

Cost and limits: a rebuild reads the partition's retained events once (~tens of µs per event); events that
retention deleted are not counted again; the catalogue used is today's, not the one of the time. With several
partitions per worker the order in which partitions are rebuilt differs from the original interleaving, so
the rebuilt statistics equal the original ones up to float rounding and pruning order (exactly with one
partition). See docs/operations.md.
"""

from __future__ import annotations

import asyncio
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
from stream_reco.stream import admission, joins, topics
from stream_reco.stream.joins import partition_of

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


class ShadowRecommender(Recommender):
    """A recovery shadow that merges, right after a redelivered login, the session a join across partitions
    brought the user before the crash (`pending_joins`, by login event id), as the table holds it."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.pending_joins: dict[str, joins.Control] = {}

    def observe(self, event: Event, *args: Any, **kwargs: Any) -> bool:
        observed = super().observe(event, *args, **kwargs)
        control = self.pending_joins.pop(event.event_id, None)
        if control is not None:
            joins.apply(control, self.store, self.settings)
        return observed


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
        #: per partition in a recovery region, the offsets of the events the table held (the shadow applies those)
        self.held: dict[int, set[int]] = {}
        self.rebuilt_events = 0
        self.rebuild_s = 0.0
        self.replayed = 0
        self.missed = 0
        #: events the rebuild skipped because the core raised on them (the live worker dead-lettered them)
        self.failed = 0
        self._ends_client: AIOKafkaConsumer | None = None
        self._ends_lock = asyncio.Lock()

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
        if offset not in self.held.get(partition, ()):
            return None  # an event of the region the table does not hold: the worker applies it
        self.replayed += 1
        return shadow

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: their shadows go (their counted offsets stay, so nothing is counted twice)."""
        for p in partitions:
            self.shadows.pop(p, None)
            self.region_end.pop(p, None)
            self.held.pop(p, None)

    def _shadow(self) -> ShadowRecommender:
        shadow = ShadowRecommender(self.settings, catalog=self.recommender.catalog, store=BytesVisitorStore())
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
        # the last messages before `upto` wait here before the shadow learns them: those the table does not hold
        # were never applied (see the module docstring), and only the worker may apply them
        window: deque[tuple[ConsumerRecord, Event | None]] = deque()
        # the messages from `upto` on, up to where the scan stopped: the recovery region is among them
        tail: list[tuple[int, Event | None]] = []

        def learn(msg: ConsumerRecord, record: Event | None) -> None:
            """The shadow learns one event, at most at the time the live worker could have applied it (its
            record time plus the skew); an event the core fails on was dead-lettered live: skipped here too."""
            nonlocal n
            if record is None:
                return
            now_ms = admission.ceiling_ms(admission.reference_ms(msg.timestamp), self.settings.max_clock_skew_s)
            try:
                shadow.observe(record, now_ms=now_ms)
            except Exception:
                self.failed += 1
                log.exception("partition %d: the statistics rebuild skipped offset %d, which the core failed on",
                              partition, msg.offset)
                return
            n += 1

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
                    record = self._decode(msg)
                    if msg.offset >= upto:  # past the committed offset: does the table already hold it?
                        tail.append((msg.offset, record))
                        if record is not None and self._held(record):
                            scanned_absent = 0
                        else:
                            scanned_absent += 1
                            if scanned_absent >= REGION_SCAN_SLACK:
                                scanning = False
                                break
                        continue
                    if msg.offset < counted_below:
                        learn(msg, record)
                        continue
                    if not learning:
                        _share_statistics(shadow, live)
                        learning = True
                    window.append((msg, record))
                    if len(window) > MISSED_WINDOW:
                        learn(*window.popleft())
        finally:
            await consumer.stop()
        # from here on (the window, then the recovery region) the shadow learns into the live statistics,
        # also when no message lay in [counted_below, upto) to switch it above (upto == 0 after an early kill)
        _share_statistics(shadow, live)
        in_window = self._applied([(msg.offset, record) for msg, record in window], shadow.store, partition)
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
        in_region = self._applied(tail, shadow.store, partition)
        if in_region:
            region_end = max(region_end, max(in_region) + 1)
        if region_end > upto or replay:
            self.shadows[partition] = shadow
            self.region_end[partition] = region_end
            self.held[partition] = in_region | {msg.offset for msg in replay}
            logins = {e.event_id for offset, e in tail if offset in in_region and e is not None and self._joined(e)}
            if logins:
                shadow.pending_joins = await self._join_states(partition, logins)
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
                     if not ((record := self._decode(msg)) is not None and self._held(record))]
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
        async with self._ends_lock:  # the delivery check and the joins agent ask concurrently: one client
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

    def _decode(self, msg: ConsumerRecord) -> Event | None:
        """The event, or None for a message the worker rejects (dead-lettered when it was handled): the schema
        and the same edge checks as the worker (key, clock: stream/admission.py), judged by the record's own
        timestamp so that a rebuild decides as the worker did when the event was new."""
        try:
            return admission.admit(msg.value, msg.key, admission.reference_ms(msg.timestamp), self.settings)
        except schemas.InvalidMessage:
            return None

    def _held(self, event: Event) -> bool:
        """Whether the table's state of the event's visitor holds its id (evidence that it was applied)."""
        state = self.store.get(event.visitor_key)
        return state is not None and state.has_seen_event(event.event_id)

    def _joined(self, event: Event) -> bool:
        """A login whose session was on another partition, and whose join the table holds."""
        if not (event.user_id and event.session_id and event.session_id != event.user_id):
            return False
        state = self.store.get(event.user_id)
        return state is not None and state.has_seen_event(joins.JOIN_ID_PREFIX + event.event_id)

    async def _join_states(self, partition: int, logins: set[str]) -> dict[str, joins.Control]:
        """The join states of these login event ids on joins partition `partition`, validated as the worker
        validates them (an invalid one is skipped: the worker dead-lettered it)."""
        consumer, _ = self._partition_reader(partition)
        tp = TopicPartition(topics.joins_topic(self.settings), partition)
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
                        control = joins.parse_record(msg.key, msg.value, self.settings.max_message_bytes,
                                                     dim=self.recommender.catalog.dim)
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

    def _applied(self, entries: list[tuple[int, Event | None]], earlier: VisitorStore, partition: int) -> set[int]:
        """The offsets of `entries` (messages of `partition` in log order) whose effect the table already holds.

        Decided per visitor (module docstring, step 2): a visitor's events up to the last one whose *first*
        occurrence the table's state holds. `earlier` holds the visitors as of the first entry (the shadow), to
        tell a first occurrence from a producer's duplicate. An event whose visitor has no state at all (an
        anonymous session whose state a login on another partition took away, or one never applied) and a
        message the worker rejects are decided by position instead: handled when any held event follows them
        (one consumer applies a partition in order)."""
        logins: dict[str, list[tuple[int, str]]] = {}  # session -> (offset, user) of its logins on this partition
        for offset, event in entries:
            if (event is not None and event.user_id and event.session_id and event.session_id != event.user_id
                    and partition_of(event.session_id, self.settings.partitions) == partition):
                logins.setdefault(event.session_id, []).append((offset, event.user_id))

        def visitor(offset: int, event: Event) -> str:
            """Whose state holds the event: an anonymous session joined at a later login (its own state gone) is
            the user's."""
            if event.user_id is None and event.session_id in logins and self.store.get(event.session_id) is None:
                later = [user for at, user in logins[event.session_id] if at > offset]
                if later:
                    return later[0]
            return event.visitor_key

        seen: dict[str, set[str]] = {}
        last_held: dict[str, int] = {}
        last_any = -1
        for offset, event in entries:
            if event is None:
                continue
            ids = seen.setdefault(event.visitor_key, set())
            repeated = event.event_id in ids
            ids.add(event.event_id)
            key = visitor(offset, event)
            state = self.store.get(key)
            if repeated or state is None or not state.has_seen_event(event.event_id):
                continue
            before = earlier.get(event.visitor_key)  # only now: decoding a shadow's state costs ~50 µs
            if before is not None and before.has_seen_event(event.event_id):
                continue  # a duplicate of an event from before these entries: no evidence
            last_held[key] = offset
            last_any = offset
        def held(offset: int, event: Event | None) -> bool:
            if event is None:
                return offset < last_any
            key = visitor(offset, event)
            if self.store.get(key) is None:
                return offset < last_any
            return offset <= last_held.get(key, -1)

        return {offset for offset, event in entries if held(offset, event)}

    def snapshot(self) -> dict[str, Any]:
        return {"stats_rebuilt_events": self.rebuilt_events, "stats_rebuild_s": round(self.rebuild_s, 2),
                "recovery_replayed": self.replayed, "missed_applied": self.missed, "rebuild_failed": self.failed}


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
