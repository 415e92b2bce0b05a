"""Snapshots of the learned shop-wide statistics, so a restarted worker continues where it stopped.

Pure bytes in, bytes out (the stream side writes and reads the file). A snapshot holds what the stream taught
and nothing the model gives: the streamed co-visitation pairs (not the artifact priors), the streamed
popularity (decayed counts, per-category top lists, the decay reference time and the popularity clock), the
session-kNN index, the statistics feed's `StatsContexts`, the recommender's shop clock, the per-partition
offsets the statistics were learned up to, and the caller's small metadata dict (topic name, partition count,
creation time...). `load(...).install(recommender)` puts the parts back beside the recommender's own model
priors; learning then continues exactly as if the worker had never stopped (tests/unit/test_stats_snapshot.py).

Layout (little-endian), version `FORMAT_VERSION`:

    magic b"SRSTATS\\n" | u32 version | u32 crc32(body) | u64 len(body) | body
    body = u32 len(header) | header (orjson) | zero padding to 8 | array 1 | padding to 8 | array 2 | ...

The header holds the scalars, the metadata, the offsets and the directory of arrays (name, dtype, length, in
order). Every string (item ids, visitor keys, category paths, session ids) is stored once, in one UTF-8 blob,
and referred to by its int32 index; weights, times and hashes are flat numpy arrays with per-owner counts. So
loading is a few C-speed decodes plus building the dicts, and JSON never sees the big parts. Wrong magic,
another version, a short or long body, a checksum mismatch or inconsistent arrays raise `SnapshotError`.

Caps come from the `settings` given to `load` (a smaller cap than the snapshot was written under trims it the
way the live structures trim: least recently co-visited items, weakest counts and categories, oldest sessions,
least recently active contexts). The popularity half-life is a setting too: counts written under another
half-life are kept as they are (their relative weights no longer follow the new half-life exactly).

Measured once (`PYTHONPATH=. .venv/bin/python tests/unit/test_stats_snapshot.py --bench`; a 2-core dev VM,
CPython 3.11): statistics learned by `learn_stats` from 1 000 000 synthetic events (100 000 items in 500 leaf
categories, 150 000 Zipf-active visitors, weight_sknn=1): 80 410 co-visited items with 3 167 241 pairs, 84 961
popularity counts in 858 categories, 100 000 sessions, 49 804 contexts. Snapshot 54.9 MB; `dump` 2.7 s in the
process that learned them (a long-lived, scattered heap; 0.8-1.1 s on statistics fresh from a `load`); `load`
1.2-1.9 s. `dump` reads the live dicts: call it between events, not from another thread while learning goes on.
(Learning itself took 61-113 us per event, nearly all in `CoVisitation.add`, as it does for `observe`.)
"""

from __future__ import annotations

import gc
import struct
import zlib
from array import array
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain, count, islice
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from stream_reco.core.stats import (
    CoVisitation,
    DecayedCounts,
    Popularity,
    SessionIndex,
    _pruned_size,
    _top,
    _TopTracker,
)
from stream_reco.core.stats_context import DEFAULT_MAX_VISITORS, StatsContext, StatsContexts
from stream_reco.settings import CoreSettings

if TYPE_CHECKING:
    from stream_reco.core.recommender import Recommender

MAGIC = b"SRSTATS\n"
#: version of the layout; `load` reads only this one (a snapshot is a cache: an old one is rebuilt, not migrated)
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIQ")  # magic, version, crc32 of the body, length of the body
_U32 = struct.Struct("<I")
_ALIGN = 8
#: separates strings in the blob when none contains it (a split is ~10x faster than slicing by lengths)
_SEP = "\x00"


class SnapshotError(ValueError):
    """Snapshot bytes that cannot be read back: not a snapshot, another format version, truncated or corrupt."""


@dataclass
class Snapshot:
    """What `load` read: the streamed statistics as live objects, plus the caller's offsets and metadata."""

    covis: CoVisitation  # streamed pairs only (`prior` empty)
    popularity: Popularity  # streamed counts only (`prior` empty)
    sessions: SessionIndex
    contexts: StatsContexts
    clock: int | None  # the recommender's shop clock
    offsets: dict[int, int] = field(default_factory=dict)  # events partition -> next offset to learn
    meta: dict[str, Any] = field(default_factory=dict)

    def install(self, rec: Recommender) -> None:
        """Put the streamed statistics into `rec`, keeping its model priors; the shop clock moves forward only.

        Call it on a recommender that has learned nothing yet (after `load_model` is fine): its own streamed
        statistics are replaced, not added to. Popularity priors of a model without a `last_event_ms` wait for
        a time to be dated at (`Popularity.set_prior`); they are dated at the snapshot's latest event, as if the
        model had been loaded into the running worker (a model with `last_event_ms`, the usual case, is dated
        by it, and learning continues exactly as without the restart).
        """
        rec.covis.pairs = self.covis.pairs
        rec.popularity.stream = self.popularity.stream
        rec.popularity.clock = _latest(rec.popularity.clock, self.popularity.clock)
        if rec.popularity._pending_prior and rec.popularity.clock is not None:
            rec.popularity._materialise(rec.popularity.clock)
        rec.sessions = self.sessions
        rec.clock = _latest(rec.clock, self.clock)


def _latest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


# --- writing ---


class _Strings:
    """The id table: every distinct string once, numbered in first-seen order (at C speed: a miss of the
    defaultdict takes the next number)."""

    def __init__(self) -> None:
        self.index: defaultdict[str, int] = defaultdict(count().__next__)

    def codes(self, strings: Iterable[str], n: int) -> np.ndarray:
        """The indexes of `n` strings, numbering the new ones."""
        return np.fromiter(map(self.index.__getitem__, strings), dtype=np.int32, count=n)

    def encode(self, arrays: dict[str, np.ndarray]) -> bool:
        """Store the table in `arrays`; True when joined by `_SEP` (else the lengths are stored too)."""
        names = list(self.index)
        text = _SEP.join(names)
        split = text.count(_SEP) == max(len(names) - 1, 0)
        if not split:
            text = "".join(names)
            arrays["string_lengths"] = np.fromiter(map(len, names), dtype=np.int64, count=len(names))
        arrays["strings"] = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        return split


def _f64(values: Iterable[float], n: int) -> np.ndarray:
    return np.fromiter(values, dtype=np.float64, count=n)


def _i64(values: Iterable[int], n: int) -> np.ndarray:
    return np.fromiter(values, dtype=np.int64, count=n)


def _lengths(groups: list[Any]) -> np.ndarray:
    return np.fromiter(map(len, groups), dtype=np.int64, count=len(groups))


def dump(
    rec: Recommender,
    contexts: StatsContexts,
    offsets: Mapping[int, int],
    meta: Mapping[str, Any] | None = None,
) -> bytes:
    """The snapshot of `rec`'s streamed statistics, `contexts`, `offsets` ({partition: offset}) and `meta`.

    `meta` must be JSON-able (orjson); keep it small (topic name, partition count, creation time).
    """
    strings = _Strings()
    arrays: dict[str, np.ndarray] = {}

    # co-visitation: items in eviction order (least recently co-visited first), each with its neighbours
    pairs = rec.covis.pairs
    items = list(pairs)
    nbrs = list(pairs.values())
    counts = _lengths(nbrs)
    total = int(counts.sum())
    arrays["covis_items"] = strings.codes(items, len(items))
    arrays["covis_counts"] = counts
    arrays["covis_nbrs"] = strings.codes(chain.from_iterable(nbrs), total)
    arrays["covis_weights"] = _f64(chain.from_iterable(d.values() for d in nbrs), total)

    # popularity (the streamed DecayedCounts)
    stream = rec.popularity.stream
    arrays["pop_items"] = strings.codes(stream.scores, len(stream.scores))
    arrays["pop_scores"] = _f64(stream.scores.values(), len(stream.scores))
    cats = list(stream.tops)
    orders = [t.order for t in stream.tops.values()]
    counts = _lengths(orders)
    total = int(counts.sum())
    arrays["top_cats"] = strings.codes(cats, len(cats))
    arrays["top_counts"] = counts
    arrays["top_items"] = strings.codes((item for order in orders for _, item in order), total)
    arrays["top_neg_scores"] = _f64((neg for order in orders for neg, _ in order), total)

    # the session-kNN index: sessions oldest first (ids ascending), then each item's session ids
    si = rec.sessions
    keys = list(si.keys.values())
    members = list(si.items.values())
    counts = _lengths(members)
    total = int(counts.sum())
    arrays["sess_ids"] = _i64(si.keys, len(keys))
    arrays["sess_visitors"] = strings.codes((k[0] for k in keys), len(keys))
    arrays["sess_starts"] = _i64((k[1] for k in keys), len(keys))
    arrays["sess_counts"] = counts
    arrays["sess_items"] = strings.codes(chain.from_iterable(members), total)
    lists = list(si.by_item.values())
    counts = _lengths(lists)
    total = int(counts.sum())
    arrays["byitem_items"] = strings.codes(si.by_item, len(lists))
    arrays["byitem_counts"] = counts
    arrays["byitem_sids"] = _i64(chain.from_iterable(lists), total)

    # the statistics feed's contexts, least recently active first
    entries = list(contexts.items())
    ctxs = [c for _, c in entries]
    n = len(entries)
    hists = [c.history for c in ctxs]
    counts = _lengths(hists)
    total = int(counts.sum())
    index = strings.index
    arrays["ctx_keys"] = strings.codes((k for k, _ in entries), n)
    arrays["ctx_sessions"] = np.fromiter(
        (-1 if c.session_id is None else index[c.session_id] for c in ctxs), dtype=np.int32, count=n
    )
    arrays["ctx_has_user"] = np.fromiter((c.has_user for c in ctxs), dtype=np.uint8, count=n)
    arrays["ctx_starts"] = _i64((c.session_start for c in ctxs), n)
    arrays["ctx_last_seen"] = _i64((c.last_seen for c in ctxs), n)
    arrays["ctx_n_events"] = _i64((c.n_events for c in ctxs), n)
    arrays["ctx_hist_counts"] = counts
    arrays["hist_items"] = strings.codes((h[0] for hist in hists for h in hist), total)
    arrays["hist_ts"] = _i64((h[1] for hist in hists for h in hist), total)
    arrays["hist_codes"] = np.fromiter((h[2] for hist in hists for h in hist), dtype=np.int8, count=total)
    eids = [c.event_ids for c in ctxs]
    arrays["ctx_eid_counts"] = _lengths(eids)
    arrays["eids"] = np.frombuffer(b"".join(map(bytes, eids)), dtype=np.uint64) if eids else np.zeros(0, np.uint64)

    split = strings.encode(arrays)
    arrays = {name: a.astype(a.dtype.newbyteorder("<"), copy=False) for name, a in arrays.items()}
    header = {
        "meta": dict(meta or {}),
        "offsets": sorted([int(p), int(o)] for p, o in offsets.items()),
        "clock": rec.clock,
        "pop": {"ref": stream.ref, "clock": rec.popularity.clock, "half_life_h": rec.popularity.half_life_h},
        "sess": {"next": si._next, "sweep_at": si._sweep_at},
        "ctx": {"n_learned": contexts.n_learned, "n_duplicates": contexts.n_duplicates,
                "n_evicted": contexts.n_evicted},
        "split": split,
        "n_strings": len(strings.index),
        "arrays": [[name, a.dtype.str, len(a)] for name, a in arrays.items()],  # explicit byte order
    }
    head = orjson.dumps(header)
    parts = [_U32.pack(len(head)), head]
    size = _U32.size + len(head)
    for a in arrays.values():
        pad = -size % _ALIGN
        parts.append(b"\x00" * pad)
        parts.append(np.ascontiguousarray(a).data)
        size += pad + a.nbytes
    body = b"".join(parts)
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, zlib.crc32(body), len(body)) + body


# --- reading ---


def _open(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Check the envelope, then the header and the arrays (views into `data`, no copies)."""
    if len(data) < _PREFIX.size:
        raise SnapshotError(f"statistics snapshot truncated: {len(data)} bytes, shorter than its header")
    magic, version, crc, length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not a statistics snapshot (wrong magic bytes)")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"statistics snapshot format version {version}; this build reads {FORMAT_VERSION} only")
    body = memoryview(data)[_PREFIX.size :]
    if len(body) != length:
        raise SnapshotError(f"statistics snapshot truncated or padded: body of {len(body)} bytes, expected {length}")
    if zlib.crc32(body) != crc:
        raise SnapshotError("statistics snapshot corrupt: checksum mismatch")
    try:
        (head_len,) = _U32.unpack_from(body)
        header = orjson.loads(body[_U32.size : _U32.size + head_len])
        pos = _U32.size + head_len
        arrays: dict[str, np.ndarray] = {}
        for name, dtype, count in header["arrays"]:
            dt = np.dtype(dtype)
            pos += -pos % _ALIGN
            arrays[name] = np.frombuffer(body, dtype=dt, count=int(count), offset=pos)
            pos += dt.itemsize * int(count)
        if pos != len(body):
            raise SnapshotError(f"statistics snapshot inconsistent: arrays end at {pos}, body has {len(body)} bytes")
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise SnapshotError(f"statistics snapshot unreadable: {exc}") from exc
    return header, arrays


def _names(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[str]:
    """The string table back: split on `_SEP`, or sliced by the stored lengths."""
    n = int(header["n_strings"])
    text = arrays["strings"].tobytes().decode("utf-8", "surrogatepass")
    if not n:
        names = []
    elif header["split"]:
        names = text.split(_SEP)
    else:
        ends = np.cumsum(arrays["string_lengths"]).tolist()
        names = [text[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    if len(names) != n:
        raise SnapshotError(f"statistics snapshot inconsistent: {len(names)} strings, expected {n}")
    return names


def _check(arrays: dict[str, np.ndarray], n_strings: int) -> None:
    """Counts must add up and indexes must point into the string table (a wrong writer, not a bit flip)."""
    for owner, counts, flat in (
        ("covis_items", "covis_counts", "covis_nbrs"),
        ("covis_items", "covis_counts", "covis_weights"),
        ("top_cats", "top_counts", "top_items"),
        ("top_cats", "top_counts", "top_neg_scores"),
        ("sess_ids", "sess_counts", "sess_items"),
        ("byitem_items", "byitem_counts", "byitem_sids"),
        ("ctx_keys", "ctx_hist_counts", "hist_items"),
        ("ctx_keys", "ctx_eid_counts", "eids"),
    ):
        c = arrays[counts]
        if len(c) != len(arrays[owner]) or (len(c) and c.min() < 0) or int(c.sum()) != len(arrays[flat]):
            raise SnapshotError(f"statistics snapshot inconsistent: {counts} does not match {flat}")
    for name in ("covis_items", "covis_nbrs", "pop_items", "top_cats", "top_items", "sess_visitors", "sess_items",
                 "byitem_items", "ctx_keys", "hist_items", "ctx_sessions"):
        a = arrays[name]
        low = -1 if name == "ctx_sessions" else 0
        if len(a) and (a.min() < low or a.max() >= n_strings):
            raise SnapshotError(f"statistics snapshot inconsistent: {name} refers past the string table")
    for owner, same in (("pop_items", "pop_scores"), ("sess_ids", "sess_visitors"), ("sess_ids", "sess_starts"),
                        ("hist_items", "hist_ts"), ("hist_items", "hist_codes"), ("ctx_keys", "ctx_sessions"),
                        ("ctx_keys", "ctx_has_user"), ("ctx_keys", "ctx_starts"), ("ctx_keys", "ctx_last_seen"),
                        ("ctx_keys", "ctx_n_events")):
        if len(arrays[owner]) != len(arrays[same]):
            raise SnapshotError(f"statistics snapshot inconsistent: {owner} and {same} differ in length")


def _groups(flat: list[Any], counts: list[int]) -> Iterable[list[Any]]:
    it = iter(flat)
    return (list(islice(it, c)) for c in counts)


def load(data: bytes, settings: CoreSettings, max_visitors: int = DEFAULT_MAX_VISITORS) -> Snapshot:
    """Read a snapshot written by `dump`; caps come from `settings` (and `max_visitors` for the contexts).

    Raises `SnapshotError` for anything that is not a complete, intact snapshot of `FORMAT_VERSION`.
    """
    header, arrays = _open(data)
    paused = gc.isenabled()
    gc.disable()  # millions of new objects, no cycles: collections would only re-scan them (~20% of the load)
    try:
        return _build(header, arrays, settings, max_visitors)
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise SnapshotError(f"statistics snapshot unreadable: {exc}") from exc
    finally:
        if paused:
            gc.enable()


def _build(header: dict[str, Any], arrays: dict[str, np.ndarray], settings: CoreSettings,
           max_visitors: int) -> Snapshot:
    from stream_reco.core.recommender import COVIS_BACKWARD_WEIGHT

    names = _names(header, arrays)
    _check(arrays, len(names))
    at = names.__getitem__

    covis = CoVisitation(
        settings.covis_neighbours, backward_weight=COVIS_BACKWARD_WEIGHT, max_items=settings.stats_max_items
    )
    nbr_names = list(map(at, arrays["covis_nbrs"].tolist()))
    weights = arrays["covis_weights"].tolist()
    it_n, it_w = iter(nbr_names), iter(weights)
    pairs: dict[str, dict[str, float]] = {}
    limit = covis._limit
    for item, c in zip(map(at, arrays["covis_items"].tolist()), arrays["covis_counts"].tolist(), strict=True):
        d = dict(zip(islice(it_n, c), islice(it_w, c), strict=True))
        pairs[item] = dict(_top(d.items(), covis.max_neighbours)) if len(d) > limit else d
    if len(pairs) > _pruned_size(covis.max_items):
        for gone in list(pairs)[: len(pairs) - covis.max_items]:
            del pairs[gone]
    covis.pairs = pairs

    pop = Popularity(
        settings.popularity_half_life_h,
        max_items=settings.stats_max_items,
        max_categories=settings.popularity_max_categories,
    )
    stream = pop.stream
    stream.ref = _opt_int(header["pop"]["ref"])
    pop.clock = _opt_int(header["pop"]["clock"])
    stream.scores = dict(zip(map(at, arrays["pop_items"].tolist()), arrays["pop_scores"].tolist(), strict=True))
    top_items = map(at, arrays["top_items"].tolist())
    top_negs = iter(arrays["top_neg_scores"].tolist())
    for cat, c in zip(map(at, arrays["top_cats"].tolist()), arrays["top_counts"].tolist(), strict=True):
        tracker = _TopTracker(stream.top_cap)
        order = list(zip(islice(top_negs, c), islice(top_items, c), strict=True))[: stream.top_cap]
        tracker.order = order
        tracker.members = {item: -neg for neg, item in order}
        stream.tops[cat] = tracker
    _trim_popularity(stream)

    si = SessionIndex(settings.sknn_max_sessions, settings.sknn_sessions_per_item)
    si._next = int(header["sess"]["next"])
    si._sweep_at = int(header["sess"]["sweep_at"])
    sess_items = map(at, arrays["sess_items"].tolist())
    for sid, visitor, start, c in zip(
        arrays["sess_ids"].tolist(),
        map(at, arrays["sess_visitors"].tolist()),
        arrays["sess_starts"].tolist(),
        arrays["sess_counts"].tolist(),
        strict=True,
    ):
        key = (visitor, start)
        si.ids[key] = sid
        si.keys[sid] = key
        si.items[sid] = dict.fromkeys(islice(sess_items, c))
    while len(si.keys) > si.max_sessions:
        old = next(iter(si.keys))
        del si.ids[si.keys.pop(old)]
        del si.items[old]
    sids = iter(arrays["byitem_sids"].tolist())
    for item, c in zip(map(at, arrays["byitem_items"].tolist()), arrays["byitem_counts"].tolist(), strict=True):
        lst = list(islice(sids, c))
        if len(lst) > 2 * si.per_item:
            del lst[: len(lst) - si.per_item]
        si.by_item[item] = lst

    contexts = StatsContexts(settings, max_visitors=max_visitors)
    contexts.n_learned = int(header["ctx"]["n_learned"])
    contexts.n_duplicates = int(header["ctx"]["n_duplicates"])
    contexts.n_evicted = int(header["ctx"]["n_evicted"])
    window, dedup = contexts.window, contexts.dedup_window
    hist = zip(map(at, arrays["hist_items"].tolist()), arrays["hist_ts"].tolist(), arrays["hist_codes"].tolist(),
               strict=True)
    eids = arrays["eids"]
    eid_pos = 0
    skip = max(0, len(arrays["ctx_keys"]) - contexts.max_visitors)  # a smaller bound: the least recent go
    for n, (key, sess, has_user, start, last, n_events, hc, ec) in enumerate(zip(
        map(at, arrays["ctx_keys"].tolist()),
        arrays["ctx_sessions"].tolist(),
        arrays["ctx_has_user"].tolist(),
        arrays["ctx_starts"].tolist(),
        arrays["ctx_last_seen"].tolist(),
        arrays["ctx_n_events"].tolist(),
        arrays["ctx_hist_counts"].tolist(),
        arrays["ctx_eid_counts"].tolist(),
        strict=True,
    )):
        history = list(islice(hist, hc))
        ids = eids[eid_pos : eid_pos + ec]
        eid_pos += ec
        if n < skip:
            continue
        ctx = StatsContext()
        ctx.history = history[-window:] if window else []
        ctx.session_id = None if sess < 0 else names[sess]
        ctx.has_user = bool(has_user)
        ctx.session_start, ctx.last_seen, ctx.n_events = start, last, n_events
        ctx.event_ids = array("Q", ids[-dedup:].astype(np.uint64).tobytes() if dedup else b"")
        contexts._contexts[key] = ctx

    offsets = {int(p): int(o) for p, o in header["offsets"]}
    meta = header["meta"]
    if not isinstance(meta, dict):
        raise SnapshotError("statistics snapshot unreadable: metadata is not a mapping")
    return Snapshot(covis, pop, si, contexts, _opt_int(header["clock"]), offsets, meta)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _trim_popularity(counts: DecayedCounts) -> None:
    """Apply the live bounds to counts read under (possibly) smaller caps; a no-op under the same settings."""
    for tracker in counts.tops.values():
        if len(tracker.order) > tracker.cap:
            del tracker.order[tracker.cap :]
            tracker.members = {item: -neg for neg, item in tracker.order}
    while len(counts.tops) > counts.max_categories and len(counts.tops) > 1:
        before = len(counts.tops)
        counts._drop_weakest_categories()
        if len(counts.tops) == before:
            break
    if len(counts.scores) > _pruned_size(counts.max_items):
        counts._drop_weakest_items()
