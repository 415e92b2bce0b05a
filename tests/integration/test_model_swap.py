"""Workers load the newest model artifact and hot-swap a newer one without a restart."""

from __future__ import annotations

import time

import orjson
import pytest

from stream_reco.core.events import CatalogItem, Event
from stream_reco.model.train import train_and_save
from stream_reco.settings import Settings
from stream_reco.shop.simulate import simulate
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, send_events, send_items

pytestmark = pytest.mark.integration


def test_worker_hot_swaps_a_newer_model(unique_settings: Settings, tmp_path) -> None:
    settings = unique_settings.replace(data_dir=str(tmp_path), web_port=0, model_poll_s=0.5)
    catalog, events_iter = simulate("tiny", seed=3)
    events = list(events_iter)
    items = [CatalogItem.from_dict(i) for i in catalog]
    first, _ = train_and_save([Event.from_dict(e) for e in events[:500]], items, settings, progress=False)

    ensure_topics(settings)
    send_items(settings, catalog)
    reader = TopicReader(settings, settings.recommendations_topic)
    worker = WorkerProcess(settings)
    try:
        worker.wait_ready()
        send_events(settings, events[:5])
        reader.wait_for(lambda r: len(r) > 0)
        assert {d["model_version"] for d in reader.latest().values()} == {first.version}, "loaded at start"

        time.sleep(1.0)  # a later version name: artifacts are ordered by creation time
        second, _ = train_and_save([Event.from_dict(e) for e in events[:1000]], items, settings, progress=False)
        assert second.version > first.version
        deadline = time.monotonic() + 30
        swapped = False
        i = 5
        while not swapped and time.monotonic() < deadline:
            send_events(settings, [events[i]])
            i += 1
            reader.wait_for(lambda r: False, timeout=1.0)
            swapped = any(orjson.loads(v)["model_version"] == second.version for _, v in reader.records)
        assert swapped, "the worker picked up the newer artifact without a restart"
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    assert not worker.crashed(), worker.output()
