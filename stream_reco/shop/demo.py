"""`stream-reco demo`: the whole system end to end on a simulated shop, watched live.

Steps: start the local broker if needed → simulate a shop → train a model on the first part of its log →
start a worker → replay the rest of the log at a steady rate (timestamps moved to now, so latency is real)
→ print lists as they arrive with their reasons and a live line of events/s, consumer lag and latency →
stop the worker (and the broker, if the demo started it) at the end or on Ctrl-C.

Each run uses its own topics and app id (`demo-<run>.*`), so runs never read each other's state, and
prints the variables that point `stream-reco tail` at them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson

from stream_reco.settings import Settings

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0
DRAIN_TIMEOUT_S = 60.0


@dataclass
class DemoStats:
    lists: int = 0
    shown: int = 0
    latencies: list[float] = field(default_factory=list)
    visitors: set[str] = field(default_factory=set)
    last_shown: float = 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


def demo_settings(base: Settings, run: str, model_path: Path | None) -> Settings:
    """Per-run topic names and app id, so a demo never reuses another run's offsets or state."""
    prefix = f"demo-{run}"
    return base.replace(
        events_topic=f"{prefix}.shop.events",
        catalog_topic=f"{prefix}.shop.catalog",
        recommendations_topic=f"{prefix}.reco.recommendations",
        dead_letter_topic=f"{prefix}.reco.dead-letter",
        app_id=prefix,
        model=str(model_path) if model_path else "latest",
    )


async def _consumer_lag(settings: Settings, admin: Any) -> int | None:
    """Messages of the events topic the worker's consumer group has not committed yet."""
    from aiokafka import AIOKafkaConsumer

    try:
        committed = await admin.list_consumer_group_offsets(settings.app_id)
    except Exception:  # the group may not exist yet during start-up
        return None
    tps = [tp for tp in committed if tp.topic == settings.events_topic]
    if not tps:
        return None
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=None)
    await consumer.start()
    try:
        end = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return sum(max(end[tp] - committed[tp].offset, 0) for tp in tps)


async def _watch_lists(settings: Settings, stats: DemoStats, show_every_s: float, ready: asyncio.Event) -> None:
    from stream_reco.shop.tail import format_list, iter_recommendations

    async for published in iter_recommendations(settings, on_ready=ready.set):
        stats.lists += 1
        doc = published.doc or {}
        if isinstance(doc.get("latency_ms"), int | float):
            stats.latencies.append(float(doc["latency_ms"]))
        stats.visitors.add(published.visitor)
        now = time.monotonic()
        if now - stats.last_shown >= show_every_s and published.items:
            stats.last_shown = now
            stats.shown += 1
            click.echo("\r\033[K" + format_list(published))


async def _status_line(settings: Settings, stats: DemoStats, replay_state: dict[str, Any]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        prev_lists, prev_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            now = time.monotonic()
            lag = await _consumer_lag(settings, admin)
            replay_state["lag"] = lag
            rate = (stats.lists - prev_lists) / (now - prev_t)
            prev_lists, prev_t = stats.lists, now
            line = (
                f"events sent {replay_state.get('sent', 0):>6} | lists {stats.lists:>6} ({rate:5.0f}/s) | "
                f"lag {lag if lag is not None else '-':>5} | latency p50 {stats.percentile(50):6.1f} ms "
                f"p95 {stats.percentile(95):6.1f} ms"
            )
            if sys.stdout.isatty():
                click.echo("\r\033[K" + line, nl=False)
            else:
                click.echo(line)
    finally:
        await admin.close()


async def _run_replay(settings: Settings, shop: Path, rate: float, replay_state: dict[str, Any]) -> Any:
    from stream_reco.shop.replay import replay_log_async

    summary = await replay_log_async(
        settings, shop / "replay.jsonl", catalog_path=shop / "catalog.jsonl", rate=rate, progress=False,
        retime=True,
    )
    replay_state["sent"] = summary.events
    return summary


async def _live(settings: Settings, shop: Path, rate: float, show_every_s: float) -> tuple[DemoStats, Any]:
    stats = DemoStats()
    replay_state: dict[str, Any] = {}
    ready = asyncio.Event()
    watcher = asyncio.create_task(_watch_lists(settings, stats, show_every_s, ready))
    await asyncio.wait_for(ready.wait(), timeout=60)
    status = asyncio.create_task(_status_line(settings, stats, replay_state))
    try:
        summary = await _run_replay(settings, shop, rate, replay_state)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and replay_state.get("lag") != 0:
            await asyncio.sleep(STATUS_INTERVAL_S)
        await asyncio.sleep(STATUS_INTERVAL_S)
    finally:
        for task in (status, watcher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return stats, summary


def _split_log(shop: Path, train_fraction: float) -> tuple[Path, Path]:
    """Training part (older events) and replay part (newer events) of the simulated log, by time order."""
    lines = (shop / "events.jsonl").read_bytes().splitlines()
    cut = int(len(lines) * train_fraction)
    train, replay = shop / "train.jsonl", shop / "replay.jsonl"
    train.write_bytes(b"\n".join(lines[:cut]) + b"\n")
    replay.write_bytes(b"\n".join(lines[cut:]) + b"\n")
    return train, replay


def run_demo(base: Settings, size: str, seed: int, rate: float, max_events: int | None,
             show_every_s: float, train_fraction: float) -> int:
    from stream_reco import broker
    from stream_reco.evaluate.loaders import load_log
    from stream_reco.model.train import train_and_save
    from stream_reco.shop.simulate import write_shop
    from stream_reco.stream.process import WorkerProcess
    from stream_reco.stream.topics import ensure_topics

    run = time.strftime("%Y%m%d-%H%M%S")
    work = base.data_path / "demo" / run
    started_broker = False
    worker = None
    try:
        click.secho("1/5 local Kafka broker", bold=True)
        if not broker.is_ready(base):
            broker.ensure_running(base)
            started_broker = True
        click.echo(f"    ready on {base.bootstrap}" + (" (started by the demo)" if started_broker else ""))

        click.secho(f"2/5 simulating a {size} shop (seed {seed}) into {work}", bold=True)
        write_shop(work, size=size, seed=seed)
        if max_events:
            lines = (work / "events.jsonl").read_bytes().splitlines()[: int(max_events / (1 - train_fraction))]
            (work / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        train_log, replay_log = _split_log(work, train_fraction)

        click.secho(f"3/5 training item embeddings on the first {train_fraction:.0%} of the log", bold=True)
        loaded = load_log(train_log, work / "catalog.jsonl")
        artifact, model_path = train_and_save(loaded.records, loaded.catalog, base.replace(data_dir=str(work)))
        click.echo(f"    model {artifact.version}: {len(artifact.item_ids)} item vectors -> {model_path}")

        settings = demo_settings(base.replace(data_dir=str(work)), run, model_path)
        click.secho("4/5 starting a worker", bold=True)
        ensure_topics(settings)
        worker = WorkerProcess(settings, name="demo worker", loglevel="warn")
        worker.wait_ready()
        click.echo("    follow the lists elsewhere with:")
        click.echo(f"    STREAM_RECO_RECOMMENDATIONS_TOPIC={settings.recommendations_topic} stream-reco tail")

        n_replay = replay_log.read_bytes().count(b"\n")
        click.secho(f"5/5 replaying {n_replay} events at {rate:.0f} events/s; lists as they arrive:", bold=True)
        stats, summary = asyncio.run(_live(settings, work, rate, show_every_s))
        click.echo("")
        click.secho("summary", bold=True)
        click.echo(summary.format())
        click.echo(
            f"lists published: {stats.lists} for {len(stats.visitors)} visitors; latency p50 "
            f"{stats.percentile(50):.1f} ms, p95 {stats.percentile(95):.1f} ms, p99 {stats.percentile(99):.1f} ms"
        )
        (work / "demo-summary.json").write_bytes(orjson.dumps({
            "events_sent": summary.events, "rejected": summary.rejected, "lists": stats.lists,
            "visitors": len(stats.visitors), "latency_ms": {
                "p50": stats.percentile(50), "p95": stats.percentile(95), "p99": stats.percentile(99)},
        }, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        return 0 if summary.ok and stats.lists > 0 else 1
    except KeyboardInterrupt:
        click.echo("\ninterrupted; stopping")
        return 130
    finally:
        if worker is not None:
            worker.stop()
            if worker.crashed():
                click.echo("worker output:\n" + worker.output(), err=True)
        if started_broker:
            broker.stop(base)
            click.echo("broker stopped")


@click.command("demo")
@click.option("--size", type=click.Choice(["tiny", "small", "medium"]), default="small", show_default=True,
              help="Size of the simulated shop.")
@click.option("--seed", type=int, default=None, help="Simulation seed (default: the `seed` setting).")
@click.option("--rate", type=float, default=300.0, show_default=True, help="Replay rate, events/s.")
@click.option("--max-events", type=int, default=6000, show_default=True,
              help="Cap on the replayed events (0: the whole log).")
@click.option("--show-every", type=float, default=0.5, show_default=True,
              help="Seconds between lists printed in full (all are counted).")
@click.option("--train-fraction", type=float, default=0.5, show_default=True,
              help="Older part of the simulated log used for training; the rest is replayed.")
@click.pass_obj
def demo_cmd(state: Any, size: str, seed: int | None, rate: float, max_events: int, show_every: float,
             train_fraction: float) -> None:
    """Run the whole system end to end on a simulated shop and watch the lists arrive."""
    from stream_reco import broker  # lazy, as in run_demo: `--help` stays quick

    settings: Settings = state.settings
    try:
        code = run_demo(settings, size, settings.seed if seed is None else seed, rate, max_events or None,
                        show_every, train_fraction)
    except broker.BrokerError as exc:  # a missing tool, a busy port, another broker in the data dir: say so
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)
