"""Login joins across partitions, the worker's side (the protocol and the record logic are in stream/joins.py).

- `JoinForwarder` is step 1, on the event path (stream/ingest.py): a login whose session lives on another
  partition is joined at once when this worker owns that partition too and has applied it up to its log end,
  else forwarded as a join request on the internal joins topic.
- `JoinAgent` is the agent of the joins topic (steps 2 and 3): it validates each record (dead letter on
  failure), waits until the batch may be applied, applies it and publishes a merged user's list again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import faust
from faust.types import TP

from stream_reco import schemas
from stream_reco.core.events import Event
from stream_reco.core.recommender import Recommender
from stream_reco.settings import Settings
from stream_reco.stream import faust_internals, joins
from stream_reco.stream.ingest import Ingest, raw_bytes
from stream_reco.stream.log_reader import DELIVERY_QUERY_TIMEOUT_S, LogEnds
from stream_reco.stream.recovery import StatsRecovery
from stream_reco.stream.store import TableStore, WorkerStats

log = logging.getLogger(__name__)

#: how often the joins agent looks again whether what it waits for is there (start-up, a partition's commit)
JOIN_POLL_S = 0.02


class JoinForwarder:
    """Step 1 of a join across partitions, for the event path (module docstring)."""

    def __init__(self, settings: Settings, app: faust.App, store: TableStore, recovery: StatsRecovery,
                 log_ends: LogEnds, stats: WorkerStats, joins_topic: Any, active_partitions: set[int]) -> None:
        """`active_partitions`: the worker's events partitions, kept current by the rebalance callbacks."""
        self.settings = settings
        self.app = app
        self.store = store
        self.recovery = recovery
        self.log_ends = log_ends
        self.stats = stats
        self.joins_topic = joins_topic
        self.active_partitions = active_partitions

    def needs_join_request(self, event: Event, partition: int, recommender: Recommender) -> bool:
        """A login whose session lives on another partition, new to this user: forward a join (joins.py)."""
        if not joins.crosses_partitions(event, partition, self.settings.partitions):
            return False
        before = recommender.store.get(event.visitor_key)
        return before is None or before.session_id != event.session_id

    async def join_across(self, event: Event, partition: int, local: bool) -> None:
        """Join a login's session that lives on another partition (stream/joins.py): at once when this worker
        owns that partition too (`local`) and has applied it up to its log end (so every event of the session
        the shop produced before the login is in the session's state), else through a join request on the
        internal joins topic to the session's partition."""
        request, key, value = joins.join_request(event)
        session_partition = joins.partition_of(request.session_id, self.settings.partitions)
        if local and session_partition in self.active_partitions and self.applied_upto(session_partition) >= (
                await self.log_end(session_partition)):
            session_view = self.store.for_event(request.session_id, session_partition)
            outcome = joins.apply(request, session_view, self.settings)
            if outcome.join_state is not None:
                joins.apply(outcome.join_state, self.store.for_event(request.user_id, partition), self.settings)
                self.stats.counts["joins_local"] += 1
            for state_key, state_value in outcome.send:  # a no-op when consumed; a restart's recovery reads it
                await self.joins_topic.send(key=state_key, value=state_value)
            if outcome.delete is not None:  # the user holds the session now: its own state goes (P(s)'s changelog)
                joins.forget(session_view, outcome.delete)
            return
        await self.joins_topic.send(key=key, value=value)
        self.stats.counts["join_requests"] += 1

    async def log_end(self, partition: int) -> float:
        """The log end offset of an events partition (infinity when the broker does not say: not caught up)."""
        try:
            ends = await asyncio.wait_for(self.log_ends([partition]), DELIVERY_QUERY_TIMEOUT_S)
        except Exception as exc:  # a broker hiccup
            log.warning("joins: log end of partition %d unavailable (%r)", partition, exc)
            return float("inf")
        return ends[partition]

    def applied_upto(self, partition: int, committed: bool = False) -> int:
        """The offset up to which this worker has applied (`committed`: and committed) an events partition."""
        at = faust_internals.committed_offsets(self.app).get(TP(self.settings.events_topic, partition)) or 0
        return at if committed else max(at, self.recovery.next_offset.get(partition, 0))


class JoinAgent:
    """The agent of the internal joins topic: steps 2 and 3 of stream/joins.py (module docstring)."""

    def __init__(self, settings: Settings, app: faust.App, recommender: Recommender, store: TableStore,
                 recovery: StatsRecovery, forwarder: JoinForwarder, ingest: Ingest, stats: WorkerStats,
                 joins_topic: Any, apply_lock: asyncio.Lock, applying: asyncio.Event) -> None:
        """`ingest` publishes lists and dead-letters records; `applying` is set once the worker applies events."""
        self.settings = settings
        self.app = app
        self.recommender = recommender
        self.store = store
        self.recovery = recovery
        self.forwarder = forwarder
        self.ingest = ingest
        self.stats = stats
        self.joins_topic = joins_topic
        self.apply_lock = apply_lock
        self.applying = applying

    async def process(self, stream: Any) -> None:
        """The internal joins topic, in batches: one wait serves every record that arrived together."""
        while not self.applying.is_set():  # the model (its dimension) and the catalogue are loaded first
            await asyncio.sleep(JOIN_POLL_S)
        within = self.settings.coalesce_ms / 1000.0
        async for batch in stream.take_events(self.settings.batch_size, within=within):
            await self.handle(batch)

    async def handle(self, batch: Sequence[Any]) -> None:
        """Validate each join record (dead letter on failure), wait until the batch may be applied, apply it.

        Waiting per batch, not per record: a request waits for its events partition to commit what was in the log
        when it arrived (about a commit interval), and logins arrive together at busy times, so record-by-record
        waits added up (20 s for a login's list in the demo at 300 events/s)."""
        valid: list[tuple[Any, joins.Control]] = []
        for fevent in batch:
            msg, raw = fevent.message, raw_bytes(fevent.value)
            try:
                control = joins.parse_record(msg.key, raw, self.settings.max_message_bytes,
                                             dim=self.recommender.catalog.dim)
            except schemas.InvalidMessage as exc:
                async with self.apply_lock:
                    await self.ingest.dead_letter(msg, raw, exc)
                continue
            valid.append((msg, control))
        try:
            await self._wait_for_joins(valid)
        except Exception:  # a broker error while waiting: apply them now rather than let faust drop the batch
            self.stats.counts["join_wait_failed"] += 1
            log.exception("joins: waiting for %d join records failed; applying them now", len(valid))
        for msg, control in valid:
            async with self.apply_lock:
                try:
                    await self._control(msg, control)
                except Exception as exc:  # one record's failure is its own: dead-lettered, the batch goes on
                    await self.ingest.failed(msg, msg.value, exc)

    async def _wait_for_joins(self, valid: list[tuple[Any, joins.Control]]) -> None:
        """Wait until every record may be applied (`_join_ready`), at most `joins.WAIT_S`; requests wait for the
        events that were in the log when they arrived (not for a moving log end)."""
        ends: dict[int, float] = {}
        for msg, control in valid:
            if control.kind == joins.JOIN_REQUEST and msg.partition not in ends:
                ends[msg.partition] = await self.forwarder.log_end(msg.partition)
        began = time.monotonic()
        while not all(self._join_ready(control, msg.partition, ends.get(msg.partition, 0)) for msg, control in valid):
            if time.monotonic() - began > joins.WAIT_S:
                log.warning("joins: %d join records still waiting for their events partitions after %.0f s; "
                            "applying them now", len(valid), joins.WAIT_S)
                return
            await self._commit_applied(ends)
            await asyncio.sleep(JOIN_POLL_S)

    async def _commit_applied(self, ends: dict[int, float]) -> None:
        """Commit now the events partitions whose waiting join requests have been applied but not yet committed,
        instead of leaving them to faust's commit timer (`commit_interval_s`): a login's joined list then follows
        its session's last event by milliseconds, not by up to a commit interval."""
        applied_upto = self.forwarder.applied_upto
        due = {TP(self.settings.events_topic, p) for p, end in ends.items()
               if applied_upto(p) >= end > applied_upto(p, committed=True)}
        if due:
            await self.app.consumer.commit(due)

    def _join_ready(self, control: joins.Control, partition: int, end: float) -> bool:
        """Whether a join record may be applied now (stream/joins.py, steps 2 and 3)."""
        if control.kind == joins.JOIN_REQUEST:  # the session's events before the login are committed first
            return self.forwarder.applied_upto(partition, committed=True) >= end
        # a join state waits for a restart's recovery region of its partition to pass (stream/recovery.py), so
        # that the list it republishes comes after the region's lists
        applied = self.recovery.next_offset.get(partition)
        return applied is not None and applied >= self.recovery.region_end.get(partition, 0)

    async def _control(self, msg: Any, control: joins.Control) -> None:
        """Apply a validated join record (stream/joins.py) on the partition of its key; publish after a merge."""
        view = self.store.for_event(control.key, msg.partition)  # the record's key lives on its partition
        outcome = joins.apply(control, view, self.settings)
        for key, value in outcome.send:
            delivered = await self.joins_topic.send(key=key, value=value)
            if outcome.delete is not None:
                await delivered  # the session goes only once its state is safely on the joins topic
        if outcome.delete is not None:
            joins.forget(view, outcome.delete)  # the session's tombstone, on its partition
        self.stats.counts[control.kind] += 1
        if outcome.republish is not None:
            await self.ingest.publish(control.user_id, outcome.republish)
