"""Trust at the worker's edge (issue 11), against one real worker on the real broker.

- A mis-keyed event (its Kafka key is not its visitor) or catalog message (key is not its item_id) is
  dead-lettered with the reason, and changes nothing; a catalog tombstone (key = item id, no value) still works.
- An event stamped in the future beyond `max_clock_skew_s` is dead-lettered; an event with an old timestamp
  (a replayed historical log) is processed as before.
- The worker's HTTP port serves the documented routes only: faust's own pages (`/router`, `/table`, its
  statistics and index) answer 404.

One worker serves the whole module (starting one costs seconds); each test uses its own visitors.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from stream_reco import schemas
from stream_reco.settings import Settings
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, produce, send_events, send_items
from .test_worker import T0, catalog, ids

pytestmark = pytest.mark.integration

DEAD_LETTER_TIMEOUT_S = 30.0
LIST_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def trusted(kafka_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, int]]:
    """One worker with its HTTP port, on topics of its own; yields (settings, port)."""
    tag = uuid.uuid4().hex[:10]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = kafka_settings.replace(
        events_topic=f"t-{tag}.events", catalog_topic=f"t-{tag}.catalog",
        recommendations_topic=f"t-{tag}.recommendations", dead_letter_topic=f"t-{tag}.dead-letter",
        app_id=f"t-{tag}", partitions=3, list_size=5, web_port=port,
        data_dir=str(tmp_path_factory.mktemp("trust")),
    )
    ensure_topics(settings)
    send_items(settings, catalog())
    worker = WorkerProcess(settings, web_port=port)
    try:
        worker.wait_ready()
        yield settings, port
        assert worker.proc.poll() is None, f"the worker keeps running:\n{worker.output()}"
    finally:
        worker.stop()
    assert not worker.crashed(), worker.output()


def event(event_id: str, visitor: str, item: str, ts: int, event_type: str = "view") -> dict[str, Any]:
    return {"event_id": event_id, "event_type": event_type, "item_id": item, "timestamp": ts, "user_id": visitor}


def dead_letters_for(settings: Settings, topic: str, marker: bytes, count: int) -> list[dict[str, Any]]:
    """The dead letters whose raw message contains `marker`, once `count` of them arrived."""
    dlq = TopicReader(settings, settings.dead_letter_topic)

    def mine(records: list) -> list[dict[str, Any]]:
        docs = [orjson.loads(v) for _, v in records]
        return [d for d in docs if d["topic"] == topic and marker.decode() in d["raw"]]

    dlq.wait_for(lambda r: len(mine(r)) >= count, timeout=DEAD_LETTER_TIMEOUT_S)
    found = mine(dlq.records)
    assert len(found) == count, f"expected {count} dead letters for {marker!r}, got {found}"
    for doc in found:
        schemas.validate("dead_letter", doc)
    return found


def list_for(settings: Settings, visitor: str, event_id: str) -> dict[str, Any]:
    reader = TopicReader(settings, settings.recommendations_topic)
    reader.wait_for(lambda _: any(d["trigger_event_id"] == event_id for d in reader.lists_for(visitor)),
                    timeout=LIST_TIMEOUT_S)
    found = [d for d in reader.lists_for(visitor) if d["trigger_event_id"] == event_id]
    assert found, f"no list for {visitor} triggered by {event_id}"
    return found[-1]


def triggered(settings: Settings, event_ids: set[str]) -> list[str]:
    reader = TopicReader(settings, settings.recommendations_topic)
    reader.wait_for(lambda _: False, timeout=1.0)
    return [d["trigger_event_id"] for _, v in reader.records if (d := orjson.loads(v))["trigger_event_id"] in event_ids]


def test_mis_keyed_event_is_dead_lettered_and_writes_no_state(trusted: tuple[Settings, int]) -> None:
    settings, port = trusted
    victim = f"u-victim-{uuid.uuid4().hex[:6]}"
    wrong = event("mk-wrong-key", victim, "sofa-1", T0)
    unkeyed = event("mk-no-key", victim, "sofa-2", T0 + 1)
    asyncio.run(produce(settings, settings.events_topic, [
        (b"u-somebody-else", orjson.dumps(wrong)), (None, orjson.dumps(unkeyed))]))
    letters = dead_letters_for(settings, settings.events_topic, b'"mk-', 2)
    assert all("Kafka key" in d["error"] and d["field"] == "user_id" for d in letters), letters
    errors = sorted((d["error"] for d in letters), reverse=True)  # "(none)" sorts after "('"
    assert "the Kafka key (none)" in errors[0] and "the Kafka key ('u-somebody-else')" in errors[1], errors
    assert triggered(settings, {"mk-wrong-key", "mk-no-key"}) == [], "a mis-keyed event publishes nothing"
    # the victim has no state (a mis-keyed event wrote nothing): a pull answers a cold-start list, as for a
    # visitor never seen, with no user behind it
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/recommendations/{victim}", timeout=10) as resp:
        cold = orjson.loads(resp.read())
    assert cold["user_id"] is None and cold["session_id"] == victim and cold["items"]
    # the same event, keyed by its visitor, is applied
    send_events(settings, [event("mk-right-key", victim, "sofa-1", T0 + 2)])
    assert list_for(settings, victim, "mk-right-key")["items"]


def test_mis_keyed_catalog_message_is_dead_lettered_and_tombstones_still_delete(
        trusted: tuple[Settings, int]) -> None:
    settings, _ = trusted
    intruder = {**catalog()[0], "item_id": "spade-intruder", "category": ["Garden", "Tools", "Spades"],
                "title": "mis-keyed spade"}
    asyncio.run(produce(settings, settings.catalog_topic, [
        (b"spade-1", orjson.dumps(intruder)),  # keyed by another item: would overwrite spade-1 on compaction
        (b"spade-0", None),  # a tombstone: spade-0 is deleted
    ]))
    letters = dead_letters_for(settings, settings.catalog_topic, b"spade-intruder", 1)
    assert letters[0]["field"] == "item_id" and "'spade-1'" in letters[0]["error"], letters
    time.sleep(1.0)  # the two went to different catalog partitions: let the tombstone's be read too
    visitor = f"u-spades-{uuid.uuid4().hex[:6]}"
    send_events(settings, [event(f"sp-{i}-{visitor}", visitor, f"spade-{i}", T0 + i) for i in range(2, 6)])
    rec = list_for(settings, visitor, f"sp-5-{visitor}")
    assert "spade-intruder" not in ids(rec), "a dead-lettered catalog message adds no item"
    assert "spade-0" not in ids(rec), "the tombstone deleted the item"


def test_future_event_is_dead_lettered_and_old_event_is_processed(trusted: tuple[Settings, int]) -> None:
    settings, _ = trusted
    visitor = f"u-clock-{uuid.uuid4().hex[:6]}"
    now = int(time.time() * 1000)
    future = event("ck-future", visitor, "kettle-1", now + 3_600_000, "purchase")  # an hour ahead
    far = event("ck-2099", visitor, "kettle-2", 4_070_908_800_000, "purchase")  # 2099
    send_events(settings, [future, far])
    letters = dead_letters_for(settings, settings.events_topic, b'"ck-', 2)
    assert all(d["field"] == "timestamp" and "max_clock_skew_s" in d["error"] for d in letters), letters
    old = event("ck-old", visitor, "kettle-3", T0)  # a year old: a replayed log keeps its timestamps
    send_events(settings, [old])
    rec = list_for(settings, visitor, "ck-old")
    assert rec["items"]
    assert triggered(settings, {"ck-future", "ck-2099"}) == []


UNDOCUMENTED = ["/", "/router/", "/table/", "/table/visitors/", "/stats/", "/graph/", "/performance/",
                "/recommendations/", "/recommendations/a/b"]


@pytest.mark.parametrize("path", UNDOCUMENTED)
def test_undocumented_http_paths_are_404(trusted: tuple[Settings, int], path: str) -> None:
    _, port = trusted
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
    assert err.value.code == 404, path


def test_documented_http_route_still_served(trusted: tuple[Settings, int]) -> None:
    settings, port = trusted
    visitor = f"u-http-{uuid.uuid4().hex[:6]}"
    send_events(settings, [event("http-1", visitor, "table-2", T0)])
    rec = list_for(settings, visitor, "http-1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/recommendations/{visitor}", timeout=10) as resp:
        pulled = orjson.loads(resp.read())
    assert pulled["user_id"] == visitor and len(pulled["items"]) == len(rec["items"]) == settings.list_size

