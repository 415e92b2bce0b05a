"""Send an event log (and a catalog) to the topics: `stream-reco replay LOG [--catalog FILE] ...`.

Why: a shop's historical export, or a simulated shop, is how the system is loaded, demonstrated and
benchmarked. Replay reads the files record by record (constant memory, any size; see
`stream_reco.logs` for the formats), checks every record against the contract, and sends only the valid
ones; the rejected ones are counted and the first few reported with their line numbers and reasons, so the
export can be fixed. Order of work:

1. create the topics if missing (`ensure_topics_async`), unless ``--dry-run``;
2. send the catalog, and wait until the broker has acknowledged all of it — a worker that sees an event
   should already know its item;
3. send the events in file order: as fast as possible, or at the log's own pace times ``--speed``, and never
   faster than ``--rate`` events/s. Catalog updates (``--updates``, e.g. a simulated shop's
   ``catalog_updates.jsonl``) are merged into the stream by their ``updated_at``.

``LOG`` may also be a folder written by `stream-reco simulate`: its ``events.jsonl`` is replayed with its
``catalog.jsonl`` and ``catalog_updates.jsonl``.

Records keep their timestamps unless ``--retime``, which stamps each event with the wall-clock time it is
sent, so that ``latency_ms`` in the published lists measures the pipeline rather than the age of the log.
Kafka record timestamps are always the send time (old log times would make the broker's time-based
retention delete the records at once).

Exit status of the command: 0 all sent, 3 some records rejected (the rest were sent), 1 the broker did not
acknowledge some messages, 2 the file cannot be read as a log, 4 the broker cannot be reached.
"""

from __future__ import annotations

import asyncio
import heapq
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson

from stream_reco.logs import LogFormatError, LogRecord, count_lines, read_log
from stream_reco.schemas import InvalidMessage
from stream_reco.settings import Settings
from stream_reco.shop.client import DeliveryError, EventProducer, Prepared

MAX_REPORTED_REJECTIONS = 10  # rejections kept with line and reason; the rest are only counted
MIN_SLEEP_S = 0.002  # pacing sleeps only when this far ahead: shorter sleeps cost more than they pace
PROGRESS_EVERY = 256  # records between progress bar updates
SIMULATED_EVENTS = "events.jsonl"  # the files of a folder written by `stream-reco simulate`
SIMULATED_CATALOG = "catalog.jsonl"
SIMULATED_UPDATES = "catalog_updates.jsonl"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that was not sent: which file, which line, and why."""

    source: str
    line: int
    reason: str
    field: str | None = None

    def __str__(self) -> str:
        where = f"{self.source} line {self.line}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


@dataclass
class ReplaySummary:
    """What a replay did. `events`, `items` and `catalog_updates` count valid records: sent, unless
    `dry_run`. `rejected` counts invalid ones (never sent); `rejections` keeps the first few."""

    events: int = 0
    items: int = 0
    catalog_updates: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    failed: int = 0  # sent but not acknowledged by the broker
    failure: str | None = None
    elapsed_s: float = 0.0
    events_elapsed_s: float = 0.0  # time spent on the events alone (the throughput's denominator)
    dry_run: bool = False

    @property
    def events_per_s(self) -> float:
        return self.events / self.events_elapsed_s if self.events_elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.rejected == 0 and self.failed == 0

    def reject(self, source: str, rec: LogRecord) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_REPORTED_REJECTIONS and rec.error is not None:
            self.rejections.append(Rejection(source, rec.line, rec.error.reason, rec.error.field))

    def format(self) -> str:
        """A human summary, several lines."""
        verb = "valid (dry run, nothing sent)" if self.dry_run else "sent"
        lines = [
            f"{verb}: {self.events} events, {self.items} catalog items"
            + (f", {self.catalog_updates} catalog updates" if self.catalog_updates else ""),
            f"rejected: {self.rejected}",
            f"elapsed: {self.elapsed_s:.2f} s ({self.events_per_s:,.0f} events/s)",
        ]
        if self.failed:
            lines.append(f"not acknowledged by the broker: {self.failed} ({self.failure})")
        for r in self.rejections:
            lines.append(f"  {r}")
        if self.rejected > len(self.rejections):
            lines.append(f"  ... and {self.rejected - len(self.rejections)} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class ReplayInputs:
    """The files of one replay, after resolving a simulated shop's folder."""

    events: Path
    catalog: Path | None
    updates: Path | None

    @classmethod
    def resolve(cls, log_path: str | Path, catalog_path: str | Path | None,
                updates_path: str | Path | None) -> ReplayInputs:
        log = Path(log_path)
        catalog = Path(catalog_path) if catalog_path else None
        updates = Path(updates_path) if updates_path else None
        if log.is_dir():
            if catalog is None and (log / SIMULATED_CATALOG).exists():
                catalog = log / SIMULATED_CATALOG
            if updates is None and (log / SIMULATED_UPDATES).exists():
                updates = log / SIMULATED_UPDATES
            log = log / SIMULATED_EVENTS
        for p in (log, catalog, updates):
            if p is not None and not p.is_file():
                raise LogFormatError(f"no such file: {p}")
        return cls(log, catalog, updates)


class _Pacer:
    """When each record is due: at the log's pace times `speed`, and at most `rate` per second."""

    def __init__(self, speed: float | None, rate: float | None) -> None:
        self.speed, self.rate = speed, rate
        self.start = time.monotonic()
        self.first_ts: int | None = None
        self.n = 0

    def due(self, ts: int) -> float:
        """The monotonic time at which the next record (log time `ts`) may be sent."""
        if self.first_ts is None:
            self.first_ts = ts
        deadline = self.start
        if self.speed:
            deadline = max(deadline, self.start + (ts - self.first_ts) / 1000.0 / self.speed)
        if self.rate:
            deadline = max(deadline, self.start + self.n / self.rate)
        self.n += 1
        return deadline


def _timed(records: Iterator[LogRecord], ts_field: str, order: int) -> Iterator[tuple[int, int, int, LogRecord]]:
    """(time, stream order, sequence, record) for merging streams by time; an invalid record takes the
    time of the record before it, so it is reported where it stands."""
    last = 0
    for seq, rec in enumerate(records):
        if rec.doc is not None:
            value = rec.doc.get(ts_field)
            last = value if isinstance(value, int) else last
        yield last, order, seq, rec


def _progress_bar(enabled: bool, total: int | None, dry_run: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="ev", desc="validate" if dry_run else "replay", dynamic_ncols=True,
                file=sys.stderr)


async def replay_log_async(
    settings: Settings,
    log_path: str | Path,
    catalog_path: str | Path | None = None,
    speed: float | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    progress: bool = True,
    updates_path: str | Path | None = None,
    retime: bool = False,
) -> ReplaySummary:
    """`replay_log` for callers that already run an event loop (the demo)."""
    began = time.monotonic()
    inputs = ReplayInputs.resolve(log_path, catalog_path, updates_path)
    summary = ReplaySummary(dry_run=dry_run)
    max_bytes = settings.max_message_bytes
    producer: EventProducer | None = None
    if not dry_run:
        from stream_reco.stream.topics import ensure_topics_async

        await ensure_topics_async(settings)
        producer = EventProducer(settings)
        await producer.start()
    try:
        if inputs.catalog is not None:
            for rec in read_log(inputs.catalog, "item", max_bytes=max_bytes):
                if rec.doc is None:
                    summary.reject(inputs.catalog.name, rec)
                    continue
                summary.items += 1
                if producer is not None:
                    await producer.send_batched(_item_message(settings, rec.doc))
            if producer is not None:
                await producer.flush()  # the catalog is acknowledged before the first event

        streams = [_timed(read_log(inputs.events, "event", max_bytes=max_bytes), "timestamp", 0)]
        total = count_lines(inputs.events)
        if inputs.updates is not None:
            streams.append(_timed(read_log(inputs.updates, "item", max_bytes=max_bytes), "updated_at", 1))
            more = count_lines(inputs.updates)
            total = None if total is None or more is None else total + more
        names = [inputs.events.name, inputs.updates.name if inputs.updates else ""]
        bar = _progress_bar(progress, total, dry_run)
        pacer = _Pacer(speed, rate)
        events_began = time.monotonic()
        unreported = 0
        try:
            merged = heapq.merge(*streams) if len(streams) > 1 else streams[0]
            for ts, order, _, rec in merged:
                unreported += 1
                if bar is not None and unreported >= PROGRESS_EVERY:
                    bar.update(unreported)
                    unreported = 0
                if rec.doc is None:
                    summary.reject(names[order], rec)
                    continue
                message = _item_message(settings, rec.doc) if order == 1 else _event_message(settings, rec.doc)
                if len(message.value) > max_bytes:  # a CSV row's JSON can outgrow the row
                    summary.reject(names[order], _too_large(rec, len(message.value), max_bytes))
                    continue
                if order == 1:
                    summary.catalog_updates += 1
                    if producer is not None:
                        await producer.send_batched(message)
                    continue
                summary.events += 1
                if producer is None:
                    continue
                if speed or rate:
                    due = pacer.due(ts)
                    if due - time.monotonic() > MIN_SLEEP_S:
                        await producer.flush_batches()  # what was due goes out before we wait
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                if retime:
                    rec.doc["timestamp"] = time.time_ns() // 1_000_000
                    message = _event_message(settings, rec.doc)
                await producer.send_batched(message)
        finally:
            if bar is not None:
                bar.update(unreported)
                bar.close()
        if producer is not None:
            await producer.flush()
        summary.events_elapsed_s = time.monotonic() - events_began
    except DeliveryError as exc:
        summary.failed, summary.failure = exc.failed, repr(exc.first)
    finally:
        if producer is not None:
            try:
                await producer.stop()
            except DeliveryError as exc:
                summary.failed += exc.failed
                summary.failure = summary.failure or repr(exc.first)
    summary.elapsed_s = time.monotonic() - began
    return summary


def _event_message(settings: Settings, doc: dict[str, Any]) -> Prepared:
    """The message of an event the reader already validated (so it is not validated twice)."""
    key = doc.get("user_id") or doc["session_id"]
    return Prepared(settings.events_topic, key.encode(), orjson.dumps(doc))


def _item_message(settings: Settings, doc: dict[str, Any]) -> Prepared:
    return Prepared(settings.catalog_topic, doc["item_id"].encode(), orjson.dumps(doc))


def _too_large(rec: LogRecord, size: int, max_bytes: int) -> LogRecord:
    reason = f"message is {size} bytes, larger than the limit of {max_bytes} bytes (max_message_bytes)"
    return LogRecord(rec.line, None, InvalidMessage(reason))


def replay_log(
    settings: Settings,
    log_path: str | Path,
    catalog_path: str | Path | None = None,
    speed: float | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    progress: bool = True,
    updates_path: str | Path | None = None,
    retime: bool = False,
) -> ReplaySummary:
    """Validate and send a log (and catalog) to the topics of `settings`; see the module docstring.

    Raises `LogFormatError` when a file cannot be read as a log at all, and aiokafka's
    `KafkaConnectionError` when no broker answers. Invalid records do not raise: they are counted in the
    summary's `rejected` and the rest is still sent.

    >>> summary = replay_log(Settings.load(), "shop/events.jsonl", "shop/catalog.jsonl", rate=500)  # doctest: +SKIP
    >>> summary.ok, summary.events, summary.events_per_s  # doctest: +SKIP
    (True, 1863, 499.1)
    """
    return asyncio.run(replay_log_async(settings, log_path, catalog_path, speed, rate, dry_run, progress,
                                        updates_path, retime))


@click.command("replay")
@click.argument("log", type=click.Path(exists=True))
@click.option("--catalog", "catalog_path", type=click.Path(exists=True, dir_okay=False),
              help="Catalog (JSONL of contract items), sent and acknowledged before the first event.")
@click.option("--updates", "updates_path", type=click.Path(exists=True, dir_okay=False),
              help="Catalog updates (JSONL items), merged into the event stream by updated_at.")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True),
              help="Replay at the log's own pace times X (2 = twice as fast). Default: as fast as possible.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="At most N events per second.")
@click.option("--dry-run", is_flag=True, help="Only validate; send nothing.")
@click.option("--retime", is_flag=True, help="Stamp each event with the time it is sent (latency measurements).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.pass_obj
def replay_cmd(state: Any, log: str, catalog_path: str | None, updates_path: str | None, speed: float | None,
               rate: float | None, dry_run: bool, retime: bool, progress: bool | None) -> None:
    """Send a JSONL or CSV event log (or a `simulate` folder) and its catalog to the topics.

    Invalid records are reported with their line numbers and not sent; everything else is.
    Exit status 3 when any record was rejected.
    """
    from aiokafka.errors import KafkaConnectionError

    from stream_reco.exit_codes import EXIT_BROKER_NOT_READY, EXIT_FAILURE, EXIT_REJECTED, EXIT_USAGE

    settings: Settings = state.settings
    show = sys.stderr.isatty() if progress is None else progress
    try:
        summary = replay_log(settings, log, catalog_path, speed=speed, rate=rate, dry_run=dry_run, progress=show,
                             updates_path=updates_path, retime=retime)
    except LogFormatError as exc:
        click.echo(f"replay: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except KafkaConnectionError as exc:
        click.echo(f"replay: cannot reach the broker at {settings.bootstrap} ({exc}); "
                   "start one with `stream-reco broker start`", err=True)
        sys.exit(EXIT_BROKER_NOT_READY)
    click.echo(summary.format())
    if summary.failed:
        click.echo(f"replay: {summary.failed} message(s) were not acknowledged by the broker", err=True)
        sys.exit(EXIT_FAILURE)
    if summary.rejected:
        click.echo(f"replay: {summary.rejected} record(s) rejected and not sent; first: {summary.rejections[0]}",
                   err=True)
        sys.exit(EXIT_REJECTED)
