"""Sample a real worker's stacks with py-spy while it drains a backlog and serves a paced load.

    .venv/bin/pip install py-spy        # not a dependency of the package
    .venv/bin/python bench/profile_worker.py --items 100000 --visitors 100000 --output /tmp/worker.txt

Prepares the shop as `stream-reco bench` does (catalogue, seeded visitor states), starts one worker, warms it
up, then records its stacks (py-spy, `--nonblocking`, all threads, idle excluded) over `--drains` backlog
drains and a paced phase at `--fraction` of the drain rate. Prints the drain figures and the functions with
the largest inclusive share of the samples; `--output` keeps py-spy's raw collapsed stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from bench import streaming, suite
from stream_reco.settings import Settings
from stream_reco.shop.client import Prepared

PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def summarise(raw: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    out = [f"{total} samples"]
    out += [f"{100 * c / total:6.1f}% incl  {f}" for f, c in inclusive.most_common(top)]
    out += ["--- self"] + [f"{100 * c / total:6.1f}% self  {f}" for f, c in own.most_common(top // 2)]
    return "\n".join(out)


async def run(args: argparse.Namespace) -> None:
    base = Settings.load()
    plan = suite.ShopPlan("profile", args.items, args.visitors, args.seed_events, (0.5,))
    shop = suite.prepare_shop(plan, suite.PROFILES["quick"], base, args.seed, False, lambda: 1.0)
    names = streaming.RunNames(f"bench-prof-{uuid.uuid4().hex[:6]}")
    data_dir = Path(tempfile.mkdtemp(prefix="stream-reco-prof-"))
    settings = names.settings(base, data_dir, catalog_wait_s=streaming.READY_TIMEOUT_S)
    await streaming.create_topics(settings, names)
    await streaming.produce_prepared(settings, (
        Prepared(settings.catalog_topic, d["item_id"].encode(), orjson.dumps(d)) for d in shop.catalog))
    await streaming.seed_changelog(settings, shop.seeded)
    worker = streaming.WorkerProcess(settings)
    meter = streaming.ListMeter(settings)
    spy = None
    try:
        ready = await worker.wait_ready()
        print(f"ready in {ready:.1f} s", flush=True)
        await meter.start()
        warm = shop.supply.take(300)
        first = await streaming.worker_drain(worker, meter, settings,
                                             [shop.supply.encode(d, settings.events_topic) for d in warm],
                                             streaming.final_triggers(warm))
        print("warm-up", first, flush=True)
        spy = subprocess.Popen([PY_SPY, "record", "-p", str(worker.proc.pid), "-r", "250", "--nonblocking",
                                "--format", "raw", "-o", str(args.output), "-d", "600"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)
        for _ in range(args.drains):
            docs = shop.supply.take(max(300, int(first["events_per_s"] * args.drain_seconds)))
            d = await streaming.worker_drain(worker, meter, settings,
                                             [shop.supply.encode(x, settings.events_topic) for x in docs],
                                             streaming.final_triggers(docs))
            print("drain", {k: round(v, 3) for k, v in d.items()}, flush=True)
        if args.paced_seconds > 0:
            phase = await streaming.paced_phase(settings, meter, shop.supply, args.rate, args.paced_seconds)
            print("paced", args.rate, phase["latency_ms"], flush=True)
    finally:
        if spy is not None:
            spy.send_signal(2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        await meter.stop()
        worker.stop()
        with contextlib.suppress(Exception):
            await streaming.delete_run_topics(settings, names.prefix)
        shutil.rmtree(data_dir, ignore_errors=True)
    if args.output.exists():
        print(summarise(args.output, args.top))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--visitors", type=int, default=10_000)
    p.add_argument("--seed-events", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--drains", type=int, default=2)
    p.add_argument("--drain-seconds", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--paced-seconds", type=float, default=10.0)
    p.add_argument("--top", type=int, default=60)
    p.add_argument("--output", type=Path, default=Path("/tmp/worker-stacks.txt"))
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
