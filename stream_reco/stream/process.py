"""A stream-reco worker as a child process, configured only through STREAM_RECO_* variables.

Used by the demo, the benchmarks and the integration tests: they run workers exactly as a deployment does,
and read the worker's output to know when it is ready and whether it crashed. Like a deployment's supervisor
(systemd `Restart=on-failure`, Kubernetes, docker-compose `restart:`), it starts a worker again that exits
asking for a restart (`EXIT_RESTART`: faust wedged, stream/repairs.py), and counts the restarts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from stream_reco.exit_codes import EXIT_RESTART
from stream_reco.settings import Settings
from stream_reco.stream.app import READY_LINE

STREAM_RECO = str(Path(sys.executable).with_name("stream-reco"))
READY_TIMEOUT_S = 90.0


class WorkerProcess:
    """A `stream-reco worker` child process whose output is captured for diagnosis.

    `on_line` (optional) sees every output line as it arrives (the demo prints them). The HTTP endpoint is
    off by default (`web_port=0`) so several workers can run on one machine.
    """

    def __init__(self, settings: Settings, name: str = "worker", loglevel: str = "warn",
                 on_line: Callable[[str], None] | None = None, web_port: int = 0,
                 argv: list[str] | None = None, drop_env: Iterable[str] = ()) -> None:
        """`argv` replaces the `stream-reco worker` command line (the benchmark runs it under a probe);
        `drop_env` names variables of this process the worker must not inherit."""
        self.on_line = on_line
        self.settings = settings
        self.name = name
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        env.pop("STREAM_RECO_CONFIG", None)
        for variable in drop_env:
            env.pop(variable, None)
        self.started = time.monotonic()
        self._argv = argv or [STREAM_RECO, "worker", "--loglevel", loglevel, "--web-port", str(web_port)]
        self._env = env
        #: times the worker exited with `EXIT_RESTART` and was started again
        self.restarts = 0
        self._stopping = False
        self._lock = threading.Lock()
        self.proc = self._spawn()
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self._argv, env=self._env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    def _read(self) -> None:
        while True:
            proc = self.proc
            assert proc.stdout is not None
            for line in proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if self.on_line is not None:
                    self.on_line(line.rstrip("\n"))
                if READY_LINE in line:
                    self._ready.set()
            with self._lock:
                if proc.wait() != EXIT_RESTART or self._stopping:
                    return
                self.restarts += 1
                self.lines.append(f"[{self.name} exited with {EXIT_RESTART}: started again, restart {self.restarts}]")
                self.proc = self._spawn()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if not self._reader.is_alive() and self.proc.poll() is not None:  # exited, and not started again
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.output()}")

    def output(self, last: int = 60) -> str:
        return "\n".join(self.lines[-last:])

    def stop(self, timeout: float = 30.0) -> int:
        with self._lock:
            self._stopping = True
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9: no chance to commit, flush or leave the group."""
        with self._lock:
            self._stopping = True
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def crashed(self) -> bool:
        text = "\n".join(self.lines)
        return "Traceback" in text or "Crashed reason" in text
