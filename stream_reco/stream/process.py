"""A stream-reco worker as a child process, configured only through STREAM_RECO_* variables.

Used by the demo, the benchmarks and the integration tests: they run workers exactly as a deployment does,
and read the worker's output to know when it is ready and whether it crashed.
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
        self.proc = subprocess.Popen(
            argv or [STREAM_RECO, "worker", "--loglevel", loglevel, "--web-port", str(web_port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.on_line is not None:
                self.on_line(line.rstrip("\n"))
            if READY_LINE in line:
                self._ready.set()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.output()}")

    def output(self, last: int = 60) -> str:
        return "\n".join(self.lines[-last:])

    def stop(self, timeout: float = 30.0) -> int:
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
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def crashed(self) -> bool:
        text = "\n".join(self.lines)
        return "Traceback" in text or "Crashed reason" in text
