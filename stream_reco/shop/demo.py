"""`stream-reco demo`: the whole system end to end on a simulated shop, watched live.

Steps: start the local broker if needed → simulate a shop → train a model on the first part of its log →
start a worker → replay the rest of the log at a steady rate (timestamps moved to now, so latency is real)
→ print lists as they arrive with their reasons and a live line of events/s, consumer lag and latency →
stop the worker (and the broker, if the demo started it) at the end, on Ctrl-C or on SIGTERM.

Each run uses its own topics and app id (`demo-<run>.*`), so runs never read each other's state, and
prints the variables that point `stream-reco tail` at them. Why the clean-up is careful: the worker and the
broker run in their own sessions (a Ctrl-C in the terminal does not reach them), so whatever the demo
started it must stop itself, even when interrupted again while stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click
import orjson

from stream_reco.exit_codes import EXIT_FAILURE, EXIT_OK, signal_status
from stream_reco.settings import Settings

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0
DRAIN_TIMEOUT_S = 60.0
LISTS_READY_TIMEOUT_S = 60.0  # longest wait for the list watcher to be positioned before replaying
KEEP_RUNS = 3  # run folders under <data_dir>/demo kept (the newest); older ones are deleted at the end of a run
RUN_TAG_BYTES = 2  # random hex after the run's timestamp: two demos started in one second get distinct topics
RUN_NAME = re.compile(r"\d{8}-\d{6}(-[0-9a-f]+)?")  # what `_new_run_name` makes (older demos: no tag)
TOPIC_DELETE_TIMEOUT_MS = 30_000
CLEAR_LINE = "\r\033[K"  # on a terminal: overwrite the live status line


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
    prefix = run_prefix(run)
    return base.replace(
        events_topic=f"{prefix}.shop.events",
        catalog_topic=f"{prefix}.shop.catalog",
        recommendations_topic=f"{prefix}.reco.recommendations",
        dead_letter_topic=f"{prefix}.reco.dead-letter",
        app_id=prefix,
        model=str(model_path) if model_path else "latest",
    )


def run_prefix(run: str) -> str:
    """The prefix of every topic of a run: its four contract topics (`<prefix>.`) and the worker's changelog
    and assignor topics (`<app_id>-...`, app_id being the prefix)."""
    return f"demo-{run}"


def _new_run_name() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(RUN_TAG_BYTES)}"


def prune_runs(demo_dir: Path, keep: int = KEEP_RUNS) -> list[Path]:
    """Delete all but the `keep` newest run folders of `demo_dir` (names sort by start time); return them.

    Only folders named like a run are touched, so anything else a user put there stays."""
    if not demo_dir.is_dir():
        return []
    runs = sorted(p for p in demo_dir.iterdir() if p.is_dir() and RUN_NAME.fullmatch(p.name))
    old = runs[:-keep] if keep > 0 else runs
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def _line_start() -> str:
    """What starts a printed line: on a terminal it first erases the live status line; in a pipe or a log
    file escape codes would only be noise."""
    return CLEAR_LINE if sys.stdout.isatty() else ""


async def _topic_partitions(admin: Any, topic: str) -> list[Any]:
    """The partitions of `topic` from a metadata request ([] while it does not exist)."""
    from aiokafka import TopicPartition

    described = await admin.describe_topics([topic])
    return [TopicPartition(topic, p["partition"]) for d in described if d["error_code"] == 0
            for p in sorted(d["partitions"], key=lambda p: p["partition"])]


async def _event_offsets(settings: Settings, admin: Any, consumer: Any,
                         tps: list[Any]) -> tuple[int | None, int | None]:
    """(messages on the events topic so far, how many of them the worker's group has not committed yet).

    One end-offsets request answers both: the first gives the live events/s, the second the lag. Either is
    None while it cannot be known yet (no partitions known, group not formed). The count includes the login
    joins the worker itself writes to the events topic, so it runs a little ahead of the replay's count."""
    if not tps:
        return None, None
    end = await consumer.end_offsets(tps)
    total = sum(end.values())
    try:
        committed = await admin.list_consumer_group_offsets(settings.app_id)
    except Exception:  # the group may not exist yet during start-up
        return total, None
    mine = {tp: meta.offset for tp, meta in committed.items() if tp.topic == settings.events_topic}
    if not mine:
        return total, None
    # a partition the group has not committed on yet lags by all of its messages
    return total, sum(max(end[tp] - max(mine.get(tp, 0), 0), 0) for tp in tps)


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
            click.echo(_line_start() + format_list(published))


async def _status_line(settings: Settings, stats: DemoStats, replay_state: dict[str, Any],
                       ready: asyncio.Event) -> None:
    """Print the live line every STATUS_INTERVAL_S; `ready` is set once the starting offsets are read, so
    the first interval's events/s counts what the replay sends after that."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=None)
    await admin.start()
    await consumer.start()
    try:
        tps = await _topic_partitions(admin, settings.events_topic)
        prev_events, _ = await _event_offsets(settings, admin, consumer, tps)
        prev_lists, prev_t = stats.lists, time.monotonic()
        ready.set()
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            now = time.monotonic()
            tps = tps or await _topic_partitions(admin, settings.events_topic)
            events, lag = await _event_offsets(settings, admin, consumer, tps)
            replay_state["lag"] = lag
            dt = now - prev_t
            list_rate = (stats.lists - prev_lists) / dt
            event_rate = (events - prev_events) / dt if events is not None and prev_events is not None else 0.0
            prev_lists, prev_events, prev_t = stats.lists, events, now
            line = (
                f"events {events if events is not None else '-':>6} ({event_rate:5.0f}/s) | "
                f"lists {stats.lists:>6} ({list_rate:5.0f}/s) | lag {lag if lag is not None else '-':>5} | "
                f"latency p50 {stats.percentile(50):6.1f} ms p95 {stats.percentile(95):6.1f} ms"
            )
            if sys.stdout.isatty():
                click.echo(CLEAR_LINE + line, nl=False)
            else:
                click.echo(line)
    finally:
        await consumer.stop()
        await admin.close()


async def _run_replay(settings: Settings, shop: Path, rate: float) -> Any:
    from stream_reco.shop.replay import replay_log_async

    return await replay_log_async(
        settings, shop / "replay.jsonl", catalog_path=shop / "catalog.jsonl", rate=rate, progress=False,
        retime=True,
    )


async def _live(settings: Settings, shop: Path, rate: float, show_every_s: float) -> tuple[DemoStats, Any]:
    stats = DemoStats()
    replay_state: dict[str, Any] = {}
    watching, counting = asyncio.Event(), asyncio.Event()
    watcher = asyncio.create_task(_watch_lists(settings, stats, show_every_s, watching))
    status: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(watching.wait(), timeout=LISTS_READY_TIMEOUT_S)
        status = asyncio.create_task(_status_line(settings, stats, replay_state, counting))
        await asyncio.wait_for(counting.wait(), timeout=LISTS_READY_TIMEOUT_S)
        summary = await _run_replay(settings, shop, rate)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and replay_state.get("lag") != 0:
            await asyncio.sleep(STATUS_INTERVAL_S)
        await asyncio.sleep(STATUS_INTERVAL_S)
    finally:
        for task in (status, watcher):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return stats, summary


def _split_log(shop: Path, train_fraction: float) -> tuple[Path, Path]:
    """Training part (older events) and replay part (newer events) of the simulated log, by time order."""
    from stream_reco.logs import iter_lines

    lines = [line for _, line in iter_lines(shop / "events.jsonl")]
    cut = int(len(lines) * train_fraction)
    train, replay = shop / "train.jsonl", shop / "replay.jsonl"
    train.write_bytes(b"".join(line + b"\n" for line in lines[:cut]))
    replay.write_bytes(b"".join(line + b"\n" for line in lines[cut:]))
    return train, replay


async def _delete_topics_async(settings: Settings, prefix: str) -> tuple[list[str], list[str]]:
    """Delete every topic of the run; (deleted, failed) names."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith((f"{prefix}.", f"{prefix}-")))
        if not names:
            return [], []
        response = await admin.delete_topics(names, timeout_ms=TOPIC_DELETE_TIMEOUT_MS)
        failed = sorted(topic for topic, code, *_ in response.topic_error_codes if code != 0)
        return [n for n in names if n not in failed], failed
    finally:
        await admin.close()


def delete_run_topics(settings: Settings, run: str) -> tuple[list[str], list[str]]:
    """Delete the topics of a demo run (contract topics and the worker's changelogs); (deleted, failed)."""
    return asyncio.run(_delete_topics_async(settings, run_prefix(run)))


@contextlib.contextmanager
def _sigterm_as_interrupt(received: list[int]) -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while the demo runs, so a `kill` or a supervisor stopping the demo still
    stops the worker it started (which runs in its own session and would be orphaned otherwise).

    SIGTERM re-raises as SIGINT so asyncio's own Ctrl-C handling (cancel the main task, then
    KeyboardInterrupt) applies during the live phase too. `received` collects the signals, for the exit status.
    """
    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        signal.raise_signal(signal.SIGINT)

    installed = True
    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: signals cannot be handled here
        installed = False
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def _run_steps(steps: list[tuple[str, Callable[[], None]]]) -> int:
    """Run every clean-up step in order even if one fails or a further Ctrl-C interrupts it: an interrupted
    `worker.stop()` must not leave the broker running. Returns how many steps were interrupted."""
    interrupted = 0
    for what, step in steps:
        try:
            step()
        except KeyboardInterrupt:
            interrupted += 1
            click.echo(f"\ninterrupted while {what}; going on with the rest of the clean-up", err=True)
        except Exception as exc:
            click.echo(f"{what} failed: {exc}", err=True)
    return interrupted


def run_demo(base: Settings, size: str, seed: int, rate: float, max_events: int | None,
             show_every_s: float, train_fraction: float, keep: bool = False) -> int:
    """Run the demo; the exit status (0 lists arrived, 1 none or records rejected, 128+signal interrupted).

    `keep`: leave the run's topics on the broker (they are deleted at the end otherwise)."""
    from stream_reco import broker
    from stream_reco.evaluate.loaders import load_log
    from stream_reco.model.train import train_and_save
    from stream_reco.shop.simulate import write_shop
    from stream_reco.stream.process import WorkerProcess
    from stream_reco.stream.topics import ensure_topics

    run = _new_run_name()
    demo_dir = base.data_path / "demo"
    work = demo_dir / run
    launched: set[int] = set()  # broker processes this demo started: only those are stopped at the end
    worker: WorkerProcess | None = None
    settings: Settings | None = None
    signals: list[int] = []
    outcome = "error"  # "done" or "interrupted": the topics are deleted then (an error keeps them to look at)

    def start_broker() -> None:
        # comparing the processes launched before and after tells whether the broker is ours, even when a
        # Ctrl-C cuts `ensure_running` short
        before = broker.launched_pids()
        try:
            broker.ensure_running(base)
        finally:
            launched.update(broker.launched_pids() - before)

    def stop_worker() -> None:
        if worker is not None:
            worker.stop()

    def kill_worker() -> None:  # a no-op unless a second Ctrl-C cut `stop_worker` short
        if worker is not None and worker.proc.poll() is None:
            worker.kill()
            click.echo("worker killed")

    def report_worker() -> None:
        if worker is not None and worker.crashed():
            click.echo("worker output:\n" + worker.output(), err=True)

    def delete_topics() -> None:
        if settings is None or keep or outcome == "error":
            if settings is not None:
                click.echo(f"topics kept: {run_prefix(run)}.* and {run_prefix(run)}-*")
            return
        deleted, failed = delete_run_topics(settings, run)
        click.echo(f"deleted the run's {len(deleted)} topics ({run_prefix(run)}.* and {run_prefix(run)}-*)"
                   + (f"; could not delete {', '.join(failed)}" if failed else ""))

    def stop_broker() -> None:
        if launched:
            broker.stop(base)
            click.echo("broker stopped")

    def prune() -> None:
        removed = prune_runs(demo_dir)
        if removed:
            click.echo(f"removed {len(removed)} older demo run folder(s); the newest {KEEP_RUNS} are kept")

    with _sigterm_as_interrupt(signals):
        try:
            click.secho("1/5 local Kafka broker", bold=True)
            start_broker()
            click.echo(f"    ready on {base.bootstrap}" + (" (started by the demo)" if launched else ""))

            click.secho(f"2/5 simulating a {size} shop (seed {seed}) into {work}", bold=True)
            write_shop(work, size=size, seed=seed)
            if max_events:
                lines = (work / "events.jsonl").read_bytes().splitlines()[
                    : int(max_events / (1 - train_fraction))]
                (work / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
            train_log, replay_log = _split_log(work, train_fraction)

            click.secho(f"3/5 training item embeddings on the first {train_fraction:.0%} of the log", bold=True)
            bars = sys.stderr.isatty()  # progress bars help on a terminal, they are noise in a log
            loaded = load_log(train_log, work / "catalog.jsonl", progress=bars)
            artifact, model_path = train_and_save(loaded.records, loaded.catalog,
                                                  base.replace(data_dir=str(work)), progress=bars)
            click.echo(f"    model {artifact.version}: {len(artifact.item_ids)} item vectors -> {model_path}")

            settings = demo_settings(base.replace(data_dir=str(work)), run, model_path)
            click.secho("4/5 starting a worker", bold=True)
            ensure_topics(settings)
            worker = WorkerProcess(settings, name="demo worker", loglevel="warn")
            click.echo(f"    worker pid {worker.proc.pid}, app id {settings.app_id}")
            worker.wait_ready()
            click.echo("    follow the lists elsewhere with:")
            click.echo(f"    STREAM_RECO_RECOMMENDATIONS_TOPIC={settings.recommendations_topic} stream-reco tail")

            n_replay = replay_log.read_bytes().count(b"\n")
            click.secho(f"5/5 replaying {n_replay} events at {rate:g} events/s; lists as they arrive:",
                        bold=True)
            stats, summary = asyncio.run(_live(settings, work, rate, show_every_s))
            outcome = "done"
            click.echo("")
            click.secho("summary", bold=True)
            click.echo(summary.format())
            click.echo(
                f"lists published: {stats.lists} for {len(stats.visitors)} visitors; latency p50 "
                f"{stats.percentile(50):.1f} ms, p95 {stats.percentile(95):.1f} ms, "
                f"p99 {stats.percentile(99):.1f} ms"
            )
            (work / "demo-summary.json").write_bytes(orjson.dumps({
                "run": run, "events_sent": summary.events, "rejected": summary.rejected,
                "lists": stats.lists, "visitors": len(stats.visitors), "latency_ms": {
                    "p50": stats.percentile(50), "p95": stats.percentile(95), "p99": stats.percentile(99)},
            }, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
            click.echo(f"this run's files (simulated shop, model, demo-summary.json): {work}")
            return EXIT_OK if summary.ok and stats.lists > 0 else EXIT_FAILURE
        except KeyboardInterrupt:
            outcome = "interrupted"
            name = "SIGTERM" if signal.SIGTERM in signals else "Ctrl-C"
            click.echo(f"\n{name}: stopping (a second Ctrl-C kills the worker instead of waiting for it)")
            click.echo(f"this run's files so far: {work}")
            return signal_status(signal.SIGTERM if signal.SIGTERM in signals else signal.SIGINT)
        finally:
            # each step runs even when an earlier one fails or is interrupted; a second Ctrl-C hurries the worker
            # (killed instead of waited for) and keeps the topics, but the broker the demo started is still stopped
            interrupted = _run_steps([("stopping the worker", stop_worker), ("killing the worker", kill_worker),
                                      ("reading the worker's output", report_worker)])
            if interrupted:
                outcome = "error"
            _run_steps([("deleting the run's topics", delete_topics), ("stopping the broker", stop_broker),
                        ("removing older demo runs", prune)])


@click.command("demo")
@click.option("--size", type=click.Choice(["tiny", "small", "medium"]), default="small", show_default=True,
              help="Size of the simulated shop.")
@click.option("--seed", type=int, default=None, help="Simulation seed (default: the `seed` setting).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Replay rate, events/s.")
@click.option("--max-events", type=click.IntRange(min=0), default=6000, show_default=True,
              help="Cap on the replayed events (0: the whole log).")
@click.option("--show-every", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Seconds between lists printed in full (all are counted).")
@click.option("--train-fraction", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Older part of the simulated log used for training; the rest is replayed.")
@click.option("--keep", is_flag=True, help="Keep the run's topics on the broker at the end (to tail or inspect).")
@click.pass_obj
def demo_cmd(state: Any, size: str, seed: int | None, rate: float, max_events: int, show_every: float,
             train_fraction: float, keep: bool) -> None:
    """Run the whole system end to end on a simulated shop and watch the lists arrive.

    Starts the local broker if none answers (and stops it again at the end), then simulates, trains, starts
    a worker and replays. Ctrl-C or SIGTERM stops everything the demo started; exit status 130 (143 for
    SIGTERM).

    Each run writes <data_dir>/demo/<run>/ (the simulated shop, the model, demo-summary.json) and uses
    topics named demo-<run>.* plus the worker's demo-<run>-* changelogs. At the end the topics are deleted
    (unless --keep); the run folder stays, and only the newest 3 run folders are kept.
    """
    from stream_reco import broker  # lazy, as in run_demo: `--help` stays quick

    settings: Settings = state.settings
    try:
        code = run_demo(settings, size, settings.seed if seed is None else seed, rate, max_events or None,
                        show_every, train_fraction, keep)
    except broker.BrokerError as exc:  # a missing tool, a busy port, another broker in the data dir: say so
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)
