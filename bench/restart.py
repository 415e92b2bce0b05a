"""Restart time of a worker versus retention, with statistics snapshots off and on (issue 12).

Why: a restarted worker rebuilds its shop-wide statistics by replaying every retained event of its partitions
(stream/recovery.py), so its restart time grows with retention. With `stats_snapshot_interval_s` > 0 it
writes the statistics (and the offsets they cover) to its data dir periodically and at a clean shutdown, and
a restart loads that and replays only the tail. This section measures both at two retentions.

What "serving again" means: seconds from spawning the worker process to the receipt of the lists of probe
events, one new visitor per events partition, produced once the worker prints its ready line. A partition's
statistics are rebuilt before its first event is applied, so the last probe list means every partition serves
with complete statistics; the ready line (catalogue loaded) is reported beside it.

How the retained events get there, and why not through a live worker: the worker drains about 500 events/s
on a 2-core machine (bench/results/latest.md), so applying 200 000 events live would take most of the bench's
budget before the first restart. Instead the run's topics are filled as a worker that had applied them would
have left them: the events on the events topic, the visitor states they produce (applied in process by the
same core) on the visitor table's changelog (as `bench/suite.py` seeds it; one state per visitor, i.e. a
compacted changelog), and the consumer group's committed offsets at the end of every partition. The first
start is then exactly a restart with snapshots off: table recovery, catalogue load, statistics rebuilt from
every retained event (the recovery region and missed-message checks find every event held by the table).
`fill="worker"` (`--fill worker`) applies them through a live worker instead, for small retentions.

Chain per retention, on fresh topics (deleted at the end):

1. `off`: the first start. With `strict_off` (`--strict-off`) it is its own start with
   `stats_snapshot_interval_s=0`; by default (and always while the worker lacks snapshots) it is the first
   start with snapshots on, which finds no snapshot yet and therefore does all the work a snapshot-less
   restart does; its SIGTERM then writes the snapshot (`statistics snapshot saved: ...`). The default saves
   one full rebuild per retention, which is what keeps the section inside the bench's time budget.
2. `prime` (only with `strict_off`): that first snapshot-on start.
3. `on`: start with snapshots on, measure: it restores the snapshot and replays the tail (the previous
   start's probes). Skipped, with the reason in `on_skipped`, while the worker has no snapshot setting or
   wrote no snapshot.

The worker runs at loglevel info; its log gives the rebuilt-event counts (`partition N: statistics rebuilt
from X events ...`), the snapshot's path, size and write time, and the restore time (`parse_log`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from bench import streaming
from bench.section_output import write_section
from stream_reco.settings import Settings
from stream_reco.shop.client import Prepared

#: the worker's variable for the snapshot interval (the setting `stats_snapshot_interval_s`, issue 12); set
#: in the worker's environment directly, so the bench runs against a package whose Settings lacks the field
SNAPSHOT_ENV = "STREAM_RECO_STATS_SNAPSHOT_INTERVAL_S"
SNAPSHOT_SETTING = "stats_snapshot_interval_s"
#: longest wait for every probe list after a spawn (a full rebuild of a large retention is slow)
SERVE_TIMEOUT_S = 300.0

SAVED_RE = re.compile(r"statistics snapshot saved: (?P<path>.+?) \((?P<bytes>[\d,_]+) bytes\) in (?P<s>[\d.]+) ?s")
RESTORED_RE = re.compile(r"statistics restored from snapshot (?P<path>.+?) in (?P<s>[\d.]+) ?s")
MISSED_RE = re.compile(r"(?P<n>\d+) messages \(offsets \d+-\d+\) (?:were|was) (?:committed but )?never applied")
#: stream/repairs.py's delivery watch: a partition's events did not reach the worker (a faust quirk) for
#: `delivery_stall_s` and were re-read; such a start's time includes that wait, not statistics work
STALL_RE = re.compile(r"partition \d+: no event reached the worker for")
REBUILT_RE = re.compile(r"partition (?P<p>\d+): statistics rebuilt from (?P<n>\d+) events(?:.*? in (?P<s>[\d.]+) s)?")


@dataclass(frozen=True)
class RestartPlan:
    """The shop and the retentions one run measures."""

    items: int
    visitors: int
    retentions: tuple[int, ...]
    #: `stats_snapshot_interval_s` of the snapshot-on starts (the setting's default)
    snapshot_interval_s: float = 60.0
    #: "seeded" (the events, states and offsets a worker would have left; see the module docstring) or
    #: "worker" (a live worker applies them first: faithful, but ~500 events/s)
    fill: str = "seeded"
    #: measure `off` with its own start at interval 0 before the snapshot-on starts (three starts per
    #: retention); False: the first snapshot-on start, which finds no snapshot yet and rebuilds everything
    #: (the same work: table recovery, catalogue, every retained event), is the `off` figure (two starts)
    strict_off: bool = False


PLANS: dict[str, RestartPlan] = {
    # ~12.5 events per visitor on the simulated shop: 18 k visitors give the 200 k events of the larger retention.
    # A full rebuild runs at ~3 k events/s on a 2-core machine (~300 us per event: decode, validate, shadow
    # state), so the snapshot-off start at 200 k costs over a minute: that is the cost the snapshot removes
    "default": RestartPlan(items=10_000, visitors=18_000, retentions=(50_000, 200_000)),
    "quick": RestartPlan(items=1_000, visitors=2_000, retentions=(5_000, 20_000)),
}


# ------------------------------------------------------------------------------------------- pure parts
def snapshot_supported() -> bool:
    """Whether this package's worker has the statistics snapshot (issue 12): its setting exists."""
    return SNAPSHOT_SETTING in {f.name for f in dataclasses.fields(Settings)}


def parse_log(lines: Iterable[str]) -> dict[str, Any]:
    """What one worker start said about its statistics: per partition rebuilt events, snapshot saved (the last
    one), snapshot restored. Counts are summed over partitions; a partition rebuilt twice counts twice."""
    rebuilt: dict[int, int] = {}
    rebuild_s = 0.0
    rebuilds = 0
    saved: dict[str, Any] | None = None
    restored: dict[str, Any] | None = None
    missed = stalls = 0
    for line in lines:
        if (m := REBUILT_RE.search(line)) is not None:
            p = int(m["p"])
            rebuilt[p] = rebuilt.get(p, 0) + int(m["n"])
            rebuild_s += float(m["s"]) if m["s"] else 0.0
            rebuilds += 1
        elif (m := SAVED_RE.search(line)) is not None:
            saved = {"path": m["path"], "bytes": int(re.sub(r"[,_]", "", m["bytes"])), "seconds": float(m["s"])}
        elif (m := RESTORED_RE.search(line)) is not None:
            restored = {"path": m["path"], "seconds": float(m["s"])}
        elif (m := MISSED_RE.search(line)) is not None:
            missed += int(m["n"])
        elif STALL_RE.search(line) is not None:
            stalls += 1
    return {
        "rebuilt_events": sum(rebuilt.values()),
        "rebuilt_by_partition": {str(p): n for p, n in sorted(rebuilt.items())},
        "rebuilds": rebuilds,
        "rebuild_s_sum": rebuild_s,
        "snapshot_saved": saved,
        "snapshot_restored": restored,
        # events the restart found unapplied and applied live (the seeded fill's few login joins; module docstring)
        "missed_applied": missed,
        "delivery_stalls": stalls,
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Ratios from the per-retention rows (`{"events": n, "off": start, "on": start | None}`, a start with
    `served_s`): on / off per retention, and the growth from the smallest to the largest retention of each."""
    out: dict[str, Any] = {"per_retention": [], "growth": {}}
    out["delivery_stalls"] = sum(1 for row in rows for mode in ("off", "prime", "on")
                                 if (row.get(mode) or {}).get("delivery_stalls"))
    for row in rows:
        off, on = row.get("off"), row.get("on")
        ratio = on["served_s"] / off["served_s"] if off and on and off["served_s"] > 0 else None
        out["per_retention"].append({
            "events": row["events"],
            "off_s": off["served_s"] if off else None,
            "on_s": on["served_s"] if on else None,
            "on_vs_off": ratio,
            "speedup": 1 / ratio if ratio else None,
        })
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        out["growth"]["events"] = last["events"] / first["events"]
        for mode in ("off", "on"):
            a, b = first.get(mode), last.get(mode)
            out["growth"][mode] = b["served_s"] / a["served_s"] if a and b and a["served_s"] > 0 else None
    out["sentence"] = sentence(out)
    return out


def sentence(summary: dict[str, Any]) -> str:
    """The headline in one line."""
    parts = []
    for r in summary["per_retention"]:
        text = f"{r['events']:,} events: {r['off_s']:.1f} s with snapshots off" if r["off_s"] is not None else \
            f"{r['events']:,} events: off not measured"
        if r["on_s"] is not None:
            text += f", {r['on_s']:.1f} s on ({r['on_vs_off']:.2f}x)"
        parts.append(text)
    g = summary["growth"]
    if g:
        grow = f"; {g['events']:.0f}x the retention: restart time x{g['off']:.2f} off" if g.get("off") else ""
        if g.get("on"):
            grow += f", x{g['on']:.2f} on"
        parts.append(grow.lstrip("; "))
    if not any(r["on_s"] is not None for r in summary["per_retention"]):
        parts.append("snapshots not measured (see `snapshot`)")
    if summary.get("delivery_stalls"):
        parts.append(f"{summary['delivery_stalls']} start(s) waited out a faust delivery stall (`delivery_stall_s`), "
                     "which inflates their time")
    return "; ".join(p for p in parts if p)


def probe_keys(partitions: int, tag: str) -> list[str]:
    """One visitor key per events partition (Kafka's default partitioner, as the producer places them)."""
    partitioner = DefaultPartitioner()
    ids = list(range(partitions))
    found: dict[int, str] = {}
    for i in itertools.count():
        key = f"probe-{tag}-{i}"
        found.setdefault(partitioner(key.encode(), ids, ids), key)
        if len(found) == partitions:
            return [found[p] for p in ids]
    raise AssertionError("unreachable")


def probe_events(partitions: int, tag: str, item_id: str, now_ms: int) -> list[dict[str, Any]]:
    """A view by a new visitor on every partition, stamped now."""
    return [{"event_id": f"{key}-e", "event_type": "view", "session_id": key, "item_id": item_id,
             "timestamp": now_ms} for key in probe_keys(partitions, tag)]


# ------------------------------------------------------------------------------------------ the worker
class RestartWorker(streaming.WorkerProcess):
    """The bench's worker with extra environment variables (the snapshot interval)."""

    def __init__(self, settings: Settings, extra_env: dict[str, str], drop_env: Iterable[str] = ()) -> None:
        self._extra_env = extra_env
        super().__init__(settings, loglevel="info", drop_env=drop_env)

    def _spawn(self) -> Any:
        self._env = {**self._env, **self._extra_env}
        return super()._spawn()


async def timed_start(settings: Settings, meter: streaming.ListMeter, mode: str, interval_s: float,
                      item_id: str, drop_env: Iterable[str]) -> dict[str, Any]:
    """Spawn a worker, send a probe per partition, time the ready line and the probe lists, stop (SIGTERM)."""
    tag = f"{mode}-{uuid.uuid4().hex[:6]}"
    spawn = time.time()
    worker = RestartWorker(settings, {SNAPSHOT_ENV: str(interval_s)}, drop_env)
    out: dict[str, Any] = {"mode": mode, "snapshot_interval_s": interval_s}
    try:
        # probes after the ready line: events already waiting at a start meet faust's delivery quirk (a wedge the
        # repairs undo after `delivery_stall_s`) often enough to drown the statistics' share in its 15 s
        out["ready_s"] = await worker.wait_ready(SERVE_TIMEOUT_S)
        probes = probe_events(settings.partitions, tag, item_id, int(time.time() * 1000))
        await streaming.produce_prepared(settings, (
            Prepared(settings.events_topic, streaming.event_key(d).encode(), orjson.dumps(d)) for d in probes))
        ids = [d["event_id"] for d in probes]
        if not await meter.wait_for(ids, SERVE_TIMEOUT_S):
            raise TimeoutError(f"{mode} start: no list for {sum(i not in meter.by_trigger for i in ids)} of "
                               f"{len(ids)} probes in {SERVE_TIMEOUT_S:.0f} s:\n{worker.output()}")
        received = [meter.by_trigger[i].received - spawn for i in ids]
        out["first_list_s"] = min(received)
        out["served_s"] = max(received)
        out["rss_bytes"] = worker.rss_bytes()
    finally:
        t0 = time.monotonic()
        out["exit"] = worker.stop()
        out["stop_s"] = time.monotonic() - t0
        out["crashed"] = worker.crashed()
        out.update(parse_log(worker.lines))
        if worker.crashed() or "served_s" not in out:
            out["output_tail"] = worker.output(40)
    return out


# -------------------------------------------------------------------------------------------- filling
async def commit_end_offsets(settings: Settings) -> dict[int, int]:
    """Commit the end of every events partition for the worker's consumer group (its app id), as a worker
    that applied every event would have."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=settings.app_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.events_topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit({tp: ends[tp] for tp in tps})
        return {tp.partition: ends[tp] for tp in tps}
    finally:
        await consumer.stop()


async def fill_seeded(settings: Settings, docs: Sequence[dict[str, Any]], states: list[tuple[bytes, bytes]]) -> None:
    """Events, changelog states and committed offsets as a worker that applied `docs` leaves them."""
    await streaming.produce_prepared(settings, (
        Prepared(settings.events_topic, streaming.event_key(d).encode(), orjson.dumps(d)) for d in docs))
    await streaming.seed_changelog(settings, states)
    await commit_end_offsets(settings)


async def fill_worker(settings: Settings, meter: streaming.ListMeter, docs: Sequence[dict[str, Any]],
                      drop_env: Iterable[str]) -> float:
    """A live worker (snapshots off) applies `docs`; stopped once the lists of every visitor's last event
    arrived. Returns its events/s."""
    worker = RestartWorker(settings, {SNAPSHOT_ENV: "0"}, drop_env)
    try:
        await worker.wait_ready(SERVE_TIMEOUT_S)
        t0 = time.time()
        await streaming.produce_prepared(settings, (
            Prepared(settings.events_topic, streaming.event_key(d).encode(), orjson.dumps(d)) for d in docs))
        triggers = streaming.final_triggers(docs)
        if not await meter.wait_for(triggers, max(SERVE_TIMEOUT_S, len(docs) / 100)):
            raise TimeoutError(f"the filling worker did not apply {len(docs)} events:\n{worker.output()}")
        return len(docs) / (time.time() - t0)
    finally:
        worker.stop()


# -------------------------------------------------------------------------------------------- running
async def measure_retention(base: Settings, plan: RestartPlan, run_id: str, catalog: list[dict[str, Any]],
                            docs: Sequence[dict[str, Any]], states: list[tuple[bytes, bytes]] | None,
                            drop_env: Iterable[str], progress: Callable[[str], None]) -> dict[str, Any]:
    """The off (and, when supported, prime + on) starts for one retention, on fresh topics."""
    n = len(docs)
    names = streaming.RunNames(f"bench-{run_id}-restart-{n}")
    data_dir = Path(tempfile.mkdtemp(prefix=f"stream-reco-bench-restart-{n}-"))
    settings = names.settings(base, data_dir, catalog_wait_s=streaming.READY_TIMEOUT_S)
    row: dict[str, Any] = {"events": n, "topics_prefix": names.prefix, "fill": plan.fill}
    meter = streaming.ListMeter(settings)
    try:
        await streaming.create_topics(settings, names)
        await streaming.produce_prepared(settings, (
            Prepared(settings.catalog_topic, d["item_id"].encode(), orjson.dumps(d)) for d in catalog))
        await meter.start()
        t0 = time.perf_counter()
        if states is not None:
            await fill_seeded(settings, docs, states)
        else:
            row["fill_events_per_s"] = await fill_worker(settings, meter, docs, drop_env)
        row["fill_s"] = time.perf_counter() - t0
        item_id = catalog[0]["item_id"]
        supported = snapshot_supported()
        progress(f"restart {n:,} events: filled in {row['fill_s']:.1f} s; restart with snapshots off")
        if plan.strict_off or not supported:
            row["off"] = await timed_start(settings, meter, "off", 0.0, item_id, drop_env)
        if supported:
            first = await timed_start(settings, meter, "prime", plan.snapshot_interval_s, item_id, drop_env)
            if plan.strict_off:
                row["prime"] = first
            else:
                row["off"] = first
        off = row["off"]
        progress(f"    off: served in {off['served_s']:.1f} s (ready {off['ready_s']:.1f} s), "
                 f"{off['rebuilt_events']:,} events rebuilt"
                 + (", after a faust delivery stall" if off["delivery_stalls"] else ""))
        if not supported:
            row["on"] = None
            row["on_skipped"] = (f"this worker has no statistics snapshot (Settings lacks `{SNAPSHOT_SETTING}`, "
                                 "issue 12)")
        elif (saved := (row.get("prime") or off)["snapshot_saved"]) is None:
            row["on"] = None
            row["on_skipped"] = "the snapshot-on worker logged no `statistics snapshot saved` line at its shutdown"
        else:
            row["on"] = on = await timed_start(settings, meter, "on", plan.snapshot_interval_s, item_id, drop_env)
            row["snapshot_bytes"] = saved["bytes"]
            row["snapshot_write_s"] = saved["seconds"]
            with contextlib.suppress(OSError):
                row["snapshot_file_bytes"] = Path(saved["path"]).stat().st_size
            progress(f"    on: served in {on['served_s']:.1f} s (ready {on['ready_s']:.1f} s), "
                     f"{on['rebuilt_events']:,} events rebuilt, snapshot {saved['bytes'] / 2**20:.1f} MiB")
    finally:
        await meter.stop()
        with contextlib.suppress(Exception):
            row["topics_deleted"] = len(await streaming.delete_run_topics(settings, names.prefix))
        shutil.rmtree(data_dir, ignore_errors=True)
    return row


def build_states(settings: Settings, catalog: list[dict[str, Any]], docs: Sequence[dict[str, Any]],
                 cuts: Sequence[int]) -> dict[int, list[tuple[bytes, bytes]]]:
    """The visitor states (key, bytes) after the first `cut` events, for every cut: one in-process pass."""
    from bench import core_cost

    rec, _ = core_cost.load_catalog(settings, catalog)
    store = rec.store
    assert isinstance(store, core_cost.BytesStore)
    out = {}
    done = 0
    for cut in sorted(cuts):
        core_cost.observe_all(rec, docs[done:cut])
        done = cut
        out[cut] = sorted(store.data.items())
    return out


def run(settings: Settings, quick: bool, seed: int, drop_env: tuple[str, ...] = (),
        progress: Callable[[str], None] = lambda _: None, plan: RestartPlan | None = None) -> dict[str, Any]:
    """The whole section (JSON-able): simulate, fill and restart per retention, summarise."""
    from bench.suite import simulator

    plan = plan or PLANS["quick" if quick else "default"]
    started = time.perf_counter()
    sim = simulator(plan.items, plan.visitors, seed)
    catalog = list(sim.catalog())
    largest = max(plan.retentions)
    docs = list(itertools.islice(sim.events(), largest))
    if len(docs) < largest:
        raise RuntimeError(f"the simulated shop has only {len(docs)} events, {largest} needed")
    states: dict[int, list[tuple[bytes, bytes]]] = {}
    if plan.fill == "seeded":
        t0 = time.perf_counter()
        states = build_states(settings, catalog, docs, plan.retentions)
        progress(f"restart: visitor states of {largest:,} events built in process in {time.perf_counter() - t0:.1f} s")
    run_id = uuid.uuid4().hex[:8]
    rows = [asyncio.run(measure_retention(settings, plan, run_id, catalog, docs[:n], states.get(n), drop_env,
                                          progress))
            for n in sorted(plan.retentions)]
    summary = summarise(rows)
    progress(f"restart: {summary['sentence']}")
    return {
        "definition": "seconds from spawning a restarted worker to the receipt of the lists of probe events "
                      "(a new visitor on every partition, sent at the spawn): every partition serves with its "
                      "statistics rebuilt or restored",
        "snapshot": "supported" if snapshot_supported() else
                    f"not in this package (no `{SNAPSHOT_SETTING}` setting): snapshot-on starts skipped",
        "plan": asdict(plan),
        "partitions": settings.partitions,
        "retentions": rows,
        "summary": summary,
        "wall_s": time.perf_counter() - started,
    }


# -------------------------------------------------------------------------------------------- output
def plot(section: dict[str, Any], ax: Any) -> None:
    """Restart seconds vs retained events: off and on (solid), ready line of each (dotted)."""
    rows = section.get("retentions") or []
    for mode, colour in (("off", "#d9822b"), ("on", "#3b7dd8")):
        pts = [(r["events"], r[mode]) for r in rows if r.get(mode)]
        if not pts:
            continue
        ax.plot([e for e, _ in pts], [s["served_s"] for _, s in pts], marker="o", color=colour,
                label=f"snapshots {mode}: serving again")
        ax.plot([e for e, _ in pts], [s["ready_s"] for _, s in pts], marker=".", linestyle=":", color=colour,
                label=f"snapshots {mode}: ready line")
    ax.set_xlabel("retained events on the topic")
    ax.set_ylabel("seconds from spawn")
    ax.set_ylim(bottom=0)
    ax.set_title("Worker restart time vs retention", fontsize=10)
    ax.legend(fontsize=8)


def write(section: dict[str, Any], output: Path) -> None:
    """Standalone run: JSON and the PNG beside it."""
    write_section(section, output, lambda axes: plot(section, axes[0]), width_in=7.0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 k items, 5 k and 20 k events")
    p.add_argument("--retentions", default=None, help="comma-separated event counts (default: the profile's)")
    p.add_argument("--fill", choices=("seeded", "worker"), default="seeded")
    p.add_argument("--strict-off", action="store_true", help="a separate interval-0 start for `off`")
    p.add_argument("--output", type=Path, default=Path("restart.json"))
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    settings = Settings.load()
    plan = PLANS["quick" if args.quick else "default"]
    if args.retentions:
        plan = dataclasses.replace(plan, retentions=tuple(int(x) for x in args.retentions.split(",")))
    plan = dataclasses.replace(plan, fill=args.fill, strict_off=args.strict_off)
    section = run(settings, args.quick, settings.seed if args.seed is None else args.seed,
                  progress=lambda m: print(m, file=sys.stderr), plan=plan)
    write(section, args.output)
    print(section["summary"]["sentence"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
