"""Scale-out: workers share the partitions; adding one and killing one rebalances without losing state or events.

The scenario (6 partitions):
1. workers A and B share the partitions; traffic for every visitor, and state probes: visitors who buy an item
   (its category is then suppressed) and dismiss one, and anonymous sessions that buy a kettle;
2. worker C joins: a rebalance moves partitions (and their table state) to C; more traffic;
3. A is killed (`kill -9`, so it never leaves the group): after the session timeout its partitions move to B
   and C; more traffic, sent while A's partitions are still orphaned;
4. the anonymous sessions log in: each user's first event carries the session's id. Users and sessions are
   chosen so that most pairs hash to different partitions, owned by different workers.

Checked: no worker crashes; every visitor's latest list is triggered by its last event (no event lost; each
phase must finish within a generous timeout, so a stuck recovery or a rebalance loop fails the test); the
probes' purchase suppression and dismissals survive both rebalances (state moved with the partitions); and
every login joins its session's history, also across partitions and workers (the kettle purchase of the
anonymous session suppresses kettles in the user's list). Rebalance times are printed.
"""

from __future__ import annotations

import ast
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from stream_reco.settings import Settings
from stream_reco.stream.app import ASSIGNED_LINE
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, diagnostics, send_events, send_items, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 6  # faust gives a new worker partitions only if ceil(P / workers) < what others hold: 6 = 3+3 = 2+2+2
T0 = 1_764_150_000_000
STEP_MS = 20_000
KINDS = {
    "kettle": ["Kitchen", "Appliances", "Kettles"],
    "mixer": ["Kitchen", "Appliances", "Stand mixers"],
    "sofa": ["Furniture", "Living room", "Sofas"],
    "table": ["Furniture", "Living room", "Coffee tables"],
    "spade": ["Garden", "Tools", "Spades"],
}
PER_KIND = 8
LIST_SIZE = 5
BACKGROUND_USERS = 24
STATE_PROBES = 6
#: login pairs whose session and user hash to different partitions, and a few on the same one (control)
CROSS_JOINS = 8
SAME_PARTITION_JOINS = 2
#: a phase (rebalance + its traffic) on 2 busy cores: normally 10-40 s; generous so only a real stall fails
PHASE_TIMEOUT_S = 180.0
RECOVERY_STALL_S = 45.0


def catalog() -> list[dict[str, Any]]:
    return [{"item_id": f"{kind}-{i}", "title": f"{path[-1]} {i}", "category": path, "price": 20.0 + i,
             "in_stock": True, "updated_at": T0} for kind, path in KINDS.items() for i in range(PER_KIND)]


def kind_of(item_id: str) -> str:
    return item_id.rsplit("-", 1)[0]


def partition_of(key: str) -> int:
    """The events partition of a visitor key, as the shop's producer (Kafka's default partitioner) puts it."""
    partitions = list(range(PARTITIONS))
    return int(DefaultPartitioner()(key.encode(), partitions, partitions))


def login_pairs() -> list[tuple[str, str]]:
    """(session, user) pairs: CROSS_JOINS on different partitions, then SAME_PARTITION_JOINS on the same one."""
    cross: list[tuple[str, str]] = []
    same: list[tuple[str, str]] = []
    for i in itertools.count():
        pair = (f"s-join-{i}", f"u-join-{i}")
        bucket = same if partition_of(pair[0]) == partition_of(pair[1]) else cross
        wanted = SAME_PARTITION_JOINS if bucket is same else CROSS_JOINS
        if len(bucket) < wanted:
            bucket.append(pair)
        if len(cross) == CROSS_JOINS and len(same) == SAME_PARTITION_JOINS:
            return cross + same
    raise AssertionError("unreachable")


@dataclass
class Traffic:
    """Builds events with unique ids and increasing times, and remembers each visitor's last one."""

    last: dict[str, str] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def event(self, visitor: str, event_type: str, item: str, session: str | None = None) -> dict[str, Any]:
        n = next(self.ids)
        ev: dict[str, Any] = {"event_id": f"sc-{n}", "event_type": event_type, "item_id": item,
                              "timestamp": T0 + n * STEP_MS}
        if visitor.startswith("u-"):
            ev["user_id"] = visitor
            if session:
                ev["session_id"] = session
        else:
            ev["session_id"] = visitor
        self.last[visitor] = ev["event_id"]
        return ev

    def background(self, round_: int) -> list[dict[str, Any]]:
        kinds = sorted(KINDS)
        return [self.event(f"u-bg-{u}", "view", f"{kinds[(u + round_) % len(kinds)]}-{(u + round_) % PER_KIND}")
                for u in range(BACKGROUND_USERS) for _ in range(2)]


def owned(worker: WorkerProcess) -> list[int]:
    """The events partitions the worker said it owns, after its latest rebalance."""
    for line in reversed(worker.lines):
        if ASSIGNED_LINE in line:
            return list(ast.literal_eval(line.split(ASSIGNED_LINE, 1)[1].strip()))
    return []


def settled(workers: list[WorkerProcess]) -> bool:
    """Every partition owned by exactly one of the live workers."""
    parts = [p for w in workers for p in owned(w)]
    return sorted(parts) == list(range(PARTITIONS))


def assignment(workers: list[WorkerProcess]) -> str:
    return ", ".join(f"{w.name}: {owned(w)}" for w in workers)


def ids(doc: dict[str, Any]) -> list[str]:
    return [i["item_id"] for i in doc["items"]]


def joined(latest: dict[str, dict[str, Any]], user: str) -> bool:
    """The user's latest list carries the anonymous session's kettle purchase (kettles are suppressed)."""
    doc = latest.get(user)
    return doc is not None and bool(doc["items"]) and not [x for x in ids(doc) if kind_of(x) == "kettle"]


@pytest.fixture
def scale_settings(unique_settings: Settings, tmp_path: Path) -> Settings:
    # a stuck faust recovery restarts the worker after RECOVERY_STALL_S (docs/operations.md, "Two faust
    # failures"): short enough that a phase still fits PHASE_TIMEOUT_S with the restart and its rebalance
    return unique_settings.replace(partitions=PARTITIONS, list_size=LIST_SIZE, data_dir=str(tmp_path), web_port=0,
                                   recovery_stall_s=RECOVERY_STALL_S)


#: the faust failures the worker repairs, counted from its log lines and printed (how often each one happened)
REPAIR_MARKS = {"restarts (stuck recovery)": "restarting this worker",
                "rewinds (events waiting, none delivered)": "re-reading from offset",
                "committed, never applied": "were committed but never applied",
                "skipped (offset jump)": "were never applied: the consumer skipped them"}


def test_scale_out_and_kill_rebalance_keeps_state_and_events(scale_settings: Settings) -> None:
    settings = scale_settings
    ensure_topics(settings)
    send_items(settings, catalog())
    reader = TopicReader(settings, settings.recommendations_topic)
    traffic = Traffic()
    pairs = login_pairs()
    timings: dict[str, float] = {}

    def all_processed(_: list) -> bool:
        latest = reader.latest()
        return all(latest.get(k, {}).get("trigger_event_id") == e for k, e in traffic.last.items())

    def send_and_wait(events: list[dict[str, Any]], phase: str, since: float) -> None:
        send_events(settings, events)
        reader.wait_for(all_processed, timeout=PHASE_TIMEOUT_S)
        missing = {k: e for k, e in traffic.last.items() if reader.latest().get(k, {}).get("trigger_event_id") != e}
        assert not missing, (f"{phase}: {len(missing)} visitors' events not processed within {PHASE_TIMEOUT_S} s "
                             f"(stalled?), e.g. {sorted(missing.items())[:5]}\n{diagnostics(workers)}")
        timings[phase] = round(time.monotonic() - since, 1)

    a = WorkerProcess(settings, name="A", loglevel="info")
    b = WorkerProcess(settings, name="B", loglevel="info")
    workers = [a, b]
    try:
        a.wait_ready()
        b.wait_ready()
        began = time.monotonic()
        wait_until(lambda: settled([a, b]), PHASE_TIMEOUT_S, "A and B share the partitions")
        # phase 1: traffic, state probes, anonymous sessions that buy a kettle
        events = traffic.background(0)
        for p in range(STATE_PROBES):
            probe = f"u-probe-{p}"
            events += [traffic.event(probe, "view", "sofa-1"), traffic.event(probe, "purchase", "sofa-2"),
                       traffic.event(probe, "dismiss", "spade-3")]
        for session, _ in pairs:
            events += [traffic.event(session, "view", "kettle-0"), traffic.event(session, "purchase", "kettle-1")]
        send_and_wait(events, "two workers", began)

        # phase 2: a third worker joins
        began = time.monotonic()
        c = WorkerProcess(settings, name="C", loglevel="info")
        workers.append(c)
        c.wait_ready()
        wait_until(lambda: settled([a, b, c]) and bool(owned(c)), PHASE_TIMEOUT_S,
                   lambda: f"C takes partitions ({assignment(workers)})")
        timings["rebalance after C joined"] = round(time.monotonic() - began, 1)
        send_and_wait(traffic.background(1), "third worker joined (rebalance + traffic)", began)

        # phase 3: A dies without leaving the group; traffic goes on meanwhile
        began = time.monotonic()
        a.kill()
        send_and_wait(traffic.background(2), "kill -9 of A (session timeout + rebalance + traffic)", began)
        wait_until(lambda: settled([b, c]), PHASE_TIMEOUT_S,
                   lambda: f"B and C share the partitions ({assignment(workers)})")

        # state probes: the purchase and the dismissal moved with their partitions
        probe_events = [traffic.event(f"u-probe-{p}", "view", "sofa-3") for p in range(STATE_PROBES)]
        # phase 4: the anonymous sessions log in
        logins = [traffic.event(user, "view", "kettle-2", session=session) for session, user in pairs]
        began = time.monotonic()
        send_and_wait(probe_events + logins, "logins", began)
        # a join across partitions completes asynchronously (join request -> join state -> a new list)
        reader.wait_for(lambda _: all(joined(reader.latest(), user) for _, user in pairs), timeout=PHASE_TIMEOUT_S)
        timings["logins joined"] = round(time.monotonic() - began, 1)
        owner = {p: w.name for w in (b, c) for p in owned(w)}
    finally:
        for w in workers:
            w.stop()
    for w in (b, c):
        assert not w.crashed(), f"{w.name} logged a crash:\n{w.output()}"

    latest = reader.latest()
    for p in range(STATE_PROBES):
        doc = latest[f"u-probe-{p}"]
        assert not [x for x in ids(doc) if kind_of(x) == "sofa"], f"purchase suppression lost: {ids(doc)}"
        assert "spade-3" not in ids(doc), "dismissal lost"
    report = [(session, partition_of(session), owner.get(partition_of(session)), user, partition_of(user),
               owner.get(partition_of(user)), joined(latest, user)) for session, user in pairs]
    print(f"scale-out timings (s): {timings}")
    print("faust failures repaired:", {name: sum(mark in line for w in workers for line in w.lines)
                                       for name, mark in REPAIR_MARKS.items()})
    print("login joins (session, partition, worker, user, partition, worker, joined):")
    for row in report:
        print("  ", row)
    assert all(row[-1] for row in report), "every login joins its session's history"
