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
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream_reco import redact, schemas
from stream_reco.core.events import CatalogItem, Event, Recommendation
from stream_reco.core.recommender import Recommender
from stream_reco.core.state import DecodedStates, VisitorState
from stream_reco.model import artifact as model_artifact
from stream_reco.settings import Settings
from stream_reco.stream import joins
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


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    """faust's Kafka consumer with `FETCH_MAX_WAIT_MS` (faust offers no setting for it)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class TableStore:
    """The core's `VisitorStore` backed by a faust table, so visitor state has a changelog.

    `partition` is set by the agent to the partition of the event being applied: state for that event's
    visitor is written to the matching changelog partition. Other keys (a session joined to a user on
    login) are placed with Kafka's default partitioner, as a shop's producer would key them.
    """

    def __init__(self, table: Any, partitions: int) -> None:
        self.table = table
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


class RecoWorker:
    """One faust app with its topics, table, agents and the core recommender."""

    def __init__(self, settings: Settings, recommender: Recommender | None = None) -> None:
        schemas.load_schemas()  # a broken install fails here, before any message is consumed
        redact.install(settings)  # libraries log what they send (a SASL PLAIN login at DEBUG): mask secrets
        self.settings = settings
        self.stats = WorkerStats()
        self.catalog_ready = asyncio.Event()
        self.model_path: Path | None = None
        self.latest_lists: dict[str, bytes] = {}
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
        self.app.transport.Consumer = _Consumer  # this app's consumer only (see FETCH_MAX_WAIT_MS)
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
        self.store = TableStore(self.visitors, settings.partitions)
        self.recommender = recommender or Recommender(settings, store=self.store)
        # statistics live only in memory: rebuilt from the events topic per partition (stream/recovery.py)
        self.recovery = StatsRecovery(settings, self.recommender, self.store)
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)
        self.app.on_before_shutdown.connect(self._on_shutdown)
        self.app.on_partitions_assigned.connect(self._on_partitions_assigned)
        self.active_partitions: set[int] = set()
        self.app.agent(self.events_topic, name="stream_reco.process_events")(self._process_events)
        self.app.task(self._consume_catalog)
        self.app.timer(settings.model_poll_s)(self._watch_model)
        self.app.timer(STATS_INTERVAL_S)(self._log_stats)
        #: one step at a time applies events: a batch, or the repair of skipped ones (`_check_events_applied`)
        self.apply_lock = asyncio.Lock()
        #: set once the agent applies events (after the catalogue wait): delivery checks start then
        self.applying = False
        if settings.skip_check_s > 0:
            self.app.timer(settings.skip_check_s)(self._check_events_applied)
        self.stall_watch = StallWatch(settings.recovery_stall_s)
        self.delivery_watch = DeliveryWatch(settings.delivery_stall_s)
        if settings.recovery_stall_s > 0:
            self.app.timer(RECOVERY_WATCH_S)(self._watch_recovery)
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
        if not self.applying or self.app.tables.recovery.in_recovery:  # not applying yet / table not whole
            self.delivery_watch.reset()
            return
        committed = dict(getattr(self.app.consumer, "_committed_offset", None) or {})  # faust's record of commits
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
        recovery = self.app.tables.recovery
        if not self.stall_watch.stalled(time.monotonic(), bool(recovery.in_recovery),
                                        int(recovery.active_remaining_total())):
            return
        self._restart(f"table recovery made no progress for {self.settings.recovery_stall_s:.0f} s "
                      f"({recovery.active_remaining_total()} changelog records remaining)")

    @staticmethod
    def _restart(reason: str) -> None:
        """Re-execute this worker (same command line and process id): the cure for a wedged faust, and safe,
        because state is in the changelogs and offsets cover only applied events (docs/operations.md)."""
        log.error("%s: restarting this worker", reason)
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

    async def _apply_alone(self, msg: Any) -> None:
        """One message outside the stream (skipped by the consumer), handled and published on its own."""
        triggers: dict[str, Event] = {}
        replayed: dict[str, tuple[Event, Recommendation]] = {}
        await self._handle_message(msg, msg.value, triggers, replayed)
        await self._publish_all(triggers, replayed)

    async def _apply_batch(self, batch: Sequence[Any]) -> None:
        triggers: dict[str, Event] = {}
        replayed: dict[str, tuple[Event, Recommendation]] = {}  # lists of redelivered events (recovery.py)
        for fevent in batch:
            msg = fevent.message
            # messages the consumer skipped (faust can, around a rebalance) come first, each as its own batch,
            # as if it had been delivered (stream/recovery.py)
            for missed in await self.recovery.before(msg.partition, msg.offset):
                await self._apply_alone(missed)
            value = fevent.value  # None for a tombstone: decode_event says so, instead of "not valid JSON"
            raw = value if value is None or isinstance(value, bytes | bytearray) else bytes(value)
            await self._handle_message(msg, raw, triggers, replayed)
        await self._publish_all(triggers, replayed)

    async def _publish_all(self, triggers: dict[str, Event], replayed: dict[str, tuple[Event, Recommendation]]
                           ) -> None:
        for key, (event, rec) in replayed.items():
            await self._publish(key, event, rec)
        for key, event in triggers.items():
            await self._publish(key, event)

    async def _handle_message(self, msg: Any, raw: bytes | bytearray | None, triggers: dict[str, Event],
                              replayed: dict[str, tuple[Event, Recommendation]]) -> None:
        """One message of the events topic: an event, a login-join record, or a bad message."""
        try:
            event = schemas.decode_event(raw, max_bytes=self.settings.max_message_bytes)
        except schemas.InvalidMessage as exc:
            if joins.is_control(raw):
                await self._control(msg, raw, triggers, replayed)  # type: ignore[arg-type]
            else:
                await self._dead_letter(msg, raw, exc)  # type: ignore[arg-type]
            return
        self.store.current_key = event.visitor_key
        self.store.partition = msg.partition
        # in a recovery region (after a crash) a shadow applies redelivered events (stream/recovery.py)
        shadow = self.recovery.shadow_for(msg.partition, msg.offset)
        recommender = shadow or self.recommender
        forward = self._needs_join_request(event, msg.partition, recommender)
        self.store.only_partition = msg.partition
        try:
            observed = recommender.observe(event)
        finally:
            self.store.only_partition = None
        if not observed:
            self.stats.counts["duplicates"] += 1
            return
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
            replayed[key] = (trigger, shadow.recommendation(key, now_ms=int(trigger.timestamp), trigger=trigger))
            triggers.pop(key, None)

    def _needs_join_request(self, event: Event, partition: int, recommender: Recommender) -> bool:
        """A login whose session lives on another partition, new to this user: forward a join (joins.py)."""
        if not joins.crosses_partitions(event, partition, self.settings.partitions):
            return False
        before = recommender.store.get(event.visitor_key)
        return before is None or before.session_id != event.session_id

    async def _join_across(self, event: Event, partition: int, local: bool) -> None:
        """Join a login's session that lives on another partition (stream/joins.py): at once when this worker
        owns that partition too (`local`), else through a join request to the session's partition."""
        request, key, value = joins.join_request(event)
        session_partition = joins.partition_of(request.session_id, self.settings.partitions)
        if local and session_partition in self.active_partitions:
            self.store.current_key, self.store.partition = request.session_id, session_partition
            outcome = joins.apply(request, self.store, self.settings)
            if outcome.join_state is not None:
                self.store.current_key, self.store.partition = request.user_id, partition
                joins.apply(outcome.join_state, self.store, self.settings)
                self.stats.counts["joins_local"] += 1
            for state_key, state_value in outcome.send:  # in the log too, for rebuilds; a no-op when consumed
                await self.events_topic.send(key=state_key, value=state_value)
            self.store.current_key, self.store.partition = event.visitor_key, partition
        await self.events_topic.send(key=key, value=value)
        self.stats.counts["join_requests"] += 1

    async def _control(self, msg: Any, raw: bytes | bytearray, triggers: dict[str, Event],
                       replayed: dict[str, tuple[Event, Recommendation]]) -> None:
        """A login-join control record (stream/joins.py), applied on the partition of its key."""
        try:
            control = joins.parse(raw, self.settings.max_message_bytes)
        except schemas.InvalidMessage as exc:
            await self._dead_letter(msg, raw, exc)
            return
        self.store.current_key = control.key
        self.store.partition = msg.partition
        shadow = self.recovery.shadow_for(msg.partition, msg.offset)
        outcome = joins.apply(control, (shadow or self.recommender).store, self.settings)
        for key, value in outcome.send:
            await self.events_topic.send(key=key, value=value)
        self.stats.counts[control.kind] += 1
        if outcome.republish is not None:
            self._trigger(control.user_id, outcome.republish, shadow, triggers, replayed)

    async def _publish(self, key: str, trigger: Event, rec: Recommendation | None = None) -> None:
        if rec is None:
            rec = self.recommender.recommendation(key, now_ms=trigger.timestamp, trigger=trigger)
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
    def _new_model_path(self) -> Path | None:
        """The configured model's folder when it differs from the one in use, else None."""
        try:
            path = model_artifact.resolve(self.settings.model, self.settings.data_dir)
        except model_artifact.ModelError as exc:
            log.error("%s", exc)
            return None
        return None if path is None or path == self.model_path else path

    def _swap_model(self, path: Path, art: model_artifact.ModelArtifact) -> None:
        self.recommender.load_model(art)
        self.model_path = path
        self.stats.counts["model_swaps"] += 1
        log.info("model %s in use (%d items)", art.version, len(art.item_ids))

    def load_model_if_newer(self) -> bool:
        """Load the configured model at start-up, before the first event is processed."""
        path = self._new_model_path()
        if path is None:
            return False
        self._swap_model(path, model_artifact.load(path))
        return True

    async def _watch_model(self) -> None:
        """Hot swap: a newer artifact under the models folder (or a changed path) replaces the model."""
        if not self.catalog_ready.is_set():
            return
        path = self._new_model_path()
        if path is None:
            return
        # reading the artifact is file I/O: keep it off the event loop; the swap itself is one assignment
        art = await asyncio.get_running_loop().run_in_executor(None, model_artifact.load, path)
        self._swap_model(path, art)

    async def _log_stats(self) -> None:
        log.info("stats %s", {**self.stats.snapshot(), **self.recovery.snapshot()})

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
