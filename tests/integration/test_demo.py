"""`stream-reco demo` end to end on the test session's broker: a short run that must publish lists with
reasons and clean up after itself, and an interrupted run that must leave no worker behind.

The demo is pointed at the session's broker and a data dir under tmp_path: it finds the broker answering, so
it starts none and must stop none (the shared broker still answers afterwards)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stream_reco import broker
from stream_reco.settings import Settings
from stream_reco.shop import demo

pytestmark = pytest.mark.integration

STREAM_RECO = str(Path(sys.executable).with_name("stream-reco"))
MAX_EVENTS = 300
FAST_RATE = 2000.0
STEP5_TIMEOUT_S = 90.0  # simulate + train + worker start on a busy 2-core machine
EXIT_TIMEOUT_S = 45.0  # worker stop (SIGTERM, up to its own timeout) + topic deletion
GONE_TIMEOUT_S = 10.0
# a list item as `format_list` prints it: rank, item id, score, reason
ITEM_LINE = re.compile(r"^\s+\d+\. (\S+)\s+-?\d+\.\d{3}  (\S.*)$", re.MULTILINE)
WORKER_LINE = re.compile(r"worker pid (\d+), app id (\S+)")


async def _topics_with_prefix(settings: Settings, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs())
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()


def test_short_demo_publishes_lists_with_reasons_and_cleans_up(
        kafka_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = kafka_settings.replace(data_dir=str(tmp_path))
    code = demo.run_demo(base, "tiny", 7, FAST_RATE, MAX_EVENTS, 0.0, 0.5)
    out = capsys.readouterr().out
    assert code == 0, out

    (run_dir,) = (tmp_path / "demo").iterdir()
    summary = orjson.loads((run_dir / "demo-summary.json").read_bytes())
    replayed = len((run_dir / "replay.jsonl").read_bytes().splitlines())
    assert replayed == MAX_EVENTS
    assert summary["events_sent"] == replayed
    assert summary["rejected"] == 0
    assert summary["lists"] > 0
    assert summary["run"] == run_dir.name
    assert f"this run's files (simulated shop, model, demo-summary.json): {run_dir}" in out

    items = ITEM_LINE.findall(out)
    assert items, out
    assert all(reason.strip() for _, reason in items)
    assert "\033[K" not in out  # captured output is not a terminal
    status = re.findall(r"^events\s+(\d+) \(\s*(\d+)/s\) \| lists\s+(\d+)", out, re.MULTILINE)
    assert status, out
    assert max(int(total) for total, _, _ in status) >= replayed  # the live line counts what was sent
    assert any(int(rate) > 0 for _, rate, _ in status), status

    prefix = demo.run_prefix(run_dir.name)
    assert asyncio.run(_topics_with_prefix(kafka_settings, prefix)) == []
    assert "deleted the run's" in out
    assert "broker stopped" not in out
    assert broker.is_ready(kafka_settings)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(("sig", "status", "said"), [
    (signal.SIGINT, 130, "Ctrl-C: stopping"),
    (signal.SIGTERM, 143, "SIGTERM: stopping"),
])
def test_interrupted_demo_leaves_no_worker_behind(kafka_settings: Settings, tmp_path: Path,
                                                 sig: signal.Signals, status: int, said: str) -> None:
    env = {**os.environ, **kafka_settings.replace(data_dir=str(tmp_path)).to_env(), "PYTHONUNBUFFERED": "1"}
    env.pop("STREAM_RECO_CONFIG", None)
    proc = subprocess.Popen([STREAM_RECO, "demo", "--size", "tiny", "--max-events", "2000", "--rate", "100"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    worker_pid = None
    try:
        deadline = time.monotonic() + STEP5_TIMEOUT_S
        while not any(line.startswith("5/5") for line in list(lines)):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "step 5/5 never started:\n" + "".join(lines)
            time.sleep(0.1)
        match = next(m for m in map(WORKER_LINE.search, list(lines)) if m)
        worker_pid, app_id = int(match.group(1)), match.group(2)
        assert not _gone(worker_pid)

        proc.send_signal(sig)
        began = time.monotonic()
        assert proc.wait(EXIT_TIMEOUT_S) == status, "".join(lines)
        assert time.monotonic() - began < EXIT_TIMEOUT_S
        reader.join(5)
        output = "".join(lines)
        assert said in output

        gone_by = time.monotonic() + GONE_TIMEOUT_S
        while not (_gone(worker_pid) and _group_gone(worker_pid)) and time.monotonic() < gone_by:
            time.sleep(0.1)
        assert _gone(worker_pid), f"worker {worker_pid} still runs:\n{output}"
        assert _group_gone(worker_pid), f"processes of the worker's group {worker_pid} still run:\n{output}"
        assert asyncio.run(_topics_with_prefix(kafka_settings, app_id)) == []
        assert broker.is_ready(kafka_settings)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if worker_pid is not None and not _group_gone(worker_pid):
            os.killpg(worker_pid, signal.SIGKILL)
