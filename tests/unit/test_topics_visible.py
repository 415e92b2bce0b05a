"""Created topics are waited for until the broker's metadata shows them (stream/topics.py `wait_visible`):
a worker subscribing before that ignores the events topic for minutes (the demo on a fresh broker
published no list)."""

from __future__ import annotations

import asyncio
from typing import Any

from stream_reco.stream import topics


class FakeAdmin:
    """Answers describe_topics like aiokafka: first without the topic, then without leaders, then complete."""

    def __init__(self, answers: list[list[dict[str, Any]]]) -> None:
        self.answers = answers
        self.calls = 0

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


def described(leaders: list[int] | None) -> list[dict[str, Any]]:
    if leaders is None:
        return [{"topic": "t.events", "error_code": 3, "partitions": []}]
    return [{"topic": "t.events", "error_code": 0,
             "partitions": [{"partition": i, "leader": leader} for i, leader in enumerate(leaders)]}]


def test_waits_until_every_partition_has_a_leader(monkeypatch: Any) -> None:
    monkeypatch.setattr(topics, "VISIBLE_POLL_S", 0.0)
    admin = FakeAdmin([described(None), described([1, -1]), described([1, 1])])
    assert asyncio.run(topics.wait_visible(admin, {"t.events": 2})) is True  # type: ignore[arg-type]
    assert admin.calls == 3


def test_gives_up_with_a_warning_after_the_timeout(monkeypatch: Any, caplog: Any) -> None:
    monkeypatch.setattr(topics, "VISIBLE_POLL_S", 0.01)
    admin = FakeAdmin([described(None)])
    assert asyncio.run(topics.wait_visible(admin, {"t.events": 2}, timeout_s=0.05)) is False  # type: ignore[arg-type]
    assert "not in the broker's metadata" in caplog.text and admin.calls >= 2
