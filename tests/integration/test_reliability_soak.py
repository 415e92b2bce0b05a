"""The soak mode of the benchmarks (bench/soak.py) runs end to end and writes a complete result.

CI runs it for 20 s (the real soak is `.venv/bin/python bench/soak.py --minutes 10 --output FILE.json`); this
checks the result's shape only: whether lag, memory or latency grow is what a long run is for, and 20 s on a
shared machine says nothing about it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream_reco.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SOAK_MINUTES = 0.34  # ~20 s
SAMPLE_S = 2.0
MIN_SAMPLES = 5
#: worker start + calibration burst + 20 s soak + drain, on 2 busy cores
RUN_TIMEOUT_S = 240
METRICS = ("rss_mb", "lag", "latency_p99_ms")
SAMPLE_FIELDS = {"t_s", "sent", "lists", "lag", "rss_mb", "latency_p50_ms", "latency_p99_ms"}


def test_short_soak_writes_a_complete_result(kafka_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", str(SOAK_MINUTES), "--sample-s", str(SAMPLE_S),
         "--calibrate-events", "1000", "--size", "tiny", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )
    assert out.is_file(), proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert proc.returncode == 0 and result["complete"], (result.get("error"), proc.stdout[-2000:], proc.stderr[-2000:])
    assert not result["worker_crashed"]
    assert result["max_rate_eps"] > 0 and result["rate_eps"] == pytest.approx(result["max_rate_eps"] / 2, rel=0.01)
    assert result["drained"] and result["sent"] > 0
    samples = result["samples"]
    assert len(samples) >= MIN_SAMPLES and all(set(s) == SAMPLE_FIELDS for s in samples)
    assert all(s["rss_mb"] > 0 for s in samples)
    assert set(result["growth"]) == set(METRICS) and all("grows" in g for g in result["growth"].values())
    assert result["grows"] == sorted(m for m in METRICS if result["growth"][m]["grows"])
    assert "stable" in proc.stdout or "grows" in proc.stdout
