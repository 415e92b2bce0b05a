"""The worker's HTTP view: GET /recommendations/{visitor}, the list this worker last published for a visitor.

faust's own pages (tables, router, statistics) are not part of the contract and are never served
(`faust_internals.serve_only_own_routes`, docs/contracts.md, "HTTP").
"""

from __future__ import annotations

import time
from typing import Any

import faust
import orjson

from stream_reco.core.recommender import Recommender
from stream_reco.stream.store import LatestLists, TableStore


class HttpView:
    """Answers GET /recommendations/{visitor} from the latest lists, else from the recovered state."""

    def __init__(self, recommender: Recommender, store: TableStore, latest_lists: LatestLists) -> None:
        self.recommender = recommender
        self.store = store
        self.latest_lists = latest_lists

    def register(self, app: faust.App) -> None:
        """Add the page to `app` (its web server must be enabled)."""
        view = self  # faust builds a View class from the handler: a plain function, not a bound method

        async def recommendations(web: Any, request: Any, visitor: str) -> Any:
            """GET /recommendations/{visitor}: the latest list this worker published for the visitor."""
            return await view.recommendations(web, request, visitor)

        app.page("/recommendations/{visitor}")(recommendations)

    async def recommendations(self, web: Any, request: Any, visitor: str) -> Any:
        """The list last published by this worker; after a restart, one computed from the recovered state.

        Only the worker owning the visitor's partition knows the visitor: with several workers, put a
        router in front or read the compacted recommendations topic instead (see the README).
        """
        value = self.latest_lists.get(visitor)
        if value is None and self.store.get(visitor) is not None:
            rec = self.recommender.recommendation(visitor, now_ms=int(time.time() * 1000))
            value = orjson.dumps(rec.to_dict())
        if value is None:
            return web.json({"error": f"visitor {visitor!r} is not known to this worker"}, status=404)
        return web.bytes(value, content_type="application/json")
