"""Typed records of the contract's messages, built from documents that already passed the schemas.

The JSON Schemas in `schemas/` decide what is valid; these classes only give the core typed, immutable
values to work with, so nothing here re-checks the schema.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: an attribute value as the core keeps it: text (numbers and booleans spelled as JSON spells them), or the
#: values of a multi-valued attribute (`"genres": ["Comedy", "Drama"]`) in the catalog's order
AttributeValue = str | tuple[str, ...]
#: where a list is shown (docs/contracts.md, "Placements"); pushed lists are "home"
PLACEMENTS: tuple[str, ...] = ("home", "product", "cart", "category")
LIST_ID_PREFIX = "l-"

EventType = Literal["view", "add_to_cart", "purchase", "dismiss", "impression", "click"]
EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase", "dismiss", "impression", "click")
#: what the visitor did (every event type but `impression`, which is what the shop showed)
ACTION_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase", "dismiss", "click")
#: event types that record what the shop showed, not what the visitor did: accepted and deduplicated, but they
#: change no visitor state or statistics and trigger no list (docs/contracts.md, "Feedback events")
SHOWN_TYPES: frozenset[str] = frozenset({"impression"})
CATEGORY_SEP = "/"


@dataclass(frozen=True, slots=True)
class Event:
    """One contract event (docs/contracts.md, "Event" and "Feedback events").

    `item_id` is "" for an impression without one (the schema lets an impression leave it out: its items are
    `shown`), so the field stays a plain `str` for every consumer that reads one item per event.
    `list_id` (impression, click, add_to_cart, purchase), `shown` (impression: the ids in display order) and
    `position` (click, 1-based) come from `context` and are None when absent.
    """

    event_id: str
    event_type: EventType
    item_id: str
    timestamp: int
    user_id: str | None = None
    session_id: str | None = None
    page_category: str | None = None
    quantity: int | None = None
    price: float | None = None
    reason: str | None = None
    list_id: str | None = None
    shown: tuple[str, ...] | None = None
    position: int | None = None

    @property
    def is_shown(self) -> bool:
        """True for an event that records what the shop showed (`SHOWN_TYPES`), not what the visitor did."""
        return self.event_type in SHOWN_TYPES

    @property
    def visitor_key(self) -> str:
        """The Kafka key and state key: the user id, or the session id of an anonymous visitor."""
        return self.user_id or self.session_id  # type: ignore[return-value]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        ctx = d.get("context") or {}
        return cls(
            event_id=d["event_id"],
            event_type=d["event_type"],
            item_id=d.get("item_id") or "",
            timestamp=int(d["timestamp"]),
            user_id=d.get("user_id"),
            session_id=d.get("session_id"),
            page_category=ctx.get("page_category"),
            quantity=ctx.get("quantity"),
            price=ctx.get("price"),
            reason=ctx.get("reason"),
            list_id=ctx.get("list_id"),
            shown=tuple(shown) if (shown := ctx.get("shown")) is not None else None,
            position=ctx.get("position"),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": self.event_type,
        }
        if self.item_id:  # "" only for an impression without an item (see the class docstring)
            d["item_id"] = self.item_id
        d["timestamp"] = self.timestamp
        if self.user_id is not None:
            d["user_id"] = self.user_id
        if self.session_id is not None:
            d["session_id"] = self.session_id
        ctx = {
            k: v
            for k, v in (
                ("page_category", self.page_category),
                ("quantity", self.quantity),
                ("price", self.price),
                ("reason", self.reason),
                ("list_id", self.list_id),
                ("shown", list(self.shown) if self.shown is not None else None),
                ("position", self.position),
            )
            if v is not None
        }
        if ctx:
            d["context"] = ctx
        return d


@dataclass(frozen=True, slots=True)
class CatalogItem:
    item_id: str
    title: str = ""
    category: tuple[str, ...] = ()
    price: float | None = None
    in_stock: bool = True
    repurchasable: bool = False
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    deleted: bool = False
    updated_at: int = 0

    @property
    def recommendable(self) -> bool:
        return self.in_stock and not self.deleted

    @property
    def category_path(self) -> str:
        return CATEGORY_SEP.join(self.category)

    @property
    def leaf_category(self) -> str:
        return self.category[-1] if self.category else ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CatalogItem:
        return cls(
            item_id=d["item_id"],
            title=d.get("title") or "",
            category=tuple(d.get("category") or ()),
            price=d.get("price"),
            in_stock=bool(d.get("in_stock", True)),
            repurchasable=bool(d.get("repurchasable", False)),
            attributes=attributes_from(d.get("attributes") or {}),
            deleted=bool(d.get("deleted", False)),
            updated_at=int(d.get("updated_at") or 0),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "item_id": self.item_id,
            "title": self.title,
            "category": list(self.category),
            "in_stock": self.in_stock,
            "repurchasable": self.repurchasable,
            "attributes": {k: list(v) if isinstance(v, tuple) else v for k, v in self.attributes.items()},
            "deleted": self.deleted,
            "updated_at": self.updated_at,
        }
        if self.price is not None:
            d["price"] = self.price
        return d


def attributes_from(raw: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """The core's form of a document's (schema-checked) attributes: a list becomes a tuple of its strings,
    any other value its text, so features and boosts compare strings whatever JSON type the shop sent."""
    return {
        str(k): tuple(str(x) for x in v) if isinstance(v, list | tuple) else str(v) for k, v in raw.items()
    }


def attribute_values(value: AttributeValue) -> tuple[str, ...]:
    """Every value of an attribute: one for a single value, each of a list's (the one place that knows both
    shapes, so content vectors and boosts treat a list's values exactly like single values)."""
    return value if isinstance(value, tuple) else (value,)


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    """One listed item. `title`, `price` and `category` are copied from the catalog (core/render.py) so a page
    can render the list without a catalog lookup; None when the catalog does not know the item or the field.
    `variant` names the experiment variant that contributed the item, in interleaved lists only."""

    item_id: str
    score: float
    reason: str
    title: str | None = None
    price: float | None = None
    category: tuple[str, ...] | None = None
    variant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"item_id": self.item_id, "score": round(float(self.score), 6), "reason": self.reason}
        if self.title is not None:
            d["title"] = self.title
        if self.price is not None:
            d["price"] = self.price
        if self.category is not None:
            d["category"] = list(self.category)
        if self.variant is not None:
            d["variant"] = self.variant
        return d


def new_list_id() -> str:
    """A fresh list id: random, so ids from several workers, restarts and replays never collide."""
    return LIST_ID_PREFIX + uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One published or served list: the latest message per visitor key is that visitor's current list.

    `list_id` names this publication (impressions and clicks echo it to attribute feedback to the list), so
    every new record gets a fresh one unless the caller passes one; it is left out of `==` because two lists
    with the same contents are the same list for every other purpose (replays, determinism checks).
    `placement` is where the list is shown (`PLACEMENTS`); `experiment` is `{"id": ..., "variant": ...}` for a
    visitor enrolled in an experiment, else None.
    """

    items: tuple[RecommendedItem, ...]
    generated_at: int
    user_id: str | None = None
    session_id: str | None = None
    trigger_event_id: str | None = None
    model_version: str = "none"
    latency_ms: float | None = None
    list_id: str = field(default_factory=new_list_id, compare=False)
    placement: str = "home"
    experiment: Mapping[str, str] | None = field(default=None, hash=False)  # a dict: not hashable

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "list_id": self.list_id,
            "placement": self.placement,
            "user_id": self.user_id,
            "session_id": self.session_id,
            "experiment": None if self.experiment is None else dict(self.experiment),
            "items": [i.to_dict() for i in self.items],
            "generated_at": self.generated_at,
            "trigger_event_id": self.trigger_event_id,
            "model_version": self.model_version,
        }
        if self.latency_ms is not None:
            d["latency_ms"] = round(float(self.latency_ms), 3)
        return d
