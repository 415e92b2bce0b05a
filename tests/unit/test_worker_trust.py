"""The worker's own guards (issue 11), on a `RecoWorker` whose Kafka sends are recorded instead of sent.

No broker: the worker is built as in production (faust app, table, agents) but never started; the tests call its
batch and timer methods directly and read what it would have sent. What needs the broker (keys, clock, HTTP) is
in tests/integration/test_trust_worker.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.types.tuples import Message

from stream_reco import schemas
from stream_reco.core.events import Event, Recommendation
from stream_reco.core.recommender import Recommender
from stream_reco.core.state import VisitorState
from stream_reco.exit_codes import EXIT_RESTART
from stream_reco.settings import Settings
from stream_reco.stream import app as app_module
from stream_reco.stream import joins, repairs, sweep
from stream_reco.stream import store as store_module
from stream_reco.stream.app import RecoWorker
from stream_reco.stream.store import TableStore

TOPIC = "shop.events"


class FailingRecommender(Recommender):
    """A core that raises for one event and for one visitor's list, as a bug in the core would."""

    def observe(self, event: Event, **kw: Any) -> bool:
        if event.event_id == "boom":
            raise ValueError("core exploded on this event")
        return super().observe(event, **kw)

    def recommendation(self, key: str, *args: Any, **kw: Any) -> Recommendation:
        if key == "u-list-boom":
            raise RuntimeError("list exploded")
        return super().recommendation(key, *args, **kw)


class Sent:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    async def send(self, key: bytes | None = None, value: bytes | None = None, **_: Any) -> None:
        self.records.append((key, value))


def make_worker(tmp_path: Path, recommender: Recommender | None = None, **overrides: Any) -> tuple[
        RecoWorker, Sent, Sent]:
    settings = Settings.load(env={}).replace(web_port=0, data_dir=str(tmp_path), events_topic=TOPIC,
                                             partitions=3, **overrides)
    worker = RecoWorker(settings, recommender=recommender)
    lists, dead = Sent(), Sent()
    worker.recommendations_topic.send = lists.send  # type: ignore[method-assign]
    worker.dead_letter_topic.send = dead.send  # type: ignore[method-assign]

    async def nothing_missed(partition: int, offset: int) -> list[Any]:
        return []

    worker.recovery.before = nothing_missed  # type: ignore[method-assign]
    return worker, lists, dead


class FakeEvent:
    """What faust's `take_events` yields: an event with its message."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.value = message.value


def delivered(offset: int, visitor: str, event_id: str, key: str | None = None) -> FakeEvent:
    doc = {"event_id": event_id, "event_type": "view", "item_id": "i-1", "timestamp": 1_764_150_000_000 + offset,
           "user_id": visitor}
    msg = Message(TOPIC, 0, offset, time.time(), 0, None, (key or visitor).encode(), orjson.dumps(doc), None)
    return FakeEvent(msg)


def test_a_failing_event_is_dead_lettered_and_the_rest_of_the_batch_published(tmp_path: Path) -> None:
    settings = Settings.load(env={}).replace(data_dir=str(tmp_path))
    worker, lists, dead = make_worker(tmp_path, recommender=FailingRecommender(settings))
    batch = [delivered(0, "u-a", "a-1"), delivered(1, "u-b", "boom"), delivered(2, "u-c", "c-1")]
    asyncio.run(worker.handle_batch(batch))
    assert sorted(k for k, _ in lists.records) == [b"u-a", b"u-c"], "the other events' lists are published"
    assert len(dead.records) == 1
    key, value = dead.records[0]
    record = orjson.loads(value)  # type: ignore[arg-type]
    schemas.validate("dead_letter", record)
    assert key == b"u-b" and record["offset"] == 1 and record["partition"] == 0 and record["topic"] == TOPIC
    assert "core exploded on this event" in record["error"] and "ValueError" in record["error"]
    assert worker.stats.counts["failed_events"] == 1 and worker.stats.counts["events"] == 2


def test_a_failing_list_does_not_stop_the_others(tmp_path: Path) -> None:
    settings = Settings.load(env={}).replace(data_dir=str(tmp_path))
    worker, lists, dead = make_worker(tmp_path, recommender=FailingRecommender(settings))
    batch = [delivered(0, "u-a", "a-1"), delivered(1, "u-list-boom", "l-1"), delivered(2, "u-c", "c-1")]
    asyncio.run(worker.handle_batch(batch))
    assert sorted(k for k, _ in lists.records) == [b"u-a", b"u-c"]
    assert worker.stats.counts["failed_lists"] == 1
    assert dead.records == [], "the event was applied: nothing to dead-letter, the failure is logged and counted"


class FakeTable:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.changelog: list[tuple[int, bytes, bytes | None]] = []

    def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.changelog.append((partition, key, value))


class HugeState(VisitorState):
    def to_bytes(self) -> bytes:
        return b"x" * 5_000


def test_a_state_larger_than_a_message_is_never_written(tmp_path: Path) -> None:
    table = FakeTable()
    store = TableStore(table, partitions=3, max_state_bytes=4_000)
    small = VisitorState()
    small.last_seen = 7
    store.put("u-1", small)
    store.put("u-1", HugeState())
    assert [(k, v) for _, k, v in table.changelog] == [(b"u-1", small.to_bytes())], "only the small state is sent"
    assert table.data[b"u-1"] == small.to_bytes() and store.oversized == 1
    kept = store.get("u-1")
    assert kept is not None and kept.last_seen == 7, "the previous state is kept"


def test_the_state_limit_is_the_changelog_limit_not_the_incoming_message_limit(tmp_path: Path) -> None:
    worker, _, _ = make_worker(tmp_path, max_message_bytes=5_000_000)
    assert worker.store.max_state_bytes == store_module.CHANGELOG_MAX_BYTES < 1_048_588
    # a shop that accepts only small events still keeps heavy buyers' states (Bloom filter: ~7 KB)
    worker, _, _ = make_worker(tmp_path, max_message_bytes=5_000)
    assert worker.store.max_state_bytes == store_module.CHANGELOG_MAX_BYTES
    assert worker.settings.max_state_bytes <= worker.store.max_state_bytes


def test_pushed_lists_are_bounded_least_recently_published_first(tmp_path: Path) -> None:
    worker, lists, _ = make_worker(tmp_path, pushed_lists_max_visitors=3)
    asyncio.run(worker.handle_batch([delivered(i, f"u-{i}", f"e-{i}") for i in range(3)]))
    asyncio.run(worker.handle_batch([delivered(3, "u-0", "e-3b")]))  # u-0 is now the most recently published
    asyncio.run(worker.handle_batch([delivered(4, "u-3", "e-4")]))
    assert len(worker.pushed) == 3
    assert worker.pushed.items_of("u-1") is None, "the least recently published went"
    for key, value in lists.records[-2:]:
        shown = [item["item_id"] for item in orjson.loads(value)["items"]]
        assert list(worker.pushed.items_of(key.decode()) or ()) == shown, "the index holds what was published"


DAY_MS = 86_400_000


def put_state(worker: RecoWorker, key: str, last_seen: int) -> None:
    state = VisitorState()
    state.last_seen = last_seen
    state.n_events = 1
    worker.visitors.data[key.encode()] = state.to_bytes()


def test_the_ttl_sweep_deletes_expired_visitors_a_bounded_number_per_tick(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep, "SWEEP_KEYS_PER_TICK", 4)
    worker, _, _ = make_worker(tmp_path, visitor_ttl_days=10)
    sent: list[tuple[int, bytes, bytes | None]] = []
    worker.visitors.send_changelog = lambda p, k, v: sent.append((p, k, v))  # type: ignore[method-assign]
    now = 1_800_000_000_000
    for i in range(6):
        put_state(worker, f"old-{i}", now - 11 * DAY_MS)
        put_state(worker, f"new-{i}", now - 9 * DAY_MS)
    worker.applying.set()
    worker.active_partitions.update({0, 1, 2})
    worker.ingest.stream_time_ms = now
    asyncio.run(worker.sweep.sweep_visitors())
    assert len(sent) <= 4, "one tick examines at most SWEEP_KEYS_PER_TICK visitors"
    for _ in range(4):
        asyncio.run(worker.sweep.sweep_visitors())
    assert sorted(k.decode() for k in worker.visitors.data) == [f"new-{i}" for i in range(6)]
    assert sorted(k.decode() for _, k, v in sent if v is None) == [f"old-{i}" for i in range(6)], "tombstones"
    for partition, key, _ in sent:
        assert partition == worker.store.partition_of(key), "each on its own changelog partition"
    assert worker.stats.counts["visitors_expired"] == 6


def test_the_ttl_sweep_leaves_other_workers_partitions_and_can_be_turned_off(tmp_path: Path) -> None:
    worker, _, _ = make_worker(tmp_path, visitor_ttl_days=10)
    sent: list[Any] = []
    worker.visitors.send_changelog = lambda p, k, v: sent.append((p, k, v))  # type: ignore[method-assign]
    now = 1_800_000_000_000
    keys = [f"old-{i}" for i in range(20)]
    for key in keys:
        put_state(worker, key, now - 11 * DAY_MS)
    worker.applying.set()
    worker.active_partitions.add(0)
    worker.ingest.stream_time_ms = now
    for _ in range(3):
        asyncio.run(worker.sweep.sweep_visitors())
    gone = {k.decode() for _, k, _ in sent}
    mine = {k for k in keys if worker.store.partition_of(k.encode()) == 0}
    assert gone == mine and 0 < len(mine) < len(keys)

    off, _, _ = make_worker(tmp_path, visitor_ttl_days=0)
    put_state(off, "old", now - 1000 * DAY_MS)
    off.applying.set()
    off.active_partitions.update({0, 1, 2})
    off.ingest.stream_time_ms = now
    asyncio.run(off.sweep.sweep_visitors())
    assert b"old" in off.visitors.data


def test_stream_time_follows_applied_events(tmp_path: Path) -> None:
    worker, _, _ = make_worker(tmp_path)
    asyncio.run(worker.handle_batch([delivered(5, "u-a", "a-1"), delivered(2, "u-b", "b-1")]))
    assert worker.ingest.stream_time_ms == 1_764_150_000_005


def test_restart_exits_for_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Exited

    monkeypatch.setattr(repairs.os, "_exit", fake_exit)
    monkeypatch.setattr(repairs.os, "execv", lambda *a: pytest.fail("no in-place re-execution"))
    with pytest.raises(Exited):
        repairs.restart("stuck")
    assert codes == [EXIT_RESTART] and EXIT_RESTART not in (0, 1, 2, 3, 4)


def join_request_record(offset: int, session: str, user: str, login_id: str) -> FakeEvent:
    login = Event.from_dict({"event_id": login_id, "event_type": "view", "item_id": "i-1",
                             "timestamp": 1_764_150_000_000, "user_id": user, "session_id": session})
    _, key, value = joins.join_request(login)
    return FakeEvent(Message("stream-reco-joins", 1, offset, time.time(), 0, None, key, value, None))


def test_join_records_wait_once_per_batch_and_a_failing_one_is_dead_lettered(tmp_path: Path) -> None:
    worker, _, dead = make_worker(tmp_path)
    log_ends: list[int] = []
    applied: list[str] = []

    async def log_end(partition: int) -> float:
        log_ends.append(partition)
        return 0.0

    async def control(msg: Any, record: joins.Control) -> None:
        if record.login_event_id == "login-boom":
            raise RuntimeError("join exploded")
        applied.append(record.login_event_id)

    worker.join_forwarder.log_end = log_end  # type: ignore[method-assign]
    worker.join_agent._join_ready = lambda *_: True  # type: ignore[method-assign]
    worker.join_agent._control = control  # type: ignore[method-assign]
    forged = FakeEvent(Message("stream-reco-joins", 1, 3, time.time(), 0, None, b"s-x",
                               b'{"stream_reco": "join_state", "bogus": 1}', None))
    batch = [join_request_record(0, "s-a", "u-a", "login-a"), join_request_record(1, "s-b", "u-b", "login-boom"),
             join_request_record(2, "s-c", "u-c", "login-c"), forged]
    asyncio.run(worker.join_agent.handle(batch))
    assert log_ends == [1], "one log-end read for the batch's partition, not one wait per record"
    assert applied == ["login-a", "login-c"], "the records after a failing one are still applied, in order"
    reasons = [orjson.loads(v)["error"] for _, v in dead.records]  # type: ignore[arg-type]
    assert len(reasons) == 2 and "join exploded" in reasons[1], reasons
    assert worker.stats.counts["failed_events"] == 1


def test_a_failing_statistics_recovery_does_not_drop_the_batch(tmp_path: Path) -> None:
    worker, lists, dead = make_worker(tmp_path)

    async def broken(partition: int, offset: int) -> list[Any]:
        raise ConnectionError("broker gone while rebuilding")

    worker.recovery.before = broken  # type: ignore[method-assign]
    asyncio.run(worker.handle_batch([delivered(0, "u-a", "a-1"), delivered(1, "u-b", "b-1")]))
    assert sorted(k for k, _ in lists.records) == [b"u-a", b"u-b"], "the batch is applied and published"
    assert worker.stats.counts["recovery_failed"] == 2 and dead.records == []


def test_a_failing_join_wait_still_applies_the_join_records(tmp_path: Path) -> None:
    worker, _, _ = make_worker(tmp_path)
    applied: list[str] = []

    async def log_end(partition: int) -> float:
        raise ConnectionError("broker gone")

    async def control(msg: Any, record: joins.Control) -> None:
        applied.append(record.login_event_id)

    worker.join_forwarder.log_end = log_end  # type: ignore[method-assign]
    worker.join_agent._control = control  # type: ignore[method-assign]
    asyncio.run(worker.join_agent.handle([join_request_record(0, "s-a", "u-a", "login-a")]))
    assert applied == ["login-a"] and worker.stats.counts["join_wait_failed"] == 1


def test_a_failing_timer_is_logged_and_runs_again(tmp_path: Path) -> None:
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("timer exploded")

    run = app_module.guarded(flaky)
    asyncio.run(run())
    asyncio.run(run())
    assert len(calls) == 2 and run.__name__ == "guarded_flaky"
