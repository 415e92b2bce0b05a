"""Run the real worker with one probe: a wrapper around `RecoWorker.handle_batch` that logs, per batch,
when it started and ended, its size, and each event's record timestamp (the producer's send time).

Why: the freshness figure is one number from send to receipt. This splits it without touching the
worker's code: `send -> batch start` is broker append + fetch + faust's queues + take_events' window;
`batch start -> end` is our processing (decode, state, recommend, publish for every visitor in the
batch), in wall time and in the thread's CPU time (the difference is time spent waiting for a core or
for the event loop: other tasks, producer sends); the rest is the producer's linger and delivery to the
consumer. The wrapper costs one small JSON line per batch (microseconds against milliseconds).

Usage (what `bench/suite.py` does): run `python bench/latency_probe.py TRACE_FILE` with the worker's
STREAM_RECO_* environment instead of `stream-reco worker`; read the file with `analyse`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

#: faust reports record timestamps in seconds; the trace keeps milliseconds
MS = 1000.0
#: set (ms) to run the worker with another consumer fetch_max_wait_ms than faust's built-in 1500
FETCH_MAX_WAIT_ENV = "BENCH_FETCH_MAX_WAIT_MS"


def install(trace_path: Path) -> None:
    """Wrap `RecoWorker.handle_batch` so every batch appends one JSON line to `trace_path`."""
    from stream_reco.stream import app as app_module

    original = app_module.RecoWorker.handle_batch
    out = trace_path.open("ab", buffering=0)

    async def traced(self: Any, batch: Sequence[Any]) -> None:
        start, cpu = time.time(), time.thread_time()
        await original(self, batch)
        end, cpu = time.time(), time.thread_time() - cpu
        sent = [fe.message.timestamp * MS for fe in batch if fe.message.timestamp]
        out.write(orjson.dumps({"start": start * MS, "end": end * MS, "cpu": cpu * MS, "n": len(batch),
                                "sent": sent}) + b"\n")

    app_module.RecoWorker.handle_batch = traced  # type: ignore[method-assign]


def override_fetch_max_wait(ms: int) -> None:
    """Experiment hook: run the worker's events consumer with another `fetch_max_wait_ms`. The worker sets
    `stream_reco.stream.app.FETCH_MAX_WAIT_MS` on faust's consumer (faust itself hard-codes 1500), so
    `BENCH_FETCH_MAX_WAIT_MS=1500` reproduces faust's behaviour before that change."""
    from stream_reco.stream import app as app_module

    app_module.FETCH_MAX_WAIT_MS = ms


def analyse(trace_path: Path, since_ms: float, until_ms: float) -> dict[str, Any]:
    """Split the time between `since_ms` and `until_ms` (wall clock, ms) into waiting and processing."""
    from bench.streaming import percentiles

    waits: list[float] = []
    batch_ms: list[float] = []
    batch_cpu_ms: list[float] = []
    sizes: list[float] = []
    per_event_ms: list[float] = []
    if trace_path.exists():
        for line in trace_path.read_bytes().splitlines():
            rec = orjson.loads(line)
            if not since_ms <= rec["start"] <= until_ms:
                continue
            waits.extend(rec["start"] - s for s in rec["sent"])
            batch_ms.append(rec["end"] - rec["start"])
            batch_cpu_ms.append(rec["cpu"])
            sizes.append(rec["n"])
            per_event_ms.append((rec["end"] - rec["start"]) / max(rec["n"], 1))
    return {
        "send_to_batch_start_ms": percentiles(waits),
        "batch_processing_ms": percentiles(batch_ms),
        "batch_processing_cpu_ms": percentiles(batch_cpu_ms),
        "batch_size": percentiles(sizes),
        "processing_per_event_ms": percentiles(per_event_ms),
        "batches": len(batch_ms),
    }


def main(argv: Sequence[str]) -> None:
    from stream_reco.settings import Settings
    from stream_reco.stream.worker import run_worker

    install(Path(argv[0]))
    if os.environ.get(FETCH_MAX_WAIT_ENV):
        override_fetch_max_wait(int(os.environ[FETCH_MAX_WAIT_ENV]))
    sys.argv = [sys.argv[0]]  # faust's command line parser must not see the trace path
    run_worker(Settings.load(), loglevel="warn")


if __name__ == "__main__":
    main(sys.argv[1:])
