"""Reading event logs (JSONL, CSV, gzip) record by record, with line numbers and reasons for bad records;
and replay's dry run, which needs no broker."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream_reco.cli import cli
from stream_reco.exit_codes import EXIT_REJECTED, EXIT_USAGE
from stream_reco.logs import LogFormatError, count_lines, detect_format, parse_timestamp, read_log
from stream_reco.settings import Settings
from stream_reco.shop.replay import MAX_REPORTED_REJECTIONS, replay_log

T0 = 1764150000000


def event(n: int, **extra: object) -> dict[str, object]:
    return {"event_id": f"e-{n}", "event_type": "view", "user_id": f"u-{n % 3}", "item_id": f"sku-{n}",
            "timestamp": T0 + n, **extra}


def write_jsonl(path: Path, lines: list[bytes | str]) -> Path:
    path.write_bytes(b"\n".join(x.encode() if isinstance(x, str) else x for x in lines) + b"\n")
    return path


@pytest.fixture
def mixed_jsonl(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "log.jsonl", [
        orjson.dumps(event(1)),                                  # 1 ok
        "",                                                      # 2 blank: skipped
        '{"event_id": "e-2", "event_type": "view"',              # 3 not JSON
        orjson.dumps({**event(3), "event_type": "like"}),        # 4 bad enum
        orjson.dumps(event(4, context={"quantity": 0})),         # 5 bad context field
        "[1, 2]",                                                # 6 not an object
        orjson.dumps({k: v for k, v in event(5).items() if k != "user_id"}),  # 7 anonymous without session
        orjson.dumps(event(6, context={"page_category": "A/B"})),  # 8 ok
    ])


def test_jsonl_good_and_bad_lines_with_line_numbers(mixed_jsonl: Path) -> None:
    records = list(read_log(mixed_jsonl))
    assert [r.line for r in records] == [1, 3, 4, 5, 6, 7, 8]
    assert [r.ok for r in records] == [True, False, False, False, False, False, True]
    by_line = {r.line: r for r in records}
    assert by_line[1].doc == event(1)
    assert "not valid JSON" in by_line[3].error.reason
    assert by_line[4].error.field == "event_type"
    assert by_line[5].error.field == "context.quantity"
    assert "object" in by_line[6].error.reason
    assert by_line[7].error.field == "session_id"


def test_record_larger_than_the_limit_is_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "big.jsonl", [orjson.dumps(event(1, context={"page_category": "x" * 500}))])
    (rec,) = read_log(path, max_bytes=200)
    assert not rec.ok and "larger than the limit" in rec.error.reason


def test_catalog_items_are_checked_as_items(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "catalog.jsonl", [
        orjson.dumps({"item_id": "sku-1", "title": "Sofa", "category": ["Furniture"], "price": 10.0}),
        orjson.dumps({"item_id": "sku-2", "in_stock": None}),
    ])
    first, second = read_log(path, "item")
    assert first.ok and not second.ok and second.error.field == "in_stock"


CSV_HEADER = "event_id,event_type,user_id,session_id,item_id,timestamp,page_category,quantity,price,reason"


def test_csv_rows_become_contract_events(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("\n".join([
        CSV_HEADER,
        f"e-1,view,u-1,,sku-1,{T0},Furniture/Sofas,,,",                # 2 ok
        f"e-2,purchase,,s-9,sku-2,{T0 + 1},,2,499.5,",                # 3 ok, anonymous
        "e-3,view,u-1,,sku-3,yesterday,,,,",                          # 4 bad timestamp
        f"e-4,add_to_cart,u-1,,sku-4,{T0},,two,,",                    # 5 bad quantity
        f"e-5,view,,,sku-5,{T0},,,,",                                 # 6 neither user nor session
        f"e-6,view,u-1,,sku-6,{T0}",                                  # 7 too few fields
        'e-7,dismiss,u-1,,sku-7,2025-11-26T10:00:00Z,"Kitchen/Pots,\nPans",,,not_interested',  # 8-9 quoted
        "",                                                           # blank: skipped
        f"e-8,view,u-2,s-2,sku-8,{T0},,,,",                           # 11 ok
    ]) + "\n")
    records = list(read_log(path))
    assert [r.line for r in records] == [2, 3, 4, 5, 6, 7, 8, 11]
    assert [r.ok for r in records] == [True, True, False, False, False, False, True, True]
    assert records[0].doc == {"event_id": "e-1", "event_type": "view", "user_id": "u-1", "item_id": "sku-1",
                              "timestamp": T0, "context": {"page_category": "Furniture/Sofas"}}
    assert records[1].doc["context"] == {"quantity": 2, "price": 499.5}
    assert "user_id" not in records[1].doc and records[1].doc["session_id"] == "s-9"
    assert records[2].error.field == "timestamp"
    assert records[3].error.field == "context.quantity"
    assert records[4].error.field == "session_id"
    assert "fields" in records[5].error.reason
    assert records[6].doc["timestamp"] == parse_timestamp("2025-11-26T10:00:00+00:00")
    assert records[6].doc["context"] == {"page_category": "Kitchen/Pots,\nPans", "reason": "not_interested"}


def test_csv_header_needs_only_the_required_columns_in_any_order(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(f"timestamp,item_id,event_type,event_id,session_id,user_id\n{T0},sku-1,view,e-1,s-1,\n")
    (rec,) = read_log(path)
    assert rec.ok and rec.doc == {"event_id": "e-1", "event_type": "view", "session_id": "s-1", "item_id": "sku-1",
                                  "timestamp": T0}


@pytest.mark.parametrize(("header", "message"), [
    ("event_id,event_type,user_id,session_id,item_id", "missing columns: timestamp"),
    (CSV_HEADER + ",colour", "unknown columns: colour"),
    ("", "empty file"),
])
def test_csv_header_that_cannot_be_mapped(tmp_path: Path, header: str, message: str) -> None:
    path = tmp_path / "log.csv"
    path.write_text(header + "\n" if header else "")
    with pytest.raises(LogFormatError, match=message):
        list(read_log(path))


def test_catalog_cannot_be_csv(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("item_id\nsku-1\n")
    with pytest.raises(LogFormatError, match="JSON lines"):
        read_log(path, "item")


def test_format_detection_gzip_and_line_count(tmp_path: Path) -> None:
    lines = [orjson.dumps(event(n)) for n in range(5)]
    plain = write_jsonl(tmp_path / "export.log", lines)
    assert detect_format(plain) == "jsonl"
    csv_like = tmp_path / "export.txt"
    csv_like.write_text(CSV_HEADER + "\n")
    assert detect_format(csv_like) == "csv"
    packed = tmp_path / "log.jsonl.gz"
    packed.write_bytes(gzip.compress(b"\xef\xbb\xbf" + b"\n".join(lines)))  # a BOM and no final newline
    assert [r.doc for r in read_log(packed)] == [event(n) for n in range(5)]
    assert count_lines(plain) == 5 and count_lines(packed) is None
    with pytest.raises(LogFormatError, match="cannot read"):
        list(read_log(tmp_path / "missing.jsonl"))


def test_dry_run_reports_rejections_and_sends_nothing(mixed_jsonl: Path) -> None:
    # a bootstrap no broker listens on: a dry run must not even try to connect
    settings = Settings(bootstrap="127.0.0.1:1")
    summary = replay_log(settings, mixed_jsonl, dry_run=True, progress=False)
    assert summary.dry_run and summary.events == 2 and summary.rejected == 5 and not summary.ok
    assert [r.line for r in summary.rejections] == [3, 4, 5, 6, 7]
    assert str(summary.rejections[1]).startswith("log.jsonl line 4: event_type:")


def test_a_csv_row_whose_json_outgrows_the_limit_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(f"{CSV_HEADER}\ne-1,view,u-1,,sku-1,{T0},{'c' * 60},,,\ne-2,view,u-1,,sku-2,{T0},,,,\n")
    summary = replay_log(Settings(bootstrap="127.0.0.1:1", max_message_bytes=150), path, dry_run=True,
                         progress=False)
    assert summary.events == 1 and summary.rejected == 1
    assert summary.rejections[0].line == 2 and "larger than the limit" in summary.rejections[0].reason


def test_only_the_first_rejections_are_kept(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ["{"] * (MAX_REPORTED_REJECTIONS + 5))
    summary = replay_log(Settings(bootstrap="127.0.0.1:1"), path, dry_run=True, progress=False)
    assert summary.rejected == MAX_REPORTED_REJECTIONS + 5
    assert len(summary.rejections) == MAX_REPORTED_REJECTIONS
    assert "and 5 more" in summary.format()


def test_cli_dry_run_exit_codes(mixed_jsonl: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"STREAM_RECO_BOOTSTRAP": "127.0.0.1:1"}
    bad = runner.invoke(cli, ["replay", str(mixed_jsonl), "--dry-run", "--no-progress"], env=env)
    assert bad.exit_code == EXIT_REJECTED
    assert "log.jsonl line 3" in bad.output and "5 record(s) rejected" in bad.output
    good = write_jsonl(tmp_path / "good.jsonl", [orjson.dumps(event(n)) for n in range(3)])
    ok = runner.invoke(cli, ["replay", str(good), "--dry-run", "--no-progress"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "valid (dry run, nothing sent): 3 events" in ok.output
    header = tmp_path / "bad.csv"
    header.write_text("a,b\n1,2\n")
    unusable = runner.invoke(cli, ["replay", str(header), "--dry-run"], env=env)
    assert unusable.exit_code == EXIT_USAGE and "missing columns" in unusable.output


def test_cli_dry_run_of_a_simulated_shop_folder(tmp_path: Path) -> None:
    from stream_reco.shop.simulate import write_shop

    shop = write_shop(tmp_path / "shop", "tiny", seed=2)
    result = CliRunner().invoke(cli, ["replay", str(shop.out_dir), "--dry-run", "--no-progress"],
                                env={"STREAM_RECO_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == 0, result.output
    assert f"{shop.events} events, {shop.items} catalog items, {shop.catalog_updates} catalog updates" in result.output
