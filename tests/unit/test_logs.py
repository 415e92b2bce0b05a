"""One reader for event logs (stream_reco/logs.py): replay's tolerant reader, the strict readers of training
and evaluation, and the model artifact's catalog read the same lines the same way."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from stream_reco import logs
from stream_reco.evaluate import loaders
from stream_reco.logs import LogFormatError

T0 = 1764150000000


def event(i: int, **extra: object) -> dict[str, object]:
    return {"event_id": f"e{i}", "event_type": "view", "user_id": f"u{i % 3}", "item_id": f"i{i}",
            "timestamp": T0 + i, **extra}


def jsonl(docs: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(d) + b"\n" for d in docs)


@pytest.fixture(params=["plain", "gzip", "bom-crlf-blank"])
def log_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    data = jsonl([event(i) for i in range(5)])
    if request.param == "gzip":
        path = tmp_path / "events.jsonl.gz"
        path.write_bytes(gzip.compress(data))
    elif request.param == "bom-crlf-blank":
        path = tmp_path / "events.jsonl"
        path.write_bytes(b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n\r\n"))
    else:
        path = tmp_path / "events.jsonl"
        path.write_bytes(data)
    return path


def test_every_reader_sees_the_same_events(log_file: Path) -> None:
    tolerant = [rec.doc["event_id"] for rec in logs.read_log(log_file) if rec.doc is not None]
    strict = [e.event_id for _, e in logs.read_events(log_file)]
    evaluated = [r.event.event_id for r in loaders.iter_jsonl_events(log_file, progress=False)]
    assert tolerant == strict == evaluated == [f"e{i}" for i in range(5)]
    assert [n for n, _ in logs.read_events(log_file)] == [rec.line for rec in logs.read_log(log_file)]


def test_progress_counts_every_byte_read(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(jsonl([event(0)]) + b"\n" + jsonl([event(1)]))
    seen: list[int] = []
    assert [n for n, _ in logs.iter_lines(path, seen.append)] == [1, 3]
    assert sum(seen) == path.stat().st_size


def test_strict_readers_stop_at_the_first_bad_record_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(jsonl([event(0)]) + b"\n" + b'{"event_id": \n' + jsonl([event(1)]))
    with pytest.raises(LogFormatError, match=r"events.jsonl:3: not a contract event: not valid JSON"):
        list(logs.read_events(path))
    # the tolerant reader reports it and goes on
    records = list(logs.read_log(path))
    assert [(r.line, r.ok) for r in records] == [(1, True), (3, False), (4, True)]


def test_items_are_read_by_the_same_reader(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_bytes(jsonl([{"item_id": "a"}, {"item_id": "b", "category": ["x"]}]))
    assert [i.item_id for _, i in logs.read_items(path)] == ["a", "b"]
    path.write_bytes(jsonl([{"item_id": "a"}, {"item_id": 5}]))
    with pytest.raises(LogFormatError, match=r"catalog.jsonl:2: not a contract catalog item"):
        list(logs.read_items(path))


def test_a_truncated_gzip_file_is_a_log_format_error(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl.gz"
    data = gzip.compress(jsonl([event(i) for i in range(2000)]))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LogFormatError, match="cannot read"):
        list(logs.read_events(path))


def test_dataset_csv_rows_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,item_id\r\n1,2\r\n\r\n3,4\r\n")
    assert list(logs.csv_rows(path)) == [(2, {"user_id": "1", "item_id": "2"}), (4, {"user_id": "3", "item_id": "4"})]
    path.write_bytes(b"a;b\n1;2;3\n")
    with pytest.raises(LogFormatError, match=r"events.csv:2: expected 2 columns, got 3"):
        list(logs.csv_rows(path, ";"))
