"""The worker's HTTP routes (docs/contracts.md, "HTTP"): a fresh list for any visitor, from any worker.

    GET /recommendations/{visitor}?placement=home|product|cart|category&item=ID&category=PATH&n=N&exclude=ID,ID
    GET /items/{item_id}/similar?n=N
    GET /healthz      200 while the worker applies events and publishes; 503 before that and once stopping
    GET /metrics      Prometheus text format (stream/metrics.py)

Any worker answers for any visitor. A visitor's state lives only on the worker that owns the visitor's events
partition, so a worker that does not own it forwards the request there (faust's partition assignor knows every
worker's URL, `Router.key_store`) and relays the answer. A forwarded request carries `FORWARDED_HEADER` and is
always answered where it lands, so a request can never bounce between workers whose views of the assignment
differ for a moment (a rebalance): the answer is then computed without the visitor's state, as for a new
visitor, which is also what happens when the owner does not answer within `FORWARD_TIMEOUT_S`. A shop always
gets a list; the counters `pulls_forwarded` and `pulls_forward_failed` say how often.

faust's own pages (tables, router, statistics) are not part of the contract and are never served
(`faust_internals.serve_only_own_routes`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import faust
import orjson
from yarl import URL

from stream_reco.core.recommender import Recommender
from stream_reco.stream.ingest import list_time_now
from stream_reco.stream.metrics import WorkerMetrics
from stream_reco.stream.store import WorkerStats

log = logging.getLogger(__name__)

PLACEMENTS = ("home", "product", "cart", "category")
#: most items a pull may ask for (`n`), and most ids in `exclude` or repeated `item` parameters
MAX_ITEMS = 100
#: longest visitor key, item id or category path a request may name (event ids and keys are bounded alike)
MAX_ID_CHARS = 256
#: a forwarded request has this header; it is answered where it lands
FORWARDED_HEADER = "X-Stream-Reco-Forwarded"
#: how long a worker waits for the owner of a visitor before answering without the visitor's state
FORWARD_TIMEOUT_S = 2.0


class BadRequest(ValueError):
    """A request parameter that cannot be used; the message says which and why (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Pull:
    """The parameters of one pull, checked."""

    placement: str
    n: int | None
    item: str | None
    cart: tuple[str, ...]
    category: str | None
    exclude: tuple[str, ...]

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of `Recommender.recommendation` for this pull."""
        return {"k": self.n, "placement": self.placement, "item": self.item, "cart": self.cart,
                "category": self.category, "exclude": self.exclude}


def _bounded(name: str, value: str) -> str:
    if not value or len(value) > MAX_ID_CHARS:
        raise BadRequest(f"{name} must be 1 to {MAX_ID_CHARS} characters")
    return value


def _count(query: Any) -> int | None:
    raw = query.get("n")
    if raw is None:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise BadRequest(f"n must be a whole number, not {raw[:40]!r}") from None
    if not 1 <= n <= MAX_ITEMS:
        raise BadRequest(f"n must be between 1 and {MAX_ITEMS}")
    return n


def parse_pull(visitor: str, query: Any) -> Pull:
    """The checked parameters of a pull (`query`: the request's multi-dict), or BadRequest naming the problem."""
    _bounded("the visitor", visitor)
    placement = query.get("placement", "home")
    if placement not in PLACEMENTS:
        raise BadRequest(f"placement must be one of {', '.join(PLACEMENTS)}, not {placement[:40]!r}")
    items = [_bounded("item", i) for i in query.getall("item", [])]
    if len(items) > MAX_ITEMS:
        raise BadRequest(f"at most {MAX_ITEMS} item parameters")
    if placement == "product" and len(items) != 1:
        raise BadRequest("placement=product needs exactly one item=ID")
    if placement in ("home", "category") and items:
        raise BadRequest(f"placement={placement} takes no item parameter")
    category = query.get("category")
    if category is not None:
        _bounded("category", category)
        if placement != "category":
            raise BadRequest("category=PATH goes with placement=category")
    elif placement == "category":
        raise BadRequest("placement=category needs category=PATH (e.g. Furniture/Living room)")
    exclude = tuple(_bounded("exclude", e) for e in query.get("exclude", "").split(",") if e)
    if len(exclude) > MAX_ITEMS:
        raise BadRequest(f"exclude takes at most {MAX_ITEMS} ids")
    return Pull(placement=placement, n=_count(query), item=items[0] if placement == "product" else None,
                cart=tuple(items) if placement == "cart" else (), category=category, exclude=exclude)


class HttpView:
    """The routes of the module docstring, on one worker."""

    def __init__(self, app: faust.App, recommender: Recommender, stats: WorkerStats, table_name: str, *,
                 metrics: WorkerMetrics | None = None, applying: asyncio.Event | None = None,
                 partitions: set[int] | None = None) -> None:
        """`table_name`: the visitor table, whose changelog partitions say which worker owns a visitor.
        `metrics`: what `/metrics` renders; `applying`: set once the worker applies events, and `partitions`:
        the events partitions it owns (kept current in place by the worker), both for `/healthz`."""
        self.app = app
        self.recommender = recommender
        self.stats = stats
        self.table_name = table_name
        self.metrics = metrics or WorkerMetrics(stats)
        self.applying = applying or asyncio.Event()
        self.partitions = partitions if partitions is not None else set()

    def register(self, app: faust.App) -> None:
        """Add the routes to `app` (its web server must be enabled)."""
        view = self  # faust builds a View class from a handler: a plain function, not a bound method

        async def recommendations(web: Any, request: Any, visitor: str) -> Any:
            """GET /recommendations/{visitor}: a fresh list for that visitor and placement."""
            return await view.recommendations(web, request, visitor)

        async def similar(web: Any, request: Any, item_id: str) -> Any:
            """GET /items/{item_id}/similar: items related to an item, not personalised."""
            return await view.similar(web, request, item_id)

        async def healthz(web: Any, request: Any) -> Any:
            """GET /healthz: whether the worker consumes and publishes (200) or not yet / no longer (503)."""
            body, status = view.health()
            return web.json(body, status=status)

        async def metrics(web: Any, request: Any) -> Any:
            """GET /metrics: the worker's Prometheus metrics, in the format the Accept header asks for."""
            body, content_type = view.metrics.render(request.headers.get("Accept"))
            return web.bytes(body, headers={"Content-Type": content_type})

        app.page("/recommendations/{visitor}")(recommendations)
        app.page("/items/{item_id}/similar")(similar)
        app.page("/healthz")(healthz)
        app.page("/metrics")(metrics)

    async def recommendations(self, web: Any, request: Any, visitor: str) -> Any:
        try:
            pull = parse_pull(visitor, request.query)
        except BadRequest as exc:
            return web.json({"error": str(exc)}, status=400)
        if FORWARDED_HEADER not in request.headers:
            owner = self.owner_of(visitor)
            if owner is not None:
                relayed = await self._forward(owner, request)
                if relayed is not None:
                    return web.bytes(relayed[1], content_type="application/json", status=relayed[0])
        self.stats.counts["pulls"] += 1
        try:
            rec = self.recommender.recommendation(visitor, now_ms=list_time_now(self.recommender),
                                                  **pull.arguments())
        except ValueError as exc:  # the core refused the context (e.g. a placement it cannot serve)
            return web.json({"error": str(exc)}, status=400)
        return web.bytes(orjson.dumps(rec.to_dict()), content_type="application/json")

    async def similar(self, web: Any, request: Any, item_id: str) -> Any:
        try:
            _bounded("the item", item_id)
            n = _count(request.query)
        except BadRequest as exc:
            return web.json({"error": str(exc)}, status=400)
        known = self.recommender.catalog.get(item_id)
        if known is None or known.deleted:  # a deleted item is kept as a tombstone, unknown to the shop
            return web.json({"error": f"item {item_id[:80]!r} is not in the catalog"}, status=404)
        rec = self.recommender.similar(item_id, now_ms=list_time_now(self.recommender), k=n)
        return web.bytes(orjson.dumps(rec.to_dict()), content_type="application/json")

    def health(self) -> tuple[dict[str, Any], int]:
        """The `/healthz` body and status: 503 before the worker applies events (the catalogue wait) and once
        it stops, so that a load balancer or orchestrator sends no pulls to a worker that cannot answer them."""
        applying = self.applying.is_set()
        stopping = bool(self.app.should_stop)
        status = "stopping" if stopping else "ok" if applying else "starting"
        body = {"status": status, "applying": applying, "assigned_partitions": sorted(self.partitions)}
        return body, 200 if status == "ok" else 503

    def owner_of(self, visitor: str) -> URL | None:
        """The URL of the worker owning `visitor`'s partition, None when it is this worker or unknown."""
        try:
            owner = self.app.router.key_store(self.table_name, visitor.encode())
        except KeyError:  # no assignment known yet
            return None
        return None if _ident(owner) == _ident(self.app.conf.canonical_url) else owner

    async def _forward(self, owner: URL, request: Any) -> tuple[int, bytes] | None:
        """The owner's answer (status, body) to the same request, or None when it did not give one in time."""
        url = request.url.with_host(owner.host or "").with_port(owner.port)
        try:
            async with self.app.http_client.get(
                    url, headers={FORWARDED_HEADER: "1"},
                    timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as response:
                body = await response.read()
                self.stats.counts["pulls_forwarded"] += 1
                return response.status, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.counts["pulls_forward_failed"] += 1
            log.warning("pull forward to %s failed (%r); answering here without the visitor's state", owner, exc)
            return None


def _ident(url: URL) -> tuple[str, int]:
    return (url.host or "", int(url.port or 80))
