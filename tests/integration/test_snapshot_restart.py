"""A restarted worker takes its shop-wide statistics from its snapshot, not from replaying the events topic.

A worker learns that a desk and a chair go together, then stops cleanly (it writes its statistics snapshot).
Restarted, it must count no event's statistics again (the per-partition rebuild learns 0 events: everything
below the snapshot's offsets is in it), and a new visitor who views the desk still gets the chair "Often viewed
with" it: the co-visitation came back from the snapshot. A corrupt snapshot is logged and ignored: the worker
rebuilds from the topic as without one, and the list is the same.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from stream_reco.settings import Settings
from stream_reco.stream.snapshots import snapshot_path
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, diagnostics, send_events, send_items, wait_until
from .test_shared_stats import ANCHOR, PARTNER, T0, catalog

pytestmark = pytest.mark.integration

EVIDENCE_VISITORS = 12
TIMEOUT_S = 90.0
REBUILT = re.compile(r"partition (\d+): statistics rebuilt from (\d+) events")


def rebuilt_counts(worker: WorkerProcess) -> dict[int, int]:
    return {int(m.group(1)): int(m.group(2)) for line in worker.lines if (m := REBUILT.search(line))}


def test_restart_takes_statistics_from_the_snapshot_and_ignores_a_corrupt_one(
        unique_settings: Settings, tmp_path: Path) -> None:
    settings = unique_settings.replace(list_size=5, data_dir=str(tmp_path), web_port=0)
    ensure_topics(settings)
    send_items(settings, catalog())
    reader = TopicReader(settings, settings.recommendations_topic)
    ids = itertools.count()

    def event(visitor: str, item: str) -> dict[str, Any]:
        n = next(ids)
        return {"event_id": f"sn-{n}", "event_type": "view", "item_id": item, "user_id": visitor,
                "timestamp": T0 + n * 1_000}

    def probe(worker: WorkerProcess, visitor: str) -> dict[str, str]:
        sent = event(visitor, ANCHOR)
        send_events(settings, [sent])
        reader.wait_for(lambda _: reader.latest().get(visitor, {}).get("trigger_event_id") == sent["event_id"],
                        timeout=TIMEOUT_S)
        doc = reader.latest().get(visitor)
        assert doc is not None, f"no list for {visitor}\n{diagnostics([worker])}"
        return {i["item_id"]: i["reason"] for i in doc["items"]}

    first = WorkerProcess(settings, name="first", loglevel="info")
    try:
        first.wait_ready()
        evidence = [f"u-ev-{i}" for i in range(EVIDENCE_VISITORS)]
        send_events(settings, [event(v, item) for v in evidence for item in (ANCHOR, PARTNER)])
        reader.wait_for(lambda _: all(v in reader.latest() for v in evidence), timeout=TIMEOUT_S)
        assert probe(first, "u-probe-0").get(PARTNER, "").startswith("Often viewed with")
    finally:
        first.stop()
    assert any("statistics snapshot saved" in line for line in first.lines), diagnostics([first])
    path = snapshot_path(settings)
    assert path.exists() and path.stat().st_size > 0

    second = WorkerProcess(settings, name="second", loglevel="info")
    try:
        second.wait_ready()
        reasons = probe(second, "u-probe-1")
        restored = [line for line in second.lines if "statistics restored from snapshot" in line]
        assert restored, diagnostics([second])
        # every partition with events is rebuilt: on its first event, or when the repairs look at its commit
        wait_until(lambda: len(rebuilt_counts(second)) == settings.partitions, TIMEOUT_S,
                   lambda: f"partitions rebuilt: {rebuilt_counts(second)}\n{diagnostics([second])}")
        counts = rebuilt_counts(second)
        assert not any(counts.values()), (
            f"events counted again after a restart from a snapshot: {counts}\n{diagnostics([second])}")
        assert reasons.get(PARTNER, "").startswith("Often viewed with"), (reasons, diagnostics([second]))
    finally:
        second.stop()

    path.write_bytes(b"SRSTATS\n" + b"\x00" * 64)  # a snapshot's magic, then nonsense
    third = WorkerProcess(settings, name="third", loglevel="info")
    try:
        third.wait_ready()
        reasons = probe(third, "u-probe-2")
        assert any("statistics snapshot" in line and "ignored" in line for line in third.lines), diagnostics([third])
        wait_until(lambda: len(rebuilt_counts(third)) == settings.partitions, TIMEOUT_S,
                   lambda: f"partitions rebuilt: {rebuilt_counts(third)}\n{diagnostics([third])}")
        assert sum(rebuilt_counts(third).values()) >= 2 * EVIDENCE_VISITORS, diagnostics([third])
        assert reasons.get(PARTNER, "").startswith("Often viewed with"), (reasons, diagnostics([third]))
    finally:
        third.stop()
