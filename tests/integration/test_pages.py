"""What the pages get (docs/contracts.md, "Recommendation", "Placements", "HTTP"), against the real broker: a
pushed list never keeps a withdrawn item, and any worker answers a pull for any visitor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from stream_reco.settings import Settings

from .harness import TopicReader, WorkerProcess, produce, send_items
from .test_worker import LIST_SIZE, T0, Visit, catalog, ids

pytestmark = pytest.mark.integration


@pytest.fixture
def one_worker(unique_settings: Settings, tmp_path: Any) -> Iterator[tuple[Settings, WorkerProcess]]:
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


def test_a_withdrawn_item_leaves_every_pushed_list_showing_it_without_any_event(
        one_worker: tuple[Settings, WorkerProcess]) -> None:
    settings, worker = one_worker
    reader = TopicReader(settings, settings.recommendations_topic)
    visitors = [Visit(settings, reader, session=f"s-idle-{n}") for n in range(3)]
    lists = {v.session: v.send("view", "table-1", page_category="Furniture/Living room/Coffee tables")
             for v in visitors}
    shown_by_all = set.intersection(*(set(ids(rec)) for rec in lists.values()))
    assert shown_by_all, lists
    gone = sorted(shown_by_all)[0]
    bystander = Visit(settings, reader, session="s-bystander")
    bystander_list = bystander.send("view", "spade-1")
    for n in range(2, 6):
        if gone not in ids(bystander_list):
            break
        bystander_list = bystander.send("view", f"spade-{n}")
    assert gone not in ids(bystander_list), "a bystander whose list does not show the item"
    item = next(i for i in catalog() if i["item_id"] == gone)
    sent = time.monotonic()
    send_items(settings, [{**item, "in_stock": False, "updated_at": T0 + 10**7}])

    def refreshed(_: list) -> bool:
        return all(any(d["trigger_event_id"] is None for d in reader.lists_for(s)) for s in lists)

    reader.wait_for(refreshed, timeout=20)
    took = time.monotonic() - sent
    for session in lists:
        fresh = [d for d in reader.lists_for(session) if d["trigger_event_id"] is None]
        assert fresh, f"{session}: no refreshed list\n{worker.output()}"
        assert gone not in ids(fresh[-1]) and len(fresh[-1]["items"]) == LIST_SIZE, fresh[-1]
    assert took < 10, f"refresh took {took:.1f} s"
    assert all(d["trigger_event_id"] is not None for d in reader.lists_for("s-bystander")), \
        "a list that did not show the item is left alone"

    # a tombstone is a withdrawal too
    victim = ids(reader.lists_for(visitors[0].session)[-1])[0]
    before = len(reader.lists_for(visitors[0].session))
    asyncio.run(produce(settings, settings.catalog_topic, [(victim.encode(), None)]))
    reader.wait_for(lambda _: len(reader.lists_for(visitors[0].session)) > before, timeout=20)
    assert victim not in ids(reader.lists_for(visitors[0].session)[-1])
