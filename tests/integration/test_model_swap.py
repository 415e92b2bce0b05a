"""Workers load the newest valid model artifact and hot-swap a newer one without a restart; corrupt ones are skipped."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from stream_reco.core.events import CatalogItem, Event
from stream_reco.model import artifact as model_artifact
from stream_reco.model.artifact import ModelArtifact
from stream_reco.model.train import train_and_save
from stream_reco.settings import Settings
from stream_reco.shop.simulate import simulate
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, send_events, send_items, wait_until

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


def drop_in(artifact: ModelArtifact, version: str, models: Path, damage: Callable[[Path], None]) -> Path:
    """Write a copy of `artifact` as `version`, damaged, and move it into the models folder in one rename (the
    watcher must never see the undamaged copy)."""
    staged = model_artifact.save(dataclasses.replace(artifact, version=version, path=None), models.parent / "staging")
    damage(staged)
    return staged.rename(models / version)


def truncate_vectors(path: Path) -> None:
    data = (path / "vectors.npy").read_bytes()
    (path / "vectors.npy").write_bytes(data[: len(data) // 2])


def test_corrupt_model_folders_are_logged_and_skipped(unique_settings: Settings, tmp_path) -> None:
    """Issue 11, defect 7: a corrupt folder under data_dir/models, at start-up or dropped in while the worker
    runs, is logged once and skipped; the worker keeps publishing lists with its current (valid) model."""
    settings = unique_settings.replace(data_dir=str(tmp_path), web_port=0, model_poll_s=0.3)
    catalog, events_iter = simulate("tiny", seed=3)
    events = list(events_iter)
    items = [CatalogItem.from_dict(i) for i in catalog]
    good, good_path = train_and_save([Event.from_dict(e) for e in events[:500]], items, settings, progress=False)
    models = good_path.parent
    at_start = drop_in(good, good.version + "-b", models, truncate_vectors)

    ensure_topics(settings)
    send_items(settings, catalog)
    reader = TopicReader(settings, settings.recommendations_topic)
    worker = WorkerProcess(settings)
    try:
        worker.wait_ready()
        send_events(settings, events[:5])
        reader.wait_for(lambda r: len(r) > 0)
        assert {d["model_version"] for d in reader.latest().values()} == {good.version}, "the newest valid one"

        dropped = drop_in(good, good.version + "-c", models,
                          lambda p: (p / "catalog.jsonl").write_bytes(b'{"item_id": "sku-1"}\n{"item_id": '))
        time.sleep(settings.model_poll_s * 6)  # several polls see it
        mark = len(reader.records)
        send_events(settings, events[5:40])
        reader.wait_for(lambda r: len(r) - mark >= 5)
        assert len(reader.records) - mark >= 5, "lists are still published"
        assert {orjson.loads(v)["model_version"] for _, v in reader.records[mark:]} == {good.version}
        assert worker.proc.poll() is None

        errors = [line for line in worker.lines if "not used" in line]
        assert sum(str(at_start) in line and "vectors.npy" in line for line in errors) == 1, worker.output()
        assert sum(str(dropped) in line and "catalog.jsonl:2" in line for line in errors) == 1, worker.output()

        newer = model_artifact.save(dataclasses.replace(good, version=good.version + "-d", path=None), models)
        pending = events[40:200]

        def swapped() -> bool:
            send_events(settings, [pending.pop(0)])
            reader.wait_for(lambda r: False, timeout=0.5)
            return any(orjson.loads(v)["model_version"] == newer.name for _, v in reader.records[mark:])

        wait_until(swapped, 30, "the valid newer model in use after the corrupt ones", poll_s=0)
    finally:
        worker.stop()
    assert not worker.crashed(), worker.output()
