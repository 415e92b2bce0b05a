"""`stream-reco bench --quick` writes a complete, valid result: every section, finite numbers, a PNG.

Only completeness is asserted, never a figure: throughput and latency depend on the machine and on what
else runs on it, and a test that fails when a colleague's job is busy would teach people to ignore it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_reco.settings import Settings

pytestmark = pytest.mark.integration

STREAM_RECO = str(Path(sys.executable).with_name("stream-reco"))
#: the quick profile aims at < 3.5 minutes (pages included); leave room for a busy shared machine
QUICK_TIMEOUT_S = 340
SECTIONS = ("environment", "throughput", "freshness", "ann", "memory", "scaling")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _numbers(doc: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(doc, bool):
        return []
    if isinstance(doc, int | float):
        return [(path, float(doc))]
    if isinstance(doc, dict):
        return [n for k, v in doc.items() for n in _numbers(v, f"{path}.{k}")]
    if isinstance(doc, list):
        return [n for i, v in enumerate(doc) for n in _numbers(v, f"{path}[{i}]")]
    return []


@pytest.mark.timeout(QUICK_TIMEOUT_S + 30)
def test_quick_bench_writes_a_complete_valid_result(kafka_settings: Settings, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    env = {**os.environ, **kafka_settings.to_env()}
    env.pop("STREAM_RECO_CONFIG", None)
    proc = subprocess.run(
        [STREAM_RECO, "bench", "--quick", "--output", str(output)],
        env=env, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = orjson.loads(output.read_bytes())  # strict JSON: NaN or Infinity would not parse
    assert result["problems"] == []
    for name in SECTIONS:
        assert isinstance(result[name], dict) and result[name], f"section {name} missing or empty"

    assert result["throughput"]["worker_events_per_s"] > 0
    assert result["throughput"]["passthrough_events_per_s"] > 0
    assert {lv["fraction"] for lv in result["freshness"]["levels"]} == {0.25, 0.5, 0.9}
    for level in result["freshness"]["levels"]:
        assert level["complete"] and level["reflected"] == level["events"]
        assert {"p50", "p95", "p99"} <= set(level["latency_ms"])
    assert result["ann"]["sizes"] and all(0.0 <= s["annoy"]["recall"] <= 1.0 for s in result["ann"]["sizes"])
    assert result["memory"]["bytes_per_visitor_serialised_mean"] > 0
    assert result["memory"]["worker"]["rss_end_bytes"] > 0
    assert len(result["scaling"]["worker"]) >= 2 and result["scaling"]["sentence"]
    pages = result["pages"]  # two workers: pulls direct and forwarded, and the stock-change refresh
    assert "error" not in pages, pages.get("error")
    assert pages["pulls"]["ms"]["direct"]["n"] > 0 and pages["pulls"]["ms"]["forwarded"]["n"] > 0
    assert pages["refresh"]["items"] and all(i["affected"] > 0 for i in pages["refresh"]["items"])

    numbers = _numbers(result)
    assert numbers, "no numbers at all"
    bad = [path for path, value in numbers if not math.isfinite(value)]
    assert not bad, f"non-finite numbers at {bad[:5]}"

    png = output.with_suffix(".png")
    assert png.read_bytes()[: len(PNG_SIGNATURE)] == PNG_SIGNATURE
