"""What the pages get, against two real workers on the real broker (issue 13): pull latency, direct and
forwarded, and the stock-change fan-out.

Targets (issue 13):

1. **Pull latency**: p99 under 20 ms for `GET /recommendations/{visitor}` at light load on this machine,
   forwarding included. Any worker answers for any visitor; a worker that does not own the visitor's events
   partition forwards the request to the owner (stream/http_view.py). Pulls here are sequential, a fixed
   interval apart (light load), to random visitors, alternating between the two workers over keep-alive
   connections, so about half land on the owner (`direct`) and half are forwarded (`forwarded`): both
   distributions come from the same run, on the same warm workers, and the difference of their medians is
   what forwarding costs. Which pulls are direct is known from the workers' own log lines
   (`events partitions assigned: [...]`) and Kafka's default partitioner of the visitor key
   (`stream.joins.partition_of`); the answer's visitor ids say the owner's state answered (a forward that
   fails is answered without it, as for a new visitor).
2. **Stock-change fan-out**: when an item goes out of stock, every visitor whose current pushed list shows it
   gets a new list without it within 1 s (p99, with 100 k visitors). Each withdrawn item's visitors are taken
   from the lists this bench received on the recommendations topic (the latest list per visitor); the clock
   runs from the catalog message's send to the receipt of that visitor's next list with
   `trigger_event_id: null` that lacks the item. Items are withdrawn one at a time, a few seconds apart, at
   spread ranks of "lists showing it" (the most shown first), so the figure shows refresh time against fan-out.

Why visitors are made by a live worker and not seeded (as bench/suite.py and bench/restart.py seed states):
a worker refreshes only the lists it published itself (stream/pushed.py keeps no index of lists published
before it started), so every visitor must get a list from these very workers. That costs a few ms of worker
CPU per list, which sizes the visitor count (`PLANS`) to what two workers on a 2-core machine publish in one to
two minutes (220 lists/s on a busy one); the section's `note` says when the issue's 100 k was not reached.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import math
import random
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench import streaming
from bench.section_output import write_section
from stream_reco.settings import Settings
from stream_reco.shop.client import Prepared
from stream_reco.stream.app import ASSIGNED_LINE
from stream_reco.stream.joins import partition_of
from stream_reco.stream.process import STREAM_RECO

#: the issue's targets
TARGET_PULL_P99_MS = 20.0
TARGET_REFRESH_P99_S = 1.0
ISSUE_VISITORS = 100_000
#: events partitions of the run's topics, and workers sharing them
PARTITIONS = 6
WORKERS = 2
#: percentiles reported for every distribution here (nearest rank)
QUANTILES = (50, 90, 99)
#: longest wait for the two workers to share the partitions after both are ready
SETTLE_TIMEOUT_S = 120.0
#: an HTTP pull that takes longer than this counts as failed
PULL_TIMEOUT_S = 10.0
#: the meter's poll and the refresh wait's check interval (receipt times are stamped by the meter, not here)
POLL_MS = 20
CHECK_S = 0.02
#: withdrawn items are chosen at ranks (by lists showing them) spread geometrically from the top to this rank
MAX_RANK = 100
#: the workers count as idle below this share of one core (both together) over one window; an idle worker
#: still wakes every `coalesce_ms` and logs, ~0.1 of a core each on a 2-core machine
IDLE_CPU_SHARE = 0.3
IDLE_WINDOW_S = 0.5
IDLE_TIMEOUT_S = 20.0
#: stats lines (`stats {...}`) the workers log every 10 s carry their pull and refresh counters
STATS_PREFIX = "stats {"


@dataclass(frozen=True)
class PagesPlan:
    """How much one run measures."""

    items: int
    visitors: int
    #: views per visitor, 1 to this many (uniform): a short session's worth of state
    max_views: int
    pulls: int
    #: seconds between pull starts: light load (one pull at a time)
    pull_interval_s: float
    #: every n-th pull is a product-page pull (`placement=product&item=` the visitor's viewed item)
    product_every: int
    #: pulls before the measured ones (connections to both workers and between them are opened there)
    warmup_pulls: int
    withdrawn_items: int
    #: pause after one withdrawn item's refresh before the next (late or duplicate lists show up here)
    refresh_gap_s: float
    refresh_timeout_s: float
    #: the simulated shop's visitors (its view log gives item popularity; not the bench's visitors)
    sim_visitors: int = 10_000


PLANS: dict[str, PagesPlan] = {
    # two workers publish ~200-500 lists/s together on a 2-core machine: 20 k visitors take ~40-100 s of ingest
    "default": PagesPlan(items=10_000, visitors=20_000, max_views=2, pulls=400, pull_interval_s=0.025,
                         product_every=8, warmup_pulls=20, withdrawn_items=5, refresh_gap_s=3.0,
                         refresh_timeout_s=30.0),
    "quick": PagesPlan(items=1_000, visitors=1_000, max_views=2, pulls=100, pull_interval_s=0.025,
                       product_every=8, warmup_pulls=10, withdrawn_items=3, refresh_gap_s=1.5,
                       refresh_timeout_s=30.0, sim_visitors=1_000),
}


# ------------------------------------------------------------------------------------------- pure parts
def quantiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p99 (nearest rank), mean and max of `values`; None for an empty sample (never NaN: the suite's
    result must be strict JSON and a NaN there reads as a failed measurement)."""
    if not values:
        return {**{f"p{q}": None for q in QUANTILES}, "mean": None, "max": None, "n": 0}
    ordered = sorted(values)
    n = len(ordered)
    out: dict[str, float | int | None] = {
        f"p{q}": ordered[min(n - 1, max(0, math.ceil(q / 100 * n) - 1))] for q in QUANTILES}
    out["mean"] = sum(ordered) / n
    out["max"] = ordered[-1]
    out["n"] = n
    return out


def owned_partitions(lines: Iterable[str]) -> list[int]:
    """The events partitions a worker said it owns after its latest rebalance (its info log line)."""
    found: list[int] = []
    for line in lines:
        if ASSIGNED_LINE in line:
            with contextlib.suppress(ValueError, SyntaxError):
                found = sorted(int(p) for p in ast.literal_eval(line.split(ASSIGNED_LINE, 1)[1].strip()))
    return found


def settled(assignments: Sequence[Sequence[int]], partitions: int) -> bool:
    """Every partition owned by exactly one worker, and every worker owns some (forwarding needs both)."""
    flat = [p for a in assignments for p in a]
    return sorted(flat) == list(range(partitions)) and all(assignments)


def classify(visitor: str, worker: int, assignments: Sequence[Sequence[int]], partitions: int) -> str:
    """`direct` when the worker asked owns the visitor's events partition, else `forwarded`."""
    return "direct" if partition_of(visitor, partitions) in assignments[worker] else "forwarded"


def owner_of(visitor: str, assignments: Sequence[Sequence[int]], partitions: int) -> int | None:
    p = partition_of(visitor, partitions)
    return next((i for i, a in enumerate(assignments) if p in a), None)


def pull_summary(pulls: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Latency per class (direct, forwarded, all; product pulls also on their own), failures, and the cost of
    forwarding (difference of medians, and of p99s). A pull is `{"cls", "ms", "ok", "state", "placement"}`."""
    ok = [p for p in pulls if p["ok"]]
    classes: dict[str, Any] = {}
    for cls in ("direct", "forwarded"):
        classes[cls] = quantiles([p["ms"] for p in ok if p["cls"] == cls])
    classes["all"] = quantiles([p["ms"] for p in ok])
    classes["product"] = quantiles([p["ms"] for p in ok if p["placement"] == "product"])
    d, f = classes["direct"], classes["forwarded"]
    cost = {q: (f[q] - d[q]) if f[q] is not None and d[q] is not None else None for q in ("p50", "p99")}
    p99 = classes["all"]["p99"]
    return {
        "ms": classes,
        "pulls": len(pulls),
        "by_class": dict(Counter(p["cls"] for p in pulls)),
        "failures": sum(not p["ok"] for p in pulls),
        "failure_examples": [p.get("error", "") for p in pulls if not p["ok"]][:5],
        # the answer named the visitor: the owner's state answered (a failed forward answers as for a new visitor)
        "answered_with_state": {cls: sum(1 for p in pulls if p["cls"] == cls and p["state"])
                                for cls in ("direct", "forwarded")},
        "forwarding_cost_ms": cost,
        "target_p99_ms": TARGET_PULL_P99_MS,
        "met": p99 is not None and p99 < TARGET_PULL_P99_MS and not any(not p["ok"] for p in pulls),
    }


def forward_check(pulls: dict[str, Any], counters: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """This bench's count of forwarded pulls against the workers' `pulls_forwarded` counters (their latest
    stats line, logged every 10 s): equal when the workers forward exactly the pulls the partition
    assignment says they should. Comparable only when the counters already cover every pull."""
    served = sum(int((c or {}).get("pulls", 0)) for c in counters)
    forwarded = sum(int((c or {}).get("pulls_forwarded", 0)) for c in counters)
    failed = sum(int((c or {}).get("pulls_forward_failed", 0)) for c in counters)
    # `pulls` counts a pull where it is answered (the owner, for a forwarded one), so every pull once; the
    # relaying worker counts it in `pulls_forwarded`
    comparable = served == pulls["total_incl_warmup"]
    return {"bench_forwarded": pulls["forwarded_incl_warmup"], "workers_pulls_forwarded": forwarded,
            "workers_pulls_forward_failed": failed, "workers_pulls": served, "comparable": comparable,
            "agree": comparable and forwarded == pulls["forwarded_incl_warmup"] and failed == 0}


def withdraw_ranks(k: int, distinct: int, max_rank: int = MAX_RANK) -> list[int]:
    """`k` ranks (0 = the item shown in most lists) spread geometrically up to `max_rank` (or the last item):
    the refresh time is then seen over a range of fan-outs, the largest included."""
    top = max(0, min(max_rank, distinct - 1))
    if k <= 1 or top == 0:
        return [0] * min(k, 1)
    ranks = [0] + [round(math.exp(math.log(top) * i / (k - 1))) for i in range(1, k)]
    out: list[int] = []
    for r in ranks:  # distinct and increasing, even where the geometric steps round to the same rank
        out.append(max(r, out[-1] + 1) if out else r)
    return out


def shown_counts(latest: dict[str, tuple[str, ...]]) -> list[tuple[str, int]]:
    """(item, number of current lists showing it), most shown first (ties by id, for a reproducible pick)."""
    counts = Counter(item for items in latest.values() for item in set(items))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


@dataclass(slots=True)
class PushedRecord:
    """One list on the recommendations topic, as the meter received it."""

    items: tuple[str, ...]
    trigger: str | None
    received: float  # wall clock at receipt, s


def refresh_outcome(history: Sequence[PushedRecord], start: int, item: str, sent: float) -> dict[str, Any]:
    """What one affected visitor got after the withdrawal: the records from `start` on are newer than the list
    that showed `item`. `seconds`: send -> receipt of the first null-trigger list without the item (None: not
    yet); `still_showing`: null-trigger lists that kept it; `by_event`: event-triggered lists (none expected:
    the visitors are idle)."""
    out: dict[str, Any] = {"seconds": None, "still_showing": 0, "by_event": 0, "extra": 0, "length": None}
    for rec in history[start:]:
        if rec.trigger is not None:
            out["by_event"] += 1
        elif item in rec.items:
            out["still_showing"] += 1
        elif out["seconds"] is None:
            out["seconds"] = rec.received - sent
            out["length"] = len(rec.items)
        else:
            out["extra"] += 1
    return out


def item_summary(item: str, rank: int, outcomes: dict[str, dict[str, Any]], owners: Counter[int],
                 unaffected_refreshed: int, timeout_s: float) -> dict[str, Any]:
    """One withdrawn item's fan-out: affected lists, per-visitor seconds, and what went wrong; a visitor
    refreshed later than `timeout_s` (or never) counts in `not_refreshed_in_timeout`."""
    seconds = [o["seconds"] for o in outcomes.values() if o["seconds"] is not None]
    lengths = [o["length"] for o in outcomes.values() if o["length"] is not None]
    return {
        "item_id": item,
        "rank": rank,
        "affected": len(outcomes),
        "affected_by_worker": {f"w{w}": n for w, n in sorted(owners.items())},
        "refreshed": len(seconds),
        "not_refreshed": len(outcomes) - len(seconds),
        "timeout_s": timeout_s,
        "not_refreshed_in_timeout": len(outcomes) - sum(1 for x in seconds if x <= timeout_s),
        "seconds": quantiles(seconds),
        "still_showing_lists": sum(o["still_showing"] for o in outcomes.values()),
        "event_lists": sum(o["by_event"] for o in outcomes.values()),
        "extra_refreshes": sum(o["extra"] for o in outcomes.values()),
        "unaffected_refreshed": unaffected_refreshed,
        "refreshed_list_length_min": min(lengths) if lengths else None,
        # lists per second the two workers republished, over the slowest visitor's wait
        "lists_per_s": (len(seconds) / max(seconds)) if seconds and max(seconds) > 0 else None,
    }


def refresh_summary(items: Sequence[dict[str, Any]], all_seconds: Sequence[float]) -> dict[str, Any]:
    """Over every withdrawn item: pooled per-visitor seconds, the worst item, and the target."""
    pooled = quantiles(all_seconds)
    missing = sum(i["not_refreshed"] for i in items)
    late = sum(i["not_refreshed_in_timeout"] for i in items)
    worst = max(items, key=lambda i: i["seconds"]["p99"] or 0.0, default=None)
    p99 = pooled["p99"]
    return {
        "items": len(items),
        "affected": sum(i["affected"] for i in items),
        "seconds": pooled,
        "not_refreshed": missing,
        "not_refreshed_in_timeout": late,
        "still_showing_lists": sum(i["still_showing_lists"] for i in items),
        "worst_item": {k: worst[k] for k in ("item_id", "affected")} | {"p99_s": worst["seconds"]["p99"]}
        if worst else None,
        "target_p99_s": TARGET_REFRESH_P99_S,
        "met": p99 is not None and p99 < TARGET_REFRESH_P99_S and missing == 0,
        "items_within_target": sum(1 for i in items if i["not_refreshed"] == 0 and i["seconds"]["p99"] is not None
                                   and i["seconds"]["p99"] < TARGET_REFRESH_P99_S),
    }


def parse_stats(lines: Iterable[str]) -> dict[str, Any] | None:
    """The worker's latest `stats {...}` line (its counters: pulls, pulls_forwarded, lists_refreshed...)."""
    latest = None
    for line in lines:
        at = line.find(STATS_PREFIX)
        if at >= 0:
            with contextlib.suppress(ValueError, SyntaxError):
                doc = ast.literal_eval(line[at + len("stats "):].strip())
                if isinstance(doc, dict):
                    latest = doc
    return latest


def visitor_events(n: int, max_views: int, viewed: Sequence[str], tag: str, now_ms: int,
                   rng: random.Random) -> list[dict[str, Any]]:
    """1..`max_views` views per new anonymous visitor (key = session id), items drawn from `viewed` (the
    simulated shop's view log: its popularity), stamped just before now."""
    out = []
    for v in range(n):
        session = f"s-{tag}-{v}"
        views = rng.randint(1, max_views)
        for j in range(views):
            out.append({"event_id": f"e-{tag}-{v}-{j}", "event_type": "view", "session_id": session,
                        "item_id": rng.choice(viewed), "timestamp": now_ms - 1000 * (views - j)})
    return out


def _f(value: float | None, digits: int = 1) -> str:
    """A figure for a progress or summary line ('-' for an empty sample)."""
    return "-" if value is None else f"{value:.{digits}f}"


def sentence(section: dict[str, Any]) -> str:
    """The headline in one line."""
    pulls, refresh = section["pulls"], section["refresh"]["overall"]
    ms = pulls["ms"]
    f = _f

    cost = pulls["forwarding_cost_ms"]["p50"]
    text = (f"pulls p50/p99: direct {f(ms['direct']['p50'])}/{f(ms['direct']['p99'])} ms, forwarded "
            f"{f(ms['forwarded']['p50'])}/{f(ms['forwarded']['p99'])} ms (forwarding +{f(cost)} ms at p50), all p99 "
            f"{f(ms['all']['p99'])} ms (target < {TARGET_PULL_P99_MS:.0f} ms: {'met' if pulls['met'] else 'missed'}"
            f"{', ' + str(pulls['failures']) + ' failed' if pulls['failures'] else ''}); stock refresh of "
            f"{refresh['items']} items ({refresh['affected']:,} lists) p50/p99/max {f(refresh['seconds']['p50'], 2)}/"
            f"{f(refresh['seconds']['p99'], 2)}/{f(refresh['seconds']['max'], 2)} s (target p99 < "
            f"{TARGET_REFRESH_P99_S:.0f} s: {'met' if refresh['met'] else 'missed'}"
            f"{', ' + str(refresh['not_refreshed']) + ' not refreshed' if refresh['not_refreshed'] else ''}) "
            f"with {section['visitors']:,} visitors")
    return text


# ------------------------------------------------------------------------------------------ the workers
class PagesWorker(streaming.WorkerProcess):
    """The bench's worker with its HTTP server on `web_port` (the base class turns it off), logging at info
    (the partition assignment and the counters)."""

    def __init__(self, settings: Settings, web_port: int, name: str, drop_env: Iterable[str] = ()) -> None:
        self._web_port = web_port
        super().__init__(settings, loglevel="info", drop_env=drop_env)
        self.name = name

    def _spawn(self) -> Any:
        self._argv = [STREAM_RECO, "worker", "--loglevel", "info", "--web-port", str(self._web_port)]
        return super()._spawn()

    def owned(self) -> list[int]:
        return owned_partitions(list(self.lines))


def free_port() -> int:
    """A port the OS has free now on 127.0.0.1 (the worker binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PushedMeter:
    """Every list on the recommendations topic, per visitor, with its items, trigger and receipt time: the
    visitors' current pushed lists, and which of them a stock change refreshed. No consumer group (every
    partition, from the start)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.history: dict[str, list[PushedRecord]] = {}
        self.triggers: set[str] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.settings.recommendations_topic, **self.settings.kafka_client_kwargs(), group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=streaming.METER_FETCH_MAX_WAIT_MS)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=POLL_MS)
            now = time.time()
            for messages in batch.values():
                for m in messages:
                    if m.value is None or m.key is None:
                        continue
                    doc = orjson.loads(m.value)
                    trigger = doc.get("trigger_event_id")
                    rec = PushedRecord(tuple(i["item_id"] for i in doc.get("items") or ()), trigger, now)
                    self.history.setdefault(m.key.decode(), []).append(rec)
                    if trigger is not None:
                        self.triggers.add(trigger)

    def latest(self) -> dict[str, tuple[str, ...]]:
        """Each visitor's current pushed list (the last received: one key lives on one partition, in order)."""
        return {k: h[-1].items for k, h in self.history.items() if h}

    async def wait_for(self, triggers: Iterable[str], timeout: float) -> set[str]:
        """Wait until a list triggered by each of `triggers` arrived; the ones still missing at the timeout."""
        pending = set(triggers)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            pending -= self.triggers
            await asyncio.sleep(0.1)
        return pending - self.triggers

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


@dataclass
class Run:
    """What the phases share."""

    settings: Settings
    plan: PagesPlan
    workers: list[PagesWorker]
    ports: list[int]
    meter: PushedMeter
    assignments: list[list[int]]
    visitors: list[str]
    first_view: dict[str, str]
    catalog: dict[str, dict[str, Any]]
    rng: random.Random
    progress: Callable[[str], None]
    out: dict[str, Any] = field(default_factory=dict)


async def wait_settled(workers: Sequence[PagesWorker], partitions: int, timeout: float) -> list[list[int]]:
    """The assignment once both workers share every partition (a first worker takes all, then a rebalance)."""
    deadline = time.monotonic() + timeout
    while True:
        assignments = [w.owned() for w in workers]
        if settled(assignments, partitions):
            return assignments
        if time.monotonic() > deadline:
            raise TimeoutError(f"the workers did not share the {partitions} partitions in {timeout:.0f} s: "
                               f"{assignments}\n" + "\n".join(w.output(20) for w in workers))
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker {w.name} exited with {w.proc.returncode}:\n{w.output()}")
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------------------------------------ pulls
async def wait_idle(workers: Sequence[PagesWorker], timeout: float = IDLE_TIMEOUT_S) -> dict[str, Any]:
    """Wait until the workers are idle (together under `IDLE_CPU_SHARE` of a core over `IDLE_WINDOW_S`): after
    the ingest they still apply the other worker's events to their statistics (stream/stats_feed.py), and
    "light load" means pulls are all they do. Returns the wait and the last window's CPU share."""
    t0 = time.monotonic()
    share = math.inf
    while time.monotonic() - t0 < timeout:
        before = sum(w.cpu_seconds() for w in workers)
        await asyncio.sleep(IDLE_WINDOW_S)
        share = (sum(w.cpu_seconds() for w in workers) - before) / IDLE_WINDOW_S
        if share < IDLE_CPU_SHARE:
            break
    return {"idle_wait_s": time.monotonic() - t0, "workers_cpu_share_before": share,
            "idle": share < IDLE_CPU_SHARE}


async def measure_pulls(run: Run) -> dict[str, Any]:
    """Sequential pulls, `pull_interval_s` apart, random visitors, alternating workers (module docstring)."""
    import aiohttp

    plan, parts = run.plan, run.settings.partitions
    pulls: list[dict[str, Any]] = []
    warmup: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=PULL_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.perf_counter()
        total = plan.warmup_pulls + plan.pulls
        for i in range(total):
            due = t0 + i * plan.pull_interval_s
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            visitor = run.rng.choice(run.visitors)
            worker = i % len(run.workers)
            product = plan.product_every > 0 and i % plan.product_every == plan.product_every - 1
            params = {"placement": "product", "item": run.first_view[visitor]} if product else {}
            url = f"http://127.0.0.1:{run.ports[worker]}/recommendations/{visitor}"
            pull: dict[str, Any] = {"cls": classify(visitor, worker, run.assignments, parts), "worker": worker,
                                    "placement": "product" if product else "home", "ok": False, "state": False}
            start = time.perf_counter()
            try:
                async with session.get(url, params=params) as resp:
                    body = await resp.read()
                    status = resp.status
                pull["ms"] = (time.perf_counter() - start) * 1000.0
                doc = orjson.loads(body)
                items = [it["item_id"] for it in doc.get("items") or ()]
                pull["ok"] = status == 200 and bool(items) and not (product and params["item"] in items)
                pull["state"] = visitor in (doc.get("session_id"), doc.get("user_id"))
                if not pull["ok"]:
                    pull["error"] = f"{status}: {body[:200].decode(errors='replace')}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                pull["ms"] = (time.perf_counter() - start) * 1000.0
                pull["error"] = repr(exc)[:200]
            (warmup if i < plan.warmup_pulls else pulls).append(pull)
    out = pull_summary(pulls)
    out["interval_ms"] = plan.pull_interval_s * 1000.0
    out["warmup_pulls"] = len(warmup)
    out["warmup_ms_max"] = max((p["ms"] for p in warmup), default=None)
    out["warmup_failures"] = sum(not p["ok"] for p in warmup)
    #: forwarded by this bench's classification, warm-up included (compared with the workers' own counters)
    out["forwarded_incl_warmup"] = sum(p["cls"] == "forwarded" for p in [*warmup, *pulls])
    out["total_incl_warmup"] = len(warmup) + len(pulls)
    # the samples, for the plot (ms, rounded to the microsecond)
    out["samples_ms"] = {cls: [round(p["ms"], 3) for p in pulls if p["ok"] and p["cls"] == cls]
                         for cls in ("direct", "forwarded")}
    return out


# ---------------------------------------------------------------------------------------------- refresh
async def withdraw_one(run: Run, producer: AIOKafkaProducer, item: str,
                       rank: int) -> tuple[dict[str, Any], list[float]]:
    """Mark `item` out of stock and wait for every visitor whose current list shows it to get one without it."""
    meter, parts = run.meter, run.settings.partitions
    starts = {k: len(h) for k, h in meter.history.items()}
    affected = {k for k, h in meter.history.items() if h and item in h[-1].items}
    owners = Counter(-1 if (w := owner_of(k, run.assignments, parts)) is None else w for k in affected)
    row = {**run.catalog[item], "in_stock": False,
           "updated_at": max(int(time.time() * 1000), int(run.catalog[item].get("updated_at") or 0) + 1)}
    clock, cpu0 = streaming.Clock(), sum(w.cpu_seconds() for w in run.workers)
    sent = time.time()
    await producer.send_and_wait(run.settings.catalog_topic, orjson.dumps(row), key=item.encode())
    run.catalog[item] = row
    # the target's timeout counts the late; the wait goes on (about 100 lists/s at worst) so that the next
    # item's clock does not run while this one's refresh still occupies the workers
    deadline = time.monotonic() + max(run.plan.refresh_timeout_s, len(affected) / 100)
    pending = set(affected)
    while pending and time.monotonic() < deadline:
        pending = {k for k in pending
                   if refresh_outcome(meter.history[k], starts[k], item, sent)["seconds"] is None}
        await asyncio.sleep(CHECK_S)
    # the workers' CPU per republished list (refresh.py counts on ~1.5 ms), and the machine's CPU queueing
    cpu = sum(w.cpu_seconds() for w in run.workers) - cpu0
    stall = clock.stop()["cpu_stall_share"]
    await asyncio.sleep(run.plan.refresh_gap_s)  # late, duplicate or collateral lists arrive here
    outcomes = {k: refresh_outcome(meter.history[k], starts[k], item, sent) for k in affected}
    unaffected = sum(1 for k, h in meter.history.items() if k not in affected
                     and any(r.trigger is None for r in h[starts.get(k, 0):]))
    summary = item_summary(item, rank, outcomes, owners, unaffected, run.plan.refresh_timeout_s)
    summary["workers_cpu_ms_per_list"] = cpu / len(affected) * 1000.0 if affected else None
    summary["cpu_stall_share"] = stall
    return summary, [o["seconds"] for o in outcomes.values() if o["seconds"] is not None]


async def measure_refresh(run: Run) -> dict[str, Any]:
    """Withdraw items one at a time at spread ranks of fan-out (module docstring)."""
    settings, plan = run.settings, run.plan
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), acks="all", linger_ms=0)
    await producer.start()
    rows: list[dict[str, Any]] = []
    pooled: list[float] = []
    try:
        distinct = len(shown_counts(run.meter.latest()))
        for rank in withdraw_ranks(plan.withdrawn_items, distinct):
            counts = shown_counts(run.meter.latest())
            if not counts:
                break
            item, showing = counts[min(rank, len(counts) - 1)]
            row, seconds = await withdraw_one(run, producer, item, rank)
            row["lists_showing_at_send"] = showing
            rows.append(row)
            pooled.extend(seconds)
            s = row["seconds"]
            run.progress(f"pages: {item} (rank {rank}) out of stock: {row['refreshed']}/{row['affected']} lists "
                         f"refreshed, p50 {_f(s['p50'], 3)} s, p99 {_f(s['p99'], 3)} s, max {_f(s['max'], 3)} s")
    finally:
        await producer.stop()
    return {"items": rows, "overall": refresh_summary(rows, pooled),
            "samples_s": [round(s, 4) for s in pooled]}


# -------------------------------------------------------------------------------------------- running
async def measure(base: Settings, plan: PagesPlan, catalog: list[dict[str, Any]], viewed: Sequence[str],
                  seed: int, drop_env: Iterable[str], progress: Callable[[str], None]) -> dict[str, Any]:
    """Two workers on fresh topics: ingest the visitors, pull, withdraw items; stop and clean up always."""
    run_id = uuid.uuid4().hex[:8]
    names = streaming.RunNames(f"bench-{run_id}-pages")
    data_dir = Path(tempfile.mkdtemp(prefix="stream-reco-bench-pages-"))
    # snapshots off: they are about restarts (bench/restart.py), and their shutdown write would slow the stop
    settings = names.settings(base, data_dir, catalog_wait_s=streaming.READY_TIMEOUT_S, partitions=PARTITIONS,
                              web_advertised_host="127.0.0.1", stats_snapshot_interval_s=0.0)
    out: dict[str, Any] = {"topics_prefix": names.prefix}
    meter = PushedMeter(settings)
    workers: list[PagesWorker] = []
    rng = random.Random(seed)
    try:
        await streaming.create_topics(settings, names)
        await streaming.produce_prepared(settings, (
            Prepared(settings.catalog_topic, d["item_id"].encode(), orjson.dumps(d)) for d in catalog))
        await meter.start()
        ports = []
        for i in range(WORKERS):
            port = free_port()
            ports.append(port)
            wdir = data_dir / f"w{i}"
            wdir.mkdir()
            workers.append(PagesWorker(settings.replace(web_port=port, data_dir=str(wdir)), port, f"w{i}", drop_env))
        out["worker_ready_s"] = [await w.wait_ready() for w in workers]
        t0 = time.perf_counter()
        assignments = await wait_settled(workers, settings.partitions, SETTLE_TIMEOUT_S)
        out["assignment"] = {w.name: a for w, a in zip(workers, assignments, strict=True)}
        out["settle_s"] = time.perf_counter() - t0
        progress(f"pages: workers ready, partitions {out['assignment']}; {plan.visitors:,} visitors' views")

        tag = run_id
        docs = visitor_events(plan.visitors, plan.max_views, viewed, tag, int(time.time() * 1000), rng)
        first_view: dict[str, str] = {}
        for d in docs:
            first_view.setdefault(d["session_id"], d["item_id"])
        triggers = streaming.final_triggers(docs)
        clock = streaming.Clock()
        t0 = time.time()
        await streaming.produce_prepared(settings, (
            Prepared(settings.events_topic, d["session_id"].encode(), orjson.dumps(d)) for d in docs))
        missing = await meter.wait_for(triggers, max(streaming.DRAIN_TIMEOUT_S, plan.visitors / 50))
        if missing:
            raise TimeoutError(f"{len(missing)} of {len(triggers)} visitors got no list:\n"
                               + "\n".join(w.output(20) for w in workers))
        seconds = time.time() - t0
        out["ingest"] = {"events": len(docs), "visitors": plan.visitors, "seconds": seconds,
                         "lists_per_s": plan.visitors / seconds, **clock.stop()}
        progress(f"pages: {plan.visitors:,} visitors have a list after {seconds:.1f} s "
                 f"({plan.visitors / seconds:.0f} lists/s over {WORKERS} workers)")
        await asyncio.sleep(1.0)  # the ingest's tail (commits, the statistics feed) out of the pulls' way

        run = Run(settings, plan, workers, ports, meter, assignments, sorted(first_view), first_view,
                  {d["item_id"]: d for d in catalog}, rng, progress)
        idle = await wait_idle(workers)
        clock, cpu0 = streaming.Clock(), sum(w.cpu_seconds() for w in workers)
        out["pulls"] = await measure_pulls(run)
        # the machine's CPU queueing during the pulls (a shared machine's other jobs show here), and the
        # workers' own CPU: a pull's tail is mostly one of the two
        out["pulls"]["cpu_stall_share"] = clock.stop()["cpu_stall_share"]
        out["pulls"]["workers_cpu_share"] = (sum(w.cpu_seconds() for w in workers) - cpu0) / (time.time() - clock.wall)
        out["pulls"].update(idle)
        ms = out["pulls"]["ms"]
        progress(f"pages: pulls direct p50 {_f(ms['direct']['p50'])} ms p99 {_f(ms['direct']['p99'])} ms, "
                 f"forwarded p50 {_f(ms['forwarded']['p50'])} ms p99 {_f(ms['forwarded']['p99'])} ms, "
                 f"{out['pulls']['failures']} failed")
        out["refresh"] = await measure_refresh(run)
        out["assignment_after"] = {w.name: w.owned() for w in workers}
        out["assignment_stable"] = out["assignment_after"] == out["assignment"]
        out["workers"] = [{"name": w.name, "rss_end_bytes": w.rss_bytes(), "cpu_s": w.cpu_seconds(),
                           "counters": parse_stats(list(w.lines))} for w in workers]
        out["pulls"]["forward_check"] = forward_check(out["pulls"], [w["counters"] for w in out["workers"]])
    finally:
        await meter.stop()
        exits = await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers), return_exceptions=True)
        for i, w in enumerate(workers):
            info = out["workers"][i] if "workers" in out else {"name": w.name}
            info["exit"] = exits[i] if not isinstance(exits[i], BaseException) else repr(exits[i])
            info["crashed"] = w.crashed()
            if w.crashed():
                info["output_tail"] = w.output(40)
            if "workers" not in out:
                out.setdefault("workers_failed", []).append(info)
        with contextlib.suppress(Exception):
            out["topics_deleted"] = len(await streaming.delete_run_topics(settings, names.prefix))
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


def run(settings: Settings, quick: bool, seed: int, drop_env: tuple[str, ...] = (),
        progress: Callable[[str], None] = lambda _: None, plan: PagesPlan | None = None) -> dict[str, Any]:
    """The whole section (JSON-able): simulate the shop, measure through two workers, summarise."""
    from bench.suite import simulator

    plan = plan or PLANS["quick" if quick else "default"]
    started = time.perf_counter()
    sim = simulator(plan.items, plan.sim_visitors, seed)
    catalog = list(sim.catalog())
    viewed = []
    for doc in sim.events():
        if doc.get("event_type") == "view" and doc.get("item_id"):
            viewed.append(doc["item_id"])
            if len(viewed) >= max(20_000, plan.visitors):
                break
    out = asyncio.run(measure(settings, plan, catalog, viewed, seed, drop_env, progress))
    rate = out["ingest"]["lists_per_s"]
    if plan.visitors < ISSUE_VISITORS:
        note = (f"{plan.visitors:,} visitors, not the issue's {ISSUE_VISITORS:,}: a worker refreshes only lists it "
                f"published itself, so every visitor needs a list from these workers, and the two published "
                f"{rate:.0f} lists/s here ({ISSUE_VISITORS / rate:.0f} s for {ISSUE_VISITORS:,}, beyond the bench's "
                f"budget on this machine); run `python -m bench.pages --visitors {ISSUE_VISITORS}` for the full "
                f"size. A withdrawal's refresh time grows with the lists showing the item (per item below), which "
                f"grows with the visitors.")
    else:
        note = f"{plan.visitors:,} visitors (the issue's size)"
    section = {
        "definition": {
            "pull_ms": "one GET /recommendations/{visitor} on a keep-alive connection, request to body read, "
                       "sequential; direct: the worker asked owns the visitor's events partition; forwarded: "
                       "it relays the owner's answer",
            "refresh_s": "catalog message (in_stock: false) send -> receipt by a plain consumer of the visitor's "
                         "next list with trigger_event_id null that lacks the item, per visitor whose latest "
                         "received list showed it",
        },
        "plan": asdict(plan),
        "partitions": PARTITIONS,
        "workers_count": WORKERS,
        "visitors": plan.visitors,
        "issue_visitors": ISSUE_VISITORS,
        "note": note,
        **out,
        "wall_s": time.perf_counter() - started,
    }
    section["sentence"] = sentence(section)
    progress(f"pages: {section['sentence']}")
    return section


# -------------------------------------------------------------------------------------------- output
def _log_axis(axis: Any, set_scale: Callable[[str], None]) -> None:
    """A log axis labelled with plain numbers (1, 2, 5, 10...), not powers of ten."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def plot_pulls(section: dict[str, Any], ax: Any) -> None:
    """Cumulative distribution of pull latency, direct vs forwarded, with the target."""
    samples = (section.get("pulls") or {}).get("samples_ms") or {}
    for cls, colour in (("direct", "#3b7dd8"), ("forwarded", "#d9822b")):
        values = sorted(samples.get(cls) or [])
        if not values:
            continue
        n = len(values)
        q = section["pulls"]["ms"][cls]
        ax.step(values, [(i + 1) / n for i in range(n)], where="post", color=colour,
                label=f"{cls} (n={n}): p50 {q['p50']:.1f}, p99 {q['p99']:.1f} ms")
    ax.axvline(TARGET_PULL_P99_MS, color="red", linestyle="--", linewidth=1,
               label=f"target p99 < {TARGET_PULL_P99_MS:.0f} ms")
    ax.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    _log_axis(ax.xaxis, ax.set_xscale)
    ax.set_xlabel("pull latency, ms (log)")
    ax.set_ylabel("share of pulls")
    ax.set_title(f"Pulls at light load, {section.get('workers_count', WORKERS)} workers", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def plot_refresh(section: dict[str, Any], ax: Any) -> None:
    """Per withdrawn item: p50, p99 and max seconds to refresh vs the lists that showed it."""
    items = (section.get("refresh") or {}).get("items") or []
    pts = [i for i in items if i["seconds"]["n"]]
    for key, marker, colour in (("p50", "o", "#3b7dd8"), ("p99", "s", "#d9822b"), ("max", "^", "#7a4fa0")):
        ax.scatter([i["affected"] for i in pts], [i["seconds"][key] for i in pts], marker=marker, color=colour,
                   label=key)
    for i in items:
        if i["not_refreshed"]:
            ax.annotate(f"{i['not_refreshed']} not refreshed", (i["affected"], i["seconds"]["max"] or 0),
                        fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.axhline(TARGET_REFRESH_P99_S, color="red", linestyle="--", linewidth=1,
               label=f"target p99 < {TARGET_REFRESH_P99_S:.0f} s")
    if pts:
        _log_axis(ax.xaxis, ax.set_xscale)
        _log_axis(ax.yaxis, ax.set_yscale)
    ax.set_xlabel("lists showing the withdrawn item (log)")
    ax.set_ylabel("s from catalog send to the new list (log)")
    ax.set_title(f"Stock-change refresh ({section.get('visitors', 0):,} visitors)", fontsize=10)
    ax.legend(fontsize=8)


def write(section: dict[str, Any], output: Path) -> None:
    """Standalone run: JSON and the PNG beside it."""
    write_section(section, output, lambda axes: (plot_pulls(section, axes[0]), plot_refresh(section, axes[1])),
                  panels=2)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 k items, 1 k visitors, 100 pulls, 3 items withdrawn")
    p.add_argument("--visitors", type=int, default=None, help="visitors with a pushed list (default: the profile's)")
    p.add_argument("--items", type=int, default=None, help="catalog items (default: the profile's)")
    p.add_argument("--pulls", type=int, default=None)
    p.add_argument("--withdraw", type=int, default=None, help="items marked out of stock, one at a time")
    p.add_argument("--output", type=Path, default=Path("pages.json"))
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    settings = Settings.load()
    plan = PLANS["quick" if args.quick else "default"]
    changes = {k: v for k, v in (("visitors", args.visitors), ("items", args.items), ("pulls", args.pulls),
                                 ("withdrawn_items", args.withdraw)) if v is not None}
    plan = replace(plan, **changes)
    section = run(settings, args.quick, settings.seed if args.seed is None else args.seed,
                  progress=lambda m: print(m, file=sys.stderr), plan=plan)
    write(section, args.output)
    print(section["sentence"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
