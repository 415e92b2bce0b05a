"""What the pages get (docs/contracts.md, "Recommendation", "Placements", "HTTP"), against the real broker: a
pushed list never keeps a withdrawn item, and any worker answers a pull for any visitor."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from stream_reco.settings import Settings
from stream_reco.stream.joins import partition_of

from .harness import TopicReader, WorkerProcess, free_ports, produce, send_items, wait_until
from .test_reliability_scale import owned
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
    assert all("table-1" not in ids(rec) for rec in lists.values()), "the viewed item is never in its own list"
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
        return all(any(d["trigger_event_id"] is None and len(d["items"]) == LIST_SIZE for d in reader.lists_for(s))
                   for s in lists)

    reader.wait_for(lambda _: all(any(d["trigger_event_id"] is None for d in reader.lists_for(s)) for s in lists),
                    timeout=20)
    took = time.monotonic() - sent
    reader.wait_for(refreshed, timeout=20)
    for session in lists:
        fresh = [d for d in reader.lists_for(session) if d["trigger_event_id"] is None]
        assert fresh, f"{session}: no refreshed list\n{worker.output()}"
        # at once: the published list without the item; then the list computed afresh, full length again
        assert gone not in ids(fresh[0]) and len(fresh[0]["items"]) == LIST_SIZE - 1, fresh[0]
        assert ids(fresh[0]) == [i for i in ids(lists[session]) if i != gone]
        assert gone not in ids(fresh[-1]) and len(fresh[-1]["items"]) == LIST_SIZE, fresh[-1]
        assert fresh[0]["list_id"] != lists[session]["list_id"] != fresh[-1]["list_id"]
    assert took < 10, f"refresh took {took:.1f} s"
    assert all(d["trigger_event_id"] is not None for d in reader.lists_for("s-bystander")), \
        "a list that did not show the item is left alone"

    # a tombstone is a withdrawal too
    victim = ids(reader.lists_for(visitors[0].session)[-1])[0]
    before = len(reader.lists_for(visitors[0].session))
    asyncio.run(produce(settings, settings.catalog_topic, [(victim.encode(), None)]))
    reader.wait_for(lambda _: len(reader.lists_for(visitors[0].session)) > before, timeout=20)
    assert victim not in ids(reader.lists_for(visitors[0].session)[-1])


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET a worker's route: (status, JSON body), also for 4xx answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


@pytest.fixture
def two_workers(unique_settings: Settings, tmp_path: Any) -> Iterator[tuple[Settings, list[tuple[WorkerProcess, int]]]]:
    from stream_reco.stream.topics import ensure_topics

    settings = unique_settings.replace(partitions=4, list_size=LIST_SIZE, data_dir=str(tmp_path),
                                       web_advertised_host="127.0.0.1")
    ensure_topics(settings)
    send_items(settings, catalog())
    ports = free_ports(2)
    workers = [(WorkerProcess(settings.replace(web_port=port), name=f"W{i}", loglevel="info", web_port=port), port)
               for i, port in enumerate(ports)]
    try:
        for w, _ in workers:
            w.wait_ready()
        wait_until(lambda: sorted(p for w, _ in workers for p in owned(w)) == [0, 1, 2, 3]
                   and all(owned(w) for w, _ in workers), 90,
                   lambda: f"the workers share the partitions: {[owned(w) for w, _ in workers]}")
        yield settings, workers
    finally:
        for w, _ in workers:
            w.stop()
        for w, _ in workers:
            assert not w.crashed(), w.output()


def test_any_worker_answers_a_pull_for_any_visitor_in_every_placement(
        two_workers: tuple[Settings, list[tuple[WorkerProcess, int]]]) -> None:
    settings, workers = two_workers
    reader = TopicReader(settings, settings.recommendations_topic)
    visitors = [f"u-pull-{n}" for n in range(6)]
    for v in visitors:  # each views sofas; their partitions are spread over both workers
        visit = Visit(settings, reader, session=f"s-{v}", user=v)
        for i in range(1, 4):
            pushed = visit.send("view", f"sofa-{i}", page_category="Furniture/Living room/Sofas")
    partitions = {partition_of(v, 4) for v in visitors}
    assert len({w.name for w, _ in workers for p in owned(w) if p in partitions}) == 2, "both workers own some"
    for v in visitors:
        answers = [get(port, f"/recommendations/{v}") for _, port in workers]
        assert [status for status, _ in answers] == [200, 200], answers
        first, second = (doc for _, doc in answers)
        assert first["user_id"] == second["user_id"] == v, "the owner's state answers, wherever the pull lands"
        assert ids(first) == ids(second) and len(first["items"]) == LIST_SIZE
        assert first["list_id"] != second["list_id"], "every served list has its own id"
        assert first["placement"] == "home" and first["trigger_event_id"] is None
        assert all(i["reason"] and i.get("title") for i in first["items"]), first["items"]

        product = get(workers[0][1], f"/recommendations/{v}?placement=product&item=sofa-5&n=4")[1]
        assert product["placement"] == "product" and "sofa-5" not in ids(product) and len(product["items"]) == 4
        cart = get(workers[1][1], f"/recommendations/{v}?placement=cart&item=table-1&item=table-2")[1]
        assert not {"table-1", "table-2"} & set(ids(cart)) and cart["items"]
        scoped = get(workers[0][1], f"/recommendations/{v}?placement=category&category=Kitchen/Appliances")[1]
        assert scoped["items"] and all(i["category"][:2] == ["Kitchen", "Appliances"] for i in scoped["items"])
        excluded = get(workers[1][1], f"/recommendations/{v}?exclude={','.join(ids(first)[:2])}")[1]
        assert not set(ids(first)[:2]) & set(ids(excluded))
    assert pushed["items"]

    status, cold = get(workers[0][1], "/recommendations/u-never-seen")
    assert status == 200 and cold["user_id"] is None and cold["items"], "an unknown visitor gets a cold-start list"
    for path, message in [("/recommendations/u-1?placement=basket", "placement must be one of"),
                          ("/recommendations/u-1?placement=product", "needs exactly one item"),
                          ("/recommendations/u-1?n=1000", "n must be between 1 and 100"),
                          ("/items/sofa-1/similar?n=zero", "n must be a whole number")]:
        status, body = get(workers[1][1], path)
        assert status == 400 and message in body["error"], (path, status, body)
    status, similar = get(workers[1][1], "/items/sofa-1/similar?n=3")
    assert status == 200 and len(similar["items"]) == 3 and "sofa-1" not in ids(similar)
    assert get(workers[0][1], "/items/no-such-item/similar")[0] == 404


def test_lists_pushed_before_a_restart_are_refreshed_too(unique_settings: Settings, tmp_path: Any) -> None:
    from stream_reco.stream.topics import ensure_topics

    settings = unique_settings.replace(list_size=LIST_SIZE, data_dir=str(tmp_path), web_port=0)
    ensure_topics(settings)
    send_items(settings, catalog())
    reader = TopicReader(settings, settings.recommendations_topic)
    worker = WorkerProcess(settings)
    try:
        worker.wait_ready()
        visit = Visit(settings, reader, session="s-before-restart")
        pushed = visit.send("view", "kettle-1", page_category="Kitchen/Appliances/Kettles")
    finally:
        worker.stop()
    gone = ids(pushed)[0]
    worker = WorkerProcess(settings, loglevel="info")
    try:
        worker.wait_ready()
        wait_until(lambda: any("pushed lists learned" in line for line in worker.lines), 30,
                   lambda: f"the restarted worker read the pushed lists:\n{worker.output()}")
        item = next(i for i in catalog() if i["item_id"] == gone)
        send_items(settings, [{**item, "deleted": True, "updated_at": T0 + 10**7}])
        reader.wait_for(lambda _: any(d["trigger_event_id"] is None for d in reader.lists_for("s-before-restart")),
                        timeout=20)
        fresh = [d for d in reader.lists_for("s-before-restart") if d["trigger_event_id"] is None]
        assert fresh and gone not in ids(fresh[-1]), f"{fresh}\n{worker.output()}"
    finally:
        worker.stop()
        assert not worker.crashed(), worker.output()
