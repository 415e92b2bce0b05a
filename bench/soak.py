"""Soak: one worker for N minutes at half its maximum rate; sample lag, memory and latency; say whether any grows.

Why: a benchmark of a few seconds cannot see what only shows over time: a visitor table or a statistics map that
never stops growing, lag that creeps up because the worker is slightly slower than the traffic, latency that
drifts as state grows, or a leak. So this runs a real `stream-reco worker` (a child process configured through
STREAM_RECO_* variables, as deployed) against the broker of the settings, with fresh topic names and app id:

1. **Maximum rate** (unless `--rate` is given): a burst of `--calibrate-events` events is produced at once and
   the time until every visitor's last event triggered a list gives the events per second one worker sustains.
2. **Soak**: events from a simulated shop (`stream-reco simulate`, cycled; fresh ids, timestamps = send time)
   are sent at half that rate, open loop, for `--minutes`. Every `--sample-s` seconds a sample records the
   consumer group's lag (end offsets minus committed offsets of the events topic), the worker's resident
   memory, and the latency of the lists published in that window (the worker's `latency_ms`: trigger event's
   timestamp, i.e. its send time, to publication).
3. **Verdict**: the first `WARMUP_FRACTION` of samples is dropped (JIT-less Python still warms caches, the table
   fills with the shop's visitors); of the rest, the median of the last third is compared with the median of
   the first third, and a least-squares slope per minute is reported. A metric *grows* when the last third
   exceeds the first by more than both a relative and an absolute margin (below) and the slope is positive:
   noise on a shared 2-core machine moves single samples a lot, thirds and both margins keep it from
   crying wolf, while a real leak or creeping lag passes them within minutes.

Usage: `.venv/bin/python bench/soak.py --minutes 10 --output FILE.json` (`--rate N` skips the calibration).
The JSON holds the settings used, the rates, every sample, and per metric the thirds, the slope and `grows`;
`complete` is true when the run reached its end and drained.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream_reco.settings import Settings
from stream_reco.shop.simulate import simulate
from stream_reco.stream.process import WorkerProcess
from stream_reco.stream.topics import ensure_topics_async

#: share of the measured maximum rate the soak sends at
RATE_SHARE = 0.5
#: samples at the start that do not count for the verdict (table filling, caches warming)
WARMUP_FRACTION = 0.2
#: a metric grows if its last third's median exceeds the first third's by more than BOTH margins
MARGINS: dict[str, tuple[float, float]] = {
    # (relative, absolute): memory: 10 % and 20 MB (allocator noise is a few MB); lag: doubling and one
    # second's worth of events at the soak rate (filled in at run time); latency p99: +50 % and +50 ms
    "rss_mb": (0.10, 20.0),
    "lag": (1.0, 0.0),
    "latency_p99_ms": (0.5, 50.0),
}
LAG_ABSOLUTE_S = 1.0
#: events sent per pacing step: the sender sleeps until the next step is due (open loop)
PACE_STEP_S = 0.05
#: how long the calibration burst and the final drain may take
DRAIN_TIMEOUT_S = 300.0
METER_POLL_MS = 100
SHOP_SIZE = "small"
SHOP_SEED = 11
SECONDS_PER_MINUTE = 60.0
MIB = 1024 * 1024


@dataclass
class Sample:
    t_s: float
    sent: int
    lists: int
    lag: int
    rss_mb: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None


@dataclass
class Meter:
    """Reads the recommendations topic: which triggers were published, and the latencies of each window."""

    triggers: set[str] = field(default_factory=set)
    window: list[float] = field(default_factory=list)
    lists: int = 0

    def take_window(self) -> list[float]:
        out, self.window = self.window, []
        return out


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def run_names(base: Settings, partitions: int, data_dir: str) -> Settings:
    tag = f"soak-{uuid.uuid4().hex[:8]}"
    return base.replace(events_topic=f"{tag}.events", catalog_topic=f"{tag}.catalog",
                        recommendations_topic=f"{tag}.recommendations", dead_letter_topic=f"{tag}.dead-letter",
                        app_id=tag, partitions=partitions, data_dir=data_dir, web_port=0)


class Supply:
    """Simulated shop events, cycled forever, with fresh ids and send-time timestamps."""

    def __init__(self, size: str, seed: int) -> None:
        self.catalog, events = simulate(size, seed=seed)
        self.events = list(events)
        self._cycle: Iterator[dict[str, Any]] = itertools.cycle(self.events)
        self._ids = itertools.count()

    def next(self) -> tuple[bytes, bytes, str, str]:
        """(key, value, visitor, event_id) of the next event, stamped now."""
        doc = dict(next(self._cycle))
        doc["event_id"] = f"soak-{next(self._ids)}"
        doc["timestamp"] = int(time.time() * 1000)
        visitor = doc.get("user_id") or doc["session_id"]
        return visitor.encode(), orjson.dumps(doc), visitor, doc["event_id"]


async def meter_loop(settings: Settings, meter: Meter, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(settings.recommendations_topic, **settings.kafka_client_kwargs(), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=METER_POLL_MS)
            for records in batch.values():
                for record in records:
                    doc = orjson.loads(record.value)
                    meter.lists += 1
                    meter.triggers.add(doc.get("trigger_event_id") or "")
                    if doc.get("latency_ms") is not None:
                        meter.window.append(float(doc["latency_ms"]))
    finally:
        await consumer.stop()


class Lag:
    """Consumer-group lag of the worker on the events topic: end offsets minus committed offsets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
        self.consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False)
        self.partitions = [TopicPartition(settings.events_topic, p) for p in range(settings.partitions)]

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def measure(self) -> int:
        end = await self.consumer.end_offsets(self.partitions)
        committed = await self.admin.list_consumer_group_offsets(self.settings.app_id)
        return int(sum(max(end[tp] - (committed[tp].offset if tp in committed else 0), 0) for tp in end))


async def send_burst(producer: AIOKafkaProducer, settings: Settings, supply: Supply, n: int) -> dict[str, str]:
    last: dict[str, str] = {}
    for _ in range(n):
        key, value, visitor, event_id = supply.next()
        await producer.send(settings.events_topic, value=value, key=key)
        last[visitor] = event_id
    await producer.flush()
    return last


async def wait_published(meter: Meter, wanted: dict[str, str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(e in meter.triggers for e in wanted.values()):
            return True
        await asyncio.sleep(METER_POLL_MS / 1000)
    return False


async def soak(settings: Settings, worker: WorkerProcess, args: argparse.Namespace, supply: Supply
               ) -> dict[str, Any]:
    meter, stop = Meter(), asyncio.Event()
    meter_task = asyncio.create_task(meter_loop(settings, meter, stop))
    lag = Lag(settings)
    await lag.start()
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), linger_ms=5)
    await producer.start()
    result: dict[str, Any] = {"complete": False}
    try:
        if args.rate:
            max_rate = None
            rate = float(args.rate)
        else:
            began = time.monotonic()
            wanted = await send_burst(producer, settings, supply, args.calibrate_events)
            if not await wait_published(meter, wanted, DRAIN_TIMEOUT_S):
                raise RuntimeError(f"calibration burst not processed within {DRAIN_TIMEOUT_S} s")
            max_rate = args.calibrate_events / (time.monotonic() - began)
            rate = max_rate * RATE_SHARE
        result.update(max_rate_eps=None if max_rate is None else round(max_rate, 1), rate_eps=round(rate, 1))
        meter.take_window()
        samples: list[Sample] = []
        pid = worker.proc.pid
        duration = args.minutes * SECONDS_PER_MINUTE
        start = time.monotonic()
        next_sample = start + args.sample_s
        sent = 0
        last: dict[str, str] = {}
        while (now := time.monotonic()) - start < duration:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{worker.output()}")
            due = int((now - start) * rate) - sent
            for _ in range(max(due, 0)):
                key, value, visitor, event_id = supply.next()
                await producer.send(settings.events_topic, value=value, key=key)
                last[visitor] = event_id
                sent += 1
            if now >= next_sample:
                window = meter.take_window()
                samples.append(Sample(t_s=round(now - start, 1), sent=sent, lists=meter.lists,
                                      lag=await lag.measure(),
                                      rss_mb=round(psutil.Process(pid).memory_info().rss / MIB, 1),
                                      latency_p50_ms=percentile(window, 0.5),
                                      latency_p99_ms=percentile(window, 0.99)))
                next_sample += args.sample_s
            await asyncio.sleep(PACE_STEP_S)
        await producer.flush()
        drained = await wait_published(meter, last, DRAIN_TIMEOUT_S)
        result.update(
            sent=sent, lists=meter.lists, duration_s=round(time.monotonic() - start, 1), drained=drained,
            samples=[asdict(s) for s in samples], growth=growth(samples, rate),
        )
        result["grows"] = sorted(m for m, g in result["growth"].items() if g["grows"])
        result["complete"] = drained and bool(samples)
    finally:
        stop.set()
        await producer.stop()
        await lag.stop()
        await meter_task
    return result


def slope_per_minute(ts: Sequence[float], ys: Sequence[float]) -> float:
    if len(ts) < 2:
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var * SECONDS_PER_MINUTE


def growth(samples: Sequence[Sample], rate: float) -> dict[str, dict[str, Any]]:
    """Per metric: medians of the first and last third after warm-up, slope per minute, and the verdict."""
    kept = list(samples)[int(len(samples) * WARMUP_FRACTION):]
    out: dict[str, dict[str, Any]] = {}
    for metric, (relative, absolute) in MARGINS.items():
        if metric == "lag":
            absolute = rate * LAG_ABSOLUTE_S
        points = [(s.t_s, float(v)) for s in kept if (v := getattr(s, metric)) is not None]
        third = len(points) // 3
        if third < 1:
            out[metric] = {"grows": False, "samples": len(points), "note": "too few samples for a verdict"}
            continue
        first = statistics.median(y for _, y in points[:third])
        last = statistics.median(y for _, y in points[-third:])
        slope = slope_per_minute([t for t, _ in points], [y for _, y in points])
        grows = last > first * (1 + relative) and last - first > absolute and slope > 0
        out[metric] = {"first_third_median": round(first, 2), "last_third_median": round(last, 2),
                       "slope_per_minute": round(slope, 3), "margin_relative": relative,
                       "margin_absolute": round(absolute, 2), "samples": len(points), "grows": grows}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    p.add_argument("--output", type=Path, required=True, help="JSON result file")
    p.add_argument("--rate", type=float, default=0.0, help="events/s to send (default: half the measured max)")
    p.add_argument("--calibrate-events", type=int, default=5000, help="burst size that measures the max rate")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--partitions", type=int, default=3, help="partitions of the run's topics")
    p.add_argument("--size", default=SHOP_SIZE, help="simulated shop size (tiny, small, medium, large)")
    args = p.parse_args(argv)

    base = Settings.load()
    data_dir = tempfile.mkdtemp(prefix="stream-reco-soak-")
    settings = run_names(base, args.partitions, data_dir)
    supply = Supply(args.size, SHOP_SEED)
    asyncio.run(ensure_topics_async(settings))

    async def load_catalog() -> None:
        producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), linger_ms=5)
        await producer.start()
        try:
            for item in supply.catalog:
                await producer.send(settings.catalog_topic, value=orjson.dumps(item), key=item["item_id"].encode())
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(load_catalog())
    report: dict[str, Any] = {
        "benchmark": "soak", "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "cpus": psutil.cpu_count(), "bootstrap": settings.bootstrap},
        "config": {"minutes": args.minutes, "sample_s": args.sample_s, "partitions": args.partitions,
                   "shop": args.size, "rate_share": RATE_SHARE, "warmup_fraction": WARMUP_FRACTION,
                   "app_id": settings.app_id, "batch_size": settings.batch_size},
    }
    worker = WorkerProcess(settings, name="soak")
    try:
        worker.wait_ready()
        report.update(asyncio.run(soak(settings, worker, args, supply)))
    except Exception as exc:  # the partial result is still written, marked incomplete, with the reason
        report.update(complete=False, error=repr(exc))
    finally:
        worker.stop()
        report["worker_crashed"] = worker.crashed()
        args.output.write_text(json.dumps(report, indent=2))
    verdict = "incomplete" if not report.get("complete") else (
        f"grows: {', '.join(report['grows'])}" if report.get("grows") else "stable")
    print(f"soak {args.minutes:g} min at {report.get('rate_eps')} events/s: {verdict} -> {args.output}")
    return 0 if report.get("complete") else 1


if __name__ == "__main__":
    sys.exit(main())
