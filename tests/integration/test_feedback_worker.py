"""Feedback events on the real broker: a worker accepts impressions and clicks, known list id or not, never
dead-letters them for an unknown list id, answers a click with a new list, and publishes no list for an
impression (docs/contracts.md, "Feedback events")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from stream_reco.settings import Settings

from .harness import TopicReader, WorkerProcess, send_events, send_items
from .test_worker import LIST_SIZE, T0, catalog

pytestmark = pytest.mark.integration

#: longer than a batch's coalescing, so an event sent after it is handled in a batch of its own
QUIET_S = 3.0


@pytest.fixture
def running(unique_settings: Settings, tmp_path: Any) -> Iterator[tuple[Settings, WorkerProcess]]:
    from stream_reco.stream.topics import ensure_topics

    settings = unique_settings.replace(list_size=LIST_SIZE, data_dir=str(tmp_path), web_port=0)
    ensure_topics(settings)
    send_items(settings, catalog())
    worker = WorkerProcess(settings)
    try:
        worker.wait_ready()
        yield settings, worker
    finally:
        worker.stop()
        assert not worker.crashed(), worker.output()


def event(n: int, event_type: str, item: str | None = None, **context: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"event_id": f"fb-{n}", "event_type": event_type, "user_id": "u-fb",
                           "timestamp": T0 + n * 1000}
    if item is not None:
        doc["item_id"] = item
    if context:
        doc["context"] = context
    return doc


def test_worker_accepts_feedback_events_and_lists_nothing_for_an_impression(
    running: tuple[Settings, WorkerProcess],
) -> None:
    settings, worker = running
    lists = TopicReader(settings, settings.recommendations_topic)

    def list_for(event_id: str) -> dict[str, Any]:
        lists.wait_for(lambda _: any(d["trigger_event_id"] == event_id for d in lists.lists_for("u-fb")), 30)
        found = [d for d in lists.lists_for("u-fb") if d["trigger_event_id"] == event_id]
        assert found, f"no list for {event_id}:\n{worker.output()}"
        return found[-1]

    send_events(settings, [event(1, "view", "sofa-1")])
    first = list_for("fb-1")
    shown = [i["item_id"] for i in first["items"]]
    # the shop shows the list (known id), a stale page shows one from elsewhere (unknown id), the visitor clicks
    # an item of the list they saw, with an unknown list id (expired): all valid, none dead-lettered
    send_events(settings, [
        event(2, "impression", list_id=first["list_id"], shown=shown),
        event(3, "impression", list_id="l-from-another-deployment", shown=["table-1"]),
        event(4, "click", shown[1], list_id="l-expired", position=2),
    ])
    clicked = list_for("fb-4")
    # a click is a view of the item's page: the item is on screen, so not in the list it triggers
    assert len(clicked["items"]) == LIST_SIZE and shown[1] not in [i["item_id"] for i in clicked["items"]]
    # a lone impression, in a batch of its own: no list; then a view, which gets one
    time.sleep(QUIET_S)
    send_events(settings, [event(5, "impression", list_id=clicked["list_id"],
                                 shown=[i["item_id"] for i in clicked["items"]])])
    time.sleep(QUIET_S)
    send_events(settings, [event(6, "view", "sofa-2")])
    list_for("fb-6")
    triggers = [d["trigger_event_id"] for d in lists.lists_for("u-fb")]
    assert not {"fb-2", "fb-3", "fb-5"} & set(triggers), triggers

    dead = TopicReader(settings, settings.dead_letter_topic)
    dead.wait_for(lambda records: bool(records), timeout=QUIET_S)
    assert dead.records == [], dead.records
