"""Which items each visitor's current pushed list shows, and which visitors show each item.

When an item goes out of stock or is deleted, every visitor whose current list on the recommendations topic
contains it must get a new list (docs/contracts.md, "Recommendation"): the topic is compacted, so the old list
would otherwise stay the visitor's current one until the visitor acts again. `PushedLists` answers "whose list
shows item X" without reading anything back: the event path records every list it publishes (`record`), and
the stock refresh (stream/refresh.py) asks `showing(item)`.

Bounded: at most `cap` visitors (the `pushed_lists_max_visitors` setting), least recently published dropped
first. Memory: the list's bytes (~2 kB with titles and categories) plus about 1 kB of index per visitor
with 10-item lists (the tuple of ids, the dict entry, ten set entries; item id strings are shared with the
catalogue; 97 MB of index for 100 k visitors whose lists draw from 100 k items, tracemalloc). Lists published
before this worker started or took a partition over are learned from the recommendations topic itself
(`StockRefresh.learn_pushed`). A visitor dropped from the index is not refreshed on a stock change: that list is
corrected at the visitor's next event; a pull (`GET /recommendations/...`) is always computed afresh, so it
never shows the item.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class PushedLists:
    """visitor -> the latest list published for it (its item ids and its bytes), and the reverse index
    item -> visitors. The bytes let a withdrawn item be dropped from a list at once, without computing it."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lists: OrderedDict[str, tuple[tuple[str, ...], bytes | None]] = OrderedDict()
        self._showing: dict[str, set[str]] = {}

    def record(self, visitor: str, items: Iterable[str], document: bytes | None = None) -> None:
        """`visitor`'s current pushed list is now `items` (`document`: the published bytes)."""
        self.forget(visitor)
        if self.cap <= 0:
            return
        ids = tuple(items)
        self._lists[visitor] = (ids, document)
        for item in ids:
            self._showing.setdefault(item, set()).add(visitor)
        while len(self._lists) > self.cap:
            self.forget(next(iter(self._lists)))

    def forget(self, visitor: str) -> None:
        """Drop `visitor` (expired, or its list replaced)."""
        entry = self._lists.pop(visitor, None)
        for item in entry[0] if entry else ():
            visitors = self._showing.get(item)
            if visitors is not None:
                visitors.discard(visitor)
                if not visitors:
                    del self._showing[item]

    def showing(self, item: str) -> set[str]:
        """The visitors whose current pushed list contains `item` (a copy: the caller republishes them)."""
        return set(self._showing.get(item, ()))

    def items_of(self, visitor: str) -> tuple[str, ...] | None:
        entry = self._lists.get(visitor)
        return entry[0] if entry else None

    def document(self, visitor: str) -> bytes | None:
        """The bytes of the visitor's current pushed list, when known."""
        entry = self._lists.get(visitor)
        return entry[1] if entry else None

    def __len__(self) -> int:
        return len(self._lists)
