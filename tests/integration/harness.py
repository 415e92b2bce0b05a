"""Helpers for integration tests: real worker processes and real Kafka clients, no mocks.

A worker runs as `stream-reco worker` in a child process configured only through STREAM_RECO_*
variables (exactly as a deployment would), and tests talk to it through the topics.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_reco.settings import Settings
from stream_reco.stream.process import WorkerProcess

__all__ = ["TopicReader", "WorkerProcess", "produce", "send_events", "send_items"]


async def produce(settings: Settings, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), linger_ms=5)
    await producer.start()
    n = 0
    try:
        for key, value in messages:
            await producer.send(topic, value=value, key=key)
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


def send_events(settings: Settings, events: Iterable[dict[str, Any]]) -> int:
    msgs = [((e.get("user_id") or e["session_id"]).encode(), orjson.dumps(e)) for e in events]
    return asyncio.run(produce(settings, settings.events_topic, msgs))


def send_items(settings: Settings, items: Iterable[dict[str, Any]]) -> int:
    msgs = [(i["item_id"].encode(), orjson.dumps(i)) for i in items]
    return asyncio.run(produce(settings, settings.catalog_topic, msgs))


class TopicReader:
    """Reads a topic from the beginning across calls, so a test can wait for 'the next' messages."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.records: list[tuple[bytes | None, bytes]] = []
        self._positions: dict[int, int] = {}

    async def _poll(self, until: Callable[[list[tuple[bytes | None, bytes]]], bool], timeout: float) -> None:
        # no group: aiokafka assigns every partition of the subscribed topic to this consumer
        consumer = AIOKafkaConsumer(
            self.topic, **self.settings.kafka_client_kwargs(), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            for tp in consumer.assignment():
                if tp.partition in self._positions:
                    consumer.seek(tp, self._positions[tp.partition])
            deadline = time.monotonic() + timeout
            while not until(self.records) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for tp, msgs in batch.items():
                    for m in msgs:
                        self.records.append((m.key, m.value))
                        self._positions[tp.partition] = m.offset + 1
        finally:
            await consumer.stop()

    def wait_for(self, until: Callable[[list[tuple[bytes | None, bytes]]], bool], timeout: float = 30.0) -> list:
        asyncio.run(self._poll(until, timeout))
        return self.records

    def lists_for(self, key: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for k, v in self.records if k == key.encode()]

    def latest(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for k, v in self.records:
            if k is not None:
                out[k.decode()] = orjson.loads(v)
        return out


# --- reliability helpers (tests/integration/test_reliability_*.py) -----------------------------------------------

# Below Linux's ephemeral range (32768+), so no outgoing client connection can take a port between the moment it
# is found free and the moment a private broker binds it (same reasoning as test_broker.py).
PRIVATE_PORT_BASE = 23192
PRIVATE_PORT_SPAN = 4000


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 for a private broker (never the shared one on 9092)."""
    from stream_reco import broker

    ports: list[int] = []
    offset = os.getpid() % PRIVATE_PORT_SPAN
    for i in range(PRIVATE_PORT_SPAN):
        port = PRIVATE_PORT_BASE + (offset + i) % PRIVATE_PORT_SPAN
        if broker._port_free(port) and not broker._port_open(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} free ports in {PRIVATE_PORT_BASE}..{PRIVATE_PORT_BASE + PRIVATE_PORT_SPAN}")


def wait_until(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str],
               poll_s: float = 0.2) -> float:
    """Poll `condition` until it holds; return the seconds it took.

    Raises TimeoutError naming `what` (a callable is asked at the timeout, so it can describe the state then)."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            text = what() if callable(what) else what
            raise TimeoutError(f"{text}: not reached after {timeout:.0f} s")
        time.sleep(poll_s)
    return time.monotonic() - began


def list_signature(rec: dict[str, Any]) -> list[tuple[str, float, str]]:
    """What two published lists must agree on to be 'the same list': items, scores (as published), reasons."""
    return [(i["item_id"], i["score"], i["reason"]) for i in rec["items"]]


def final_list_mismatches(expected: dict[str, Any], got: dict[str, dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """Visitors whose latest published list differs from the in-process replay's (`core.replay.replay` output)."""
    out = []
    for key, rec in expected.items():
        want = (rec.trigger_event_id, [(i.item_id, round(i.score, 6), i.reason) for i in rec.items])
        doc = got.get(key)
        have = (doc["trigger_event_id"], list_signature(doc)) if doc is not None else None
        if have is None or (want[0], want[1]) != (have[0], [tuple(x) for x in have[1]]):
            out.append((key, want, have))
    return out


DIAGNOSTIC_MARKS = ("ERROR", "WARNING", "Traceback", "Crashed", "partition", "rebalanc", "Rebalanc", "assigned")
DIAGNOSTIC_LINES = 40


def diagnostics(workers: Iterable[WorkerProcess], last: int = DIAGNOSTIC_LINES) -> str:
    """The telling lines of each worker's output (errors, rebalances, recovery), for a failure message."""
    parts = []
    for w in workers:
        lines = [line[:400] for line in w.lines if any(mark in line for mark in DIAGNOSTIC_MARKS)]
        counters = [line[:600] for line in w.lines if "stats {" in line][-1:]  # periodic: only the latest
        parts.append(f"--- {w.name} (exit {w.proc.poll()}) ---\n" + "\n".join(lines[-last:] + counters))
    return "\n".join(parts)
