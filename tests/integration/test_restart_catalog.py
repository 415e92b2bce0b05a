"""A worker restarted with a model and a catalog topic holding later stock changes and tombstones (issue 11).

A shop's stock-only updates (`{"item_id", "in_stock": false}`) and deletions (a Kafka tombstone, or
`"deleted": true`) carry no `updated_at` (0), while the model artifact's copy of the item has the time of
training. A worker reads the catalog topic first and loads the model after it, so if the newer-looking
artifact row won, every sold-out or deleted item would come back on every start and every model swap
(defect 2). Here: items are described, a model is trained and written, a worker serves lists; then the most
recommended items go out of stock or are deleted, and one is restocked, all on the catalog topic; the worker
restarts, later hot-swaps a newer model, and finally two hidden items are restocked live. None of the hidden
items may appear in any list after the restart until its restock; every restocked item must appear again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from stream_reco.core.events import CatalogItem, Event
from stream_reco.model.train import train_and_save
from stream_reco.settings import Settings
from stream_reco.shop.simulate import simulate
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, produce, send_events, send_items, wait_until

pytestmark = pytest.mark.integration

#: the artifact's rows say "updated long after the live messages" (what made them win before the fix)
ARTIFACT_UPDATED_AT = 1_900_000_000_000


def train_model(settings: Settings, events: list[dict[str, Any]], catalog: list[dict[str, Any]]) -> str:
    items = [CatalogItem.from_dict({**i, "updated_at": ARTIFACT_UPDATED_AT}) for i in catalog]
    artifact, _ = train_and_save([Event.from_dict(e) for e in events], items, settings, progress=False)
    return artifact.version


def again(events: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    """The same behaviour from new visitors (new event ids, so nothing is a duplicate)."""
    out = []
    for e in events:
        e = {**e, "event_id": f"{tag}-{e['event_id']}"}
        for key in ("user_id", "session_id"):
            if e.get(key):
                e[key] = f"{tag}-{e[key]}"
        out.append(e)
    return out


def listed(records: list[tuple[bytes | None, bytes]]) -> Counter[str]:
    return Counter(i["item_id"] for _, v in records for i in orjson.loads(v)["items"])


def send_and_wait(settings: Settings, reader: TopicReader, events: list[dict[str, Any]]) -> int:
    """Send `events`; return once every visitor among them has a list published after the sending began."""
    mark = len(reader.records)
    visitors = {(e.get("user_id") or e["session_id"]).encode() for e in events}
    send_events(settings, events)
    reader.wait_for(lambda r: visitors <= {k for k, _ in r[mark:]})
    assert visitors <= {k for k, _ in reader.records[mark:]}, "every visitor got a list"
    return mark


def test_restart_keeps_stock_changes_and_tombstones_over_the_model(unique_settings: Settings, tmp_path) -> None:
    settings = unique_settings.replace(data_dir=str(tmp_path), web_port=0, model_poll_s=0.5)
    catalog, events_iter = simulate("tiny", seed=3)
    events = list(events_iter)
    first = train_model(settings, events[:500], catalog)
    by_id = {i["item_id"]: i for i in catalog}

    ensure_topics(settings)
    send_items(settings, catalog)
    reader = TopicReader(settings, settings.recommendations_topic)
    worker = WorkerProcess(settings, name="before-restart")
    try:
        worker.wait_ready()
        send_and_wait(settings, reader, events[:500])
    finally:
        worker.stop()
    assert not worker.crashed(), worker.output()
    reader.wait_for(lambda r: False, timeout=3.0)  # every list the first worker published, before the mark
    popular = [item for item, _ in listed(reader.records).most_common(7)]
    assert len(popular) == 7, "the lists before the restart name at least 7 items"
    restocked_before, out_of_stock, tombstoned, deleted = popular[0], popular[1:4], popular[4:6], popular[6]
    hidden = {*out_of_stock, *tombstoned, deleted}

    # the shop's later catalog messages, none with an updated_at: stock changes, deletions, one restock
    changes: list[tuple[bytes, bytes | None]] = [
        *((i.encode(), orjson.dumps({"item_id": i, "in_stock": False})) for i in [*out_of_stock, restocked_before]),
        *((i.encode(), None) for i in tombstoned),
        (deleted.encode(), orjson.dumps({"item_id": deleted, "deleted": True})),
        (restocked_before.encode(), orjson.dumps({**by_id[restocked_before], "in_stock": True, "updated_at": 0})),
    ]
    asyncio.run(produce(settings, settings.catalog_topic, changes))

    mark = len(reader.records)
    worker = WorkerProcess(settings, name="after-restart")
    try:
        worker.wait_ready()
        send_and_wait(settings, reader, again(events[:400], "r1"))
        after = reader.records[mark:]
        assert {orjson.loads(v)["model_version"] for _, v in after} == {first}, "the model was loaded at start"
        shown = listed(after)
        assert not hidden & shown.keys(), f"hidden items listed after the restart: {hidden & shown.keys()}"
        assert shown[restocked_before] > 0, "an item restocked before the restart is recommended again"

        # a newer model (its rows newer still) is hot-swapped in: the hidden items stay hidden
        time.sleep(1.0)  # a later version name: artifacts are ordered by creation time
        second = train_model(settings, events[:800], catalog)
        assert second > first
        swap_mark = len(reader.records)
        pending = again(events[:400], "r2")

        def swapped() -> bool:
            if pending:
                send_events(settings, [pending.pop(0)])
            reader.wait_for(lambda r: False, timeout=0.5)
            return any(orjson.loads(v)["model_version"] == second for _, v in reader.records[swap_mark:])

        wait_until(swapped, 60, "the newer model in use", poll_s=0)
        send_and_wait(settings, reader, pending)
        after = reader.records[mark:]
        assert not hidden & listed(after).keys(), f"hidden items listed after the swap: {hidden & listed(after).keys()}"

        # restocked live (a full item, updated_at 0 again): recommended again
        back = {out_of_stock[0], tombstoned[0]}
        asyncio.run(produce(settings, settings.catalog_topic, [
            (i.encode(), orjson.dumps({**by_id[i], "in_stock": True, "deleted": False, "updated_at": 0})) for i in back
        ]))
        time.sleep(1.0)  # the catalog consumer applies it
        restock_mark = len(reader.records)
        send_events(settings, again(events[:400], "r3"))
        reader.wait_for(lambda r: back <= listed(r[restock_mark:]).keys(), timeout=45)
        final = listed(reader.records[restock_mark:])
        assert back <= final.keys(), f"restocked items not recommended again: {back - final.keys()}"
        assert not (hidden - back) & final.keys(), "items still hidden stayed out of every list"
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    assert not worker.crashed(), worker.output()
