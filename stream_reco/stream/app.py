"""The faust adapter's wiring: one faust app with its topics, changelogged table, agents and timers, handing
each job to a part with one responsibility. Nothing here decides what to recommend, and nothing here moves an
event itself: the parts move bytes between Kafka and `stream_reco.core.recommender.Recommender`.

    shop.events  --(agent)--> stream/ingest.py         admit, observe, publish --> reco.recommendations
                                                        bad messages ----------> reco.dead-letter
    <app>-joins  --(agent)--> stream/join_agent.py     login joins across partitions (stream/joins.py)
    shop.catalog --(task)---> stream/catalog_feed.py   every worker reads every partition
    timers ----------------> stream/model_watch.py    model hot swap
                             stream/repairs.py        faust's skips and wedges (stream/faust_internals.py)
                             stream/sweep.py          visitor TTL
    HTTP ------------------> stream/http_view.py      GET /recommendations/{visitor}
    rebalances ------------> stream/recovery.py       statistics rebuilt from the events topic

State shared by the parts is handed to each as a constructor argument: the visitor table (stream/store.py),
the counters, the latest lists, `apply_lock` (one step at a time applies events), `applying` (set once events
are applied, after the catalogue wait) and `active_partitions` (the events partitions this worker owns, kept
current in place by the rebalance callbacks). The events topic is already keyed by visitor: no `group_by`, so no
repartition hop (stack-findings).
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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust

from stream_reco import redact, schemas
from stream_reco.core.recommender import Recommender
from stream_reco.core.stats_context import StatsContexts
from stream_reco.settings import Settings
from stream_reco.stream import faust_internals, snapshots, topics
from stream_reco.stream.catalog_feed import CatalogFeed
from stream_reco.stream.http_view import HttpView
from stream_reco.stream.ingest import Ingest
from stream_reco.stream.join_agent import JoinAgent, JoinForwarder
from stream_reco.stream.log_reader import LogEnds
from stream_reco.stream.metrics import WorkerMetrics
from stream_reco.stream.model_watch import ModelWatch
from stream_reco.stream.pushed import PushedLists
from stream_reco.stream.recovery import StatsRecovery
from stream_reco.stream.refresh import StockRefresh
from stream_reco.stream.repairs import RECOVERY_WATCH_S, Repairs
from stream_reco.stream.stats_feed import StatsFeed
from stream_reco.stream.store import CHANGELOG_MAX_BYTES, TableStore, WorkerStats
from stream_reco.stream.sweep import SWEEP_INTERVAL_S, VisitorSweep

log = logging.getLogger(__name__)

READY_LINE = "stream-reco worker ready"
ASSIGNED_LINE = "events partitions assigned:"
VISITORS_TABLE = "visitors"
STATS_INTERVAL_S = 10.0
#: longest time the broker holds a fetch of the events consumer open. faust hard-codes 1500 ms, and aiokafka
#: sends no new fetch to a broker while one is open, so a partition whose records were still being handed
#: over when the fetch left waits for it: up to 1.5 s of extra latency at low rates (docs/benchmarks.md).
FETCH_MAX_WAIT_MS = 50


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


def make_app(settings: Settings) -> faust.App:
    """The faust app of a worker: in-memory table store (the changelog is the durable copy), the settings'
    broker, timeouts and sizes, and the events consumer's shorter fetch wait (`FETCH_MAX_WAIT_MS`)."""
    datadir = settings.data_path / "faust" / settings.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = faust.App(
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
        # where the other workers forward pulls for this worker's visitors (stream/http_view.py)
        **({"web_host": settings.web_advertised_host} if settings.web_advertised_host else {}),
        datadir=str(datadir),
    )
    faust_internals.install_fetch_max_wait(app, FETCH_MAX_WAIT_MS)
    return app


class RecoWorker:
    """One faust app with its topics, table, agents and timers, wired to the parts that do the work."""

    def __init__(self, settings: Settings, recommender: Recommender | None = None) -> None:
        schemas.load_schemas()  # a broken install fails here, before any message is consumed
        redact.install(settings)  # libraries log what they send (a SASL PLAIN login at DEBUG): mask secrets
        self.settings = settings
        self.app = app = make_app(settings)
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes,
                                      partitions=settings.partitions, **raw)
        self.recommendations_topic = app.topic(settings.recommendations_topic, **raw)
        self.dead_letter_topic = app.topic(settings.dead_letter_topic, **raw)
        # bytes keys and values use faust's "raw" codec
        self.visitors = app.Table(VISITORS_TABLE, key_type=bytes, value_type=bytes, partitions=settings.partitions)
        # login joins between workers: an internal topic co-partitioned with the events (stream/joins.py)
        self.joins_topic = app.topic(topics.joins_topic(settings), key_type=bytes, value_type=bytes,
                                     partitions=settings.partitions, **raw)

        # --- state the parts share, handed to each ----------------------------------------------------
        self.stats = WorkerStats()
        #: Prometheus metrics (`GET /metrics`), a registry of this worker's own; the counters are read from `stats`
        self.metrics = WorkerMetrics(self.stats, topics=(settings.events_topic, settings.catalog_topic,
                                                      topics.joins_topic(settings)))
        #: which items each visitor's current pushed list shows (stock refresh)
        self.pushed = PushedLists(settings.pushed_lists_max_visitors)
        #: one step at a time applies events: a batch, a join record, the repair of skipped ones, a sweep
        self.apply_lock = asyncio.Lock()
        #: set once the agent applies events (after the catalogue wait): delivery checks and sweeps start then
        self.applying = asyncio.Event()
        #: the events partitions this worker owns (local login joins, repairs, sweep); updated in place
        self.active_partitions: set[int] = set()
        # the changelog's limit, not `max_message_bytes` (the largest *incoming* message): the core keeps states
        # within `max_state_bytes`, which settings.py keeps below this
        self.store = TableStore(self.visitors, settings.partitions, max_state_bytes=CHANGELOG_MAX_BYTES)
        self.recommender = recommender or Recommender(settings, store=self.store)
        # shop-wide statistics: this worker's partitions through its own path (rebuilt per partition on first
        # sight, stream/recovery.py), the others' through the statistics feed (stream/stats_feed.py), both from
        # the latest snapshot's offsets on (stream/snapshots.py)
        self.recovery = StatsRecovery(settings, self.recommender, self.store)
        self.feed_contexts = (snapshots.restore(settings, self.recommender, self.recovery.counted)
                              or StatsContexts(settings, max_visitors=settings.stats_feed_max_visitors))
        self.recovery.contexts = self.feed_contexts
        self.log_ends = LogEnds(settings)
        #: set at the first assignment: the feed must not read partitions this worker is about to own
        self.assigned_once = asyncio.Event()
        #: the read of the recommendations topic that fills the stock refresh's index (per assignment)
        self._learning: asyncio.Future[None] | None = None

        # --- the parts -----------------------------------------------------------------------------------
        self.join_forwarder = JoinForwarder(settings, app, self.store, self.recovery, self.log_ends, self.stats,
                                            self.joins_topic, self.active_partitions)
        self.ingest = Ingest(settings, self.recommender, self.store, self.recovery, self.join_forwarder,
                             self.stats, self.pushed, self.recommendations_topic, self.dead_letter_topic,
                             self.apply_lock, self.metrics)
        self.join_agent = JoinAgent(settings, app, self.recommender, self.store, self.recovery,
                                    self.join_forwarder, self.ingest, self.stats, self.joins_topic,
                                    self.apply_lock, self.applying)
        self.stock_refresh = StockRefresh(self.pushed, self.ingest.refresh, self.ingest.drop_withdrawn, self._owns,
                                          self.apply_lock, self.stats)
        self.catalog_feed = CatalogFeed(settings, self.recommender, self.stats, self.ingest.dead_letter,
                                        self.stock_refresh.withdrawn)
        self.model_watch = ModelWatch(settings, self.recommender, self.stats, self.catalog_feed.ready)
        self.repairs = Repairs(settings, app, self.recovery, self.log_ends, self.stats, self.apply_lock,
                               self.applying, self.active_partitions, self.ingest.apply_alone)
        self.sweep = VisitorSweep(settings, app, self.store, self.pushed, self.stats, self.apply_lock,
                                  self.applying, self.active_partitions, lambda: self.ingest.stream_time_ms)
        self.http_view = HttpView(app, self.recommender, self.stats, VISITORS_TABLE, metrics=self.metrics,
                                  applying=self.applying, partitions=self.active_partitions)
        self.stats_feed = StatsFeed(settings, lambda: self.recommender, self.feed_contexts, self.recovery.counted,
                                    lambda: self.active_partitions)

        # --- faust: callbacks, agents, tasks, timers, pages --------------------------------------------
        app.on_partitions_revoked.connect(self._on_partitions_revoked)
        app.on_before_shutdown.connect(self._on_shutdown)
        app.on_partitions_assigned.connect(self._on_partitions_assigned)
        app.agent(self.events_topic, name="stream_reco.process_events")(self._process_events)
        app.agent(self.joins_topic, name="stream_reco.process_joins")(self.join_agent.process)
        app.task(self.catalog_feed.consume)
        app.task(self._run_stats_feed)
        app.task(self.stock_refresh.run)
        app.task(self.stock_refresh.run_refill)
        if settings.stats_snapshot_interval_s > 0:
            app.timer(settings.stats_snapshot_interval_s)(guarded(self.save_snapshot))
        app.timer(settings.model_poll_s)(guarded(self.model_watch.watch_model))
        app.timer(STATS_INTERVAL_S)(guarded(self._log_stats))
        if settings.skip_check_s > 0:
            app.timer(settings.skip_check_s)(guarded(self.repairs.check_events_applied))
        if settings.recovery_stall_s > 0:
            app.timer(RECOVERY_WATCH_S)(guarded(self.repairs.watch_recovery))
        if settings.visitor_ttl_days > 0:
            app.timer(SWEEP_INTERVAL_S)(guarded(self.sweep.sweep_visitors))
        # faust's own pages (tables, router, statistics) are not part of the contract: the `worker` command
        # binds the port even with web_enabled off, so they go whatever web_port says (contracts.md, "HTTP")
        faust_internals.serve_only_own_routes(app)
        if settings.web_port > 0:
            self.http_view.register(app)

    # --- events ---------------------------------------------------------------------------------------
    async def _process_events(self, stream: Any) -> None:
        await self._start_applying()
        within = self.settings.coalesce_ms / 1000.0
        async for batch in stream.take_events(self.settings.batch_size, within=within):
            await self.handle_batch(batch)

    async def _start_applying(self) -> None:
        """Events wait for the catalogue (at most `catalog_wait_s`) and the configured model; then the worker
        says it is ready, and the parts that wait for `applying` start."""
        await self.catalog_feed.wait_ready()
        self.model_watch.load_if_newer()
        print(READY_LINE, flush=True)
        self.applying.set()

    async def handle_batch(self, batch: Sequence[Any]) -> None:
        """Apply every event of the batch in order, then publish one list per visitor touched (stream/ingest.py;
        bench/latency_probe.py wraps this method)."""
        await self.ingest.handle_batch(batch)

    async def _learn_pushed(self) -> None:
        try:
            learned = await self.stock_refresh.learn_pushed(self.settings)
            log.info("stock refresh: %d pushed lists learned from the recommendations topic", learned)
        except asyncio.CancelledError:
            raise
        except Exception:  # those lists are corrected at their visitors' next events instead
            log.exception("reading the pushed lists from the recommendations topic failed")

    def _owns(self, visitor: str) -> bool:
        """Whether `visitor`'s events partition is this worker's now."""
        return self.store.partition_of(visitor.encode()) in self.active_partitions

    # --- statistics and rebalances --------------------------------------------------------------------
    async def _run_stats_feed(self) -> None:
        """The statistics feed starts once events are applied and the first assignment is known."""
        await self.applying.wait()
        await self.assigned_once.wait()
        await self.stats_feed.run()

    async def save_snapshot(self) -> None:
        """Snapshot the shop-wide statistics with the offsets they cover (stream/snapshots.py)."""
        if self.applying.is_set():  # before, the statistics hold nothing this worker would not rebuild
            await snapshots.save(self.settings, self.recommender, self.feed_contexts, self.recovery.counted,
                                 self.apply_lock)

    async def _log_stats(self) -> None:
        self.stats.counts["states_oversized"] = self.store.oversized
        log.info("stats %s", {**self.stats.snapshot(), **self.recovery.snapshot(), **self.stats_feed.snapshot()})

    async def _on_shutdown(self, sender: Any, **_: Any) -> None:
        if self.settings.stats_snapshot_interval_s > 0:
            try:
                await self.save_snapshot()
            except Exception:  # a failed snapshot costs a longer next start, never the shutdown
                log.exception("statistics snapshot at shutdown failed")
        await self.log_ends.close()

    async def _on_partitions_revoked(self, sender: Any, revoked: Any, **_: Any) -> None:
        self.recovery.revoked({tp.partition for tp in revoked if tp.topic == self.settings.events_topic})

    async def _on_partitions_assigned(self, sender: Any, assigned: Any, **_: Any) -> None:
        """Remember and log which events partitions this worker owns now (local login joins; operators)."""
        mine = sorted(tp.partition for tp in assigned if tp.topic == self.settings.events_topic)
        self.active_partitions.clear()  # in place: the parts hold this set
        self.active_partitions.update(mine)
        self.recovery.assigned(set(mine))
        self.assigned_once.set()
        # lists published before this worker took these partitions are their visitors' current ones too
        if self._learning is not None:
            self._learning.cancel()
        self._learning = asyncio.ensure_future(self._learn_pushed())
        log.info("%s %s", ASSIGNED_LINE, mine)
