"""The pure parts of the restart and statistics-memory bench sections (bench/restart.py, bench/stats_memory.py).

Why: the sections themselves need a broker and minutes; what they conclude rests on parsing the worker's log
lines, on the ratio arithmetic and on the memory stepping, which are checked here in milliseconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's bench/ (not part of the package)

from bench import report, restart, stats_memory
from stream_reco.settings import Settings
from stream_reco.shop.simulate import ShopSimulator

# Worker output as faust's logging prints it, with the lines issue 12 adds (the interface the bench builds on)
LOG = [
    "[2026-12-07 06:41:24,422] [17871] [WARNING] stream-reco worker ready ",
    "[2026-12-07 06:41:24,429] [17871] [INFO] partition 3: first event at offset 3327 ",
    "[2026-12-07 06:41:25,171] [17871] [INFO] partition 3: statistics rebuilt from 3327 events (offsets < 3327, "
    "counted from 0) in 0.74 s; recovery region up to offset 3327 ",
    "[2026-12-07 06:41:27,342] [17871] [WARNING] partition 2: 4 messages (offsets 3388-3391) were never applied: "
    "the consumer skipped them; applying them now ",
    "[2026-12-07 06:41:27,342] [17871] [INFO] partition 2: statistics rebuilt from 3388 events (offsets < 3392, "
    "counted from 0) in 1.12 s; recovery region up to offset 3392 ",
    "[2026-12-07 06:41:28,000] [17871] [INFO] partition 2: statistics rebuilt from 12 events",
    "[2026-12-07 06:41:29,000] [17871] [INFO] statistics restored from snapshot /tmp/d/stats/snap.bin in 0.31 s",
    "[2026-12-07 06:42:00,000] [17871] [INFO] statistics snapshot saved: /tmp/d/stats/snap.bin (1048576 bytes) "
    "in 0.25 s",
    "[2026-12-07 06:43:00,000] [17871] [INFO] statistics snapshot saved: /tmp/my dir/snap.bin (2,097,152 bytes) "
    "in 0.5 s",
    "[2026-12-07 06:43:01,000] [17871] [WARNING] partition 4: no event reached the worker for 15 s although the log "
    "holds offsets 818-818; re-reading from offset 818",
]


def test_parse_log_sums_rebuilt_events_per_partition_and_takes_the_last_snapshot() -> None:
    parsed = restart.parse_log(LOG)
    assert parsed["rebuilt_events"] == 3327 + 3388 + 12
    assert parsed["rebuilt_by_partition"] == {"2": 3400, "3": 3327}
    assert parsed["rebuilds"] == 3
    assert parsed["rebuild_s_sum"] == pytest.approx(0.74 + 1.12)
    assert parsed["missed_applied"] == 4
    assert parsed["delivery_stalls"] == 1
    assert parsed["snapshot_restored"] == {"path": "/tmp/d/stats/snap.bin", "seconds": 0.31}
    # the shutdown snapshot is the last one written; a path with spaces and a size with separators still parse
    assert parsed["snapshot_saved"] == {"path": "/tmp/my dir/snap.bin", "bytes": 2_097_152, "seconds": 0.5}


def test_parse_log_of_a_worker_without_snapshots() -> None:
    parsed = restart.parse_log(LOG[:3])
    assert parsed["rebuilt_events"] == 3327
    assert parsed["snapshot_saved"] is None
    assert parsed["snapshot_restored"] is None
    assert parsed["missed_applied"] == 0
    assert parsed["delivery_stalls"] == 0


def _start(served: float, ready: float = 4.0) -> dict[str, float]:
    return {"served_s": served, "ready_s": ready}


def test_summary_ratios_and_growth() -> None:
    rows = [
        {"events": 25_000, "off": _start(10.0), "on": _start(5.0)},
        {"events": 100_000, "off": _start(30.0), "on": _start(6.0)},
    ]
    summary = restart.summarise(rows)
    first, last = summary["per_retention"]
    assert first["on_vs_off"] == pytest.approx(0.5)
    assert first["speedup"] == pytest.approx(2.0)
    assert last["on_vs_off"] == pytest.approx(0.2)
    assert summary["growth"] == pytest.approx({"events": 4.0, "off": 3.0, "on": 1.2})
    assert "x3.00 off" in summary["sentence"] and "x1.20 on" in summary["sentence"]


def test_summary_without_snapshot_starts() -> None:
    rows = [{"events": 5_000, "off": {**_start(6.0), "delivery_stalls": 1}, "on": None},
            {"events": 20_000, "off": _start(12.0), "on": None}]
    summary = restart.summarise(rows)
    assert summary["delivery_stalls"] == 1 and "delivery stall" in summary["sentence"]
    assert [r["on_vs_off"] for r in summary["per_retention"]] == [None, None]
    assert summary["growth"]["off"] == pytest.approx(2.0)
    assert summary["growth"]["on"] is None
    assert "snapshots not measured" in summary["sentence"]


def test_probes_cover_every_partition_once() -> None:
    partitions = 6
    probes = restart.probe_events(partitions, "t", "sku-1", 1_000)
    ids = list(range(partitions))
    placed = [DefaultPartitioner()(d["session_id"].encode(), ids, ids) for d in probes]
    assert placed == ids
    assert len({d["event_id"] for d in probes}) == partitions


def test_snapshot_support_follows_the_settings_field() -> None:
    assert restart.snapshot_supported() == hasattr(Settings(), restart.SNAPSHOT_SETTING)


def test_deep_size_counts_shared_objects_once() -> None:
    shared = "x" * 1000
    a, a_strings = stats_memory.deep_size([{"k": [shared, 1.5]}])
    seen: set[int] = set()
    stats_memory.deep_size([{"k": [shared, 1.5]}], seen)
    _, again_strings = stats_memory.deep_size([[shared]], seen)
    assert a > 0 and a_strings >= 1000
    assert again_strings == 0  # already counted by the first structure


def test_memory_stepping_on_a_tiny_shop_levels_off_at_tight_caps() -> None:
    from bench import core_cost

    settings = Settings()
    sim = ShopSimulator("tiny", seed=3)
    plan = stats_memory.MemoryPlan(items=200, visitors=50, steps=(300, 800, 1500), tight_until=800)
    base, _ = core_cost.load_catalog(settings, sim.catalog())
    runs = stats_memory.learners(settings, plan, base.catalog)
    rows = stats_memory.step_through(sim.events(), plan.steps, runs)
    assert [r["events"] for r in rows] == [300, 800, 1500]
    loose, tight = (run.label for run in runs)
    assert set(rows[0]["series"]) == {loose, tight}
    assert set(rows[-1]["series"]) == {loose}  # the tight series stopped at `tight_until`
    caps = runs[1].caps
    for row in rows[:2]:
        keys = row["series"][tight]["keys"]
        assert keys["covis_items"] <= caps["covis_items"] * 1.1 + 1
        assert keys["popularity_items"] <= caps["popularity_items"] * 1.1 + 1
        assert keys["sessions"] <= caps["sessions"]
        assert keys["contexts"] <= caps["contexts"]
        assert keys["covis_neighbours_per_item_max"] <= caps["covis_neighbours_per_item"]
    grown = [r["series"][loose]["total_bytes"] for r in rows]
    assert grown == sorted(grown) and grown[0] > 0
    assert rows[0]["series"][loose]["keys"]["sessions"] > 0  # session-kNN is on for the measurement
    summary = stats_memory.summarise(rows)
    assert len(summary[loose]["bytes_per_million_events"]) == 3
    assert len(summary[loose]["marginal_bytes_per_million_events"]) == 2
    assert summary[tight]["events_final"] == 800
    # the report renders both sections from the summaries alone
    result = {"stats_memory": {"method": "m", "plan": {"items": 200, "visitors": 50}, "weight_sknn": 1.0,
                               "caps": {run.label: run.caps for run in runs}, "steps": rows, "summary": summary}}
    assert "Statistics memory" in "\n".join(report._stats_memory_markdown(result))
    assert report._stats_memory_lines(result)
