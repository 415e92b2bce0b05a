"""Shop-wide statistics are the whole shop's on every worker, whatever the number of workers (issue 12).

Evidence that two items go together arrives only on the partitions one worker owns: visitors there view a
desk and then a chair. A visitor owned by *another* worker who views the desk must be offered the chair as
"Often viewed with" the desk: the co-visitation that worker uses was learned from partitions it does not own
(its statistics feed, stream/stats_feed.py). With per-worker statistics (the design before) the other worker
knew nothing of the pair, and its visitors never got the chair for that reason.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from stream_reco.settings import Settings
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, diagnostics, send_events, send_items, wait_until
from .test_reliability_scale import PARTITIONS, owned, partition_of, settled

pytestmark = pytest.mark.integration

T0 = 1_764_150_000_000
STEP_MS = 1_000
ANCHOR, PARTNER = "desk-0", "chair-3"
#: visitors on the evidence worker's partitions who view the anchor and then the partner
EVIDENCE_VISITORS = 24
#: probe visitors on each of the other workers' partitions
PROBES_PER_WORKER = 4
#: the feed's promise is 2 s; this leaves room for a busy 2-core machine
SPREAD_S = 10.0
TIMEOUT_S = 120.0


def catalog() -> list[dict[str, Any]]:
    kinds = {"desk": ["Furniture", "Office", "Desks"], "chair": ["Furniture", "Office", "Chairs"],
             "lamp": ["Lighting", "Desk lamps"], "rug": ["Home", "Rugs"], "mug": ["Kitchen", "Mugs"]}
    return [{"item_id": f"{kind}-{i}", "title": f"{path[-1]} {i}", "category": path, "price": 50.0 + i,
             "in_stock": True, "updated_at": T0} for kind, path in kinds.items() for i in range(8)]


def visitors_on(partitions: list[int], prefix: str, count: int) -> list[str]:
    """`count` user ids whose events land on `partitions` (Kafka's default partitioner)."""
    found = []
    for i in itertools.count():
        key = f"{prefix}-{i}"
        if partition_of(key) in partitions:
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


@pytest.mark.parametrize("n_workers", [2, 3])
def test_co_visitation_learned_on_one_worker_reaches_visitors_of_the_others(
        unique_settings: Settings, tmp_path: Any, n_workers: int) -> None:
    settings = unique_settings.replace(partitions=PARTITIONS, list_size=5, data_dir=str(tmp_path), web_port=0)
    ensure_topics(settings)
    send_items(settings, catalog())
    reader = TopicReader(settings, settings.recommendations_topic)
    workers = [WorkerProcess(settings, name=f"W{i}", loglevel="info") for i in range(n_workers)]
    try:
        for w in workers:
            w.wait_ready()
        wait_until(lambda: settled(workers) and all(owned(w) for w in workers), TIMEOUT_S,
                   lambda: f"the workers share the partitions: {[owned(w) for w in workers]}")
        evidence_worker, *others = workers
        ids = itertools.count()

        def event(visitor: str, item: str) -> dict[str, Any]:
            n = next(ids)
            return {"event_id": f"ss-{n}", "event_type": "view", "item_id": item, "user_id": visitor,
                    "timestamp": T0 + n * STEP_MS}

        evidence = visitors_on(owned(evidence_worker), "u-evidence", EVIDENCE_VISITORS)
        send_events(settings, [event(v, item) for v in evidence for item in (ANCHOR, PARTNER)])
        last = {v: None for v in evidence}
        reader.wait_for(lambda _: all(reader.latest().get(v) for v in last), timeout=TIMEOUT_S)
        time.sleep(SPREAD_S)  # the other workers' feeds read the evidence worker's partitions meanwhile

        probes = [p for w in others for p in visitors_on(owned(w), f"u-probe-{w.name}", PROBES_PER_WORKER)]
        sent = {p: event(p, ANCHOR) for p in probes}
        send_events(settings, list(sent.values()))

        def answered(_: list) -> bool:
            latest = reader.latest()
            return all(latest.get(p, {}).get("trigger_event_id") == e["event_id"] for p, e in sent.items())

        reader.wait_for(answered, timeout=TIMEOUT_S)
        latest = reader.latest()
        reasons = {p: {i["item_id"]: i["reason"] for i in latest.get(p, {}).get("items", [])} for p in probes}
        wrong = {p: r for p, r in reasons.items() if not r.get(PARTNER, "").startswith("Often viewed with")}
        assert not wrong, (f"visitors of other workers did not get {PARTNER} as often viewed with {ANCHOR}: "
                           f"{wrong}\n{diagnostics(workers)}")
    finally:
        for w in workers:
            w.stop()
