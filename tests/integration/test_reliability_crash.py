"""Crash recovery: `kill -9` a worker in the middle of a replay, start a new one, and lose nothing.

What must come back after a crash, and from where:
- visitor state: from the table's changelog topic (faust recovery);
- shop-wide statistics (co-visitation, popularity; `core/stats.py`): they live only in worker memory, so the
  new worker rebuilds them from the events topic itself (`stream_reco/stream/recovery.py`);
- the events between the last committed offset and the crash are delivered again (at-least-once): the
  visitor state already holds some of them, and the worker replays exactly those through the rebuilt
  statistics so that nothing is counted twice or skipped.

The proof is the same as tests/integration/test_replay_equivalence.py: one partition and `batch_size` 1, so the
worker applies events in log order like `core.replay.replay`; the final list of every visitor must equal the
in-process replay's (items, scores and reasons), as if the worker had never died. And every event of the log
must have triggered at least one published list (none lost; redelivered ones may publish twice).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.recommender import Recommender
from stream_reco.core.replay import replay
from stream_reco.settings import Settings
from stream_reco.shop.simulate import simulate
from stream_reco.stream.recovery import StatsRecovery
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, diagnostics, final_list_mismatches, send_events, send_items

pytestmark = pytest.mark.integration

SHOP_SIZE = "tiny"  # 2.5 k events, 156 visitors: long enough to kill mid-way, short enough for CI
SHOP_SEED = 7
#: the whole log through a restarted worker on 2 busy cores; measured ~30-60 s, so generous
DRAIN_TIMEOUT_S = 300.0
#: a kill is only "mid-replay" if the worker is still busy: wait for this share of lists, then kill
CI_KILL_AT = (0.4,)
#: info, so that a failure message can show the recovery's own log lines (statistics rebuilt, region passed)
WORKER_LOGLEVEL = "info"
#: CI's short versions replay the log's first events only (the whole log in `-m slow`)
CI_EVENTS = 1_200
#: the skipped-messages test: events in all, where the worker stops, and how many the consumer jumps over
SKIP_TEST_EVENTS = 600
SKIP_AT = 300
SKIPPED = 40
SLOW_KILL_AT = (0.2, 0.45, 0.7)


@dataclass
class DisruptedRun:
    """What a disrupted replay measured: seconds from each disruption to the first list published after it."""

    recovery_s: list[float] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)


#: a disruption: given its number and the running worker, break something and return the worker to go on with
Disruption = Callable[[int, WorkerProcess], WorkerProcess]


def _settings(unique_settings: Settings, tmp_path: Path) -> Settings:
    # one partition and one event per step: the worker applies events in log order, as replay() does
    return unique_settings.replace(partitions=1, batch_size=1, data_dir=str(tmp_path), web_port=0)


def _count_at_least(reader: TopicReader, n: int, timeout: float) -> int:
    reader.wait_for(lambda r: len(r) >= n, timeout=timeout)
    return len(reader.records)


def run_disrupted_replay(settings: Settings, events: list[dict[str, Any]], catalog: list[dict[str, Any]],
                         at: tuple[float, ...], disrupt: Disruption,
                         expected_last: dict[str, str]) -> tuple[DisruptedRun, TopicReader]:
    """Replay `events` through a worker and `disrupt` it whenever `at` shares of the lists are out."""
    ensure_topics(settings)
    send_items(settings, catalog)
    reader = TopicReader(settings, settings.recommendations_topic)
    run = DisruptedRun()
    worker = WorkerProcess(settings, name="worker-0", loglevel=WORKER_LOGLEVEL)
    run.workers.append(worker)
    try:
        worker.wait_ready()
        send_events(settings, events)
        for i, share in enumerate(at, start=1):
            _count_at_least(reader, int(share * len(events)), timeout=DRAIN_TIMEOUT_S)
            assert worker.proc.poll() is None, worker.output()
            began = time.monotonic()
            worker = disrupt(i, worker)
            if worker not in run.workers:
                run.workers.append(worker)
            # everything published before the disruption, so that "a new list" means one published after it
            reader.wait_for(lambda _: False, timeout=1.0)
            _count_at_least(reader, len(reader.records) + 1, timeout=DRAIN_TIMEOUT_S)
            run.recovery_s.append(round(time.monotonic() - began, 1))

        def done(_: list) -> bool:
            latest = reader.latest()
            return all(latest.get(k, {}).get("trigger_event_id") == t for k, t in expected_last.items())

        reader.wait_for(done, timeout=DRAIN_TIMEOUT_S)
    finally:
        worker.stop()
    return run, reader


def check_disrupted_replay(settings: Settings, at: tuple[float, ...], disrupt: Disruption,
                           n_events: int | None = None) -> DisruptedRun:
    """The final lists equal an uninterrupted in-process replay's, and every event triggered a list.

    `n_events` keeps only the log's first events (CI's short versions)."""
    catalog, events_iter = simulate(SHOP_SIZE, seed=SHOP_SEED)
    events = list(events_iter)[:n_events]
    expected = replay(
        Recommender(settings), [Event.from_dict(e) for e in events], [CatalogItem.from_dict(i) for i in catalog]
    )
    expected_last = {key: str(rec.trigger_event_id) for key, rec in expected.items()}
    run, reader = run_disrupted_replay(settings, events, catalog, at, disrupt, expected_last)

    for w in run.workers:
        assert not w.crashed(), f"{w.name} logged a crash:\n{w.output()}"
    got = reader.latest()
    assert set(got) == set(expected), f"every visitor has a list\n{diagnostics(run.workers)}"
    mismatched = final_list_mismatches(expected, got)
    assert not mismatched, (f"{len(mismatched)} of {len(expected)} visitors' final lists differ from an "
                            f"uninterrupted run; first: {mismatched[0]}\n{diagnostics(run.workers)}")
    triggers = {doc["trigger_event_id"] for doc in (r for k in got for r in reader.lists_for(k))}
    lost = [e["event_id"] for e in events if e["event_id"] not in triggers]
    assert not lost, f"{len(lost)} events never triggered a list (lost), first: {lost[:5]}\n{diagnostics(run.workers)}"
    print(f"disrupted replay: at {at}, disruption -> first list after it {run.recovery_s} s, "
          f"{len(reader.records)} lists for {len(events)} events")
    return run


def kill_and_restart(i: int, worker: WorkerProcess) -> WorkerProcess:
    """kill -9 the worker (no commit, no flush, no leaving the group) and start a new one."""
    worker.kill()
    restarted = WorkerProcess(worker.settings, name=f"worker-{i}", loglevel=WORKER_LOGLEVEL)
    restarted.wait_ready()
    return restarted


def test_kill_9_mid_replay_loses_nothing(unique_settings: Settings, tmp_path: Path) -> None:
    check_disrupted_replay(_settings(unique_settings, tmp_path), CI_KILL_AT, kill_and_restart, CI_EVENTS)


def test_kill_9_before_the_first_commit_loses_nothing(unique_settings: Settings, tmp_path: Path) -> None:
    """No offset was ever committed, so the restarted worker starts at offset 0 with a changelog ahead of it.

    CI once caught this by timing alone (the kill came before the first commit; 67 of 96 final lists then
    differed): here no commit can happen before the kill, so the recovery region must be found from offset 0."""
    settings = _settings(unique_settings, tmp_path).replace(commit_interval_s=3_600.0)
    check_disrupted_replay(settings, CI_KILL_AT, kill_and_restart, CI_EVENTS)


@pytest.mark.slow
def test_repeated_kill_9_mid_replay_loses_nothing(unique_settings: Settings, tmp_path: Path) -> None:
    check_disrupted_replay(_settings(unique_settings, tmp_path), SLOW_KILL_AT, kill_and_restart)


async def _commit(settings: Settings, offset: int) -> None:
    """Move the worker group's committed offset of partition 0 (the worker must be stopped)."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_kwargs(), group_id=settings.app_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.events_topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


def test_messages_the_consumer_skipped_are_applied(unique_settings: Settings, tmp_path: Path) -> None:
    """A consumer that jumps over messages (faust did, around a rebalance) must not lose them.

    Simulated exactly: the worker stops cleanly, events arrive, and the group's committed offset is moved past
    SKIPPED of them, so no consumer will ever deliver them. The restarted worker must notice (the table does not
    hold them) and apply them before the first delivered one: lists as if nothing had been skipped."""
    settings = _settings(unique_settings, tmp_path)
    catalog, events_iter = simulate(SHOP_SIZE, seed=SHOP_SEED)
    events = list(events_iter)[:SKIP_TEST_EVENTS]
    first_part, rest = events[:SKIP_AT], events[SKIP_AT:]
    expected = replay(
        Recommender(settings), [Event.from_dict(e) for e in events], [CatalogItem.from_dict(i) for i in catalog]
    )
    ensure_topics(settings)
    send_items(settings, catalog)
    reader = TopicReader(settings, settings.recommendations_topic)
    workers = [WorkerProcess(settings, name="before-skip", loglevel=WORKER_LOGLEVEL)]
    try:
        workers[0].wait_ready()
        send_events(settings, first_part)
        reader.wait_for(lambda r: len(r) >= len(first_part), timeout=DRAIN_TIMEOUT_S)
    finally:
        workers[0].stop()
    send_events(settings, rest)
    asyncio.run(_commit(settings, SKIP_AT + SKIPPED))
    workers.append(WorkerProcess(settings, name="after-skip", loglevel=WORKER_LOGLEVEL))
    last = {key: str(rec.trigger_event_id) for key, rec in expected.items()}
    try:
        workers[1].wait_ready()
        reader.wait_for(lambda _: all(reader.latest().get(k, {}).get("trigger_event_id") == t
                                      for k, t in last.items()), timeout=DRAIN_TIMEOUT_S)
    finally:
        workers[1].stop()
    for w in workers:
        assert not w.crashed(), w.output()
    skipped = {e["event_id"] for e in rest[:SKIPPED]}
    triggers = {doc["trigger_event_id"] for _, value in reader.records for doc in [orjson.loads(value)]}
    assert skipped <= triggers, f"skipped events never applied: {sorted(skipped - triggers)[:5]}\n" \
        f"{diagnostics(workers)}"
    mismatched = final_list_mismatches(expected, reader.latest())
    assert not mismatched, f"{len(mismatched)} final lists differ; first: {mismatched[0]}\n{diagnostics(workers)}"
    assert any("were never applied" in line for line in workers[1].lines), diagnostics(workers)


def test_events_committed_but_never_applied_are_found(unique_settings: Settings, tmp_path: Path) -> None:
    """The skip with no next message: faust acknowledges a skipped event, the commit moves past it, and nothing
    later arrives on the partition to reveal the jump. The committed offset running ahead of the worker's
    applied offset does (`StatsRecovery.acknowledged_unseen`): exactly the unapplied events come back, an event
    the table already holds (a redelivered duplicate) does not, a committed offset the worker has reached
    returns nothing, and a worker that never saw the partition deliver anything still finds the tail."""
    settings = _settings(unique_settings, tmp_path)
    catalog, events_iter = simulate(SHOP_SIZE, seed=SHOP_SEED)
    events = list(events_iter)[:60]
    applied_below, gap_end = 40, 52
    ensure_topics(settings)
    send_events(settings, events)  # one partition: offset i is events[i]
    recommender = Recommender(settings)
    for item in catalog:
        recommender.upsert_item(CatalogItem.from_dict(item))
    for e in events[:applied_below]:
        recommender.observe(Event.from_dict(e))
    recommender.observe(Event.from_dict(events[45]))  # applied out of band: the table holds it
    recovery = StatsRecovery(settings, recommender, recommender.store)
    recovery.next_offset[0] = applied_below

    missed = asyncio.run(recovery.acknowledged_unseen({0: gap_end}))

    assert [m.offset for m in missed] == [o for o in range(applied_below, gap_end) if o != 45]
    assert [orjson.loads(m.value)["event_id"] for m in missed] == [events[o]["event_id"] for o in
                                                                   range(applied_below, gap_end) if o != 45]
    assert recovery.next_offset[0] == gap_end and recovery.missed == len(missed)
    assert asyncio.run(recovery.acknowledged_unseen({0: gap_end})) == []  # nothing new committed

    # a worker that got the partition with nothing left to deliver (its previous owner skipped and committed
    # the tail): the first-sight rebuild runs from the committed offset; everything after the last event the
    # table holds (45) was never applied
    fresh = StatsRecovery(settings, recommender, recommender.store)
    tail = asyncio.run(fresh.acknowledged_unseen({0: gap_end}))
    assert [m.offset for m in tail] == list(range(46, gap_end))
    assert fresh.next_offset[0] == gap_end
