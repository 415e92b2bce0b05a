"""Light per-visitor contexts for learning shop-wide statistics from events whose visitor lives elsewhere.

Why: a worker owns the visitor state of its own partitions only, but the shop-wide statistics (co-visitation,
popularity, session-kNN) should count every event of the shop. Each worker therefore also reads the other
workers' partitions (the "statistics feed") and learns statistics from them with `Recommender.learn_stats`.
Learning co-visitation and sessions needs a little of the visitor's past: the last `covis_window` items, when
the current session started, the latest event time (late events, session gaps), the session id (a new one
starts a session) and recent event ids (redelivered duplicates count once). A `StatsContext` is exactly that
and nothing more (no interests, no owned items), so it costs a fraction of a `VisitorState`.

Fidelity: every field mirrors what `VisitorState.apply` and `VisitorState.merge` do to the same field, so
learning a stream through `learn_stats` gives exactly the statistics `observe` gives (tests/unit/
test_stats_context.py). The known differences, all at the bounds: a visitor evicted from the LRU starts afresh
(its next event is a new session, co-visited with nothing), a `VisitorState` trimmed by `keep_within` (only past
`max_state_bytes`, 256 KiB by default: never for ordinary visitors) keeps fewer history entries than the context,
and event ids are compared by a 64-bit hash (a false duplicate once in ~2^58 events at the default window).

Memory, measured (CPython 3.11, 36-character event and session ids, a full window of 10 history entries and
64 event-id hashes, LRU slot included; tracemalloc in `_bench` of tests/unit/test_stats_snapshot.py): ~2.1 KB
per context when the history's item ids are the catalogue's own strings (`learn_stats` passes them), ~3.0 KB
when the catalogue does not know the items (their ids then cost ~85 bytes each). Of the 2.1 KB: history tuples
and times ~1.1 KB, the event-id hash array ~0.6 KB, the object, the key, the session id and the LRU slot the
rest. `StatsContext.approx_bytes` gives the per-object part. The default 100 000 visitors take ~210-300 MB.
"""

from __future__ import annotations

import bisect
import hashlib
import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterator

from stream_reco.core.events import Event
from stream_reco.core.state import EVENT_CODES, MS_PER_SECOND
from stream_reco.settings import CoreSettings

#: visitors whose context is kept (least recently active dropped first). Why 100 000: as many visitors as the
#: session-kNN index keeps sessions by default (`sknn_max_sessions`), i.e. a busy shop's visitors active within
#: the last session gap or so, at ~2.1-3.0 KB each (~210-300 MB); a visitor dropped only loses co-visitation
#: with the items it viewed before (and its session is split in the session-kNN index), never a popularity count.
DEFAULT_MAX_VISITORS = 100_000

History = list[tuple[str, int, int]]


def event_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (stable across processes, unlike `hash`, so snapshots keep it)."""
    digest = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class StatsContext:
    """What learning statistics needs of one visitor; fields mirror the same-named `VisitorState` fields."""

    __slots__ = ("event_ids", "has_user", "history", "last_seen", "n_events", "session_id", "session_start")

    def __init__(self) -> None:
        self.history: History = []  # the last `window` (item, applied ms, event code), oldest first
        self.session_start = 0
        self.last_seen = 0
        self.n_events = 0
        self.session_id: str | None = None
        self.has_user = False  # `VisitorState.user_id is not None` (only an anonymous context is joined on login)
        self.event_ids: array[int] = array("Q")  # `event_hash` of the last `dedup_window` event ids

    def has_seen(self, eid_hash: int) -> bool:
        return eid_hash in self.event_ids

    def approx_bytes(self, item_ids: bool = True) -> int:
        """Bytes this context holds in memory (objects it references; not its LRU slot). `item_ids=False`
        leaves out the history's item-id strings (shared with the catalogue for the items it knows)."""
        size = sys.getsizeof(self) + sys.getsizeof(self.history) + sys.getsizeof(self.event_ids)
        size += sum(sys.getsizeof(h) + sys.getsizeof(h[1]) + (sys.getsizeof(h[0]) if item_ids else 0)
                    for h in self.history)
        size += sys.getsizeof(self.session_id) if self.session_id is not None else 0
        return size + sys.getsizeof(self.session_start) + sys.getsizeof(self.last_seen)


class StatsContexts:
    """A bounded LRU of `StatsContext` per visitor key, with the update rules of `VisitorState`.

    Bounds: `max_visitors` contexts (`DEFAULT_MAX_VISITORS`), each with `window` history entries (the
    settings' `covis_window`, at most `history_cap`: the only entries `_learn_stats` reads) and `dedup_window`
    event-id hashes (the settings' own, so duplicates are caught exactly as `observe` catches them).
    """

    def __init__(
        self,
        settings: CoreSettings,
        max_visitors: int = DEFAULT_MAX_VISITORS,
    ) -> None:
        self.max_visitors = max(1, int(max_visitors))
        cap = max(0, int(settings.history_cap))
        # `history[-covis_window:]` is the whole (capped) history when covis_window <= 0
        self.window = min(int(settings.covis_window), cap) if settings.covis_window > 0 else cap
        self.dedup_window = max(0, int(settings.dedup_window))
        self.gap_ms = settings.session_gap_s * MS_PER_SECOND
        self._contexts: OrderedDict[str, StatsContext] = OrderedDict()  # least recently active first
        self.n_learned = 0
        self.n_duplicates = 0
        self.n_evicted = 0

    # --- the store ---

    def get(self, key: str) -> StatsContext | None:
        """The visitor's context (None when unknown); does not count as activity."""
        return self._contexts.get(key)

    def put(self, key: str, ctx: StatsContext) -> None:
        """Store `ctx` as the most recently active, dropping the least recently active beyond the bound."""
        contexts = self._contexts
        contexts[key] = ctx
        contexts.move_to_end(key)
        while len(contexts) > self.max_visitors:
            contexts.popitem(last=False)
            self.n_evicted += 1

    def forget(self, key: str) -> None:
        self._contexts.pop(key, None)

    def items(self) -> Iterator[tuple[str, StatsContext]]:
        """(key, context), least recently active first (the order a snapshot keeps)."""
        return iter(self._contexts.items())

    def __len__(self) -> int:
        return len(self._contexts)

    def __contains__(self, key: object) -> bool:
        return key in self._contexts

    # --- the update rules (mirroring VisitorState) ---

    def apply(self, ctx: StatsContext, event: Event, eid_hash: int, item_id: str | None = None) -> None:
        """`VisitorState.apply` for the fields a context keeps (`event.timestamp` is the applied time).

        `item_id`: the catalogue's own string for the event's item, when it knows it; kept instead of the
        event's (equal) one, so the history shares it with the catalogue (~85 bytes less per entry).
        """
        ts = int(event.timestamp)
        late = ctx.n_events > 0 and ts < ctx.last_seen
        if not late:
            new_id = event.session_id is not None and ctx.session_id is not None and event.session_id != ctx.session_id
            timed_out = ctx.n_events > 0 and ts - ctx.last_seen > self.gap_ms
            if ctx.n_events == 0 or new_id or timed_out:
                ctx.session_start = ts
            if event.session_id:
                ctx.session_id = event.session_id
            ctx.last_seen = ts
        if event.user_id:
            ctx.has_user = True
        ctx.n_events += 1
        ids = ctx.event_ids
        ids.append(eid_hash)
        if len(ids) > self.dedup_window:
            del ids[: len(ids) - self.dedup_window]
        code = EVENT_CODES.get(event.event_type, EVENT_CODES["view"])
        entry = (item_id if item_id is not None else event.item_id, ts, code)
        history = ctx.history
        if late:
            bisect.insort(history, entry, key=lambda h: h[1])
        else:
            history.append(entry)
        if len(history) > self.window:
            del history[: len(history) - self.window]

    def merge(self, ctx: StatsContext, other: StatsContext) -> None:
        """`VisitorState.merge` (an anonymous session joining its user on login) for the context's fields.

        The last `window` entries of the time-merged histories are made of the last `window` of each side
        (each side is sorted by time), so merging the kept windows gives the window the full states give.
        """
        if other.n_events == 0:
            return
        ctx.history = sorted(ctx.history + other.history, key=lambda h: h[1])[-self.window :] if self.window else []
        mine = set(ctx.event_ids)
        ids = ctx.event_ids + array("Q", (e for e in other.event_ids if e not in mine))
        ctx.event_ids = ids[-self.dedup_window :] if self.dedup_window else array("Q")
        if other.last_seen >= ctx.last_seen:
            if ctx.session_id is not None and ctx.session_id == other.session_id:
                ctx.session_start = min(ctx.session_start, other.session_start)
            else:
                ctx.session_start = other.session_start
            ctx.session_id = other.session_id or ctx.session_id
        ctx.last_seen = max(ctx.last_seen, other.last_seen)
        ctx.has_user = ctx.has_user or other.has_user
        ctx.n_events += other.n_events
