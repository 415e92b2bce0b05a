"""Which worker settings decide freshness: the same paced load against workers that differ in one knob.

Why a separate script: `stream-reco bench` measures the configured system; this answers "what if" for
the settings that sit on the latency path (take_events' `coalesce_ms`, `producer_linger_ms`,
`commit_interval_s`, `batch_size`) and for the environment (`env:OPENBLAS_NUM_THREADS=2` reproduces the
BLAS default that app.py now overrides). Variants alternate within each repeat, so a shared machine's
drift hits them alike, and the table shows medians over repeats.

Each worker gets fresh topics and app id, its catalogue and visitor states (as in the suite), a warm-up
burst, one backlog drain (its throughput) and a paced phase at `--rate` events/s (default: `--fraction`
of the base variant's drain rate), with the per-batch breakdown of `latency_probe.py`.

Usage: `.venv/bin/python bench/knobs.py --variants base,coalesce_ms=1,producer_linger_ms=0 --repeats 2
--output knobs.json` (about a minute per worker on a 2-core machine with 10 k items).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make the `bench` namespace package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from bench import latency_probe, streaming, suite
from stream_reco.settings import Settings
from stream_reco.shop.client import Prepared

ENV_PREFIX = "env:"
DEFAULT_VARIANTS = "base,coalesce_ms=1,producer_linger_ms=0,commit_interval_s=5,batch_size=16"
WARMUP_EVENTS = 300
DRAIN_SECONDS = 5.0
SEED_EVENTS = 5_000


def parse_variant(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """`base`, `setting=value` or `env:NAME=value` (several joined by '+') -> (settings, environment)."""
    settings: dict[str, str] = {}
    env: dict[str, str] = {}
    if text == "base":
        return settings, env
    for part in text.split("+"):
        name, _, value = part.partition("=")
        if name.startswith(ENV_PREFIX):
            env[name[len(ENV_PREFIX):]] = value
        else:
            settings[name] = value
    return settings, env


async def measure(name: str, base: Settings, shop: suite.ShopData, rate: float | None, seconds: float,
                  fraction: float) -> dict[str, Any]:
    """One worker with this variant: ready time, drain rate, and freshness at `rate` (or fraction x drain)."""
    changes, env = parse_variant(name)
    names = streaming.RunNames(f"bench-knobs-{uuid.uuid4().hex[:6]}")
    data_dir = Path(tempfile.mkdtemp(prefix="stream-reco-knobs-"))
    # the base settings with this variant's changes, coerced and validated like environment variables
    settings = Settings.load(env={**base.to_env(), **{f"STREAM_RECO_{k.upper()}": v for k, v in changes.items()}})
    settings = names.settings(settings, data_dir, catalog_wait_s=streaming.READY_TIMEOUT_S)
    await streaming.create_topics(settings, names)
    await streaming.produce_prepared(settings, (
        Prepared(settings.catalog_topic, d["item_id"].encode(), orjson.dumps(d)) for d in shop.catalog))
    await streaming.seed_changelog(settings, shop.seeded)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        worker = streaming.WorkerProcess(settings, trace=data_dir / "batches.jsonl")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    meter = streaming.ListMeter(settings)
    out: dict[str, Any] = {"variant": name}
    try:
        out["ready_s"] = await worker.wait_ready()
        await meter.start()
        out["threads"] = worker.threads()
        warm = shop.supply.take(WARMUP_EVENTS)
        first = await streaming.worker_drain(worker, meter, settings,
                                             [shop.supply.encode(d, settings.events_topic) for d in warm],
                                             streaming.final_triggers(warm))
        docs = shop.supply.take(max(WARMUP_EVENTS, int(first["events_per_s"] * DRAIN_SECONDS)))
        out["drain"] = await streaming.worker_drain(worker, meter, settings,
                                                    [shop.supply.encode(d, settings.events_topic) for d in docs],
                                                    streaming.final_triggers(docs))
        target = rate if rate else fraction * out["drain"]["events_per_s"]
        phase = await streaming.paced_phase(settings, meter, shop.supply, target, seconds)
        phase["breakdown"] = latency_probe.analyse(data_dir / "batches.jsonl", *phase["window_ms"])
        out["paced"] = phase
    finally:
        await meter.stop()
        worker.stop()
        with contextlib.suppress(Exception):
            await streaming.delete_run_topics(settings, names.prefix)
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


def table(runs: list[dict[str, Any]]) -> str:
    """Medians over repeats per variant."""
    lines = [f"{'variant':<36} {'drain/s':>8} {'cpu ms/ev':>9} {'p50':>7} {'p95':>7} {'p99':>7} "
             f"{'wait p50':>8} {'batch p50':>9}"]
    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["variant"], []).append(run)
    for name, rs in by.items():
        def med(get: Any, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(get(r) for r in rs)

        lines.append(
            f"{name:<36} {med(lambda r: r['drain']['events_per_s']):>8.0f} "
            f"{med(lambda r: r['drain']['cpu_ms_per_event']):>9.2f} "
            + " ".join(f"{med(lambda r, p=p: r['paced']['latency_ms'][p]):>7.1f}" for p in ("p50", "p95", "p99"))
            + f" {med(lambda r: r['paced']['breakdown']['send_to_batch_start_ms']['p50']):>8.1f}"
            + f" {med(lambda r: r['paced']['breakdown']['batch_processing_ms']['p50']):>9.1f}"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Settings.load()
    plan = suite.ShopPlan("knobs", args.items, args.visitors, SEED_EVENTS, (args.fraction,))
    shop = suite.prepare_shop(plan, suite.PROFILES["quick"], base, args.seed, False, lambda: 1.0)
    variants = [v for v in args.variants.split(",") if v]
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for i in range(args.repeats):
        order = variants if i % 2 == 0 else variants[::-1]
        for name in order:
            suite.log(f"knobs: repeat {i + 1}, variant {name}")
            try:
                runs.append(await measure(name, base, shop, args.rate, args.seconds, args.fraction))
            except (TimeoutError, RuntimeError) as exc:  # one failed worker must not lose the others' figures
                suite.log(f"knobs: variant {name} failed: {exc}")
                failures.append({"variant": name, "repeat": i, "error": str(exc)})
    return {"args": vars(args), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_end": list(os.getloadavg()), "runs": runs, "failures": failures}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--visitors", type=int, default=10_000)
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="comma-separated: base, setting=value, env:NAME=value; '+' combines")
    p.add_argument("--rate", type=float, default=None, help="events/s of the paced phase (default: --fraction)")
    p.add_argument("--fraction", type=float, default=0.5, help="of each variant's own drain rate")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    print(table(result["runs"]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
