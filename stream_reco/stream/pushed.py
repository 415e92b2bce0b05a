"""Which items each visitor's current pushed list shows, and which visitors show each item.

When an item goes out of stock or is deleted, every visitor whose current list on the recommendations topic
contains it must get a new list (docs/contracts.md, "Recommendation"): the topic is compacted, so the old list
would otherwise stay the visitor's current one until the visitor acts again. `PushedLists` answers "whose list
shows item X" without reading anything back: the event path records every list it publishes (`record`), and
the stock refresh (stream/refresh.py) asks `showing(item)`.

Bounded: at most `cap` visitors (the `pushed_lists_max_visitors` setting), least recently published dropped
first. Memory is about 1 kB per visitor with 10-item lists (the tuple of ids, the dict entry, ten set entries;
item id strings are shared with the catalogue): 97 MB for 100 k visitors whose lists draw from 100 k items
(tracemalloc). Lists published before this worker started or took a partition over are learned from the
recommendations topic itself (`StockRefresh.learn_pushed`). A visitor dropped from the index is not refreshed
on a stock change: that list is corrected at the visitor's next event; a pull (`GET /recommendations/...`) is
always computed afresh, so it never shows the item.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class PushedLists:
    """visitor -> item ids of the latest list published for it, and the reverse index item -> visitors."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lists: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._showing: dict[str, set[str]] = {}

    def record(self, visitor: str, items: Iterable[str]) -> None:
        """`visitor`'s current pushed list is now `items` (replacing the previous one)."""
        self.forget(visitor)
        if self.cap <= 0:
            return
        ids = tuple(items)
        self._lists[visitor] = ids
        for item in ids:
            self._showing.setdefault(item, set()).add(visitor)
        while len(self._lists) > self.cap:
            self.forget(next(iter(self._lists)))

    def forget(self, visitor: str) -> None:
        """Drop `visitor` (expired, or its list replaced)."""
        ids = self._lists.pop(visitor, None)
        for item in ids or ():
            visitors = self._showing.get(item)
            if visitors is not None:
                visitors.discard(visitor)
                if not visitors:
                    del self._showing[item]

    def showing(self, item: str) -> set[str]:
        """The visitors whose current pushed list contains `item` (a copy: the caller republishes them)."""
        return set(self._showing.get(item, ()))

    def items_of(self, visitor: str) -> tuple[str, ...] | None:
        return self._lists.get(visitor)

    def __len__(self) -> int:
        return len(self._lists)
