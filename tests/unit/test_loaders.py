"""Loaders map each log format to contract events per docs/evaluation.md's dataset conventions.

Dataset tests read small slices of the real files under ../shared/data (copied to tmp_path, never into the
repository) and skip, saying so, only when that folder is absent.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream_reco.core.events import CatalogItem, Event
from stream_reco.evaluate.loaders import (
    JD_TIMELINE_ORIGIN_MS,
    LogFormatError,
    dataset_path,
    iter_diginetica,
    iter_jd,
    load_log,
    resolve_log_path,
    shared_data_dir,
    sniff_format,
)
from stream_reco.settings import Settings

DATA_DIR = Settings.load(env={}).shared_data_dir


def real_file(name: str) -> Path:
    path = dataset_path(name, DATA_DIR)
    if not path.is_file():
        pytest.skip(f"shared dataset {name!r} not found at {path} (set STREAM_RECO_SHARED_DATA_DIR)")
    return path


def slice_lines(src: Path, dst: Path, keep: int | None = None, predicate: object = None) -> list[str]:
    """Copy the header plus the first `keep` data lines (or those matching `predicate`) to `dst`."""
    lines = src.read_text().splitlines()
    body = lines[1:]
    if predicate is not None:
        body = [line for line in body if predicate(line)]  # type: ignore[operator]
    if keep is not None:
        body = body[:keep]
    dst.write_text("\n".join([lines[0], *body]) + "\n")
    return body


# ------------------------------------------------------------------ the project's JSONL


def test_jsonl_events_sorted_stably_with_sibling_catalog(tmp_path: Path) -> None:
    events = [
        Event("e1", "view", "a", 2000, user_id="u1"),
        Event("e2", "dismiss", "b", 1000, session_id="s1", reason="not_interested"),
        Event("e3", "purchase", "a", 2000, user_id="u2", quantity=1),
    ]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(orjson.dumps(e.to_dict()) for e in events) + b"\n")
    (tmp_path / "catalog.jsonl").write_bytes(orjson.dumps(CatalogItem("a", category=("X", "Y")).to_dict()) + b"\n")
    loaded = load_log(tmp_path / "events.jsonl", progress=False)
    assert loaded.dataset == "jsonl"
    assert [r.event.event_id for r in loaded.records] == ["e2", "e1", "e3"]  # by time, ties in file order
    assert [r.target for r in loaded.records] == [False, True, True]  # dismissals are never targets
    assert loaded.records[1].event == events[0]
    assert [i.item_id for i in loaded.catalog] == ["a"]
    assert loaded.catalog[0].category == ("X", "Y")


def test_bad_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"event_id": "e1", "event_type": "view", "item_id": "a", "timestamp": 1, "user_id": "u"}\n'
        '{"event_type": "view"}\n'
    )
    with pytest.raises(LogFormatError, match=r"bad.jsonl:2"):
        load_log(path, progress=False)


def test_unknown_format_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(LogFormatError, match="unknown log format"):
        sniff_format(path)
    with pytest.raises(LogFormatError, match="no such log file"):
        load_log(tmp_path / "missing.csv")


def test_shared_data_dir_defaults_beside_the_repo_and_is_overridable(tmp_path: Path) -> None:
    assert shared_data_dir("").parts[-2:] == ("shared", "data")
    assert shared_data_dir(str(tmp_path)) == tmp_path
    assert resolve_log_path("jd", str(tmp_path)) == tmp_path / "jd_micro_behaviors_sample" / "events.csv"
    assert resolve_log_path("some/file.jsonl") == Path("some/file.jsonl")


# ------------------------------------------------------------------ Taobao


def test_taobao_maps_behaviours_seconds_and_categories(tmp_path: Path) -> None:
    src = real_file("taobao")
    kinds = {"pv": 0, "cart": 0, "buy": 0, "fav": 0}

    def first_of_each(line: str) -> bool:
        kind = line.split(",")[3]
        kinds[kind] += 1
        return kinds[kind] <= 2

    body = slice_lines(src, tmp_path / "taobao.csv", predicate=first_of_each)
    assert sniff_format(tmp_path / "taobao.csv") == "taobao"
    loaded = load_log(tmp_path / "taobao.csv", progress=False)
    assert len(loaded.records) == len(body) == 8
    mapping = {"pv": ("view", True), "cart": ("add_to_cart", True), "buy": ("purchase", True), "fav": ("view", False)}
    by_id = {r.event.event_id: r for r in loaded.records}
    for line in body:
        user, item, category, behaviour, ts = line.split(",")
        matches = [
            r
            for r in by_id.values()
            if r.event.user_id == user and r.event.item_id == item and r.event.timestamp == int(ts) * 1000
        ]
        assert matches, line
        assert (matches[0].event.event_type, matches[0].target) == mapping[behaviour]
        assert matches[0].event.session_id is None
        cat = {i.item_id: i.category for i in loaded.catalog}[item]
        assert cat == (category,)
    assert loaded.rpop_half_life_h == 24.0


# ------------------------------------------------------------------ JD


def test_jd_places_sessions_back_to_back(tmp_path: Path) -> None:
    src = real_file("jd")
    lines = src.read_text().splitlines()
    first_two = [line for line in lines[1:] if line.split(",")[0] in ("A00001", "A00002")]
    (tmp_path / "jd.csv").write_text("\n".join([lines[0], *first_two]) + "\n")
    rows = [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in first_two]
    records = list(iter_jd(tmp_path / "jd.csv", progress=False))
    assert len(records) == len(rows)
    s1 = [r for r in rows if r["session_id"] == "A00001"]
    end_1 = int(s1[-1]["t_rel_s"]) + int(s1[-1]["time_interval_s"])
    for record, row in zip(records, rows, strict=True):
        offset = 0 if row["session_id"] == "A00001" else end_1
        assert record.event.timestamp == JD_TIMELINE_ORIGIN_MS + (offset + int(row["t_rel_s"])) * 1000
        assert record.event.session_id == row["session_id"] and record.event.user_id is None
        assert record.event.item_id == row["sku"]
        expected = {
            "view": ("view", True),
            "detail": ("view", False),
            "cart": ("add_to_cart", True),
            "purchase": ("purchase", True),
        }[row["event_class"]]
        assert (record.event.event_type, record.target) == expected
    assert {r["event_class"] for r in rows} >= {"view", "detail"}
    loaded = load_log(tmp_path / "jd.csv", progress=False)
    assert loaded.dataset == "jd" and loaded.rpop_half_life_h == 1.0
    cats = {i.item_id: i.category for i in loaded.catalog}
    assert all(cats[r["sku"]] == (r["domain"], r["category"]) for r in rows)


def test_jd_rejects_sessions_out_of_order(tmp_path: Path) -> None:
    src = real_file("jd")
    lines = src.read_text().splitlines()
    a1 = [line for line in lines[1:50] if line.startswith("A00001,")]
    a2 = [line for line in lines[1:200] if line.startswith("A00002,")]
    (tmp_path / "jd.csv").write_text("\n".join([lines[0], *a2, *a1]) + "\n")
    with pytest.raises(LogFormatError, match="ascending"):
        list(iter_jd(tmp_path / "jd.csv", progress=False))


# ------------------------------------------------------------------ Diginetica


def test_diginetica_time_is_first_date_midnight_plus_timeframe(tmp_path: Path) -> None:
    src = real_file("diginetica")
    # session 629 runs past midnight: its later rows carry the next date but keep its first date's base
    body = slice_lines(src, tmp_path / "dig.csv", predicate=lambda line: line.split(";")[0] in ("1", "629"))
    assert sniff_format(tmp_path / "dig.csv") == "diginetica"
    records = list(iter_diginetica(tmp_path / "dig.csv", progress=False))
    assert len(records) == len(body)
    rows = [line.split(";") for line in body]
    from datetime import UTC, datetime

    for record, (session, _user, item, timeframe, _date) in zip(records, rows, strict=True):
        first_date = min(r[4] for r in rows if r[0] == session)
        midnight = int(datetime.fromisoformat(first_date).replace(tzinfo=UTC).timestamp()) * 1000
        assert record.event.timestamp == midnight + int(timeframe)
        assert record.event.session_id == session and record.event.user_id is None
        assert record.event.event_type == "view" and record.target
        assert record.event.item_id == item
    assert len({r[4] for r in rows if r[0] == "629"}) == 2  # the slice really crosses midnight
    loaded = load_log(tmp_path / "dig.csv", progress=False)
    ts = [r.event.timestamp for r in loaded.records]
    assert ts == sorted(ts) and loaded.catalog == []


@pytest.mark.parametrize(
    ("name", "events", "targets_in_test"), [("jd", 146_543, 22_003), ("diginetica", 12_391, 2_479)]
)
def test_whole_datasets_match_the_reference_target_counts(name: str, events: int, targets_in_test: int) -> None:
    loaded = load_log(real_file(name), progress=False)
    assert len(loaded.records) == events
    cut = int(len(loaded.records) * 0.8)
    assert sum(r.target for r in loaded.records[cut:]) == targets_in_test  # evaluation.md's table


def test_max_events_keeps_a_prefix_of_the_timeline() -> None:
    loaded = load_log(real_file("diginetica"), max_events=100, progress=False)
    full = load_log(real_file("diginetica"), progress=False)
    assert [r.event.event_id for r in loaded.records] == [r.event.event_id for r in full.records[:100]]
