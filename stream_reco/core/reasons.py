"""The reason of each listed item: its strongest candidate source and that source's evidence, turned into one
of the sentences of core/explain.py (`Explainer`, used by `Recommender` for the final items only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream_reco.core import explain
from stream_reco.core.candidates import (
    SESSION_QUERY,
    SOURCE_ANN,
    SOURCE_COVIS,
    SOURCE_RECENT,
    SOURCE_RELATED,
    SOURCE_SIMILAR,
    SOURCE_SKNN,
    CandidatePool,
)
from stream_reco.core.state import POSITIVE_CODES, VisitorState, leaf_of
from stream_reco.core.stats import GLOBAL
from stream_reco.settings import CoreSettings

if TYPE_CHECKING:
    from stream_reco.core.items import ItemCatalog


class Explainer:
    """Turns a candidate's strongest source and its evidence into a sentence (only for the final k)."""

    def __init__(self, settings: CoreSettings, catalog: ItemCatalog, state: VisitorState, now_ms: int) -> None:
        self.settings = settings
        self.catalog = catalog
        self.state = state
        self.now_ms = now_ms
        self._counts: dict[str, int] | None = None
        self._session_counts: dict[str, int] | None = None

    def _category_counts(self, session: bool) -> dict[str, int]:
        """Distinct interacted items per category path, in the session or the whole kept history."""
        cached = self._session_counts if session else self._counts
        if cached is not None:
            return cached
        hist = self.state.session_history(self.now_ms, self.settings) if session else self.state.history
        items: dict[str, str] = {}
        for item_id, _, code in hist:
            if code in POSITIVE_CODES and item_id not in items:
                it = self.catalog.get(item_id)
                items[item_id] = it.category_path if it is not None else ""
        counts: dict[str, int] = {}
        for cat in items.values():
            if cat:
                counts[cat] = counts.get(cat, 0) + 1
        if session:
            self._session_counts = counts
        else:
            self._counts = counts
        return counts

    def reason(self, item_id: str, source: int, pool: CandidatePool) -> str:
        if source == SOURCE_RECENT and item_id in pool.recent:
            return explain.viewed_recently()
        if source == SOURCE_SKNN and item_id in pool.sknn:
            return explain.similar_sessions()
        if source == SOURCE_RELATED and item_id in pool.related_anchor:
            return explain.often_viewed_with(self._title(pool.related_anchor[item_id]))
        if source == SOURCE_SIMILAR and item_id in pool.similar_anchor:
            return explain.similar_to(self._title(pool.similar_anchor[item_id]))
        cat = self._category(item_id)
        anchor = pool.covis_anchor(item_id) if source == SOURCE_COVIS else None
        if anchor is not None:
            return explain.often_viewed_with(self._title(anchor))
        if source == SOURCE_ANN and item_id in pool.ann:
            counts = self._category_counts(session=pool.ann_query[item_id] == SESSION_QUERY)
            n = counts.get(cat, 0) if cat else 0
            return explain.because_viewed(n, leaf_of(cat)) if n else explain.similar_to_liked()
        if item_id in pool.popular:
            pcat = pool.popular_category[item_id]
            return explain.popular_in(leaf_of(pcat) if pcat != GLOBAL else "", self.settings.popularity_half_life_h)
        if item_id in pool.fill:
            return explain.more_in(leaf_of(cat) if cat else "")
        return explain.similar_to_liked()

    def _category(self, item_id: str) -> str:
        it = self.catalog.get(item_id)
        return it.category_path if it is not None else ""

    def _title(self, item_id: str) -> str:
        """The item's catalogue title, or its id when the catalogue has none (a reason always names the item)."""
        it = self.catalog.get(item_id)
        return it.title if it is not None and it.title else item_id
