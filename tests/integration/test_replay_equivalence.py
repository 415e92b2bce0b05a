"""One event log, model and settings give the same final lists in-process and through Kafka."""

from __future__ import annotations

import pytest

from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.recommender import Recommender
from stream_reco.core.replay import replay
from stream_reco.settings import Settings
from stream_reco.shop.simulate import simulate

from .harness import TopicReader, WorkerProcess, send_events, send_items

pytestmark = pytest.mark.integration


def test_in_process_and_kafka_final_lists_are_identical(unique_settings: Settings, tmp_path) -> None:
    # one partition and one event per step: the worker applies events in log order, as replay() does
    settings = unique_settings.replace(partitions=1, batch_size=1, data_dir=str(tmp_path), web_port=0)
    catalog, events_iter = simulate("tiny", seed=7)
    events = list(events_iter)

    expected = replay(
        Recommender(settings), [Event.from_dict(e) for e in events], [CatalogItem.from_dict(i) for i in catalog]
    )
    assert len(expected) > 10

    from stream_reco.stream.topics import ensure_topics

    ensure_topics(settings)
    send_items(settings, catalog)
    worker = WorkerProcess(settings)
    try:
        worker.wait_ready()
        send_events(settings, events)
        reader = TopicReader(settings, settings.recommendations_topic)
        last_ids = {key: rec.trigger_event_id for key, rec in expected.items()}

        def done(_: list) -> bool:
            latest = reader.latest()
            return all(latest.get(k, {}).get("trigger_event_id") == t for k, t in last_ids.items())

        reader.wait_for(done, timeout=180)
    finally:
        worker.stop()
    assert not worker.crashed(), worker.output()
    got = reader.latest()
    assert set(got) == set(expected)
    mismatched = []
    for key, rec in expected.items():
        want = [(i.item_id, round(i.score, 6), i.reason) for i in rec.items]
        have = [(i["item_id"], i["score"], i["reason"]) for i in got[key]["items"]]
        if want != have:
            mismatched.append((key, want, have))
    assert not mismatched, f"{len(mismatched)} visitors differ, first: {mismatched[0]}"
