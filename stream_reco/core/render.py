"""What a page needs to render a list: the catalog's title, price and category path on each listed item.

The contract (docs/contracts.md, "Recommendation") copies these into every list so a shop's page can show a
shelf without a catalog lookup of its own. They are copied when the list is made, from the same catalog the
rules just checked the items against, so a list never shows a title or price the worker did not know then.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from stream_reco.core.events import CatalogItem, RecommendedItem


class Catalog(Protocol):
    """The one thing rendering needs of `ItemCatalog`, so tests and tools may pass any mapping-like catalog."""

    def get(self, item_id: str) -> CatalogItem | None: ...


def describe(catalog: Catalog, items: Iterable[RecommendedItem]) -> tuple[RecommendedItem, ...]:
    """`items` in the same order, each with `title`, `price` and `category` copied from `catalog`.

    An item the catalog does not know keeps them None (omitted from the document); a known item without a
    price keeps `price` None. Score, reason and variant are unchanged.
    """
    out = []
    for it in items:
        known = catalog.get(it.item_id)
        if known is None:
            out.append(it)
        else:  # built directly, not with dataclasses.replace: this runs for every item of every list
            out.append(RecommendedItem(it.item_id, it.score, it.reason, known.title, known.price, known.category,
                                       it.variant))
    return tuple(out)
