"""Replay and tail against a real broker: every valid record arrives, rejected ones do not, pacing holds,
and published lists are printed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream_reco.cli import cli
from stream_reco.exit_codes import EXIT_REJECTED
from stream_reco.settings import Settings
from stream_reco.shop.replay import replay_log
from stream_reco.shop.simulate import write_shop
from stream_reco.shop.tail import iter_recommendations
from stream_reco.stream.topics import ensure_topics_async

from .test_client import consume, total_messages

pytestmark = pytest.mark.integration

T0 = 1764150000000
TAIL_TIMEOUT_S = 15.0


def cli_env(s: Settings) -> dict[str, str]:
    """The settings of a test as the environment of a CLI run (the way a deployment configures it)."""
    return {
        "STREAM_RECO_BOOTSTRAP": s.bootstrap,
        "STREAM_RECO_EVENTS_TOPIC": s.events_topic,
        "STREAM_RECO_CATALOG_TOPIC": s.catalog_topic,
        "STREAM_RECO_RECOMMENDATIONS_TOPIC": s.recommendations_topic,
        "STREAM_RECO_DEAD_LETTER_TOPIC": s.dead_letter_topic,
        "STREAM_RECO_PARTITIONS": str(s.partitions),
    }


def ev(n: int, visitor: str = "u-1") -> dict[str, object]:
    return {"event_id": f"e-{n}", "event_type": "view", "user_id": visitor, "item_id": f"sku-{n % 7}",
            "timestamp": T0 + 1000 * n}


def test_replay_of_a_simulated_shop_sends_every_record(unique_settings: Settings, tmp_path: Path) -> None:
    s = unique_settings
    shop = write_shop(tmp_path / "shop", "tiny", seed=4)
    summary = replay_log(s, shop.events_path, shop.catalog_path, progress=False, updates_path=shop.updates_path)
    assert summary.ok and summary.events == shop.events and summary.items == shop.items
    assert summary.catalog_updates == shop.catalog_updates
    assert asyncio.run(total_messages(s, s.events_topic)) == shop.events
    assert asyncio.run(total_messages(s, s.catalog_topic)) == shop.items + shop.catalog_updates
    print(f"replay of tiny shop: {summary.events_per_s:,.0f} events/s")


def test_dry_run_sends_nothing(unique_settings: Settings, tmp_path: Path) -> None:
    s = unique_settings
    shop = write_shop(tmp_path / "shop", "tiny", seed=4)
    summary = replay_log(s, shop.out_dir, dry_run=True, progress=False)
    assert summary.ok and summary.events == shop.events
    assert asyncio.run(total_messages(s, s.events_topic)) == 0
    assert asyncio.run(total_messages(s, s.catalog_topic)) == 0


def test_a_bad_line_exits_3_and_the_rest_is_sent(unique_settings: Settings, tmp_path: Path) -> None:
    s = unique_settings
    log = tmp_path / "log.jsonl"
    lines = [orjson.dumps(ev(n)) for n in range(5)]
    lines.insert(2, b'{"event_id": "e-bad", "event_type": "view", "item_id": "sku-1", "timestamp": 1}')  # no visitor
    log.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(cli, ["replay", str(log), "--no-progress"], env=cli_env(s))
    assert result.exit_code == EXIT_REJECTED, result.output
    assert "log.jsonl line 3: session_id" in result.output
    got = asyncio.run(consume(s, s.events_topic, 5))
    assert [orjson.loads(v)["event_id"] for _, v in got] == [f"e-{n}" for n in range(5)]  # one key: in order
    assert all(k == b"u-1" for k, _ in got)


def test_rate_limits_the_pace(unique_settings: Settings, tmp_path: Path) -> None:
    s = unique_settings
    n, rate = 30, 100.0
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"".join(orjson.dumps(ev(i, f"u-{i % 4}")) + b"\n" for i in range(n)))
    summary = replay_log(s, log, rate=rate, progress=False)
    assert summary.ok and summary.events == n
    assert summary.events_elapsed_s >= (n - 1) / rate


def test_speed_follows_the_log_pace(unique_settings: Settings, tmp_path: Path) -> None:
    s = unique_settings
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"".join(orjson.dumps(ev(i)) + b"\n" for i in range(6)))  # 5 s of log time
    summary = replay_log(s, log, speed=10.0, progress=False)  # at 10x: at least 0.5 s
    assert summary.ok and summary.events_elapsed_s >= 0.5


def test_retime_stamps_events_with_the_send_time(unique_settings: Settings, tmp_path: Path) -> None:
    s = unique_settings
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"".join(orjson.dumps(ev(i)) + b"\n" for i in range(3)))
    before = time.time_ns() // 1_000_000
    assert replay_log(s, log, progress=False, retime=True).ok
    after = time.time_ns() // 1_000_000
    got = [orjson.loads(v) for _, v in asyncio.run(consume(s, s.events_topic, 3))]
    assert [d["event_id"] for d in got] == ["e-0", "e-1", "e-2"]
    assert all(before <= d["timestamp"] <= after for d in got)


def recommendation(visitor: str, n: int) -> dict[str, object]:
    return {
        "list_id": f"l-{visitor}-{n}",
        "placement": "home",
        "user_id": visitor,
        "session_id": "s-1",
        "experiment": None,
        "items": [{"item_id": f"sku-{i}", "score": 1.0 - i / 10, "reason": f"Because you viewed sofa {i}"}
                  for i in range(n)],
        "generated_at": T0 + 50,
        "trigger_event_id": "e-7f3c",
        "model_version": "2026-11-26T15:00:00Z-3f2a",
        "latency_ms": 12.4,
    }


async def publish(s: Settings, docs: list[dict[str, object]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**s.kafka_client_kwargs())
    await producer.start()
    try:
        for doc in docs:
            await producer.send(s.recommendations_topic, orjson.dumps(doc), key=str(doc["user_id"]).encode())
        await producer.send(s.recommendations_topic, b"not json", key=b"u-junk")
        await producer.flush()
    finally:
        await producer.stop()


def test_tail_prints_published_lists(unique_settings: Settings) -> None:
    s = unique_settings
    asyncio.run(ensure_topics_async(s))
    asyncio.run(publish(s, [recommendation("u-42", 3), recommendation("u-7", 2)]))
    runner = CliRunner()
    args = ["tail", "--from-beginning"]
    result = runner.invoke(cli, [*args, "--user", "u-42", "--max", "1", "--timeout", str(TAIL_TIMEOUT_S)],
                           env=cli_env(s))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("u-42"))
    assert "trigger=e-7f3c" in header and "latency=12.4ms" in header and "model=2026-11-26T15:00:00Z-3f2a" in header
    assert any("1." in line and "sku-0" in line and "1.000" in line and "Because you viewed sofa 0" in line
               for line in lines)
    assert "u-7" not in result.output
    raw = runner.invoke(cli, [*args, "--json", "--timeout", "1"], env=cli_env(s))  # ends 1 s after the last
    assert raw.exit_code == 0, raw.output
    docs = [orjson.loads(line) for line in raw.output.splitlines() if line.startswith("{")]
    assert sorted(d["user_id"] for d in docs) == ["u-42", "u-7"]
    assert "not a valid recommendation" in raw.output  # the junk message is reported, not fatal


def test_iter_recommendations_sees_lists_published_after_it_is_ready(unique_settings: Settings) -> None:
    s = unique_settings

    async def go() -> list[str]:
        await ensure_topics_async(s)
        await publish(s, [recommendation("u-old", 1)])  # before: not seen from the end
        ready = asyncio.Event()
        seen: list[str] = []

        async def watch() -> None:
            async for published in iter_recommendations(s, timeout_s=TAIL_TIMEOUT_S, on_ready=ready.set):
                if published.error is None:
                    seen.append(published.visitor)
                    break

        task = asyncio.create_task(watch())
        await asyncio.wait_for(ready.wait(), TAIL_TIMEOUT_S)
        started = time.monotonic()
        await publish(s, [recommendation("u-new", 2)])
        await asyncio.wait_for(task, TAIL_TIMEOUT_S)
        assert time.monotonic() - started < TAIL_TIMEOUT_S
        return seen

    assert asyncio.run(go()) == ["u-new"]
