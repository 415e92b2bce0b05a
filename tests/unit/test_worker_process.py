"""`WorkerProcess` (tests, demo, benchmarks) restarts a worker that exits asking for a restart, as a supervisor
(systemd, Kubernetes, docker-compose `restart:`) does, and counts the restarts (issue 11, defect 9)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from stream_reco.exit_codes import EXIT_RESTART
from stream_reco.settings import Settings
from stream_reco.stream.app import READY_LINE
from stream_reco.stream.process import WorkerProcess


def script(marker: Path, first_exit: int) -> list[str]:
    code = (f"import pathlib, sys, time\nm = pathlib.Path({str(marker)!r})\n"
            f"if not m.exists():\n    m.write_text('x')\n    print('wedged', flush=True)\n    sys.exit({first_exit})\n"
            f"print({READY_LINE!r}, flush=True)\ntime.sleep(60)\n")
    return [sys.executable, "-c", code]


def test_a_restart_exit_is_restarted_and_counted(tmp_path: Path) -> None:
    worker = WorkerProcess(Settings.load(env={}), argv=script(tmp_path / "m", EXIT_RESTART))
    try:
        worker.wait_ready(timeout=30)
        assert worker.restarts == 1 and worker.proc.poll() is None
        assert "wedged" in worker.output() and READY_LINE in worker.output()
    finally:
        worker.stop()


def test_any_other_exit_is_not_restarted(tmp_path: Path) -> None:
    worker = WorkerProcess(Settings.load(env={}), argv=script(tmp_path / "m", 1))
    deadline = time.monotonic() + 20
    while worker.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert worker.proc.returncode == 1 and worker.restarts == 0
    worker.stop()


def test_compose_restarts_a_worker_that_exits_on_failure() -> None:
    """docker-compose is the supervisor of the compose deployment: it must restart a worker that exits non-zero."""
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    assert compose["services"]["worker"]["restart"] in ("on-failure", "unless-stopped", "always")
