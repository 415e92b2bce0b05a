"""Profile the core's per-event work on a simulated shop, and fingerprint its lists.

    .venv/bin/python bench/profile_core.py --size medium --events 2000 [--profile out.html] \
        [--fingerprint lists.json] [--compare lists.json]

Builds the shop as `stream-reco bench` does (catalogue, then the log's first `--seed-events` events
observed), then runs `--events` further events the way a worker does for one-event batches (decode,
observe, recommendation, serialise) and prints the CPU time per stage (`bench/core_cost.stage_costs`).
`--fingerprint` writes every list (items, scores to 6 decimals, reasons) so that a change meant to be
behaviour-neutral can be checked with `--compare` against the lists of the code before it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import core_cost
from stream_reco.core.events import Event
from stream_reco.settings import Settings
from stream_reco.shop.simulate import ShopSimulator


def lists_of(rec, docs):  # type: ignore[no-untyped-def]
    out = []
    for doc in docs:
        event = Event.from_dict(doc)
        r = rec.process(event)
        if r is None:
            out.append(None)
            continue
        out.append([[i.item_id, round(i.score, 6), i.reason] for i in r.items])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="medium")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seed-events", type=int, default=40_000)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--fingerprint", type=Path)
    ap.add_argument("--compare", type=Path)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    settings = Settings()
    sim = ShopSimulator(args.size, args.seed)
    catalog = list(sim.catalog())
    events = sim.events()
    t0 = time.process_time()
    rec, load_s = core_cost.load_catalog(settings, catalog)
    print(f"catalogue {len(catalog)} items in {load_s:.1f} s ({rec.catalog.index_kind})", flush=True)
    first = list(itertools.islice(events, args.seed_events))
    core_cost.observe_all(rec, first)
    print(f"seeded {len(rec.store)} visitors, setup CPU {time.process_time() - t0:.1f} s", flush=True)
    grid = list(itertools.islice(events, args.events))
    if args.fingerprint or args.compare:
        snapshot = dict(rec.store.data)  # type: ignore[attr-defined]
        lists = lists_of(rec, grid)
        rec.store.data = snapshot  # type: ignore[attr-defined]
        if hasattr(rec.store, "decoded"):
            rec.store.decoded.clear()
        if args.fingerprint:
            args.fingerprint.write_bytes(orjson.dumps(lists))
        if args.compare:
            want = orjson.loads(args.compare.read_bytes())
            diff = [i for i, (a, b) in enumerate(zip(want, lists, strict=True)) if a != b]
            print(f"compare: {len(diff)} of {len(lists)} lists differ" + (f", first at {diff[:5]}" if diff else ""))
            if diff:
                i = diff[0]
                print(" want", want[i][:3], "\n got ", lists[i][:3])
    # the lists above ran on a copy of the state; stage costs measure fresh from the same point
    # (covis/popularity statistics moved on, which does not matter for cost)
    results = []
    for _ in range(args.repeats):
        snapshot = dict(rec.store.data)  # type: ignore[attr-defined]
        if args.profile:
            from pyinstrument import Profiler

            prof = Profiler(interval=0.0005)
            prof.start()
            res = core_cost.stage_costs(rec, grid)
            prof.stop()
            args.profile.write_text(prof.output_html())
            print(prof.output_text(unicode=False, color=False, show_all=False))
        else:
            res = core_cost.stage_costs(rec, grid)
        rec.store.data = snapshot  # type: ignore[attr-defined]
        if hasattr(rec.store, "decoded"):
            rec.store.decoded.clear()
        results.append(res)
        print({k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()}, flush=True)


if __name__ == "__main__":
    main()
