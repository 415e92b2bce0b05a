"""In-process measurements of the pure core: state size per visitor, cost per event by stage, and how
that cost grows with items and visitors.

Why in-process as well as through the broker: the worker's number is one total; these split it into
decode, observe, recommend and serialise for exactly the work the worker does per event, and they vary
items and visitors independently, which costs a catalogue load instead of a worker start per point.
Visitor state is kept the way the worker keeps it (a dict of `VisitorState.to_bytes()` values, decoded
on every read and encoded on every write), so the per-event cost includes that round trip.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

from stream_reco import schemas
from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.recommender import Recommender
from stream_reco.core.state import DecodedStates, VisitorState
from stream_reco.settings import Settings

#: catalogue loads defer annoy builds to one build at the end (a bulk load would otherwise rebuild on
#: every `delta_rebuild_items` new items, which is start-up cost, not per-event cost)
NO_REBUILD_DURING_LOAD = 10**9
#: deep in-memory size is slow to compute: measured on at most this many states
DEEP_SIZE_SAMPLE = 2000
#: a "heavy" visitor: enough distinct interactions to fill every per-visitor cap (history, owned items,
#: dedup window, interests), which bounds the state of any visitor from above
HEAVY_VISITOR_EVENTS = 400
#: event types of the heavy visitor, cycled (views dominate, as in the log)
HEAVY_VISITOR_MIX = ("view", "view", "view", "add_to_cart", "view", "purchase", "view", "dismiss")
HEAVY_VISITOR_GAP_MS = 20_000
#: JSON framing of one object member: two quotes around the key, a colon and a comma
KEY_OVERHEAD = 4
#: state-size buckets by events per visitor
EVENT_BUCKETS = (1, 2, 5, 10, 20, 50)


class BytesStore:
    """A `VisitorStore` that keeps `to_bytes()` values, like the worker's faust table (minus the changelog),
    with the worker's cache of decoded states (`state.DecodedStates`)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.decoded = DecodedStates()

    def get(self, key: str) -> VisitorState | None:
        kb = key.encode()
        raw = self.data.get(kb)
        return self.decoded.get(kb, raw) if raw else None

    def put(self, key: str, state: VisitorState) -> None:
        kb = key.encode()
        value = state.to_bytes()
        self.data[kb] = value
        self.decoded.remember(kb, value, state)

    def delete(self, key: str) -> None:
        kb = key.encode()
        self.decoded.forget(kb)
        self.data.pop(kb, None)

    def __len__(self) -> int:
        return len(self.data)


def load_catalog(settings: Settings, items: Iterable[dict[str, Any]]) -> tuple[Recommender, float]:
    """A recommender with the whole catalogue and one finished index build; returns it and the load time."""
    rec = Recommender(settings.replace(delta_rebuild_items=NO_REBUILD_DURING_LOAD), store=BytesStore())
    t0 = time.perf_counter()
    for doc in items:
        rec.upsert_item(CatalogItem.from_dict(doc))
    rec.catalog.rebuild(background=False)
    return rec, time.perf_counter() - t0


def observe_all(rec: Recommender, docs: Iterable[dict[str, Any]]) -> int:
    """Learn events without recommending (building visitor state for seeding and memory figures)."""
    n = 0
    for doc in docs:
        rec.observe(Event.from_dict(doc))
        n += 1
    return n


def clone_states(templates: Sequence[bytes], n: int, prefix: str) -> Iterator[tuple[bytes, bytes]]:
    """`n` visitor states (key, bytes) drawn in turn from `templates` under new visitor keys.

    Each clone is encoded by `VisitorState.to_bytes()` with its own id, exactly as the worker stores a
    state it wrote, so memory figures include whatever that encoding costs the heap.
    """
    if not templates:
        return
    states = [VisitorState.from_bytes(t) for t in templates]
    width = len(str(n))
    for i in range(n):
        state = states[i % len(states)]
        key = f"{prefix}{i:0{width}d}"
        saved = state.user_id, state.session_id
        if state.user_id:
            state.user_id = key
        else:
            state.session_id = key
        yield key.encode(), state.to_bytes()
        state.user_id, state.session_id = saved


def _stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "mean": math.nan, "p50": math.nan, "p95": math.nan, "max": math.nan}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "mean": statistics.fmean(ordered),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def heavy_visitor_bytes(rec: Recommender, settings: Settings) -> dict[str, int]:
    """Size of a visitor who hit every cap: the upper bound of one visitor's state."""
    ids = [item.item_id for item, _ in zip(rec.catalog.items(), range(HEAVY_VISITOR_EVENTS), strict=False)]
    state = VisitorState()
    t = 0
    for i, item_id in enumerate(ids):
        t += HEAVY_VISITOR_GAP_MS
        kind = HEAVY_VISITOR_MIX[i % len(HEAVY_VISITOR_MIX)]
        ev = Event(event_id=f"heavy-{i:06d}", event_type=kind, item_id=item_id, timestamp=t, user_id="u-heavy",
                   session_id="s-heavy")
        state.apply(ev, settings, vector=rec.catalog.vector(item_id), category=None)
    return {"events": len(ids), "to_bytes": len(state.to_bytes()), "in_memory": state.approx_memory_bytes()}


def state_sizes(store: BytesStore) -> dict[str, Any]:
    """Distribution of serialised and live sizes of the visitors in `store`, overall and by event count."""
    sizes = [len(v) for v in store.data.values()]
    sample = list(store.data.values())[:DEEP_SIZE_SAMPLE]
    states = [VisitorState.from_bytes(v) for v in sample]
    by_events: dict[str, list[int]] = {}
    for raw in store.data.values():
        n = VisitorState.from_bytes(raw).n_events
        bucket = next((f"<={b}" for b in EVENT_BUCKETS if n <= b), f">{EVENT_BUCKETS[-1]}")
        by_events.setdefault(bucket, []).append(len(raw))
    order = [f"<={b}" for b in EVENT_BUCKETS] + [f">{EVENT_BUCKETS[-1]}"]
    field_bytes: dict[str, int] = {}
    for state in states:
        for key, value in state.to_dict().items():
            field_bytes[key] = field_bytes.get(key, 0) + len(orjson.dumps(value)) + len(key) + KEY_OVERHEAD
    total = sum(field_bytes.values()) or 1
    return {
        "visitors": len(sizes),
        "to_bytes": _stats(sizes),
        "in_memory_live_object": _stats([s.approx_memory_bytes() for s in states]),
        "events_per_visitor": _stats([s.n_events for s in states]),
        "to_bytes_p50_by_events": {b: _stats(by_events[b])["p50"] for b in order if b in by_events},
        # which fields the bytes go to (short keys of VisitorState.to_dict: h history, i interests,
        # e recent event ids, sn seen items, sc session categories, ...)
        "to_bytes_share_by_field": {k: v / total for k, v in sorted(field_bytes.items(), key=lambda kv: -kv[1])},
    }


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _store_memory_child(templates_path: str, visitors: int) -> None:
    """Child process body: build the store, print the figures as JSON on stdout."""
    templates = orjson.loads(Path(templates_path).read_bytes())
    raw = [t.encode("latin-1") for t in templates]
    before = _rss()
    data = dict(clone_states(raw, visitors, "mem-"))
    after = _rss()
    objects = sys.getsizeof(data) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in data.items())
    payload = sum(len(v) for v in data.values())
    sys.stdout.write(orjson.dumps({
        "visitors": visitors,
        "rss_growth_bytes": after - before,
        "rss_bytes_per_visitor": (after - before) / visitors,
        "objects_bytes_per_visitor": objects / visitors,
        "to_bytes_mean": payload / visitors,
    }).decode())


def store_memory(templates: Sequence[bytes], visitors: int) -> dict[str, float]:
    """Memory of `visitors` states held as the worker holds them (dict of key bytes -> state bytes):
    the growth of RSS while building it, and the Python object sizes summed.

    Built in a fresh child process: in this one, memory freed by earlier phases would be reused and
    hide part of the growth.
    """
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "templates.json"
        path.write_bytes(orjson.dumps([t.decode("latin-1") for t in templates]))
        code = f"from bench.core_cost import _store_memory_child; _store_memory_child({str(path)!r}, {visitors})"
        proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONPATH": str(root)})
    return dict(orjson.loads(proc.stdout))


def stage_costs(rec: Recommender, docs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per-event cost of each stage the worker runs for a one-event batch, in microseconds (CPU time).

    Stages: decode + schema validation of the raw bytes, observe (state read, update, write), the
    recommendation (state read, candidates, rules, ranking, reasons), and serialising the published
    list. CPU time of this process, so a busy shared machine slows it less than wall time.
    """
    raws = [orjson.dumps(d) for d in docs]
    if raws:
        schemas.decode_event(raws[0])  # the first call loads and compiles the schemas: not a per-event cost
    clock = time.process_time
    totals = dict.fromkeys(("decode", "observe", "recommend", "serialise"), 0.0)
    n = 0
    for raw in raws:
        t0 = clock()
        event = schemas.decode_event(raw)
        t1 = clock()
        if not rec.observe(event):
            continue
        t2 = clock()
        recommendation = rec.recommendation(event.visitor_key, now_ms=event.timestamp, trigger=event)
        t3 = clock()
        doc = recommendation.to_dict()
        doc["generated_at"] = event.timestamp
        doc["latency_ms"] = 0.0
        orjson.dumps(doc)
        t4 = clock()
        totals["decode"] += t1 - t0
        totals["observe"] += t2 - t1
        totals["recommend"] += t3 - t2
        totals["serialise"] += t4 - t3
        n += 1
    out = {f"{k}_us": v / max(n, 1) * 1e6 for k, v in totals.items()}
    out["total_us"] = sum(totals.values()) / max(n, 1) * 1e6
    out["events"] = n
    out["events_per_cpu_s"] = 1e6 / out["total_us"] if out["total_us"] > 0 else math.nan
    return out


def index_info(rec: Recommender) -> dict[str, Any]:
    return {"items": len(rec.catalog), "index": rec.catalog.index_kind, "delta": rec.catalog.delta_size}


def fill_store(rec: Recommender, templates: Sequence[bytes], visitors: int) -> int:
    """Add clones of `templates` to the recommender's store until it holds `visitors` visitors."""
    store = rec.store
    assert isinstance(store, BytesStore)
    missing = visitors - len(store)
    if missing > 0:
        store.data.update(clone_states(templates, missing, "grid-"))
    return len(store)


def template_states(store: BytesStore) -> list[bytes]:
    """The visitor states built from the log, in a fixed order (clones are drawn from these)."""
    return [store.data[k] for k in sorted(store.data)]


def numpy_threads_note() -> str:
    """Which BLAS numpy uses (threads matter on a 2-core machine)."""
    try:
        config = np.show_config(mode="dicts")
        blas = (config or {}).get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # numpy's config layout differs between versions; this is only a label
        return "unknown"
