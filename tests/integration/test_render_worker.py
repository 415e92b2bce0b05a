"""A worker on the real broker publishes lists a page can render, with their identity (docs/contracts.md,
"Recommendation"), and accepts catalog items with multi-valued attributes (issue 13 items 4 and 6)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from stream_reco import schemas
from stream_reco.settings import Settings

from .harness import TopicReader, WorkerProcess, send_events, send_items

pytestmark = pytest.mark.integration

T0 = 1_764_150_000_000
PATH = ["Movies", "Comedy"]
FILMS = 8
_ids = itertools.count()


def catalog() -> list[dict[str, Any]]:
    """Films whose genres are lists (one of them multi-valued), a sofa without a price, and one item whose
    list attribute is longer than the schema's bound of 32 values."""
    films = [{
        "item_id": f"film-{n}",
        "title": f"Film number {n}",
        "category": PATH,
        "price": 5.0 + n,
        "attributes": {"genres": ["Comedy", "Drama"] if n % 2 else ["Comedy"], "year": 1990 + n},
        "updated_at": T0,
    } for n in range(FILMS)]
    sofa = {"item_id": "sofa-1", "title": "Three-seat sofa", "category": ["Furniture", "Sofas"]}
    too_many = {"item_id": "film-tags", "title": "Too many tags", "category": PATH,
                "attributes": {"tags": [f"t{n}" for n in range(33)]}}
    return [*films, sofa, too_many]


@pytest.fixture
def running(unique_settings: Settings, tmp_path) -> Iterator[Settings]:
    from stream_reco.stream.topics import ensure_topics

    settings = unique_settings.replace(list_size=5, data_dir=str(tmp_path), web_port=0,
                                       attribute_boosts="genres=Drama:3")
    ensure_topics(settings)
    send_items(settings, catalog())
    worker = WorkerProcess(settings)
    try:
        worker.wait_ready()
        yield settings
    finally:
        worker.stop()
        assert not worker.crashed(), worker.output()


def view(settings: Settings, reader: TopicReader, session: str, item: str) -> dict[str, Any]:
    """Send a view and return the list it triggered."""
    event_id = f"r-{session}-{next(_ids)}"
    send_events(settings, [{"event_id": event_id, "event_type": "view", "item_id": item,
                            "timestamp": T0 + 60_000 * next(_ids), "session_id": session}])
    reader.wait_for(lambda _: any(d["trigger_event_id"] == event_id for d in reader.lists_for(session)), timeout=30)
    found = [d for d in reader.lists_for(session) if d["trigger_event_id"] == event_id]
    assert found, f"no list published for {event_id}"
    return found[-1]


def test_published_lists_carry_identity_and_render_fields(running: Settings) -> None:
    settings = running
    reader = TopicReader(settings, settings.recommendations_topic)
    first = view(settings, reader, "s-render", "film-0")
    second = view(settings, reader, "s-render", "film-2")

    for doc in (first, second):
        schemas.validate("recommendation", doc)  # with the new fields, as published
        assert doc["placement"] == "home" and doc["experiment"] is None
        assert isinstance(doc["list_id"], str) and doc["list_id"].startswith("l-")
        assert doc["items"], doc
        for item in doc["items"]:
            assert "variant" not in item  # only interleaved lists name variants
            if item["item_id"].startswith("film-"):
                n = int(item["item_id"].split("-")[1])
                assert (item["title"], item["price"], item["category"]) == (f"Film number {n}", 5.0 + n, PATH)
    assert first["list_id"] != second["list_id"], "a new id for every published list"
    # the same list id in the raw bytes as in the parsed document: stable within one published list
    raw = [v for k, v in reader.records if k == b"s-render"]
    assert [orjson.loads(v)["list_id"] for v in raw].count(first["list_id"]) == 1

    # films with list attributes were accepted (they are listed, with their catalog fields) and the boost on
    # one value of a list applies: every multi-valued ("Drama") film ranks above every comedy-only one not
    # viewed (the viewed ones may come back as recently viewed, on their own terms)
    films = [i["item_id"] for i in second["items"] if i["item_id"].startswith("film-")
             and i["item_id"] not in ("film-0", "film-2")]
    assert films, second
    drama = [int(f.split("-")[1]) % 2 == 1 for f in films]
    assert drama == sorted(drama, reverse=True), films

    # only the item beyond the bound was dead-lettered, naming the field
    dlq = TopicReader(settings, settings.dead_letter_topic)
    dlq.wait_for(lambda r: len(r) >= 1, timeout=20)
    dlq.wait_for(lambda _: False, timeout=1.0)
    records = [orjson.loads(v) for _, v in dlq.records]
    assert [(r["topic"], r["field"]) for r in records] == [(settings.catalog_topic, "attributes.tags")], records
    assert "32" in records[0]["error"]
