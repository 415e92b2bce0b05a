"""End-to-end measurements through the real broker: a `stream-reco worker` child process against a raw
aiokafka consume -> produce pass-through, on the same messages, in the same run.

Why it is built this way:

* **The worker is the real one** (`stream-reco worker`, configured only through STREAM_RECO_* variables,
  like a deployment), so every cost is in: decode, validate, state read/write + changelog, candidates,
  rules, ranking, publication, faust's batching, acks and commits.
* **Throughput is a backlog drain.** The worker is frozen with SIGSTOP, a burst of events is produced, the
  worker is resumed with SIGCONT and the burst's last list is awaited: events / (last list - resume) is
  what one worker sustains when it is never idle. The pass-through gets the same treatment (its consumer
  is paused, the same bytes are produced, it is resumed), so the ratio compares like with like. Bursts of
  the two alternate, so slow drifts of a shared machine hit both.
* **Freshness is open loop.** Events are sent at a fixed rate (a fraction of the measured maximum) whether
  or not the worker keeps up, with the wall-clock send time recorded per event. The list that reflects an
  event is the first list of that visitor whose trigger is this event or a later one (a coalesced batch
  reflects all of them), and its latency is the time a plain consumer receives it minus the send time.
  The worker's own `generated_at` stamp gives the split between the worker and delivery.
* **Fresh names per run** (topics, consumer groups, app id, data dir), so runs never read each other's
  messages and a stale worker's state is never recovered. Topics are deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from stream_reco.settings import Settings
from stream_reco.shop.client import EventProducer, Prepared
from stream_reco.stream import process
from stream_reco.stream.app import VISITORS_TABLE
from stream_reco.stream.topics import COMPACTED, ensure_topics_async

#: longest wait for a worker to load its catalog and print its ready line
READY_TIMEOUT_S = 300.0
#: longest wait for the lists of one burst or paced phase after its last event was sent
DRAIN_TIMEOUT_S = 120.0
#: longest wait for the pass-through consumer's group join
GROUP_JOIN_TIMEOUT_S = 60.0
#: the measuring consumer's broker-side wait: short, so the meter adds no wait of its own to a latency
METER_FETCH_MAX_WAIT_MS = 20
#: getmany timeout of the pass-through and meter loops (they only wait here when nothing arrived)
POLL_TIMEOUT_MS = 50
#: a worker's SIGTERM shutdown is given this long before SIGKILL
STOP_TIMEOUT_S = 30.0
#: percentiles reported for every latency distribution
PERCENTILES = (50, 95, 99)
#: a paced phase's send loop sleeps only when the next send is at least this far away (s)
PACE_MIN_SLEEP_S = 0.0005
#: seeded changelog states are produced in batches of this many messages per partition
SEED_BATCH_BYTES = 1_048_576


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (nearest rank on the sorted values), mean and max; NaN for an empty sample."""
    if not values:
        return {**{f"p{p}": math.nan for p in PERCENTILES}, "mean": math.nan, "max": math.nan, "n": 0}
    ordered = sorted(values)
    n = len(ordered)
    out: dict[str, float] = {f"p{p}": ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))] for p in PERCENTILES}
    out["mean"] = statistics.fmean(ordered)
    out["max"] = ordered[-1]
    out["n"] = n
    return out


def event_key(doc: dict[str, Any]) -> str:
    """The contract's key of an event: user_id, else session_id."""
    return str(doc.get("user_id") or doc["session_id"])


@dataclass(frozen=True)
class RunNames:
    """Topic names and ids unique to one measured configuration (one worker or one pass-through)."""

    prefix: str

    def settings(self, base: Settings, data_dir: Path, **changes: Any) -> Settings:
        """`base` with this run's topics, app id and data dir; the worker waits for the whole catalog."""
        return base.replace(
            events_topic=f"{self.prefix}.events",
            catalog_topic=f"{self.prefix}.catalog",
            recommendations_topic=f"{self.prefix}.recommendations",
            dead_letter_topic=f"{self.prefix}.dead-letter",
            app_id=self.prefix,
            data_dir=str(data_dir),
            web_port=0,
            **changes,
        )

    @property
    def passthrough_in(self) -> str:
        return f"{self.prefix}.pt-in"

    @property
    def passthrough_out(self) -> str:
        return f"{self.prefix}.pt-out"


def changelog_topic(settings: Settings) -> str:
    """faust's name of the visitor table's changelog (`<app id>-<table>-changelog`)."""
    return f"{settings.app_id}-{VISITORS_TABLE}-changelog"


async def create_topics(settings: Settings, names: RunNames) -> None:
    """The contract topics, the visitor changelog (so it can be seeded) and the pass-through topics."""
    p, r = settings.partitions, settings.replication_factor
    extra = [
        NewTopic(changelog_topic(settings), p, r, topic_configs=dict(COMPACTED)),
        NewTopic(names.passthrough_in, p, r),
        NewTopic(names.passthrough_out, p, r),
    ]
    await ensure_topics_async(settings, extra)


async def delete_run_topics(settings: Settings, prefix: str) -> list[str]:
    """Delete every topic whose name starts with `prefix` (ours, faust's changelog and assignor topics)."""
    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
        return mine
    finally:
        await admin.close()


async def produce_prepared(settings: Settings, messages: Iterable[Prepared]) -> int:
    """Bulk-send already encoded messages (whole batches per partition) and wait for every ack."""
    n = 0
    async with EventProducer(settings) as producer:
        for message in messages:
            await producer.send_batched(message)
            n += 1
    return n


async def seed_changelog(settings: Settings, states: Iterable[tuple[bytes, bytes]]) -> int:
    """Write visitor states to the table's changelog before the worker starts: faust recovers them at
    start-up exactly as after a restart, so the worker holds them without replaying their events.
    Each key goes to the partition the worker's own writes would use (Kafka's default partitioner)."""
    topic = changelog_topic(settings)
    partitions = list(range(settings.partitions))
    partitioner = DefaultPartitioner()
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), linger_ms=5, max_batch_size=SEED_BATCH_BYTES,
                                max_request_size=SEED_BATCH_BYTES * 2)
    await producer.start()
    n = 0
    try:
        for key, value in states:
            await producer.send(topic, value, key=key, partition=partitioner(key, partitions, partitions))
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


PRESSURE_FILE = Path("/proc/pressure/cpu")
PROBE = Path(__file__).with_name("latency_probe.py")


def cpu_stall_us() -> float:
    """Cumulative microseconds during which some runnable task waited for a CPU (Linux PSI), NaN if absent.

    On a shared machine this says how much of a phase's wall time was spent queueing for a core, which
    wall-clock throughput and latency cannot tell apart from our own cost.
    """
    try:
        first = PRESSURE_FILE.read_text().splitlines()[0]
    except (OSError, IndexError):
        return math.nan
    fields = dict(part.split("=", 1) for part in first.split()[1:])
    return float(fields.get("total", "nan"))


class Clock:
    """Wall time, this process's CPU time and the machine's CPU stall time over one phase."""

    def __init__(self) -> None:
        self.wall, self.cpu, self.stall = time.time(), time.process_time(), cpu_stall_us()

    def stop(self) -> dict[str, float]:
        wall = time.time() - self.wall
        return {
            "bench_cpu_s": time.process_time() - self.cpu,
            "cpu_stall_share": (cpu_stall_us() - self.stall) / 1e6 / wall if wall > 0 else math.nan,
        }


class WorkerProcess(process.WorkerProcess):
    """The package's worker child process, plus what the benchmark needs: freeze/thaw, RSS, CPU, threads.

    With `trace` set, the same worker runs under `latency_probe.py`, which logs each batch's timing there.
    """

    def __init__(self, settings: Settings, loglevel: str = "warn", drop_env: Iterable[str] = (),
                 trace: Path | None = None) -> None:
        """`drop_env`: variables of this process the worker must not inherit (the bench's own BLAS limit)."""
        self.trace = trace
        argv = [sys.executable, str(PROBE), str(trace)] if trace is not None else None
        super().__init__(settings, loglevel=loglevel, argv=argv, drop_env=drop_env)
        self.ready_s = math.nan

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:  # type: ignore[override]
        """Seconds from start to the ready line (catalog loaded); raises if the worker died or hung."""
        deadline = time.monotonic() + timeout
        while not self._ready.is_set():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {timeout:.0f} s:\n{self.output()}")
            await asyncio.sleep(0.1)
        self.ready_s = time.monotonic() - self.started
        return self.ready_s

    def pause(self) -> None:
        """SIGSTOP: the worker fetches and processes nothing until `resume` (a backlog builds up)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def threads(self) -> int:
        """OS threads of the worker (OpenBLAS adds one per extra BLAS thread)."""
        return int(psutil.Process(self.proc.pid).num_threads())

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self) -> int | None:  # type: ignore[override]
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT_S)
        self._reader.join(5)
        return self.proc.returncode


@dataclass(slots=True)
class ListRecord:
    """One published list as the meter saw it."""

    key: str
    trigger: str
    generated_at: float  # worker wall clock at publication, ms
    received: float  # meter wall clock at receipt, s


class ListMeter:
    """Reads the recommendations topic from the beginning (no group: every partition) and timestamps
    each list on receipt. Runs as a background task for the life of one worker.

    Pointed at the pass-through's output instead (`topic`, `trigger_field="event_id"`), each forwarded
    event counts as the "list" that reflects itself, which gives the broker round trip as a baseline.
    """

    def __init__(self, settings: Settings, topic: str | None = None, trigger_field: str = "trigger_event_id") -> None:
        self.settings = settings
        self.topic = topic or settings.recommendations_topic
        self.trigger_field = trigger_field
        self.records: list[ListRecord] = []
        self.by_trigger: dict[str, ListRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            **self.settings.kafka_client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=METER_FETCH_MAX_WAIT_MS,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        loads = orjson.loads
        field_name = self.trigger_field
        while True:
            batch = await self._consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
            now = time.time()
            for messages in batch.values():
                for m in messages:
                    doc = loads(m.value)
                    rec = ListRecord(m.key.decode() if m.key else "", str(doc.get(field_name) or ""),
                                     float(doc.get("generated_at") or 0.0), now)
                    self.records.append(rec)
                    self.by_trigger[rec.trigger] = rec
            if batch:
                self._arrived.set()

    async def wait_for(self, triggers: Iterable[str], timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until a list triggered by each of `triggers` arrived; False on timeout."""
        pending = set(triggers)
        deadline = time.monotonic() + timeout
        while True:
            pending = {t for t in pending if t not in self.by_trigger}
            if not pending:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=min(left, 1.0))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


class PassThrough:
    """The baseline: a plain aiokafka consumer (in a group, like the worker) that produces every message
    unchanged to another topic, with the worker's producer settings (linger, acks=all) and commits."""

    def __init__(self, settings: Settings, names: RunNames) -> None:
        self.settings = settings
        self.names = names
        self.forwarded = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._target = 0
        self._done = asyncio.Event()
        self.done_at = math.nan

    async def start(self) -> None:
        s = self.settings
        self._consumer = AIOKafkaConsumer(
            self.names.passthrough_in,
            **s.kafka_client_kwargs(),
            group_id=f"{self.names.prefix}-passthrough",
            auto_offset_reset="earliest",
            enable_auto_commit=True,
            auto_commit_interval_ms=int(s.commit_interval_s * 1000),
            session_timeout_ms=int(s.broker_session_timeout_s * 1000),
            heartbeat_interval_ms=int(max(s.broker_session_timeout_s / 10.0, 0.5) * 1000),
            max_poll_records=s.batch_size,
        )
        self._producer = AIOKafkaProducer(**s.kafka_client_kwargs(), linger_ms=s.producer_linger_ms, acks="all")
        await self._producer.start()
        await self._consumer.start()
        deadline = time.monotonic() + GROUP_JOIN_TIMEOUT_S
        while not self._consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError("pass-through consumer got no partitions")
            await self._consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
        self.pause()
        self._task = asyncio.create_task(self._run())

    def pause(self) -> None:
        assert self._consumer is not None
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        assert self._consumer is not None
        self._consumer.resume(*self._consumer.assignment())

    async def _run(self) -> None:
        assert self._consumer is not None and self._producer is not None
        out = self.names.passthrough_out
        send = self._producer.send
        while True:
            batch = await self._consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=self.settings.batch_size)
            for messages in batch.values():
                for m in messages:
                    await send(out, m.value, key=m.key)
                    self.forwarded += 1
            if self._target and self.forwarded >= self._target and not self._done.is_set():
                await self._producer.flush()
                self.done_at = time.time()
                self._done.set()

    async def drain(self, messages: Sequence[Prepared]) -> dict[str, float]:
        """Produce `messages` while paused, resume, and time until all were forwarded and acknowledged."""
        self._target = 0  # first: the loop must not take the previous drain's target as reached
        self._done.clear()
        self.pause()
        await produce_prepared(self.settings, (Prepared(self.names.passthrough_in, m.key, m.value) for m in messages))
        self._target = self.forwarded + len(messages)
        clock = Clock()
        self.resume()
        await asyncio.wait_for(self._done.wait(), timeout=DRAIN_TIMEOUT_S)
        seconds = self.done_at - clock.wall
        used = clock.stop()
        return {
            "events": len(messages),
            "seconds": seconds,
            "events_per_s": len(messages) / seconds,
            # the meter shares this process but is idle during a pass-through drain
            "cpu_ms_per_event": used["bench_cpu_s"] / len(messages) * 1000,
            "cpu_stall_share": used["cpu_stall_share"],
        }

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()


@dataclass
class EventSupply:
    """Consecutive events of the simulated log, re-timed as they are sent.

    Each slice continues the log, so event ids never repeat (the worker drops duplicates) and visitors
    carry on where they left off. An event's `timestamp` becomes the log's time at the start of the
    phase plus the wall time elapsed since: events stay in order per visitor and the state seeded from
    the log's earlier part (in log time) stays consistent, while the bench keeps its own wall-clock send
    time per event for the latency.
    """

    events: Iterator[dict[str, Any]]
    log_clock_ms: int
    taken: int = 0
    _anchor_wall: float = field(default_factory=time.time)

    def take(self, n: int) -> list[dict[str, Any]]:
        out = []
        for doc in self.events:
            out.append(doc)
            if len(out) >= n:
                break
        if len(out) < n:
            raise RuntimeError(f"the simulated log ran out of events ({self.taken + len(out)} used)")
        self.taken += n
        return out

    def restart_clock(self) -> None:
        """Log time runs on from where it is, at wall speed, from now."""
        self.log_clock_ms = self.now_ms()
        self._anchor_wall = time.time()

    def now_ms(self) -> int:
        return self.log_clock_ms + int((time.time() - self._anchor_wall) * 1000.0)

    def encode(self, doc: dict[str, Any], topic: str) -> Prepared:
        """The event as sent now: timestamp on the log clock, contract key, compact JSON."""
        doc = {**doc, "timestamp": self.now_ms()}
        return Prepared(topic, event_key(doc).encode(), orjson.dumps(doc))


def final_triggers(docs: Sequence[dict[str, Any]]) -> list[str]:
    """The last event of each visitor: once a list triggered by it arrived, every event was applied."""
    last: dict[str, str] = {}
    for doc in docs:
        last[event_key(doc)] = doc["event_id"]
    return list(last.values())


async def worker_drain(worker: WorkerProcess, meter: ListMeter, settings: Settings,
                       messages: Sequence[Prepared], triggers: Sequence[str]) -> dict[str, float]:
    """One backlog drain: freeze the worker, produce, thaw, wait for the lists of every visitor."""
    worker.pause()
    try:
        await produce_prepared(settings, messages)
    finally:
        cpu0 = worker.cpu_seconds()
        clock = Clock()
        worker.resume()
    if not await meter.wait_for(triggers):
        missing = sum(t not in meter.by_trigger for t in triggers)
        raise TimeoutError(f"worker did not publish {missing} of {len(triggers)} lists of a burst of {len(messages)} "
                           f"events in {DRAIN_TIMEOUT_S:.0f} s; its output:\n{worker.output()}")
    end = max(meter.by_trigger[t].received for t in triggers)
    seconds = end - clock.wall
    cpu = worker.cpu_seconds() - cpu0
    return {
        "events": len(messages),
        "lists": len(triggers),
        "seconds": seconds,
        "events_per_s": len(messages) / seconds,
        "cpu_ms_per_event": cpu / len(messages) * 1000,
        "cpu_stall_share": clock.stop()["cpu_stall_share"],
    }


async def paced_phase(settings: Settings, meter: ListMeter, supply: EventSupply, rate: float,
                      seconds: float) -> dict[str, Any]:
    """Send events at `rate`/s for `seconds` (open loop) and measure each event's freshness.

    Freshness of an event = receipt of the first list of its visitor whose trigger is this event or a
    later one of the same visitor, minus the event's send time; `worker_ms` uses the worker's own
    publication stamp instead of the receipt (the rest is delivery to a consumer).
    """
    n = max(1, int(rate * seconds))
    docs = supply.take(n)
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), linger_ms=0, acks="all")
    await producer.start()
    sent_at: dict[str, float] = {}
    order: dict[str, list[str]] = {}
    clock = Clock()
    try:
        supply.restart_clock()
        t0 = time.time()
        for i, doc in enumerate(docs):
            delay = t0 + i / rate - time.time()
            if delay > PACE_MIN_SLEEP_S:
                await asyncio.sleep(delay)
            msg = supply.encode(doc, settings.events_topic)
            sent_at[doc["event_id"]] = time.time()
            await producer.send(msg.topic, msg.value, key=msg.key)
            order.setdefault(event_key(doc), []).append(doc["event_id"])
        send_seconds = time.time() - t0
        await producer.flush()
    finally:
        await producer.stop()
    complete = await meter.wait_for(final_triggers(docs))
    e2e, worker_side = reflect_latencies(meter, order, sent_at)
    split = {"worker_ms": percentiles(worker_side)} if worker_side else {}
    return {
        "window_ms": [t0 * 1000.0, time.time() * 1000.0],
        "cpu_stall_share": clock.stop()["cpu_stall_share"],
        "target_rate": rate,
        "achieved_send_rate": n / send_seconds if send_seconds > 0 else math.nan,
        "events": n,
        "reflected": len(e2e),
        "complete": complete,
        "latency_ms": percentiles(e2e),
        **split,
    }


def reflect_latencies(meter: ListMeter, order: dict[str, list[str]],
                      sent_at: dict[str, float]) -> tuple[list[float], list[float]]:
    """Per event: (receipt - send) and (worker publication - send) of the first list reflecting it, ms."""
    position = {eid: i for ids in order.values() for i, eid in enumerate(ids)}
    lists_by_key: dict[str, list[ListRecord]] = {}
    for rec in meter.records:
        if rec.trigger in position:
            lists_by_key.setdefault(rec.key, []).append(rec)
    e2e: list[float] = []
    worker_side: list[float] = []
    for key, ids in order.items():
        covered = 0
        for rec in lists_by_key.get(key, ()):  # in publication order (one partition per key)
            upto = position[rec.trigger] + 1
            for eid in ids[covered:upto]:
                e2e.append((rec.received - sent_at[eid]) * 1000.0)
                if rec.generated_at > 0:  # forwarded events (pass-through) carry no publication stamp
                    worker_side.append(rec.generated_at - sent_at[eid] * 1000.0)
            covered = max(covered, upto)
    return e2e, worker_side
