"""Event logs and catalogs in files: the one reader every command uses.

`replay`, `train`, `evaluate`, the demo and the model artifact (its ``catalog.jsonl``) all read files of
contract documents; they share the reading here: opening (gzip by suffix), line numbers, a UTF-8 byte-order
mark, blank lines, byte progress, and decoding each line with the contract's schema (`stream_reco.schemas`).
They differ only in what a bad record means, so there are two ways to read:

* **every record** (`read_log`): `replay` must send a log of any size in constant memory and report *which*
  lines it could not send and why, so a shop can fix its export. It gets a generator that never holds more
  than one record, never stops on a bad line, and hands back every record as a `LogRecord` carrying either
  the parsed document (already checked against the contract's schema) or an `InvalidMessage` saying what is
  wrong.
* **stop at the first bad record** (`read_events`, `read_items`): training, evaluation and a model's
  catalog are only meaningful on a whole, valid file; they get typed `Event` / `CatalogItem` records and a
  `LogFormatError` naming the file and line of the first bad one.

`csv_rows` reads the shared datasets' CSV files (evaluate/loaders.py maps their columns to events).
Only a problem with the file as a whole (missing, unreadable, a CSV header that cannot be mapped) raises
from `read_log`, as `LogFormatError`.

Formats:

* **JSONL** (``.jsonl``, ``.ndjson``, ``.json``): one contract document per line; blank lines are skipped.
* **CSV** (``.csv``, events only): a header row naming the columns ``event_id, event_type, user_id,
  session_id, item_id, timestamp`` (required, in any order) and optionally ``page_category, quantity, price,
  reason, list_id, position, shown`` (which go to ``context``; ``shown``, an impression's item ids in display
  order, separated by ``|``). Empty cells mean absent (an impression's ``item_id`` may be empty).
  ``timestamp`` is epoch milliseconds or an ISO 8601 date-time (UTC when it has no offset).
* Either may be gzip-compressed (``.gz`` after the format's suffix). A file whose suffix says nothing is
  sniffed: JSONL if its first non-blank character is ``{``, CSV otherwise.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from stream_reco import schemas
from stream_reco.core.events import CatalogItem, Event
from stream_reco.schemas import InvalidMessage

LogFormat = Literal["jsonl", "csv"]
Kind = Literal["event", "item"]
#: called with the size in bytes of every line read (blank ones too): a progress bar's `update`
Progress = Callable[[int], object]

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
CSV_SUFFIXES = frozenset({".csv"})
GZIP_SUFFIX = ".gz"
UTF8_BOM = b"\xef\xbb\xbf"
SNIFF_BYTES = 4096  # enough to find the first non-blank character of any real file
COUNT_CHUNK_BYTES = 1 << 20

CSV_REQUIRED = ("event_id", "event_type", "user_id", "session_id", "item_id", "timestamp")
CSV_CONTEXT = ("page_category", "quantity", "price", "reason", "list_id", "position", "shown")
#: separates the item ids of an impression's `shown` in one CSV cell (item ids in real shops hold no `|`)
CSV_SHOWN_SEP = "|"
CSV_COLUMNS = CSV_REQUIRED + CSV_CONTEXT


class LogFormatError(ValueError):
    """A file cannot be read as a log (missing, unreadable, a CSV header we cannot map), or, for readers that
    stop at the first bad record (training, evaluation), a record in it is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record of a log: `doc` when it is a valid contract document, else `error`.

    `line` is the 1-based line where the record starts in the file, so a shop can find and fix it.
    """

    line: int
    doc: dict[str, Any] | None
    error: InvalidMessage | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _strip_gz(path: Path) -> tuple[str, bool]:
    name = path.name.lower()
    if name.endswith(GZIP_SUFFIX):
        return Path(name[: -len(GZIP_SUFFIX)]).suffix, True
    return path.suffix.lower(), False


def open_log(path: str | os.PathLike[str]) -> IO[bytes]:
    """The file's bytes, decompressed when its name ends in ``.gz``; `LogFormatError` when it cannot be opened."""
    p = Path(path)
    try:
        if _strip_gz(p)[1]:
            return gzip.open(p, "rb")
        return open(p, "rb")
    except OSError as exc:
        raise LogFormatError(f"cannot read {p}: {exc.strerror or exc}") from exc


def iter_lines(path: str | os.PathLike[str], progress: Progress | None = None) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, the line without its line ending) for every non-blank line of the file.

    A UTF-8 byte-order mark at the start is dropped. `progress`, if given, is called with the size of every
    line read, blank ones included. A file that cannot be read to its end (a truncated ``.gz``) raises
    `LogFormatError` where the reading stops.
    """
    p = Path(path)
    with open_log(p) as f:
        number = 0
        try:
            for number, raw in enumerate(f, start=1):
                if progress is not None:
                    progress(len(raw))
                line = raw.removeprefix(UTF8_BOM) if number == 1 else raw
                if line.strip():
                    yield number, line.rstrip(b"\r\n")
        except (OSError, EOFError) as exc:
            raise LogFormatError(f"cannot read {p} after line {number}: {exc}") from exc


def detect_format(path: str | os.PathLike[str]) -> LogFormat:
    """The log's format from its suffix, or from its first non-blank character when the suffix says nothing."""
    p = Path(path)
    suffix, _ = _strip_gz(p)
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in CSV_SUFFIXES:
        return "csv"
    with open_log(p) as f:
        head = f.read(SNIFF_BYTES)
    return "jsonl" if head.removeprefix(UTF8_BOM).lstrip().startswith(b"{") else "csv"


def count_lines(path: str | os.PathLike[str]) -> int | None:
    """Lines in a plain (uncompressed) file, read in chunks: a progress bar's total at little cost.
    None for a compressed file, where counting would mean decompressing it twice."""
    p = Path(path)
    if _strip_gz(p)[1]:
        return None
    n, last = 0, b"\n"
    with open_log(p) as f:
        while chunk := f.read(COUNT_CHUNK_BYTES):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def read_log(
    path: str | os.PathLike[str],
    kind: Kind = "event",
    fmt: LogFormat | None = None,
    max_bytes: int = schemas.DEFAULT_MAX_BYTES,
) -> Iterator[LogRecord]:
    """Every record of the file in order, each valid (`doc`) or not (`error`); see the module docstring.

    `kind` is the contract message each record must be ("event" for event logs, "item" for catalogs);
    `max_bytes` rejects records larger than a worker would accept (`settings.max_message_bytes`).

    >>> for rec in read_log("events.jsonl"):  # doctest: +SKIP
    ...     print(rec.line, rec.doc if rec.ok else rec.error)
    """
    p = Path(path)
    fmt = fmt or detect_format(p)
    if fmt == "jsonl":
        return _read_jsonl(p, kind, max_bytes)
    if kind != "event":
        raise LogFormatError(f"{p}: only event logs can be CSV; write {kind}s as JSON lines")
    return _read_csv(p, max_bytes)


def _checked(line: int, doc: Any, kind: Kind) -> LogRecord:
    try:
        schemas.validate(kind, doc)
    except InvalidMessage as exc:
        return LogRecord(line, None, exc)
    return LogRecord(line, doc)


def _read_jsonl(path: Path, kind: Kind, max_bytes: int) -> Iterator[LogRecord]:
    for number, line in iter_lines(path):
        size = len(line)
        if size > max_bytes:
            yield LogRecord(number, None, InvalidMessage(f"record is {size} bytes, larger than the limit of "
                                                         f"{max_bytes} bytes (max_message_bytes)"))
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield LogRecord(number, None, InvalidMessage(f"not valid JSON: {exc}"))
            continue
        if type(doc) is not dict:
            yield LogRecord(number, None, InvalidMessage("record must be a JSON object"))
            continue
        yield _checked(number, doc, kind)


def read_events(path: str | os.PathLike[str], progress: Progress | None = None) -> Iterator[tuple[int, Event]]:
    """(line number, event) for every contract event of a JSONL file, decoded as a worker decodes them
    (`schemas.decode_event`); the first record that is not one raises `LogFormatError` naming its line.
    No size limit applies: a log is not a Kafka message."""
    for number, line in iter_lines(path, progress):
        try:
            event = schemas.decode_event(line, max_bytes=len(line))
        except InvalidMessage as exc:
            raise LogFormatError(f"{path}:{number}: not a contract event: {exc}") from exc
        yield number, event


def read_items(path: str | os.PathLike[str], progress: Progress | None = None) -> Iterator[tuple[int, CatalogItem]]:
    """(line number, item) for every contract catalog item of a JSONL file (`schemas.decode_item`); the
    first record that is not one raises `LogFormatError` naming its line."""
    for number, line in iter_lines(path, progress):
        try:
            item = schemas.decode_item(line, max_bytes=len(line))
        except InvalidMessage as exc:
            raise LogFormatError(f"{path}:{number}: not a contract catalog item: {exc}") from exc
        yield number, item


def parse_timestamp(text: str) -> int:
    """Epoch milliseconds from a CSV cell: an integer, or an ISO 8601 date-time (UTC if no offset)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch milliseconds nor an ISO 8601 date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _csv_row_to_event(row: dict[str, str]) -> dict[str, Any]:
    """A contract event from one CSV row; raises InvalidMessage naming the column that cannot be converted."""
    cell = {k: (v.strip() if isinstance(v, str) else "") for k, v in row.items()}
    doc: dict[str, Any] = {}
    for name in ("event_id", "event_type", "user_id", "session_id", "item_id"):
        if cell.get(name):
            doc[name] = cell[name]
    if cell.get("timestamp"):
        try:
            doc["timestamp"] = parse_timestamp(cell["timestamp"])
        except ValueError as exc:
            raise InvalidMessage(str(exc), "timestamp") from None
    ctx: dict[str, Any] = {}
    if cell.get("page_category"):
        ctx["page_category"] = cell["page_category"]
    if cell.get("reason"):
        ctx["reason"] = cell["reason"]
    if cell.get("list_id"):
        ctx["list_id"] = cell["list_id"]
    if cell.get("shown"):
        ctx["shown"] = [s.strip() for s in cell["shown"].split(CSV_SHOWN_SEP)]
    if cell.get("position"):
        try:
            ctx["position"] = int(cell["position"])
        except ValueError:
            raise InvalidMessage(f"{cell['position']!r} is not an integer", "context.position") from None
    if cell.get("quantity"):
        try:
            ctx["quantity"] = int(cell["quantity"])
        except ValueError:
            raise InvalidMessage(f"{cell['quantity']!r} is not an integer", "context.quantity") from None
    if cell.get("price"):
        try:
            ctx["price"] = float(cell["price"])
        except ValueError:
            raise InvalidMessage(f"{cell['price']!r} is not a number", "context.price") from None
    if ctx:
        doc["context"] = ctx
    return doc


def _read_csv(path: Path, max_bytes: int) -> Iterator[LogRecord]:
    with open_log(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            raise LogFormatError(f"{path}: empty file, expected a CSV header row") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise LogFormatError(f"{path}: cannot read the CSV header: {exc}") from None
        columns = [h.strip().lower() for h in header]
        missing = [c for c in CSV_REQUIRED if c not in columns]
        unknown = [c for c in columns if c not in CSV_COLUMNS]
        if missing or unknown or len(set(columns)) != len(columns):
            raise LogFormatError(
                f"{path}: CSV header {header} cannot be mapped to events"
                + (f"; missing columns: {', '.join(missing)}" if missing else "")
                + (f"; unknown columns: {', '.join(unknown)}" if unknown else "")
                + f"; expected {', '.join(CSV_REQUIRED)} and optionally {', '.join(CSV_CONTEXT)}"
            )
        line = reader.line_num
        while True:
            start = line + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                line = reader.line_num
                yield LogRecord(start, None, InvalidMessage(f"not valid CSV: {exc}"))
                continue
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(columns):
                yield LogRecord(start, None, InvalidMessage(
                    f"row has {len(values)} fields, the header has {len(columns)}"))
                continue
            if sum(len(v) for v in values) > max_bytes:
                yield LogRecord(start, None, InvalidMessage(f"record is larger than the limit of {max_bytes} bytes"))
                continue
            try:
                doc = _csv_row_to_event(dict(zip(columns, values, strict=True)))
            except InvalidMessage as exc:
                yield LogRecord(start, None, exc)
                continue
            yield _checked(start, doc, "event")


def csv_rows(
    path: str | os.PathLike[str], delimiter: str = ",", progress: Progress | None = None
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row by column name) for every non-blank data row of a CSV file with a header row, streamed:
    the shared datasets' format (one record per line, no quoted line breaks). A row whose number of fields
    is not the header's raises `LogFormatError` naming its line. `progress` gets each line's length."""
    p = Path(path)
    with open_log(p) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as fh:
        header_line = fh.readline()
        if progress is not None:
            progress(len(header_line))
        header = next(csv.reader([header_line], delimiter=delimiter))
        for lineno, line in enumerate(fh, start=2):
            if progress is not None:
                progress(len(line))
            if not line.strip():
                continue
            values = next(csv.reader([line], delimiter=delimiter))
            if len(values) != len(header):
                raise LogFormatError(f"{p}:{lineno}: expected {len(header)} columns, got {len(values)}")
            yield lineno, dict(zip(header, values, strict=True))
