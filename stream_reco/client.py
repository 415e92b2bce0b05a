"""The producer API a shop imports: ``from stream_reco.client import SyncEventProducer``.

Why a separate module: the implementation lives in `stream_reco.shop.client` next to the other shop tools,
but a shop should depend on one short, stable name that does not move when the package is reorganised. This
module only re-exports; `stream_reco.shop.client`'s docstring explains what the client guarantees (validation
before sending, the contract's keys, compact JSON, the project's security settings).

>>> from stream_reco.client import prepare_event
>>> from stream_reco.settings import Settings
>>> prepare_event(Settings(), {"event_id": "e-1", "event_type": "view", "user_id": "u-42",
...                            "item_id": "sku-1", "timestamp": 1764150000000}).key
b'u-42'
"""

from __future__ import annotations

from stream_reco.core.events import CatalogItem, Event
from stream_reco.schemas import InvalidMessage
from stream_reco.shop.client import (
    DeliveryError,
    EventProducer,
    Prepared,
    SyncEventProducer,
    prepare_event,
    prepare_item,
)

__all__ = [
    "CatalogItem",
    "DeliveryError",
    "Event",
    "EventProducer",
    "InvalidMessage",
    "Prepared",
    "SyncEventProducer",
    "prepare_event",
    "prepare_item",
]
