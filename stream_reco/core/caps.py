"""The caps on one list's visible slots: a leaf category and the session's seen items each take at most a
share of them (`ListCaps`, used by `Recommender` when it scores, widens and diversifies a list)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from stream_reco.core.state import VisitorState
from stream_reco.settings import CoreSettings

if TYPE_CHECKING:
    from stream_reco.core.items import ItemCatalog


class ListCaps:
    """The caps on one list's visible slots, and the bookkeeping they need.

    Two caps, both binding the first `list_size` slots, the list a shopper sees: a leaf category fills at most
    `max_category_share` of them (no list of five near-identical items), and the items seen in the current
    session at most `max_seen_slots` (a list after a view is about what to look at next, not what was just
    seen). A caller asking for a longer list (the evaluation asks for 20) gets the caps there and plain MMR
    after it, so the promises are kept where they are visible without reordering a longer tail.
    """

    __slots__ = ("catalog", "codes", "leaves", "max_seen", "per_category", "seen", "slots")

    def __init__(self, per_category: int, slots: int, catalog: ItemCatalog | None,
                 seen: frozenset[str] = frozenset(), max_seen: int = 0) -> None:
        self.per_category = per_category
        self.slots = slots
        self.catalog = catalog
        self.seen = seen  # the session's items, when the seen cap binds (empty: it does not)
        self.max_seen = max_seen
        self.codes: dict[str, int] = {}  # item -> leaf category code (-1: none), filled as items are seen
        self.leaves: dict[tuple[str, ...], int] = {}  # leaf category -> code

    @classmethod
    def of(cls, settings: CoreSettings, k: int, catalog: ItemCatalog, state: VisitorState, now_ms: int) -> ListCaps:
        slots = min(k, settings.list_size)
        share = settings.max_category_share
        per_category = max(1, math.floor(share * settings.list_size)) if share > 0 else 0
        max_seen = max(0, settings.max_seen_slots)
        seen = (frozenset(h[0] for h in state.session_history(now_ms, settings)) if max_seen < slots
                else frozenset())
        if not per_category and not seen:
            return cls(0, 0, None)
        return cls(per_category, slots, catalog if per_category else None, seen, max_seen)

    @property
    def active(self) -> bool:
        return bool(self.per_category or self.seen)

    def _code(self, item_id: str) -> int:
        code = self.codes.get(item_id)
        if code is None:
            category = self.catalog.category_of(item_id) if self.catalog is not None else ()
            code = self.codes[item_id] = self.leaves.setdefault(category, len(self.leaves)) if category else -1
        return code

    def groups(self, ids: Sequence[str]) -> np.ndarray | None:
        """One int per item naming its leaf category (-1: no category, never capped); None without a cap."""
        if not self.per_category:
            return None
        return np.fromiter((self._code(i) for i in ids), dtype=np.int64, count=len(ids))

    def seen_mask(self, ids: Sequence[str]) -> np.ndarray | None:
        """True for the items seen in the session; None when the seen cap does not bind."""
        if not self.seen:
            return None
        return np.fromiter((i in self.seen for i in ids), dtype=bool, count=len(ids))

    def _filled_at(self, ids: Sequence[str]) -> int | None:
        """The length of the shortest prefix of `ids` that can fill the capped slots within the caps."""
        taken: dict[int, int] = {}
        n_seen = 0
        capacity = 0
        for n, item_id in enumerate(ids, 1):
            g = self._code(item_id) if self.per_category else -1
            is_seen = item_id in self.seen
            if (g < 0 or taken.get(g, 0) < self.per_category) and (not is_seen or n_seen < self.max_seen):
                capacity += 1
                n_seen += is_seen
                if g >= 0:
                    taken[g] = taken.get(g, 0) + 1
                if capacity >= self.slots:
                    return n
        return None

    def honoured(self, ids: Sequence[str]) -> bool:
        """Whether these candidates can fill the capped slots without breaking a cap."""
        return not self.active or self._filled_at(ids) is not None

    def pool_size(self, ids: Sequence[str], size: int) -> int:
        """The MMR pool: the `size` best, stretched (when a cap needs it) until it can honour the caps."""
        if not self.active or len(ids) <= size:
            return size
        filled = self._filled_at(ids)
        return size if filled is None else max(size, filled)  # None: MMR relaxes the caps over the best
