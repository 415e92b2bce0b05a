"""`stream-reco bench`: throughput, freshness, ANN quality, memory and scaling in one run, as JSON + PNG.

Sections (each a key of the result):

* `throughput` - events/s one worker sustains end to end through the real broker, next to a raw aiokafka
  consume -> produce pass-through of the same messages, bursts alternating; per shop size.
* `freshness` - p50/p95/p99 from an event's send to the receipt of the list that reflects it, at 25 %,
  50 % and 90 % of the worker's measured maximum rate (50 % only for the smaller shop).
* `ann` - recall@20 and speed of annoy vs exact search, and the delta path for new items (bench/ann.py).
* `memory` - bytes of state per visitor (serialised, live object, as the worker stores it) and worker RSS.
* `scaling` - the same figures as items and visitors grow, and the in-process cost per stage.
* `restart` - seconds from spawning a restarted worker to serving every partition again, at two retentions,
  with statistics snapshots off and on (bench/restart.py; the snapshot-on starts need the worker's
  `stats_snapshot_interval_s`, issue 12, and are skipped with the reason where it is missing).
* `stats_memory` - memory and keys of the shop-wide statistics per million events, in process, showing where
  each cap stops their growth (bench/stats_memory.py).
* `pages` - two workers serving pages (issue 13): pull latency direct vs forwarded to the visitor's owner, and
  the stock-change fan-out (seconds from an item's out-of-stock message to the new list of every visitor
  whose pushed list showed it) (bench/pages.py).

Profiles: `default` (100 k items and 100 k visitors, plus a 10 k shop; < 18 minutes on a 2-core machine, of
which restart and stats_memory take < 4 and pages < 4) and `quick` (a few thousand items; < 4 minutes,
restart and stats_memory < 1, pages < 1; what the integration test runs). Every shop is the
simulated one (`stream_reco.shop.simulate`), with its catalogue and a visitor state for every visitor
loaded into the worker before it starts (see `streaming.seed_changelog`), so the worker runs warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import math
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench import ann as ann_bench
from bench import core_cost, latency_probe, report, streaming
from bench import pages as pages_bench
from bench import restart as restart_bench
from bench import stats_memory as stats_memory_bench
from stream_reco.settings import Settings
from stream_reco.shop.client import Prepared
from stream_reco.shop.simulate import SIZES, ShopSimulator, SizeSpec

RESULT_FORMAT = "stream-reco-bench/1"
#: targets from the issue: worker >= 50 % of the pass-through; p99 < 50 ms at 50 % of the max rate;
#: <= 1 KB of state per visitor
TARGET_THROUGHPUT_RATIO = 0.5
TARGET_P99_MS = 50.0
TARGET_FRACTION = 0.5
TARGET_BYTES_PER_VISITOR = 1024
#: simulated shops of sizes the simulator has no name for: items per leaf category, days, sessions
ITEMS_PER_LEAF = 50
MIN_LEAVES = 20
SIM_DAYS = 30
SIM_EXTRA_SESSIONS = 1.2
#: pause between phases, so one phase's tail does not overlap the next
SETTLE_S = 1.0
WARMUP_DRAINS = 2


@dataclass(frozen=True)
class ShopPlan:
    """One simulated shop measured through a worker."""

    label: str
    items: int
    visitors: int
    #: log events applied in-process first: they become the worker's (seeded) state for those visitors
    seed_events: int
    fractions: tuple[float, ...]


@dataclass(frozen=True)
class Profile:
    """How much of everything one run measures (`default` and `quick` below)."""

    name: str
    shops: tuple[ShopPlan, ...]
    main: str  # label of the shop whose figures are the headline (freshness at every fraction, memory)
    repeats: int
    warmup_events: int
    burst_seconds: float
    min_burst_events: int
    max_burst_events: int
    freshness_seconds: float
    idle_seconds: float
    grid_events: int
    memory_visitors: tuple[int, ...]
    ann_sizes: tuple[int, ...]
    ann_queries: int
    ann_repeats: int
    ann_trees: tuple[int, ...]
    ann_search_ks: tuple[int, ...]


ALL_FRACTIONS = (0.25, 0.5, 0.9)
PROFILES: dict[str, Profile] = {
    "default": Profile(
        name="default",
        shops=(
            ShopPlan("10k", 10_000, 10_000, 10_000, (TARGET_FRACTION,)),
            ShopPlan("100k", 100_000, 100_000, 40_000, ALL_FRACTIONS),
        ),
        main="100k",
        repeats=3,
        warmup_events=500,
        burst_seconds=8.0,
        min_burst_events=2_000,
        max_burst_events=50_000,
        freshness_seconds=20.0,
        idle_seconds=5.0,
        grid_events=300,
        memory_visitors=(100_000, 1_000_000),
        ann_sizes=(10_000, 100_000),
        ann_queries=300,
        ann_repeats=3,
        ann_trees=(20, 50),
        ann_search_ks=(250, 1000, 4000),
    ),
    "quick": Profile(
        name="quick",
        shops=(
            ShopPlan("1k", 1_000, 1_000, 2_000, (TARGET_FRACTION,)),
            ShopPlan("2k", 2_000, 1_000, 4_000, ALL_FRACTIONS),
        ),
        main="2k",
        repeats=1,
        warmup_events=200,
        burst_seconds=2.0,
        min_burst_events=300,
        max_burst_events=5_000,
        freshness_seconds=3.0,
        idle_seconds=1.0,
        grid_events=100,
        memory_visitors=(10_000,),
        ann_sizes=(5_000,),
        ann_queries=100,
        ann_repeats=1,
        ann_trees=(10,),
        ann_search_ks=(250, 1000),
    ),
}


def log(message: str) -> None:
    """Progress on stderr (the result goes to files)."""
    import click

    click.echo(f"[bench {time.strftime('%H:%M:%S')}] {message}", err=True)


def simulator(items: int, visitors: int, seed: int) -> ShopSimulator:
    """The simulated shop with these counts: a named size when one matches, else a size registered only
    while the simulator is built (the simulator is configured by size name)."""
    for name, spec in SIZES.items():
        if spec.items == items and spec.visitors == visitors:
            return ShopSimulator(name, seed)
    name = f"bench-{items}x{visitors}"
    SIZES[name] = SizeSpec(items=items, visitors=visitors, leaves=max(MIN_LEAVES, items // ITEMS_PER_LEAF),
                           days=SIM_DAYS, extra_sessions=SIM_EXTRA_SESSIONS)
    try:
        return ShopSimulator(name, seed)
    finally:
        del SIZES[name]


# ----------------------------------------------------------------------------------------------- ANN
def run_ann(profile: Profile, seed: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    """annoy vs exact at each size through bench/ann.py's own functions (data, sweep, catalog delta path)."""
    results = []
    for n in sizes:
        log(f"ann: {n} items")
        data = ann_bench.make_data(n, profile.ann_queries, seed)
        exact, truth = ann_bench.bench_exact(data, profile.ann_repeats)
        annoy_res = ann_bench.bench_annoy(data, truth, profile.ann_trees, profile.ann_search_ks,
                                          profile.ann_repeats, seed)
        best = annoy_res["best"] or max(annoy_res["sweep"], key=lambda r: r["recall"])
        catalog = ann_bench.bench_catalog(data, best["n_trees"], best["search_k"], profile.ann_repeats, seed)
        results.append({
            "items": n,
            "exact_ms": exact["single_ms"],
            "exact_batched_ms": exact["batched_ms"],
            "annoy": {k: best[k] for k in ("n_trees", "search_k", "recall", "recall_one_category",
                                           "recall_two_categories", "ms")},
            "reached_target_recall": annoy_res["best"] is not None,
            "speed_ratio_vs_exact": exact["single_ms"] / best["ms"],
            "speed_ratio_vs_exact_batched": exact["batched_ms"] / best["ms"],
            "build_s": next(b["build_s"] for b in annoy_res["builds"] if b["n_trees"] == best["n_trees"]),
            "sweep": annoy_res["sweep"],
            "delta_path": [
                {"delta": row["delta"], "recall": row["recall"], "ms": row["ms"],
                 "new_items_recall": row["new_items_recall"]}
                for row in catalog["annoy"]
            ],
            "catalog_exact_ms": catalog["exact_ms"],
            "upsert_us": catalog["upsert_us"],
            "rebuild_s": catalog["rebuild_s"],
        })
        del data
        gc.collect()
    return {
        "k": ann_bench.K,
        "target_recall": ann_bench.TARGET_RECALL,
        "data": "clustered synthetic 64-d unit vectors (bench/ann.py make_data)",
        "clock": "process CPU time per query (bench/ann.py)",
        "sizes": results,
        "crossover": ann_bench.crossover([r["items"] for r in results], [r["exact_ms"] for r in results],
                                         [r["annoy"]["ms"] if r["reached_target_recall"] else None
                                          for r in results]),
        "one_million": "not run by default: see docs/benchmarks.md (run with --ann-sizes ...,1000000)"
        if 1_000_000 not in sizes else "included",
    }


# --------------------------------------------------------------------------------------------- shops
@dataclass
class ShopData:
    """One simulated shop, prepared for the worker: catalogue, seeded states and the rest of its log."""

    plan: ShopPlan
    catalog: list[dict[str, Any]]
    seeded: list[tuple[bytes, bytes]]
    supply: streaming.EventSupply
    core: dict[str, Any]
    memory: dict[str, Any] | None


def prepare_shop(plan: ShopPlan, profile: Profile, settings: Settings, seed: int, is_main: bool,
                 budget: Callable[[], float]) -> ShopData:
    """Simulate the shop, build its visitors' state in-process, measure the core, and keep the rest of the
    log for the worker. The state of every simulated visitor is seeded: the visitors the log's first
    `seed_events` touched with their real state, the others with copies of those states."""
    sim = simulator(plan.items, plan.visitors, seed)
    catalog = list(sim.catalog())
    events = sim.events()
    rec, load_s = core_cost.load_catalog(settings, catalog)
    log(f"shop {plan.label}: catalogue of {len(catalog)} items loaded in-process in {load_s:.1f} s "
        f"({rec.catalog.index_kind} index)")
    first = list(itertools.islice(events, plan.seed_events))
    core_cost.observe_all(rec, first)
    store = rec.store
    assert isinstance(store, core_cost.BytesStore)
    templates = core_cost.template_states(store)
    real_visitors = len(store)
    memory = None
    if is_main:
        memory = {"states": core_cost.state_sizes(store), "heavy_visitor": core_cost.heavy_visitor_bytes(rec, settings)}
    grid_few = list(itertools.islice(events, profile.grid_events))
    few = core_cost.stage_costs(rec, grid_few)
    core_cost.fill_store(rec, templates, plan.visitors)
    grid_full = list(itertools.islice(events, profile.grid_events))
    full = core_cost.stage_costs(rec, grid_full)
    core = {
        "items": plan.items,
        "index": core_cost.index_info(rec),
        "catalog_load_s": load_s,
        "cost_by_visitors": [{"visitors": real_visitors, **few}, {"visitors": len(store), **full}],
    }
    seeded = sorted(store.data.items())
    if memory is not None:
        memory["store"] = []
        for n in profile.memory_visitors:
            if n > plan.visitors and budget() < 0:
                memory["store"].append({"visitors": n, "skipped": "time budget"})
                continue
            log(f"memory: {n} visitors as the worker stores them")
            memory["store"].append(core_cost.store_memory(templates, n))
    # the worker's events continue the log after everything applied in-process
    last_ts = max((int(d["timestamp"]) for d in itertools.chain(first, grid_few, grid_full)), default=0)
    del rec, store
    gc.collect()
    return ShopData(plan, catalog, seeded, streaming.EventSupply(events, last_ts), core, memory)


async def measure_shop(shop: ShopData, profile: Profile, base: Settings, run_id: str,
                       drop_env: tuple[str, ...]) -> dict[str, Any]:
    """Everything through the broker for one shop: worker vs pass-through bursts, then paced freshness."""
    plan = shop.plan
    names = streaming.RunNames(f"bench-{run_id}-{plan.label}")
    data_dir = Path(tempfile.mkdtemp(prefix=f"stream-reco-bench-{plan.label}-"))
    settings = names.settings(base, data_dir, catalog_wait_s=streaming.READY_TIMEOUT_S)
    await streaming.create_topics(settings, names)
    t0 = time.perf_counter()
    await streaming.produce_prepared(settings, (
        Prepared(settings.catalog_topic, d["item_id"].encode(), orjson.dumps(d)) for d in shop.catalog))
    seeded = await streaming.seed_changelog(settings, shop.seeded)
    log(f"shop {plan.label}: {len(shop.catalog)} items and {seeded} visitor states produced in "
        f"{time.perf_counter() - t0:.1f} s; starting the worker")
    trace = data_dir / "batches.jsonl"
    worker = streaming.WorkerProcess(settings, drop_env=drop_env, trace=trace)
    meter = streaming.ListMeter(settings)
    passthrough = streaming.PassThrough(settings, names)
    pt_meter = streaming.ListMeter(settings, topic=names.passthrough_out, trigger_field="event_id")
    out: dict[str, Any] = {"items": plan.items, "visitors": plan.visitors, "seeded_visitor_states": seeded,
                           "topics_prefix": names.prefix}
    try:
        out["worker_ready_s"] = await worker.wait_ready()
        await meter.start()
        await passthrough.start()
        await pt_meter.start()
        out["rss_ready_bytes"] = worker.rss_bytes()
        out["worker_threads"] = worker.threads()
        # two warm-up drains: the first pays for start-up work (recovery scans, caches), the second's rate
        # sizes the measured bursts
        warmups = []
        for _ in range(WARMUP_DRAINS):
            warm = shop.supply.take(profile.warmup_events)
            warm_msgs = [shop.supply.encode(d, settings.events_topic) for d in warm]
            warmups.append(await streaming.worker_drain(worker, meter, settings, warm_msgs,
                                                        streaming.final_triggers(warm)))
        warmup = warmups[-1]
        out["warmup"] = warmups
        out["rss_after_warmup_bytes"] = worker.rss_bytes()
        cpu0 = worker.cpu_seconds()
        await asyncio.sleep(profile.idle_seconds)
        # an idle worker still wakes every coalesce_ms (take_events' window): its CPU share costs that
        out["idle_cpu_share"] = (worker.cpu_seconds() - cpu0) / profile.idle_seconds
        burst = int(min(profile.max_burst_events,
                        max(profile.min_burst_events, warmup["events_per_s"] * profile.burst_seconds)))
        worker_runs, pt_runs = [], []
        cpu0 = worker.cpu_seconds()
        for i in range(profile.repeats):
            docs = shop.supply.take(burst)
            msgs = [shop.supply.encode(d, settings.events_topic) for d in docs]
            triggers = streaming.final_triggers(docs)
            order = ("worker", "passthrough") if i % 2 == 0 else ("passthrough", "worker")
            for who in order:
                if who == "worker":
                    worker_runs.append(await streaming.worker_drain(worker, meter, settings, msgs, triggers))
                else:
                    pt_runs.append(await passthrough.drain(msgs))
                await asyncio.sleep(SETTLE_S)
            log(f"shop {plan.label}: burst {i + 1}/{profile.repeats} of {burst}: worker "
                f"{worker_runs[-1]['events_per_s']:.0f}/s, pass-through {pt_runs[-1]['events_per_s']:.0f}/s")
        worker_cpu = worker.cpu_seconds() - cpu0
        ratios = [w["events_per_s"] / p["events_per_s"] for w, p in zip(worker_runs, pt_runs, strict=True)]
        w_med = statistics.median(r["events_per_s"] for r in worker_runs)
        p_med = statistics.median(r["events_per_s"] for r in pt_runs)
        out["throughput"] = {
            "burst_events": burst,
            "worker": {"runs": worker_runs, "median_events_per_s": w_med,
                       "cpu_s_per_1000_events": worker_cpu / (burst * profile.repeats) * 1000},
            "passthrough": {"runs": pt_runs, "median_events_per_s": p_med},
            "ratio_per_repeat": ratios,
            "ratio_median": statistics.median(ratios),
            "ratio_of_medians": w_med / p_med,
            # CPU per event of each (what the ratio would be if each had a core to itself)
            "cpu_ratio": statistics.median(r["cpu_ms_per_event"] for r in pt_runs)
            / statistics.median(r["cpu_ms_per_event"] for r in worker_runs),
        }
        levels = []
        for fraction in plan.fractions:
            rate = fraction * w_med
            log(f"shop {plan.label}: freshness at {fraction:.0%} of {w_med:.0f}/s = {rate:.0f} events/s "
                f"for {profile.freshness_seconds:.0f} s")
            cpu0 = worker.cpu_seconds()
            phase = await streaming.paced_phase(settings, meter, shop.supply, rate, profile.freshness_seconds)
            phase["breakdown"] = latency_probe.analyse(trace, *phase["window_ms"])
            # paced events arrive one by one, so each gets its own list (a backlog coalesces a visitor's
            # events into one): what one core could sustain at this cost per event
            cpu_ms = (worker.cpu_seconds() - cpu0) / phase["events"] * 1000
            phase["worker_cpu_ms_per_event"] = cpu_ms
            phase["one_core_capacity_events_per_s"] = 1000 / cpu_ms
            levels.append({"fraction": fraction, **phase})
            log(f"    p50 {phase['latency_ms']['p50']:.1f} ms, p95 {phase['latency_ms']['p95']:.1f} ms, "
                f"p99 {phase['latency_ms']['p99']:.1f} ms ({phase['reflected']}/{phase['events']} events)")
            await asyncio.sleep(SETTLE_S)
        out["freshness"] = levels
        # the same paced load through the pass-through: what the broker round trip alone costs
        passthrough.resume()
        pt_level = await streaming.paced_phase(settings.replace(events_topic=names.passthrough_in), pt_meter,
                                               shop.supply, TARGET_FRACTION * w_med, profile.freshness_seconds)
        passthrough.pause()
        out["passthrough_freshness"] = {"fraction": TARGET_FRACTION, **pt_level}
        log(f"    pass-through at the same rate: p50 {pt_level['latency_ms']['p50']:.1f} ms, "
            f"p99 {pt_level['latency_ms']['p99']:.1f} ms")
        out["rss_end_bytes"] = worker.rss_bytes()
        out["events_used"] = shop.supply.taken
    finally:
        await pt_meter.stop()
        await passthrough.stop()
        await meter.stop()
        out["worker_exit"] = worker.stop()
        out["worker_crashed"] = worker.crashed()
        if worker.crashed():
            out["worker_output_tail"] = worker.output()
        with contextlib.suppress(Exception):
            out["topics_deleted"] = len(await streaming.delete_run_topics(settings, names.prefix))
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------ restart and statistics
def guarded(name: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one self-contained section; a failure becomes `{"error": ...}` (reported as a problem) instead of
    losing the minutes of figures measured before it. Why only these: they exercise the worker's statistics
    snapshot, which is newer than the rest of the harness."""
    started = time.perf_counter()
    try:
        return measure()
    except Exception as exc:  # recorded in the result and reported by report.iter_problems
        log(f"{name}: failed: {exc!r}")
        return {"error": f"{type(exc).__name__}: {str(exc)[:2000]}", "wall_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------- assembling
def environment(settings: Settings) -> dict[str, Any]:
    """The machine and versions the figures came from."""
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1], timeout=5).stdout.strip()
    import psutil

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "packages": {p: version(p) for p in ("faust-streaming", "aiokafka", "numpy", "annoy", "orjson")},
        "kafka": settings.kafka_version,
        "bootstrap": settings.bootstrap,
        "git_commit": commit,
        "blas_threads_bench_process": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
    }


WORKER_SETTINGS = ("partitions", "batch_size", "coalesce_ms", "producer_linger_ms", "commit_interval_s",
                   "broker_session_timeout_s", "list_size", "exact_index_max_items", "annoy_n_trees",
                   "annoy_search_k", "delta_rebuild_items", "embedding_dim", "model")


def scaling_summary(shops: dict[str, Any], cores: dict[str, Any]) -> dict[str, Any]:
    """Cost growth between the smallest and largest shop, as ratios and one sentence."""
    labels = list(shops)
    small, large = shops[labels[0]], shops[labels[-1]]
    item_growth = large["items"] / small["items"]
    rates = [s["throughput"]["worker"]["median_events_per_s"] for s in (small, large)]
    thr_drop = rates[0] / rates[1]
    core_small = cores[labels[0]]["cost_by_visitors"][-1]["total_us"]
    core_large = cores[labels[-1]]["cost_by_visitors"][-1]["total_us"]
    cv = cores[labels[-1]]["cost_by_visitors"]
    visitor_growth = cv[-1]["visitors"] / max(cv[0]["visitors"], 1)
    visitor_cost = cv[-1]["total_us"] / cv[0]["total_us"]
    p50 = [next(lv for lv in s["freshness"] if lv["fraction"] == TARGET_FRACTION)["latency_ms"]["p50"]
           for s in (small, large)]
    idx_small, idx_large = cores[labels[0]]["index"]["index"], cores[labels[-1]]["index"]["index"]
    sentence = (
        f"From {small['items']:,} to {large['items']:,} items ({item_growth:.0f}x) a worker's throughput went "
        f"{rates[0]:.0f} -> {rates[1]:.0f} events/s ({thr_drop:.2f}x lower) while the in-process cost per event "
        f"grew {core_large / core_small:.2f}x ({core_small:.0f} -> {core_large:.0f} us; {idx_small} search at "
        f"{small['items']:,}, {idx_large} at {large['items']:,}): the core's cost grows far slower than the "
        f"catalogue, so most of the worker's drop comes from outside the core. {visitor_growth:.0f}x more "
        f"visitors change the in-process cost per event {visitor_cost:.2f}x (one dict lookup): visitors cost "
        f"memory, linearly, not time."
    )
    return {
        "item_growth": item_growth,
        "worker_throughput_drop": thr_drop,
        "core_cost_growth": core_large / core_small,
        "visitor_growth": visitor_growth,
        "core_cost_growth_with_visitors": visitor_cost,
        "p50_ms_at_half_load": dict(zip(labels[:1] + labels[-1:], p50, strict=True)),
        "sentence": sentence,
    }


def run(settings: Settings, quick: bool, output: Path, ann_sizes: tuple[int, ...] | None = None,
        seed: int | None = None, drop_env: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole benchmark; writes `output` (JSON) and the PNG next to it; returns the result."""
    profile = PROFILES["quick" if quick else "default"]
    seed = settings.seed if seed is None else seed
    started = time.perf_counter()
    budget_s = 110.0 if quick else 570.0

    def budget_left() -> float:
        return budget_s - (time.perf_counter() - started)

    run_id = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "profile": profile.name,
        "run_id": run_id,
        "command": f"stream-reco bench{' --quick' if quick else ''} --output {output}",
        "environment": environment(settings),
        "settings": {k: getattr(settings, k) for k in WORKER_SETTINGS},
        "profile_plan": asdict(profile),
    }
    result["ann"] = run_ann(profile, seed, ann_sizes or profile.ann_sizes)
    shops: dict[str, Any] = {}
    cores: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    for plan in profile.shops:
        is_main = plan.label == profile.main
        shop = prepare_shop(plan, profile, settings, seed, is_main, budget_left)
        cores[plan.label] = shop.core
        if shop.memory is not None:
            memory = shop.memory
        shops[plan.label] = asyncio.run(measure_shop(shop, profile, settings, run_id, drop_env))
        del shop
        gc.collect()
    main = shops[profile.main]
    result["throughput"] = {
        "shop": profile.main,
        "definition": "events/s drained from a backlog, end to end (decode, validate, state, candidates, "
                      "rules, rank, publish), vs a raw aiokafka consume->produce of the same messages",
        "worker_events_per_s": main["throughput"]["worker"]["median_events_per_s"],
        "passthrough_events_per_s": main["throughput"]["passthrough"]["median_events_per_s"],
        "ratio_median": main["throughput"]["ratio_median"],
        "ratio_of_medians": main["throughput"]["ratio_of_medians"],
        "target_ratio": TARGET_THROUGHPUT_RATIO,
        "met": main["throughput"]["ratio_median"] >= TARGET_THROUGHPUT_RATIO,
        "by_shop": {k: v["throughput"] for k, v in shops.items()},
    }
    at_target = next(lv for lv in main["freshness"] if lv["fraction"] == TARGET_FRACTION)
    result["freshness"] = {
        "shop": profile.main,
        "definition": "ms from an event's send (wall clock at produce) to a consumer's receipt of the first "
                      "list of that visitor reflecting it; worker_ms uses the worker's publication stamp",
        "max_rate_events_per_s": main["throughput"]["worker"]["median_events_per_s"],
        "levels": main["freshness"],
        "target_p99_ms": TARGET_P99_MS,
        "target_fraction": TARGET_FRACTION,
        "p99_ms_at_target_fraction": at_target["latency_ms"]["p99"],
        "passthrough_at_target_fraction": main["passthrough_freshness"],
        "met": at_target["latency_ms"]["p99"] < TARGET_P99_MS,
    }
    per_visitor = memory["states"]["to_bytes"]["mean"]
    stored = next((m for m in memory["store"] if m.get("visitors") == main["visitors"]), memory["store"][0])
    result["memory"] = {
        **memory,
        "worker": {"visitors": main["visitors"], "items": main["items"],
                   "rss_ready_bytes": main["rss_ready_bytes"], "rss_after_warmup_bytes": main["rss_after_warmup_bytes"],
                   "rss_end_bytes": main["rss_end_bytes"]},
        "bytes_per_visitor_serialised_mean": per_visitor,
        "bytes_per_visitor_stored_rss": stored.get("rss_bytes_per_visitor", math.nan),
        "target_bytes_per_visitor": TARGET_BYTES_PER_VISITOR,
        "met": per_visitor <= TARGET_BYTES_PER_VISITOR,
    }
    result["scaling"] = {
        "worker": [{"shop": k, "items": v["items"], "visitors": v["visitors"],
                    "events_per_s": v["throughput"]["worker"]["median_events_per_s"],
                    "passthrough_events_per_s": v["throughput"]["passthrough"]["median_events_per_s"],
                    "ratio": v["throughput"]["ratio_median"],
                    "latency_at_half_load_ms": next(lv for lv in v["freshness"]
                                                    if lv["fraction"] == TARGET_FRACTION)["latency_ms"],
                    "rss_end_bytes": v["rss_end_bytes"], "worker_ready_s": v["worker_ready_s"]}
                   for k, v in shops.items()],
        "core": cores,
        **scaling_summary(shops, cores),
    }
    result["shops"] = shops
    log("restart: worker restart time vs retention, statistics snapshots off and on")
    result["restart"] = guarded("restart", lambda: restart_bench.run(settings, quick, seed, drop_env, log))
    log("stats_memory: statistics memory per million events")
    result["stats_memory"] = guarded("stats_memory", lambda: stats_memory_bench.run(settings, quick, seed, log))
    log("pages: pull latency (direct vs forwarded) and stock-change refresh through two workers")
    result["pages"] = guarded("pages", lambda: pages_bench.run(settings, quick, seed, drop_env, log))
    result["wall_s"] = time.perf_counter() - started
    result["environment"]["load_average_end"] = list(os.getloadavg())
    report.write(result, output)
    return result


def iter_problems(result: dict[str, Any]) -> Iterator[str]:
    """Re-exported for callers that only import the suite."""
    return report.iter_problems(result)
