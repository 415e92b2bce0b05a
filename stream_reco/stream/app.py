"""The faust adapter: wires Kafka topics, a changelogged table and agents to the pure core.

Nothing here decides what to recommend; it only moves bytes between Kafka and
`stream_reco.core.recommender.Recommender`:

    shop.events --(take_events: batch within coalesce_ms)--> decode+validate --bad--> reco.dead-letter
                                                              |
                                              Recommender.observe(event)   (visitor state -> table + changelog)
                                                              |
                        one Recommender.recommendation() per visitor in the batch --> reco.recommendations
    shop.catalog --(every worker reads every partition)--> Recommender.upsert_item(item)

Design choices, and why:
- Events are consumed as raw bytes and validated here, so a malformed message becomes a dead-letter record
  instead of a crashed agent (faust's own deserialisation would raise inside the stream).
- `take_events` batches what arrived within `coalesce_ms`: a burst from one visitor yields one list that
  reflects all of it, and offsets are acknowledged only after the batch's lists were handed to the producer.
- Visitor state lives in a faust table with a changelog topic (`<app_id>-visitors-changelog`), so a
  restarted or rebalanced worker recovers it. The table stores the core's compact `VisitorState.to_bytes()`.
  Writes go through `Table.send_changelog` with the event's own partition, because in a batch faust's
  "current event" is not the event whose state is being written.
- The catalog is read by a plain aiokafka consumer without a group, from the beginning, on every worker:
  every worker needs every item, and the catalog topic is compacted so this stays cheap.
- The events topic is already keyed by visitor: no `group_by`, so no repartition hop (stack-findings).
"""

from __future__ import annotations

import os

# One BLAS thread per worker unless the deployment says otherwise. The worker's matrix products are small
# (a few queries against the catalogue per list) and OpenBLAS's extra threads spin waiting for a core: on a
# 2-core machine its default cost ~4x CPU per event and multi-second latencies (docs/benchmarks.md). It
# must be set before numpy loads, which this module is the first of the worker's imports to do.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import asyncio
import logging
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP

from stream_reco import redact, schemas
from stream_reco.core.events import CatalogItem, Event, Recommendation
from stream_reco.core.recommender import Recommender
from stream_reco.core.state import DecodedStates, VisitorState
from stream_reco.exit_codes import EXIT_RESTART
from stream_reco.model import artifact as model_artifact
from stream_reco.settings import MAX_CHANGELOG_MESSAGE_BYTES, Settings
from stream_reco.stream import admission, faust_internals, joins, topics
from stream_reco.stream.recovery import DeliveryWatch, StallWatch, StatsRecovery

log = logging.getLogger(__name__)

READY_LINE = "stream-reco worker ready"
ASSIGNED_LINE = "events partitions assigned:"
VISITORS_TABLE = "visitors"
STATS_INTERVAL_S = 10.0
#: how often the worker checks whether faust's table recovery is stuck (`recovery_stall_s` decides)
RECOVERY_WATCH_S = 5.0
#: longest wait for the broker's log end offsets in a delivery check (the next check asks again)
DELIVERY_QUERY_TIMEOUT_S = 5.0
#: how often the joins agent looks again whether what it waits for is there (start-up, a partition's commit)
JOIN_POLL_S = 0.02


def faust_broker_url(settings: Settings) -> str:
    return ";".join(f"kafka://{s}" for s in settings.bootstrap_servers)


def faust_credentials(settings: Settings) -> Any:
    """faust's credentials object for the configured security protocol (None for PLAINTEXT)."""
    kw = settings.kafka_client_kwargs()
    if settings.sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=kw.get("ssl_context"),
        )
    if "ssl_context" in kw:
        return faust.SSLCredentials(kw["ssl_context"])
    return None


#: longest time the broker holds a fetch of the events consumer open. faust hard-codes 1500 ms, and aiokafka
#: sends no new fetch to a broker while one is open, so a partition whose records were still being handed
#: over when the fetch left waits for it: up to 1.5 s of extra latency at low rates (docs/benchmarks.md).
FETCH_MAX_WAIT_MS = 50
#: the largest visitor state written to the changelog (settings.py says why)
CHANGELOG_MAX_BYTES = MAX_CHANGELOG_MESSAGE_BYTES
#: latest published lists kept for the HTTP view, least recently used dropped first (~1-2 kB each, so tens
#: of MB at the cap); a visitor past the cap is answered from its recovered state, as after a restart
LATEST_LISTS_CAP = 20_000
#: how often the visitor TTL sweep runs, and how many visitors one run examines at most (a run decodes each,
#: ~30 us: a few tens of ms per run, so the event loop is never held for long; 1 M visitors take ~40 min)
SWEEP_INTERVAL_S = 2.5
SWEEP_KEYS_PER_TICK = 1_000
MS_PER_DAY = 86_400_000


def guarded(timer: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A faust timer whose exception is logged instead of stopping the worker (faust crashes the app on one);
    the next tick tries again."""

    async def run() -> None:
        try:
            await timer()
        except Exception:
            log.exception("timer %s failed; trying again at its next tick", timer.__name__)

    run.__name__ = run.__qualname__ = f"guarded_{timer.__name__}"  # faust names timers after the function
    return run


def raw_bytes(value: Any) -> bytes | bytearray | None:
    """A consumed value as bytes (faust may hand a memoryview), None kept for a tombstone."""
    return value if value is None or isinstance(value, bytes | bytearray) else bytes(value)


def list_time(recommender: Recommender, trigger: Event) -> int:
    """The time a list triggered by `trigger` is computed at: the trigger's own time, but never past the shop
    clock, since the core applied the trigger no later than that (a clamped event, core/recommender.py)."""
    clock = recommender.clock
    return int(trigger.timestamp if clock is None else min(trigger.timestamp, clock))


class TableStore:
    """The core's `VisitorStore` backed by a faust table, so visitor state has a changelog.

    `partition` is set by the agent to the partition of the event being applied: state for that event's
    visitor is written to the matching changelog partition. Other keys (a session joined to a user on
    login) are placed with Kafka's default partitioner, as a shop's producer would key them.

    A state whose bytes exceed `max_state_bytes` is never written: the broker would refuse it (or drop it
    silently), and the table and its changelog would disagree from then on. The visitor keeps its previous
    state (the event's change to it is lost, logged and counted in `oversized`); the core caps the state so that
    this is the last line of defence, not the way states are bounded.
    """

    def __init__(self, table: Any, partitions: int, max_state_bytes: int = CHANGELOG_MAX_BYTES) -> None:
        self.table = table
        self.max_state_bytes = max_state_bytes
        #: states not written because they were too large
        self.oversized = 0
        self.partitions = list(range(partitions))
        self.partition: int | None = None
        self.current_key: str | None = None
        #: while the core applies an event, only visitors of the event's partition are visible (stream/joins.py)
        self.only_partition: int | None = None
        self._partitioner = DefaultPartitioner()
        #: one decode per visitor and batch instead of one per read (state.DecodedStates)
        self.decoded = DecodedStates()

    def get(self, key: str) -> VisitorState | None:
        if self.only_partition is not None and key != self.current_key and self._partitioner(
                key.encode(), self.partitions, self.partitions) != self.only_partition:
            return None  # another partition's visitor (maybe another worker's): logins are forwarded instead
        kb = key.encode()
        raw = self.table.data.get(kb)
        return self.decoded.get(kb, raw) if raw else None

    def put(self, key: str, state: VisitorState) -> None:
        kb = key.encode()
        value = state.to_bytes()
        if len(value) > self.max_state_bytes:
            self.oversized += 1
            self.decoded.forget(kb)  # the object was changed in place: the next read decodes the kept bytes
            log.error("visitor %r: state of %d bytes exceeds the %d-byte limit of a changelog message; not written, "
                      "the previous state is kept", key, len(value), self.max_state_bytes)
            return
        self.table.data[kb] = value
        self.decoded.remember(kb, value, state)
        self.table.send_changelog(self._partition_for(key, kb), kb, value)

    def delete(self, key: str) -> None:
        kb = key.encode()
        self.decoded.forget(kb)
        if self.table.data.pop(kb, None) is not None:
            self.table.send_changelog(self._partition_for(key, kb), kb, None)

    def _partition_for(self, key: str, kb: bytes) -> int:
        if key == self.current_key and self.partition is not None:
            return self.partition
        return self._partitioner(kb, self.partitions, self.partitions)

    def __len__(self) -> int:
        return len(self.table.data)


class WorkerStats:
    """Counters a worker logs periodically and tests and benchmarks read."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        return {**self.counts, "uptime_s": round(time.monotonic() - self.started, 1)}


class LatestLists(OrderedDict[str, bytes]):
    """The latest list published per visitor, for the HTTP view: at most `cap`, least recently used dropped."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def get(self, key: str, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        value = super().get(key, default)
        if value is not None:
            self.move_to_end(key)
        return value

    def __setitem__(self, key: str, value: bytes) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)


class RecoWorker:
    """One faust app with its topics, table, agents and the core recommender."""

    def __init__(self, settings: Settings, recommender: Recommender | None = None) -> None:
        schemas.load_schemas()  # a broken install fails here, before any message is consumed
        redact.install(settings)  # libraries log what they send (a SASL PLAIN login at DEBUG): mask secrets
        self.settings = settings
        self.stats = WorkerStats()
        self.catalog_ready = asyncio.Event()
        self.model_path: Path | None = None
        self.latest_lists = LatestLists(LATEST_LISTS_CAP)
        #: the latest event time applied (never beyond the wall clock plus `max_clock_skew_s`): the visitor TTL's clock
        self.stream_time_ms = 0
        datadir = settings.data_path / "faust" / settings.app_id
        datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
        self.app = faust.App(
            settings.app_id,
            broker=faust_broker_url(settings),
            broker_credentials=faust_credentials(settings),
            store="memory://",
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            broker_session_timeout=settings.broker_session_timeout_s,
            broker_heartbeat_interval=max(settings.broker_session_timeout_s / 10.0, 0.5),
            broker_commit_interval=settings.commit_interval_s,
            producer_linger_ms=settings.producer_linger_ms,
            producer_max_request_size=max(settings.max_message_bytes * 2, 1_048_576),
            consumer_max_fetch_size=max(settings.max_message_bytes * 2, 1_048_576),
            consumer_auto_offset_reset="earliest",
            stream_wait_empty=False,
            web_enabled=settings.web_port > 0,
            web_port=settings.web_port or 6066,
            web_bind=settings.web_host,
            datadir=str(datadir),
        )
        faust_internals.install_fetch_max_wait(self.app, FETCH_MAX_WAIT_MS)
        self.events_topic = self.app.topic(
            settings.events_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )
        self.recommendations_topic = self.app.topic(
            settings.recommendations_topic, key_serializer="raw", value_serializer="raw"
        )
        self.dead_letter_topic = self.app.topic(
            settings.dead_letter_topic, key_serializer="raw", value_serializer="raw"
        )
        self.visitors = self.app.Table(
            VISITORS_TABLE,
            key_type=bytes,  # bytes keys and values use faust's "raw" codec
            value_type=bytes,
            partitions=settings.partitions,
        )
        # the changelog's limit, not `max_message_bytes` (the largest *incoming* message): the core keeps states
        # within `max_state_bytes`, which settings.py keeps below this
        self.store = TableStore(self.visitors, settings.partitions, max_state_bytes=CHANGELOG_MAX_BYTES)
        self.recommender = recommender or Recommender(settings, store=self.store)
        # statistics live only in memory: rebuilt from the events topic per partition (stream/recovery.py)
        self.recovery = StatsRecovery(settings, self.recommender, self.store)
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)
        self.app.on_before_shutdown.connect(self._on_shutdown)
        self.app.on_partitions_assigned.connect(self._on_partitions_assigned)
        self.active_partitions: set[int] = set()
        self.app.agent(self.events_topic, name="stream_reco.process_events")(self._process_events)
        # login joins between workers: an internal topic co-partitioned with the events (stream/joins.py)
        self.joins_topic = self.app.topic(topics.joins_topic(settings), key_type=bytes, value_type=bytes,
                                          key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
        self.app.agent(self.joins_topic, name="stream_reco.process_joins")(self._process_joins)
        self.app.task(self._consume_catalog)
        self.app.timer(settings.model_poll_s)(guarded(self._watch_model))
        self.app.timer(STATS_INTERVAL_S)(guarded(self._log_stats))
        #: one step at a time applies events: a batch, or the repair of skipped ones (`_check_events_applied`)
        self.apply_lock = asyncio.Lock()
        #: set once the agent applies events (after the catalogue wait): delivery checks start then
        self.applying = False
        if settings.skip_check_s > 0:
            self.app.timer(settings.skip_check_s)(guarded(self._check_events_applied))
        self.stall_watch = StallWatch(settings.recovery_stall_s)
        self.delivery_watch = DeliveryWatch(settings.delivery_stall_s)
        if settings.recovery_stall_s > 0:
            self.app.timer(RECOVERY_WATCH_S)(guarded(self._watch_recovery))
        if settings.visitor_ttl_days > 0:
            self.app.timer(SWEEP_INTERVAL_S)(guarded(self._sweep_visitors))
        self._sweep_keys: list[bytes] = []  # the visitors the current sweep round has still to look at
        # faust's own pages (tables, router, statistics) are not part of the contract: the `worker` command
        # binds the port even with web_enabled off, so they go whatever web_port says (contracts.md, "HTTP")
        faust_internals.serve_only_own_routes(self.app)
        if settings.web_port > 0:
            worker = self  # faust builds a View class from the handler: a plain function, not a bound method

            async def recommendations(view: Any, request: Any, visitor: str) -> Any:
                """GET /recommendations/{visitor}: the latest list this worker published for the visitor."""
                return await worker._recommendations_view(view, request, visitor)

            self.app.page("/recommendations/{visitor}")(recommendations)

    # --- events ---------------------------------------------------------------------------------------
    async def _process_events(self, stream: Any) -> None:
        await self._wait_catalog()
        within = self.settings.coalesce_ms / 1000.0
        async for batch in stream.take_events(self.settings.batch_size, within=within):
            await self.handle_batch(batch)

    async def handle_batch(self, batch: Sequence[Any]) -> None:
        """Apply every event of the batch in order, then publish one list per visitor touched."""
        async with self.apply_lock:
            await self._apply_batch(batch)

    async def _check_events_applied(self) -> None:
        """Apply events the consumer committed without delivering them, and re-read (or restart) when waiting
        events stop arriving: faust-streaming can skip or wedge (stream/recovery.py, docs/operations.md)."""
        if not self.applying or faust_internals.table_recovery(self.app)[0]:  # not applying yet / table not whole
            self.delivery_watch.reset()
            return
        committed = faust_internals.committed_offsets(self.app)  # faust's record of commits
        topic = self.settings.events_topic
        offsets = {tp.partition: off for tp, off in committed.items()
                   if tp.topic == topic and off is not None and tp.partition in self.active_partitions}
        if offsets:
            async with self.apply_lock:
                for missed in await self.recovery.acknowledged_unseen(offsets):
                    await self._apply_alone(missed)
        await self._watch_delivery(committed)

    async def _watch_delivery(self, committed: dict[Any, int | None]) -> None:
        """Rewind, then restart, when a partition's waiting events stop reaching the worker (`DeliveryWatch`)."""
        topic = self.settings.events_topic
        tps = [TP(topic, p) for p in sorted(self.active_partitions)]
        if not tps or self.apply_lock.locked():
            # busy applying (a long statistics rebuild holds the lock for minutes): that is not a stall
            self.delivery_watch.reset()
            return
        try:
            end = await asyncio.wait_for(self.recovery.log_ends([tp.partition for tp in tps]),
                                         timeout=DELIVERY_QUERY_TIMEOUT_S)
        except Exception as exc:  # a broker hiccup: look again at the next tick
            log.warning("delivery check: log end offsets unavailable (%r)", exc)
            return
        expected = self.recovery.next_offset
        position = {tp.partition: expected.get(tp.partition, committed.get(tp) or 0) for tp in tps}
        rewind, stuck = self.delivery_watch.check(time.monotonic(), position, end)
        for partition in rewind:
            log.warning("partition %d: no event reached the worker for %.0f s although the log holds offsets %d-%d; "
                        "re-reading from offset %d", partition, self.settings.delivery_stall_s, position[partition],
                        end[partition] - 1, position[partition])
            self.stats.counts["rewinds"] += 1
            await self.app.consumer.seek(TP(topic, partition), position[partition])
        if stuck:
            self._restart(f"partitions {stuck} still receive no events after a re-read")

    async def _watch_recovery(self) -> None:
        """Restart this process when faust's table recovery is stuck (stream/recovery.py, `StallWatch`)."""
        in_recovery, remaining = faust_internals.table_recovery(self.app)
        if not self.stall_watch.stalled(time.monotonic(), in_recovery, remaining):
            return
        self._restart(f"table recovery made no progress for {self.settings.recovery_stall_s:.0f} s "
                      f"({remaining} changelog records remaining)")

    @staticmethod
    def _restart(reason: str) -> None:
        """Exit with `EXIT_RESTART` so that the process supervisor (systemd, Kubernetes, docker-compose
        `restart:`) starts this worker again and counts the restart: the cure for a wedged faust, and safe,
        because state is in the changelogs and offsets cover only applied events (docs/operations.md).

        The exit is immediate (`os._exit`), as the in-place re-execution it replaces was: a wedged faust may
        never finish a graceful shutdown, and nothing uncommitted needs one."""
        log.error("%s: restarting this worker (exit status %d: its supervisor starts it again)", reason, EXIT_RESTART)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_RESTART)

    async def _apply_alone(self, msg: Any) -> None:
        """One message outside the stream (skipped by the consumer), handled and published on its own."""
        triggers: dict[str, Event] = {}
        replayed: dict[str, tuple[Event, Recommendation]] = {}
        await self._handle_safely(msg, msg.value, triggers, replayed)
        await self._publish_all(triggers, replayed)

    async def _apply_batch(self, batch: Sequence[Any]) -> None:
        triggers: dict[str, Event] = {}
        replayed: dict[str, tuple[Event, Recommendation]] = {}  # lists of redelivered events (recovery.py)
        for fevent in batch:
            msg = fevent.message
            # messages the consumer skipped (faust can, around a rebalance) come first, each as its own batch,
            # as if it had been delivered (stream/recovery.py)
            for missed in await self._recovered_before(msg):
                await self._apply_alone(missed)
            # None for a tombstone: decode_event says so, instead of "not valid JSON"
            await self._handle_safely(msg, raw_bytes(fevent.value), triggers, replayed)
        await self._publish_all(triggers, replayed)

    async def _recovered_before(self, msg: Any) -> list[Any]:
        """`StatsRecovery.before`, with its failure confined: a rebuild that cannot finish (a broker read error)
        is logged and counted, and the message is handled as usual; escaping, it would make faust acknowledge the
        whole batch unapplied (see `_handle_safely`)."""
        try:
            return await self.recovery.before(msg.partition, msg.offset)
        except Exception:
            self.stats.counts["recovery_failed"] += 1
            log.exception("statistics recovery before %s[%d]@%d failed; handling the message without it",
                          msg.topic, msg.partition, msg.offset)
            return []

    async def _handle_safely(self, msg: Any, raw: bytes | bytearray | None, triggers: dict[str, Event],
                             replayed: dict[str, tuple[Event, Recommendation]]) -> None:
        """`_handle_message`, with a failure confined to its message: dead-lettered with the exception as the
        reason, and the batch goes on. An exception escaping the batch would be worse: faust's `take_events`
        acknowledges the whole batch in `finally`, so the failing event and every other list of the batch would
        be lost without a trace."""
        try:
            await self._handle_message(msg, raw, triggers, replayed)
        except Exception as exc:
            await self._failed(msg, raw, exc)

    async def _failed(self, msg: Any, raw: bytes | bytearray | None, exc: Exception) -> None:
        """A message whose handling raised: logged, counted and dead-lettered with the exception as the reason."""
        # the core may have changed a cached state object before it raised: read states afresh from the table
        self.store.decoded.clear()
        self.stats.counts["failed_events"] += 1
        log.exception("applying %s[%d]@%d failed", msg.topic, msg.partition, msg.offset)
        await self._dead_letter(msg, None if raw is None else bytes(raw),
                                f"the worker failed to apply this message: {exc!r}")

    async def _publish_all(self, triggers: dict[str, Event], replayed: dict[str, tuple[Event, Recommendation]]
                           ) -> None:
        """Publish the batch's lists; one that fails is logged and counted (its event was applied: nothing to
        dead-letter), and the others are still published."""
        lists: list[tuple[str, Event, Recommendation | None]] = [
            *((key, event, rec) for key, (event, rec) in replayed.items()),
            *((key, event, None) for key, event in triggers.items())]
        for key, event, rec in lists:
            try:
                await self._publish(key, event, rec)
            except Exception:
                self.stats.counts["failed_lists"] += 1
                log.exception("the list of visitor %r (trigger %s) failed; not published", key, event.event_id)

    async def _handle_message(self, msg: Any, raw: bytes | bytearray | None, triggers: dict[str, Event],
                              replayed: dict[str, tuple[Event, Recommendation]]) -> None:
        """One message of the events topic: an event, or a bad message (dead-lettered with the reason).

        Beyond the schema, an event must be keyed by its visitor and not come from the future
        (stream/admission.py). Login-join records live on an internal topic: here they are bad messages."""
        settings = self.settings
        reference = admission.reference_ms(faust_internals.record_time_ms(msg))
        try:
            event = admission.admit(raw, msg.key, reference, settings)
        except schemas.InvalidMessage as exc:
            await self._dead_letter(msg, raw, exc)  # type: ignore[arg-type]
            return
        # the core applies the event at most at this ceiling (admission already refused anything beyond it)
        ceiling = admission.ceiling_ms(reference, settings.max_clock_skew_s)
        self.store.current_key = event.visitor_key
        self.store.partition = msg.partition
        # in a recovery region (after a crash) a shadow applies redelivered events (stream/recovery.py)
        shadow = self.recovery.shadow_for(msg.partition, msg.offset)
        recommender = shadow or self.recommender
        forward = self._needs_join_request(event, msg.partition, recommender)
        self.store.only_partition = msg.partition
        try:
            observed = recommender.observe(event, now_ms=ceiling)
        finally:
            self.store.only_partition = None
        if not observed:
            self.stats.counts["duplicates"] += 1
            return
        if recommender.last_applied_ms is not None:  # the time it was applied at: the visitor TTL's clock
            self.stream_time_ms = max(self.stream_time_ms, recommender.last_applied_ms)
        if forward:
            await self._join_across(event, msg.partition, local=shadow is None)
        self.stats.counts["events"] += 1
        self._trigger(event.visitor_key, event, shadow, triggers, replayed)

    @staticmethod
    def _trigger(key: str, trigger: Event, shadow: Recommender | None, triggers: dict[str, Event],
                 replayed: dict[str, tuple[Event, Recommendation]]) -> None:
        """Note the visitor's list to publish after the batch; a shadow's is computed now, at this log position."""
        if shadow is None:
            triggers[key] = trigger
            replayed.pop(key, None)
        else:
            replayed[key] = (trigger, shadow.recommendation(key, now_ms=list_time(shadow, trigger), trigger=trigger))
            triggers.pop(key, None)

    def _needs_join_request(self, event: Event, partition: int, recommender: Recommender) -> bool:
        """A login whose session lives on another partition, new to this user: forward a join (joins.py)."""
        if not joins.crosses_partitions(event, partition, self.settings.partitions):
            return False
        before = recommender.store.get(event.visitor_key)
        return before is None or before.session_id != event.session_id

    async def _join_across(self, event: Event, partition: int, local: bool) -> None:
        """Join a login's session that lives on another partition (stream/joins.py): at once when this worker
        owns that partition too (`local`) and has applied it up to its log end (so every event of the session
        the shop produced before the login is in the session's state), else through a join request on the
        internal joins topic to the session's partition."""
        request, key, value = joins.join_request(event)
        session_partition = joins.partition_of(request.session_id, self.settings.partitions)
        if local and session_partition in self.active_partitions and self._applied_upto(session_partition) >= (
                await self._log_end(session_partition)):
            self.store.current_key, self.store.partition = request.session_id, session_partition
            outcome = joins.apply(request, self.store, self.settings)
            if outcome.join_state is not None:
                self.store.current_key, self.store.partition = request.user_id, partition
                joins.apply(outcome.join_state, self.store, self.settings)
                self.stats.counts["joins_local"] += 1
            for state_key, state_value in outcome.send:  # a no-op when consumed; a restart's recovery reads it
                await self.joins_topic.send(key=state_key, value=state_value)
            if outcome.delete is not None:  # the user holds the session now: its own state goes (P(s)'s changelog)
                self.store.current_key, self.store.partition = request.session_id, session_partition
                joins.forget(self.store, outcome.delete)
            self.store.current_key, self.store.partition = event.visitor_key, partition
            return
        await self.joins_topic.send(key=key, value=value)
        self.stats.counts["join_requests"] += 1

    async def _log_end(self, partition: int) -> float:
        """The log end offset of an events partition (infinity when the broker does not say: not caught up)."""
        try:
            ends = await asyncio.wait_for(self.recovery.log_ends([partition]), DELIVERY_QUERY_TIMEOUT_S)
        except Exception as exc:  # a broker hiccup
            log.warning("joins: log end of partition %d unavailable (%r)", partition, exc)
            return float("inf")
        return ends[partition]

    def _applied_upto(self, partition: int, committed: bool = False) -> int:
        """The offset up to which this worker has applied (`committed`: and committed) an events partition."""
        at = faust_internals.committed_offsets(self.app).get(TP(self.settings.events_topic, partition)) or 0
        return at if committed else max(at, self.recovery.next_offset.get(partition, 0))

    async def _process_joins(self, stream: Any) -> None:
        """The internal joins topic, in batches: one wait serves every record that arrived together."""
        while not self.applying:  # the model (its dimension) and the catalogue are loaded first
            await asyncio.sleep(JOIN_POLL_S)
        within = self.settings.coalesce_ms / 1000.0
        async for batch in stream.take_events(self.settings.batch_size, within=within):
            await self._handle_joins(batch)

    async def _handle_joins(self, batch: Sequence[Any]) -> None:
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
                    await self._dead_letter(msg, raw, exc)
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
                    await self._failed(msg, msg.value, exc)

    async def _wait_for_joins(self, valid: list[tuple[Any, joins.Control]]) -> None:
        """Wait until every record may be applied (`_join_ready`), at most `joins.WAIT_S`; requests wait for the
        events that were in the log when they arrived (not for a moving log end)."""
        ends: dict[int, float] = {}
        for msg, control in valid:
            if control.kind == joins.JOIN_REQUEST and msg.partition not in ends:
                ends[msg.partition] = await self._log_end(msg.partition)
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
        due = {TP(self.settings.events_topic, p) for p, end in ends.items()
               if self._applied_upto(p) >= end > self._applied_upto(p, committed=True)}
        if due:
            await self.app.consumer.commit(due)

    def _join_ready(self, control: joins.Control, partition: int, end: float) -> bool:
        """Whether a join record may be applied now (stream/joins.py, steps 2 and 3)."""
        if control.kind == joins.JOIN_REQUEST:  # the session's events before the login are committed first
            return self._applied_upto(partition, committed=True) >= end
        # a join state waits for a restart's recovery region of its partition to pass (stream/recovery.py), so
        # that the list it republishes comes after the region's lists
        applied = self.recovery.next_offset.get(partition)
        return applied is not None and applied >= self.recovery.region_end.get(partition, 0)

    async def _control(self, msg: Any, control: joins.Control) -> None:
        """Apply a validated join record (stream/joins.py) on the partition of its key; publish after a merge."""
        self.store.current_key = control.key
        self.store.partition = msg.partition
        outcome = joins.apply(control, self.recommender.store, self.settings)
        for key, value in outcome.send:
            delivered = await self.joins_topic.send(key=key, value=value)
            if outcome.delete is not None:
                await delivered  # the session goes only once its state is safely on the joins topic
        if outcome.delete is not None:
            joins.forget(self.recommender.store, outcome.delete)  # current_key/partition: the session's
        self.stats.counts[control.kind] += 1
        if outcome.republish is not None:
            self.store.current_key = control.user_id
            await self._publish(control.user_id, outcome.republish)

    async def _publish(self, key: str, trigger: Event, rec: Recommendation | None = None) -> None:
        if rec is None:
            rec = self.recommender.recommendation(key, now_ms=list_time(self.recommender, trigger), trigger=trigger)
        doc = rec.to_dict()
        now_ms = time.time() * 1000.0
        doc["generated_at"] = int(now_ms)
        doc["latency_ms"] = round(max(now_ms - trigger.timestamp, 0.0), 3)
        value = orjson.dumps(doc)
        self.latest_lists[key] = value
        await self.recommendations_topic.send(key=key.encode(), value=value)
        self.stats.counts["lists"] += 1

    async def _dead_letter(self, msg: Any, raw: bytes | None, exc: schemas.InvalidMessage | str) -> None:
        record = schemas.dead_letter_record(
            raw, exc, topic=msg.topic, partition=msg.partition, offset=msg.offset,
            received_at=int(time.time() * 1000),
        )
        await self.dead_letter_topic.send(key=msg.key, value=orjson.dumps(record))
        self.stats.counts["dead_letter"] += 1
        log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, record["error"])

    # --- catalog --------------------------------------------------------------------------------------
    async def _consume_catalog(self) -> None:
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
                self._mark_catalog_ready()
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=self.settings.batch_size * 4)
                for messages in batches.values():
                    for msg in messages:
                        await self._apply_catalog(msg)
                if pending:
                    pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
                    if not pending:
                        await self._end_catalog_load()
                        self._mark_catalog_ready()
        finally:
            await consumer.stop()

    async def _apply_catalog(self, msg: Any) -> None:
        if msg.value is None and msg.key:
            # a tombstone on the compacted catalog topic is Kafka's way of deleting the key's item
            self.recommender.upsert_item(CatalogItem(item_id=msg.key.decode("utf-8", "replace"), deleted=True))
            self.stats.counts["catalog_updates"] += 1
            return
        raw = msg.value or b""
        try:
            item = schemas.decode_item(raw, max_bytes=self.settings.max_message_bytes)
            admission.check_item(item, msg.key)  # else compaction keeps it under another item's key
        except schemas.InvalidMessage as exc:
            await self._dead_letter(msg, raw, exc)
            return
        self.recommender.upsert_item(item)
        self.stats.counts["catalog_updates"] += 1

    async def _end_catalog_load(self) -> None:
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

    def _mark_catalog_ready(self) -> None:
        self.catalog_ready.set()
        log.info("catalog loaded: %d items", self.stats.counts["catalog_updates"])

    async def _wait_catalog(self) -> None:
        try:
            await asyncio.wait_for(self.catalog_ready.wait(), timeout=self.settings.catalog_wait_s)
        except TimeoutError:
            log.warning("catalog not caught up after %.0f s; processing events anyway", self.settings.catalog_wait_s)
        self.load_model_if_newer()
        print(READY_LINE, flush=True)
        self.applying = True

    # --- model hot swap -------------------------------------------------------------------------------
    @property
    def model_picker(self) -> model_artifact.ArtifactPicker:
        """Which artifact to serve: skips corrupt folders (logged once, retried when they change), so `latest`
        means the newest valid one (model/artifact.py). Created on first use."""
        picker: model_artifact.ArtifactPicker | None = getattr(self, "_model_picker", None)
        if picker is None:
            settings = self.settings
            picker = model_artifact.ArtifactPicker(settings.model, settings.data_dir, settings.embedding_dim)
            self._model_picker = picker
        return picker

    def _pick_model(self) -> tuple[Path, model_artifact.ModelArtifact] | None:
        """The best valid artifact when it is not the one in use, else None (file I/O: run it off the loop)."""
        return self.model_picker.pick(self.model_path)

    def _swap_model(self, path: Path, art: model_artifact.ModelArtifact) -> bool:
        """Serve `art`; one the core refuses is remembered like a corrupt folder and the current model serves on."""
        try:
            self.recommender.load_model(art)
        except Exception as exc:  # core.items.CatalogError (a ValueError), or a bug: never stop the worker for it
            if not isinstance(exc, ValueError):
                log.exception("loading model %s failed", path)
            self.model_picker.reject(path, exc)
            return False
        finally:
            self.stats.counts["model_errors"] = self.model_picker.errors  # folders refused so far
        self.model_path = path
        self.stats.counts["model_swaps"] += 1
        log.info("model %s in use (%d items)", art.version, len(art.item_ids))
        return True

    def load_model_if_newer(self) -> bool:
        """Load the configured model at start-up, before the first event is processed.

        A corrupt configured model never stops the worker: it is logged (ERROR, naming the file and the
        problem) and skipped. With `latest` the newest valid artifact is served instead; a named path that is
        corrupt leaves the worker on content vectors until the folder is fixed, which the watcher notices.
        Refusing to start would turn one bad file into a crash loop and no lists at all.
        """
        picked = self._pick_model()
        if picked is None:
            self.stats.counts["model_errors"] = self.model_picker.errors
            return False
        return self._swap_model(*picked)

    async def _watch_model(self) -> None:
        """Hot swap: a newer valid artifact under the models folder (or a fixed named path) replaces the model.

        A timer that raises stops the faust worker, so nothing escapes: a corrupt folder is logged once by the
        picker, and anything unexpected is logged here and tried again at the next tick.
        """
        if not self.catalog_ready.is_set():
            return
        try:
            # reading the artifact is file I/O: keep it off the event loop; the swap itself is one assignment
            picked = await asyncio.get_running_loop().run_in_executor(None, self._pick_model)
            if picked is not None and picked[0] != self.model_path:  # start-up may have loaded it meanwhile
                self._swap_model(*picked)
            self.stats.counts["model_errors"] = self.model_picker.errors
        except Exception:
            log.exception("model watch failed; the current model keeps serving")

    async def _log_stats(self) -> None:
        self.stats.counts["states_oversized"] = self.store.oversized
        log.info("stats %s", {**self.stats.snapshot(), **self.recovery.snapshot()})

    async def _sweep_visitors(self) -> None:
        """Delete visitors without events for `visitor_ttl_days` (a tombstone on the changelog), a bounded number
        per tick: a round takes the table's keys once, then looks at `SWEEP_KEYS_PER_TICK` of them per tick.

        The clock is event time (`stream_time_ms`), not the wall clock: a replayed historical log keeps its
        visitors. Only visitors of partitions this worker owns are looked at (another worker writes the others'
        changelogs), and nothing while faust recovers the table or a batch is being applied."""
        if (self.settings.visitor_ttl_days <= 0 or not self.applying or self.stream_time_ms <= 0
                or self.apply_lock.locked() or faust_internals.table_recovery(self.app)[0]):
            return
        async with self.apply_lock:
            data = self.visitors.data
            if not self._sweep_keys:
                self._sweep_keys = list(data.keys())
            batch, self._sweep_keys = self._sweep_keys[:SWEEP_KEYS_PER_TICK], self._sweep_keys[SWEEP_KEYS_PER_TICK:]
            oldest = self.stream_time_ms - self.settings.visitor_ttl_days * MS_PER_DAY
            partitions = self.store.partitions
            for kb in batch:
                raw = data.get(kb)
                if not raw or self.store._partitioner(kb, partitions, partitions) not in self.active_partitions:
                    continue
                try:
                    last_seen = VisitorState.from_bytes(raw).last_seen
                except Exception:  # a state the core cannot read is not this sweep's business
                    continue
                if last_seen < oldest:
                    self.store.current_key = None  # the tombstone goes to the key's own partition
                    self.store.delete(kb.decode("utf-8", "replace"))
                    self.latest_lists.pop(kb.decode("utf-8", "replace"), None)
                    self.stats.counts["visitors_expired"] += 1

    async def _on_shutdown(self, sender: Any, **_: Any) -> None:
        await self.recovery.close()

    async def _on_partitions_revoked(self, sender: Any, revoked: Any, **_: Any) -> None:
        self.recovery.forget({tp.partition for tp in revoked if tp.topic == self.settings.events_topic})

    async def _on_partitions_assigned(self, sender: Any, assigned: Any, **_: Any) -> None:
        """Remember and log which events partitions this worker owns now (local login joins; operators)."""
        mine = sorted(tp.partition for tp in assigned if tp.topic == self.settings.events_topic)
        self.active_partitions = set(mine)
        log.info("%s %s", ASSIGNED_LINE, mine)

    async def _recommendations_view(self, web: Any, request: Any, visitor: str) -> Any:
        """The list last published by this worker; after a restart, one computed from the recovered state.

        Only the worker owning the visitor's partition knows the visitor: with several workers, put a
        router in front or read the compacted recommendations topic instead (see the README).
        """
        value = self.latest_lists.get(visitor)
        if value is None and self.store.get(visitor) is not None:
            rec = self.recommender.recommendation(visitor, now_ms=int(time.time() * 1000))
            value = orjson.dumps(rec.to_dict())
        if value is None:
            return web.json({"error": f"visitor {visitor!r} is not known to this worker"}, status=404)
        return web.bytes(value, content_type="application/json")
