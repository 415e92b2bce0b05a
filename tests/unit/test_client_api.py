"""`stream_reco.client`, the producer API a shop imports: the names it promises, and that a bad message is
refused with its failing field before anything touches the network (no broker needed: an unstarted
producer raises "not started" for a valid message, so reaching that error means validation passed)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

import stream_reco.client as client
from stream_reco.settings import Settings
from stream_reco.shop import client as implementation

T0 = 1_764_150_000_000
NOT_STARTED = "not started"


def event(**fields: Any) -> dict[str, Any]:
    return {"event_id": "e-1", "event_type": "view", "item_id": "sku-1", "timestamp": T0, **fields}


def test_public_names_are_the_implementation() -> None:
    assert sorted(client.__all__) == sorted([
        "CatalogItem", "DeliveryError", "Event", "EventProducer", "InvalidMessage", "Prepared",
        "SyncEventProducer", "prepare_event", "prepare_item",
    ])
    assert client.EventProducer is implementation.EventProducer
    assert client.SyncEventProducer is implementation.SyncEventProducer
    assert client.prepare_event is implementation.prepare_event
    namespace: dict[str, Any] = {}
    exec("from stream_reco.client import *", namespace)  # what `import *` gives a shop
    assert set(client.__all__) <= namespace.keys()


def test_prepare_keys_by_visitor_and_encodes_compact_json() -> None:
    settings = Settings().replace(events_topic="x.events", catalog_topic="x.catalog")
    logged_in = client.prepare_event(settings, event(user_id="u-42", session_id="s-1"))
    assert (logged_in.topic, logged_in.key) == ("x.events", b"u-42")
    assert orjson.loads(logged_in.value) == event(user_id="u-42", session_id="s-1")
    assert b" " not in logged_in.value
    anonymous = client.prepare_event(settings, event(session_id="s-9"))
    assert anonymous.key == b"s-9"
    typed = client.prepare_event(settings, client.Event(event_id="e-2", event_type="purchase", item_id="sku-2",
                                                        timestamp=T0, user_id="u-7", quantity=2, price=9.5))
    assert typed.key == b"u-7"
    assert orjson.loads(typed.value)["context"] == {"quantity": 2, "price": 9.5}
    item = client.prepare_item(settings, {"item_id": "sku-1", "title": "Sofa"})
    assert (item.topic, item.key) == ("x.catalog", b"sku-1")


@pytest.mark.parametrize(("bad", "field"), [
    (event(user_id="u-1", event_type="like"), "event_type"),
    (event(), "session_id"),  # no visitor at all
    ({k: v for k, v in event(user_id="u-1").items() if k != "item_id"}, "item_id"),
    (event(user_id="u-1", timestamp="yesterday"), "timestamp"),
])
def test_invalid_event_names_its_field_before_any_network_call(bad: dict[str, Any], field: str) -> None:
    settings = Settings()
    with pytest.raises(client.InvalidMessage) as sync_error:
        client.SyncEventProducer(settings).send_event(bad)
    assert sync_error.value.field == field

    async def send_async() -> None:
        await client.EventProducer(settings).send_event(bad)

    with pytest.raises(client.InvalidMessage) as async_error:
        asyncio.run(send_async())
    assert async_error.value.field == field


def test_valid_event_gets_past_validation_to_the_connection() -> None:
    """The counterpart of the test above: the same unstarted producers, a valid event, a different error."""
    settings = Settings()
    with pytest.raises(RuntimeError, match=NOT_STARTED):
        client.SyncEventProducer(settings).send_event(event(user_id="u-1"))

    async def send_async() -> None:
        await client.EventProducer(settings).send_event(event(user_id="u-1"))

    with pytest.raises(RuntimeError, match=NOT_STARTED):
        asyncio.run(send_async())


def test_oversized_message_is_refused_with_the_limit() -> None:
    settings = Settings().replace(max_message_bytes=500)
    with pytest.raises(client.InvalidMessage, match="larger than the limit of 500 bytes"):
        client.prepare_event(settings, event(user_id="u-1", context={"page_category": "x" * 600}))
    with pytest.raises(client.InvalidMessage) as no_id:
        client.prepare_item(settings, {"title": "no id"})
    assert no_id.value.field == "item_id"
