"""Event logs as contract events: the project's own JSONL and the shared real datasets.

Every loader maps its source to `stream_reco.core.events.Event` exactly as docs/evaluation.md's dataset
conventions say, wrapped in a `LogRecord` that tells whether the event is a *target* of the prequential
protocol. Source kinds that the contract has no type for (Taobao `fav`, JD `detail`) carry through as a
view-like signal with ``target=False``: every method learns from them, none is ever scored on them.
Keeping them as views (instead of inventing an event type) means the core and the stream adapter need no
special case; only the evaluation looks at the flag.

Feedback events in the project's JSONL (docs/contracts.md, "Feedback events") are what a shop's real day of
traffic holds once it reports the lists it showed: an `impression` is what the shop showed, not what the
visitor did, so it is never a target and is left out of the replay altogether (it teaches no method anything,
and it may carry no item); a `click` is learned as the signal of interest it is, and is a target only when asked
(`clicks_as_targets`): by default the next item is scored on what the visitor chose to look at or buy on their
own, and a click on a list is mostly the product of the list that was on screen, which the replayed method did
not show, so scoring it would reward copying the shop's old recommender.

Readers stream their file row by row through the project's one log reader, `stream_reco.logs` (constant
memory; Diginetica keeps one session in memory because a session's time base is its earliest date).
`load_log` then sorts the whole log by time with a stable sort, which the protocol needs for its 80/20
split and which also orders files that are not time-ordered.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from stream_reco import logs
from stream_reco.core.events import CatalogItem, Event, EventType
from stream_reco.logs import LogFormatError  # one error type for every log reader

MS_PER_S = 1000
DAY_H = 24.0
# JD has no absolute time: its synthetic timeline starts here (2020-01-01T00:00Z); only differences matter.
JD_TIMELINE_ORIGIN_MS = 1_577_836_800_000
# bytes of progress accumulated before tqdm is updated, so progress costs nothing per row
_PROGRESS_CHUNK = 1 << 16
SIBLING_CATALOG = "catalog.jsonl"


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One event of a log, and whether the protocol scores it (`target`) or only learns from it."""

    event: Event
    target: bool = True


@dataclass
class LoadedLog:
    """A whole log, sorted by time (stable), with the catalog items known for it."""

    records: list[LogRecord]
    catalog: list[CatalogItem] = field(default_factory=list)
    #: impressions the log held, left out of the replay (module docstring)
    impressions_skipped: int = 0
    dataset: str = "jsonl"
    path: Path | None = None
    # half-life of the RPOP baseline for this dataset, per evaluation.md (JD: 1 h of its synthetic timeline)
    rpop_half_life_h: float = DAY_H


# --------------------------------------------------------------------------- shared data location


def repo_root() -> Path:
    """The repository (or installed package's parent) folder: `stream_reco/..`."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir(setting: str = "") -> Path:
    """Where the shared datasets live: the `shared_data_dir` setting, else `../shared/data` beside the repo."""
    if setting:
        return Path(setting).expanduser()
    return (repo_root() / ".." / "shared" / "data").resolve()


@dataclass(frozen=True)
class DatasetSpec:
    """A shared dataset: its folder and main file under the shared data dir, its reader, its RPOP half-life."""

    name: str
    relpath: str
    rpop_half_life_h: float


DATASETS: dict[str, DatasetSpec] = {
    "taobao": DatasetSpec("taobao", "taobao_userbehavior_sample/events.csv", DAY_H),
    "jd": DatasetSpec("jd", "jd_micro_behaviors_sample/events.csv", 1.0),
    "diginetica": DatasetSpec("diginetica", "diginetica_sample/sample_train-item-views.csv", DAY_H),
}


def dataset_path(name: str, data_dir: str = "") -> Path:
    """The main file of shared dataset `name` (which need not exist: callers decide to skip or fail)."""
    try:
        spec = DATASETS[name]
    except KeyError as exc:
        raise LogFormatError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from exc
    return shared_data_dir(data_dir) / spec.relpath


# --------------------------------------------------------------------------- low-level reading


class _Progress:
    """Byte-based tqdm progress for a file read line by line, updated in chunks to stay cheap."""

    def __init__(self, path: Path, desc: str, enabled: bool) -> None:
        size = path.stat().st_size if path.exists() else None
        self._bar = tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=not enabled, leave=False)
        self._pending = 0

    def advance(self, n: int) -> None:
        self._pending += n
        if self._pending >= _PROGRESS_CHUNK:
            self._bar.update(self._pending)
            self._pending = 0

    def close(self) -> None:
        self._bar.update(self._pending)
        self._bar.close()


def _csv_rows(path: Path, delimiter: str, desc: str, progress: bool) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for every data row of a CSV file with a header, streamed (`logs.csv_rows`)."""
    bar = _Progress(path, desc, progress)
    try:
        yield from logs.csv_rows(path, delimiter, bar.advance)
    finally:
        bar.close()


def _int(row: dict[str, str], key: str, where: str) -> int:
    try:
        return int(row[key])
    except (KeyError, ValueError) as exc:
        raise LogFormatError(f"{where}: column {key!r} is not an integer: {row.get(key)!r}") from exc


# --------------------------------------------------------------------------- the project's JSONL


def iter_jsonl_events(path: str | os.PathLike[str], progress: bool = True, *, clicks_as_targets: bool = False,
                      skipped: Callable[[Event], object] | None = None) -> Iterator[LogRecord]:
    """Contract events, one JSON object per line, validated by the contract's schema (`schemas.py`);
    dismissals are learned but never targets, clicks are targets only with `clicks_as_targets`, and impressions
    are left out (handed to `skipped`, when given): see the module docstring for why."""
    path = Path(path)
    bar = _Progress(path, f"read {path.name}", progress)
    try:
        for _, event in logs.read_events(path, bar.advance):
            if event.is_shown:
                if skipped is not None:
                    skipped(event)
                continue
            yield LogRecord(event, target=is_target(event, clicks_as_targets))
    finally:
        bar.close()


def is_target(event: Event, clicks_as_targets: bool = False) -> bool:
    """Whether the protocol scores a contract event as a next-item target (module docstring)."""
    if event.event_type == "click":
        return clicks_as_targets
    return event.event_type not in ("dismiss", "impression")


def iter_catalog_jsonl(path: str | os.PathLike[str]) -> Iterator[CatalogItem]:
    """Contract catalog items, one JSON object per line, schema-validated (later lines of an id are upserts)."""
    for _, item in logs.read_items(path):
        yield item


# --------------------------------------------------------------------------- Taobao UserBehavior

# source behaviour -> (contract event type, is a target)
TAOBAO_KINDS: dict[str, tuple[EventType, bool]] = {
    "pv": ("view", True),
    "cart": ("add_to_cart", True),
    "buy": ("purchase", True),
    "fav": ("view", False),
}


def iter_taobao(path: str | os.PathLike[str], progress: bool = True) -> Iterator[LogRecord]:
    """Taobao UserBehavior rows: users are logged-in visitors, timestamps are epoch seconds."""
    path = Path(path)
    for lineno, row in _csv_rows(path, ",", f"read {path.name}", progress):
        where = f"{path}:{lineno}"
        try:
            kind, target = TAOBAO_KINDS[row["behavior"]]
        except KeyError as exc:
            raise LogFormatError(f"{where}: unknown behavior {row.get('behavior')!r}") from exc
        event = Event(
            event_id=f"taobao-{lineno}",
            event_type=kind,
            item_id=row["item_id"],
            timestamp=_int(row, "timestamp", where) * MS_PER_S,
            user_id=row["user_id"],
        )
        yield LogRecord(event, target)


def iter_taobao_catalog(path: str | os.PathLike[str], progress: bool = False) -> Iterator[CatalogItem]:
    """One item per distinct item id, with its (flat) category id as a one-level category path."""
    seen: set[str] = set()
    for _, row in _csv_rows(Path(path), ",", "catalog", progress):
        item_id = row["item_id"]
        if item_id not in seen:
            seen.add(item_id)
            yield CatalogItem(item_id=item_id, category=(row["category_id"],))


# --------------------------------------------------------------------------- JD micro behaviours

JD_KINDS: dict[str, tuple[EventType, bool]] = {
    "view": ("view", True),
    "cart": ("add_to_cart", True),
    "purchase": ("purchase", True),
    "detail": ("view", False),
}


def iter_jd(path: str | os.PathLike[str], progress: bool = True) -> Iterator[LogRecord]:
    """JD sessions placed back to back in session-id order, each starting where the previous one ended.

    A session ends at its last event's `t_rel_s` + `time_interval_s`. Each session is an anonymous visitor.
    The file lists sessions contiguously in ascending id order; a file that does not is rejected, since the
    timeline would otherwise depend on file order in a way the convention does not define.
    """
    path = Path(path)
    offset_s = 0  # start of the current session on the synthetic timeline
    current: str | None = None
    session_end_s = 0
    finished: set[str] = set()
    for lineno, row in _csv_rows(path, ",", f"read {path.name}", progress):
        where = f"{path}:{lineno}"
        session = row["session_id"]
        if session != current:
            if current is not None:
                if session < current or session in finished:
                    raise LogFormatError(f"{where}: sessions are not contiguous in ascending id order")
                finished.add(current)
                offset_s = session_end_s
            current = session
        t_rel = _int(row, "t_rel_s", where)
        session_end_s = offset_s + t_rel + _int(row, "time_interval_s", where)
        try:
            kind, target = JD_KINDS[row["event_class"]]
        except KeyError as exc:
            raise LogFormatError(f"{where}: unknown event_class {row.get('event_class')!r}") from exc
        event = Event(
            event_id=f"jd-{lineno}",
            event_type=kind,
            item_id=row["sku"],
            timestamp=JD_TIMELINE_ORIGIN_MS + (offset_s + t_rel) * MS_PER_S,
            session_id=session,
        )
        yield LogRecord(event, target)


def iter_jd_catalog(path: str | os.PathLike[str], progress: bool = False) -> Iterator[CatalogItem]:
    """One item per SKU with category path (domain, leaf category id): domains share no leaf categories."""
    seen: set[str] = set()
    for _, row in _csv_rows(Path(path), ",", "catalog", progress):
        sku = row["sku"]
        if sku not in seen:
            seen.add(sku)
            yield CatalogItem(item_id=sku, category=(row["domain"], row["category"]))


# --------------------------------------------------------------------------- Diginetica


def _midnight_ms(date: str, where: str) -> int:
    try:
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise LogFormatError(f"{where}: eventdate {date!r} is not YYYY-MM-DD") from exc
    return int(day.timestamp()) * MS_PER_S


def iter_diginetica(path: str | os.PathLike[str], progress: bool = True) -> Iterator[LogRecord]:
    """Diginetica views: each session is a visitor; time = 00:00 UTC of its earliest date + `timeframe` ms.

    Rows come out in file order (one session buffered at a time); `load_log` sorts them by time.
    """
    path = Path(path)
    buffer: list[tuple[int, dict[str, str]]] = []

    def flush() -> Iterator[LogRecord]:
        first_day = min(r["eventdate"] for _, r in buffer)  # ISO dates sort as strings
        base = _midnight_ms(first_day, f"{path}:{buffer[0][0]}")
        for lineno, r in buffer:
            event = Event(
                event_id=f"diginetica-{lineno}",
                event_type="view",
                item_id=r["item_id"],
                timestamp=base + _int(r, "timeframe", f"{path}:{lineno}"),
                session_id=r["session_id"],
            )
            yield LogRecord(event, True)

    for lineno, row in _csv_rows(path, ";", f"read {path.name}", progress):
        if buffer and row["session_id"] != buffer[0][1]["session_id"]:
            yield from flush()
            buffer = []
        buffer.append((lineno, row))
    if buffer:
        yield from flush()


# --------------------------------------------------------------------------- sniffing and loading

_HEADERS: dict[str, tuple[str, ...]] = {
    "taobao": ("user_id", "item_id", "category_id", "behavior", "timestamp"),
    "jd": ("session_id", "domain", "source", "seq", "t_rel_s", "sku", "category", "behavior_type", "event_class"),
    "diginetica": ("session_id", "user_id", "item_id", "timeframe", "eventdate"),
}

_READERS: dict[str, Callable[..., Iterator[LogRecord]]] = {
    "jsonl": iter_jsonl_events,
    "taobao": iter_taobao,
    "jd": iter_jd,
    "diginetica": iter_diginetica,
}

_CATALOG_READERS: dict[str, Callable[..., Iterator[CatalogItem]]] = {
    "taobao": iter_taobao_catalog,
    "jd": iter_jd_catalog,
}


def sniff_format(path: str | os.PathLike[str]) -> str:
    """`jsonl`, `taobao`, `jd` or `diginetica`, from the file's first line (names are not trusted)."""
    path = Path(path)
    with logs.open_log(path) as fh:
        head = fh.read(logs.SNIFF_BYTES)
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    if first.startswith("{"):
        return "jsonl"
    for delimiter in (",", ";"):
        columns = tuple(c.strip() for c in next(csv.reader(io.StringIO(first), delimiter=delimiter)))
        for name, expected in _HEADERS.items():
            if columns[: len(expected)] == expected:
                return name
    raise LogFormatError(f"{path}: unknown log format (first line {first[:80]!r})")


def resolve_log_path(log: str, data_dir: str = "") -> Path:
    """A path as given, or a shared dataset's file when `log` is a dataset name (`jd`, `diginetica`, `taobao`)."""
    if log in DATASETS and not Path(log).exists():
        return dataset_path(log, data_dir)
    return Path(log)


def iter_log(path: str | os.PathLike[str], fmt: str | None = None, progress: bool = True) -> Iterator[LogRecord]:
    """Records of a log in file order, streamed; `fmt` is sniffed when not given."""
    fmt = fmt or sniff_format(path)
    return _READERS[fmt](path, progress=progress)


def iter_catalog(path: str | os.PathLike[str], fmt: str | None = None) -> Iterator[CatalogItem]:
    """Catalog items a dataset file implies (category per item); none for formats without categories."""
    fmt = fmt or sniff_format(path)
    reader = _CATALOG_READERS.get(fmt)
    return reader(path) if reader else iter(())


def sort_by_time(records: Iterable[LogRecord]) -> list[LogRecord]:
    """Stable sort by event time: ties keep file order (protocol step 1)."""
    return sorted(records, key=lambda r: r.event.timestamp)


def load_log(
    path: str | os.PathLike[str],
    catalog: str | os.PathLike[str] | None = None,
    *,
    max_events: int | None = None,
    progress: bool = True,
    clicks_as_targets: bool = False,
) -> LoadedLog:
    """Read a log of any known format, map it to contract events, sort it by time, and collect its catalog.

    `catalog` is a contract catalog JSONL whose items replace the ones the dataset implies; for a JSONL log
    without one, a `catalog.jsonl` beside it (what `stream-reco simulate` writes) is used. `max_events`
    keeps the first N events *by time* (a prefix of the timeline, so a subset is still a valid log).
    A JSONL log's impressions are left out and counted (`impressions_skipped`); its clicks are targets only with
    `clicks_as_targets` (module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise LogFormatError(f"{path}: no such log file")
    fmt = sniff_format(path)
    skipped: list[int] = [0]

    def count(_: Event) -> None:
        skipped[0] += 1

    reader = (iter_jsonl_events(path, progress=progress, clicks_as_targets=clicks_as_targets, skipped=count)
              if fmt == "jsonl" else iter_log(path, fmt, progress=progress))
    records = sort_by_time(reader)
    if max_events is not None:
        records = records[: max(0, max_events)]
    items: dict[str, CatalogItem] = {i.item_id: i for i in iter_catalog(path, fmt)}
    if catalog is None and fmt == "jsonl" and (path.parent / SIBLING_CATALOG).is_file():
        catalog = path.parent / SIBLING_CATALOG
    if catalog is not None:
        items.update((i.item_id, i) for i in iter_catalog_jsonl(catalog))
    half_life = DATASETS[fmt].rpop_half_life_h if fmt in DATASETS else DAY_H
    return LoadedLog(records=records, catalog=list(items.values()), dataset=fmt, path=path,
                     rpop_half_life_h=half_life, impressions_skipped=skipped[0])
