"""Everything the recommender keeps per visitor, and how one event changes it.

A `VisitorState` is pure data plus the rules that update it; it never looks anything up itself. The
caller (the recommender) passes in the item's vector and category, so the state can be replayed, merged,
serialised and tested without a catalogue. Memory per visitor is bounded by the caps in the settings
(history, owned items, interests, dedup window) and in `limits` (session categories, category keys), so a
worker's table grows with visitors, not with events; and the serialised state never exceeds
`max_state_bytes` (`VisitorState.keep_within`: the oldest parts are trimmed, owned items into the Bloom filter).

Owned items: the last `owned_cap` purchases and dismissals are kept exactly (with their times); older
ones go into a fixed-size Bloom filter (`core/bloom.py`, created on the first eviction), so a bought or
dismissed item never comes back (a false positive only hides an item). `has_purchased`/`has_dismissed`
answer for both.

Interests (one region of item space each) are `core/interests.py`'s.

Time: an event older than the visitor's latest one (a late or out-of-order event) is recorded where it
belongs in time, and never rewinds anything: it does not start or switch the session, owned-item and
suppression times only move forward, and its pull on the interests is decayed by how late it is.

Serialisation is orjson with short keys and interest vectors as base64 float16, so the bytes a faust
changelog stores stay small and round-trip exactly (no pickle anywhere). Interest vectors are kept at
float16 precision in the live object too (`quantised`), so a state read back from its bytes is the state
that was written, and a worker (which decodes state on every event) and an in-process replay (which keeps
live objects) compute the same lists. Format 1 (float32 vectors) is still read, rounded on load.
"""

from __future__ import annotations

import base64
import bisect
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from stream_reco.core.bloom import BITS as BLOOM_BITS
from stream_reco.core.bloom import BloomFilter
from stream_reco.core.events import CATEGORY_SEP, Event
from stream_reco.core.interests import (
    MS_PER_HOUR,
    Interest,
    decay_factor,
    quantised,
    unit,
    update_interests,
)
from stream_reco.core.limits import MAX_SESSION_CATEGORIES, optional_category_key
from stream_reco.settings import CoreSettings

#: compact codes of event types in the stored history (keeps to_bytes small). The codes are 2-bit (0-3) in the
#: stored state and in schemas/join.schema.json, read by every worker and by states written before: a click is
#: stored as a view (code 0), the positive signal it is, so the state format and old states stay as they are.
#: An impression is never stored in the history (`VisitorState.note_shown`).
EVENT_CODES: dict[str, int] = {"view": 0, "add_to_cart": 1, "purchase": 2, "dismiss": 3, "click": 0}
CODE_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase", "dismiss")
#: codes of the events that express interest (a dismissal does not)
POSITIVE_CODES = frozenset({0, 1, 2})

#: version of the serialised layout (2: float16 interest vectors; the optional "ob" owned-items filter was
#: added without a new version: readers that predate it ignore it); from_bytes reads 1 and 2, rejects others
STATE_FORMAT = 2
READABLE_FORMATS = (1, STATE_FORMAT)
#: dtype of stored interest vectors per format
VECTOR_DTYPES = {1: "<f4", 2: "<f2"}
MS_PER_SECOND = 1000
MS_PER_DAY = 86_400_000
#: bytes of JSON punctuation, a timestamp and a count around each stored string (upper bound, `byte_bound`)
ENTRY_OVERHEAD = 40
#: bytes of the fixed fields (format, times, counts, key names) of a serialised state (upper bound)
FIXED_OVERHEAD = 512
#: longest user id, session id (schemas/event.schema.json) and category key (limits.MAX_CATEGORY_KEY_CHARS)
MAX_ID_CHARS = 256
#: key kinds in the owned-items filter
PURCHASED, DISMISSED = "p", "d"


class StateError(ValueError):
    """Stored visitor state bytes cannot be read back."""


def event_weight(settings: CoreSettings, event_type: str) -> float:
    """Pull of one event on the visitor's interests (negative for a dismissal), from the settings.

    A type without its own `weight_<type>` setting pulls like a view: a click on a recommended item is the
    same interest a view shows (and the product page it opens is usually sent as a view too, so a heavier
    click would count the item twice), so it has no setting of its own until a shop has a reason to tune it.
    """
    return float(getattr(settings, f"weight_{event_type}", settings.weight_view))


def _b64(v: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(v, dtype=VECTOR_DTYPES[STATE_FORMAT]).tobytes()).decode("ascii")


def _unb64(s: str, fmt: int = STATE_FORMAT) -> np.ndarray:
    return quantised(np.frombuffer(base64.b64decode(s), dtype=VECTOR_DTYPES[fmt]))


def _cap_recent(d: dict[str, int], key: str, ts: int, cap: int) -> list[str]:
    """Insert or refresh `key` as most recent, then drop the oldest entries beyond `cap` (returned).

    A key's time only moves forward: a late event refreshes the entry but keeps its newer time.
    """
    old = d.pop(key, None)
    d[key] = ts if old is None else max(old, ts)
    evicted = []
    while len(d) > cap:
        gone = next(iter(d))
        del d[gone]
        evicted.append(gone)
    return evicted


def _json_cost(s: str) -> int:
    """Upper bound of the bytes `s` takes as a JSON string body (orjson writes UTF-8, escapes controls)."""
    n = len(s)
    if s.isascii() and s.isprintable():
        return 2 * n if '"' in s or "\\" in s else n
    return 4 * n if s.isprintable() else 6 * n


def _vector_bytes(v: np.ndarray) -> int:
    """Upper bound of the bytes one interest takes serialised (base64 float16 vector, weight, time, count)."""
    return 4 * (2 * len(v) + 2) // 3 + 3 * ENTRY_OVERHEAD


def _count_category(counts: dict[str, int], category: str, n: int = 1) -> None:
    """Count `category` in the session, dropping the least counted (then oldest) beyond the cap."""
    if category not in counts and len(counts) >= MAX_SESSION_CATEGORIES:
        del counts[min(counts, key=counts.__getitem__)]
    counts[category] = counts.get(category, 0) + n


@dataclass
class VisitorState:
    """Everything kept about one visitor (a user, or an anonymous session until it logs in)."""

    user_id: str | None = None
    session_id: str | None = None
    session_start: int = 0  # ms; history entries at or after it belong to the current session
    last_seen: int = 0  # ms, latest event time
    page_category: str | None = None  # page category of the latest event that had one
    #: recent interactions, oldest first: (item_id, timestamp ms, event code)
    history: list[tuple[str, int, int]] = field(default_factory=list)
    #: in-session interaction counts per category path (from the catalogue, or the event's page)
    session_categories: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # every item interacted with -> last time (capped)
    purchased: dict[str, int] = field(default_factory=dict)  # item -> last purchase time
    dismissed: dict[str, int] = field(default_factory=dict)  # item -> dismissal time
    purchase_categories: dict[str, int] = field(default_factory=dict)  # category path -> last purchase
    interests: list[Interest] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)  # recent event ids, to drop duplicates
    n_events: int = 0
    n_unknown: int = 0  # events whose item the catalogue did not know at the time
    #: purchases ("p") and dismissals ("d") evicted from the exact dicts (None until the first eviction)
    owned_filter: BloomFilter | None = None
    #: `byte_bound` bookkeeping, not serialised: the bytes at the last exact measure (-1: unknown) and an
    #: upper bound of what was added since (removals are not subtracted, so the sum stays an upper bound)
    _measured: int = field(default=FIXED_OVERHEAD, repr=False, compare=False)
    _added: int = field(default=0, repr=False, compare=False)

    # --- reading ---

    def has_seen_event(self, event_id: str) -> bool:
        return event_id in self.event_ids

    def has_purchased(self, item_id: str) -> bool:
        """Bought, recently (exact) or before the last `owned_cap` (the filter; may wrongly say yes)."""
        return item_id in self.purchased or (
            self.owned_filter is not None and self.owned_filter.contains(PURCHASED, item_id)
        )

    def has_dismissed(self, item_id: str) -> bool:
        """Dismissed, recently (exact) or before the last `owned_cap` (the filter; may wrongly say yes)."""
        return item_id in self.dismissed or (
            self.owned_filter is not None and self.owned_filter.contains(DISMISSED, item_id)
        )

    def _forget_owned(self, kind: str, keys: Iterable[str]) -> None:
        """Move items evicted from the exact purchased/dismissed dicts into the filter."""
        for key in keys:
            if self.owned_filter is None:
                self.owned_filter = BloomFilter()
                self._added += 4 * (BLOOM_BITS // 8 + 2) // 3 + ENTRY_OVERHEAD
            self.owned_filter.add(kind, key)

    def session_active(self, now_ms: int, settings: CoreSettings) -> bool:
        return self.n_events > 0 and now_ms - self.last_seen <= settings.session_gap_s * MS_PER_SECOND

    def session_history(self, now_ms: int, settings: CoreSettings) -> list[tuple[str, int, int]]:
        """Interactions of the current session, oldest first; empty once the session has timed out."""
        if not self.session_active(now_ms, settings):
            return []
        return [h for h in self.history if h[1] >= self.session_start]

    def session_category_counts(self, now_ms: int, settings: CoreSettings) -> dict[str, int]:
        return dict(self.session_categories) if self.session_active(now_ms, settings) else {}

    def recent_items(self, n: int, positive_only: bool = True) -> list[tuple[str, int, int]]:
        """The last `n` distinct items, most recent first, as (item_id, timestamp, code)."""
        out: list[tuple[str, int, int]] = []
        taken: set[str] = set()
        for h in reversed(self.history):
            if h[0] in taken or (positive_only and h[2] not in POSITIVE_CODES):
                continue
            taken.add(h[0])
            out.append(h)
            if len(out) >= n:
                break
        return out

    def suppressed_categories(self, now_ms: int, settings: CoreSettings) -> list[str]:
        """Category paths of purchases within `purchase_suppress_days` (sorted, so deterministic)."""
        window = settings.purchase_suppress_days * MS_PER_DAY
        return sorted(c for c, t in self.purchase_categories.items() if now_ms - t < window)

    def interest_weights(self, now_ms: int, settings: CoreSettings) -> list[float]:
        half_life = settings.interest_half_life_h * MS_PER_HOUR
        return [it.weight_at(now_ms, half_life) for it in self.interests]

    def profile_vector(self, now_ms: int, settings: CoreSettings) -> np.ndarray | None:
        """The single long-term embedding: the weight-averaged interests (unit), None without any."""
        if not self.interests:
            return None
        w = np.asarray(self.interest_weights(now_ms, settings), dtype=np.float32)
        return unit(w @ np.stack([it.vector for it in self.interests]))

    # --- writing ---

    def note_shown(self, event: Event, settings: CoreSettings) -> None:
        """Record an event that says what the shop showed (an impression): its id only, for deduplication.

        An impression is not something the visitor did, so it moves nothing else: no history, time, session,
        interest or count. Keeping its id in the dedup window is what makes a redelivered impression a
        duplicate, like any other event, for whoever counts impressions downstream.
        """
        self._added += _json_cost(event.event_id) + ENTRY_OVERHEAD
        self.event_ids.append(event.event_id)
        if len(self.event_ids) > settings.dedup_window:
            del self.event_ids[: len(self.event_ids) - settings.dedup_window]
        self.keep_within(settings.max_state_bytes)

    def apply(
        self,
        event: Event,
        settings: CoreSettings,
        vector: np.ndarray | None = None,
        category: str | None = None,
    ) -> None:
        """Record one (non-duplicate) event.

        `vector` is the item's unit vector (None when the catalogue does not know the item yet: the event
        still counts and stays in the history, it only moves no interest); `category` is the item's
        category path, or None to fall back on the event's page category (kept as its bounded
        `limits.category_key`). An event older than the latest one is late: see the module docstring.
        """
        ts = int(event.timestamp)
        late = self.n_events > 0 and ts < self.last_seen
        now = self.last_seen if late else ts
        code = EVENT_CODES.get(event.event_type, EVENT_CODES["view"])
        if not late:
            self._roll_session(event, settings)
        if event.user_id:
            self.user_id = event.user_id
        if not late and event.session_id:
            self.session_id = event.session_id
        page = optional_category_key(event.page_category)
        if not late and page:
            self.page_category = page
        category = optional_category_key(category) or page or None
        self.last_seen = now
        self.n_events += 1
        if vector is None:
            self.n_unknown += 1
        self._added += (
            _json_cost(event.event_id) + 4 * _json_cost(event.item_id) + 3 * _json_cost(category or "")
            + _json_cost(page or "") + _json_cost(event.user_id or "") + _json_cost(event.session_id or "")
            + 10 * ENTRY_OVERHEAD + (_vector_bytes(vector) if vector is not None else 0)
        )

        self.event_ids.append(event.event_id)
        if len(self.event_ids) > settings.dedup_window:
            del self.event_ids[: len(self.event_ids) - settings.dedup_window]
        entry = (event.item_id, ts, code)
        if late:
            bisect.insort(self.history, entry, key=lambda h: h[1])
        else:
            self.history.append(entry)
        if len(self.history) > settings.history_cap:
            del self.history[: len(self.history) - settings.history_cap]
        _cap_recent(self.seen, event.item_id, ts, settings.owned_cap)

        if code in POSITIVE_CODES and category and ts >= self.session_start:
            _count_category(self.session_categories, category)
        if event.event_type == "purchase":
            self._forget_owned(PURCHASED, _cap_recent(self.purchased, event.item_id, ts, settings.owned_cap))
            if category:
                _cap_recent(self.purchase_categories, category, ts, settings.owned_cap)
        elif event.event_type == "dismiss":
            self._forget_owned(DISMISSED, _cap_recent(self.dismissed, event.item_id, ts, settings.owned_cap))
        self._forget_old_purchase_categories(settings)

        if vector is not None:
            # a late event pulls with the weight it would have left by now (its fair, decayed share)
            late_by = decay_factor(now - ts, settings.interest_half_life_h * MS_PER_HOUR)
            update_interests(self.interests, vector, event_weight(settings, event.event_type) * late_by, now, settings)
        self.keep_within(settings.max_state_bytes)

    def _roll_session(self, event: Event, settings: CoreSettings) -> None:
        """Start a new session after `session_gap_s` of inactivity or when the session id changes."""
        ts = int(event.timestamp)
        new_id = event.session_id is not None and self.session_id is not None and event.session_id != self.session_id
        timed_out = self.n_events > 0 and ts - self.last_seen > settings.session_gap_s * MS_PER_SECOND
        if self.n_events == 0 or new_id or timed_out:
            self.session_start = ts
            self.session_categories = {}

    def _forget_old_purchase_categories(self, settings: CoreSettings) -> None:
        window = settings.purchase_suppress_days * MS_PER_DAY
        for c in [c for c, t in self.purchase_categories.items() if self.last_seen - t >= window]:
            del self.purchase_categories[c]

    def merge(self, other: VisitorState, settings: CoreSettings) -> None:
        """Join an anonymous session's state into this (user) state, e.g. on login.

        Histories interleave by time (then capped), owned-item sets and dedup ids are united, the other
        side's interests are folded in one by one (so the interest cap holds), and when the session is
        the latest activity it becomes this visitor's current session.
        """
        if other.n_events == 0:
            return
        half_life = settings.interest_half_life_h * MS_PER_HOUR
        merged_history = sorted(self.history + other.history, key=lambda h: h[1])  # stable: ties keep order
        self.history = merged_history[-settings.history_cap :]
        for src, dst, kind in (
            (other.seen, self.seen, None),
            (other.purchased, self.purchased, PURCHASED),
            (other.dismissed, self.dismissed, DISMISSED),
            (other.purchase_categories, self.purchase_categories, None),
        ):
            for key, ts in sorted(src.items(), key=lambda kv: (kv[1], kv[0])):
                if ts >= dst.get(key, ts):
                    evicted = _cap_recent(dst, key, ts, settings.owned_cap)
                    if kind is not None:
                        self._forget_owned(kind, evicted)
                else:
                    dst.setdefault(key, ts)
        if other.owned_filter is not None:
            if self.owned_filter is None:
                self.owned_filter = BloomFilter(bytearray(other.owned_filter.bits))
            else:
                self.owned_filter.union(other.owned_filter)
        ids = self.event_ids + [e for e in other.event_ids if e not in self.event_ids]
        self.event_ids = ids[-settings.dedup_window :]
        now = max(self.last_seen, other.last_seen)
        for it in other.interests:
            update_interests(self.interests, it.vector, it.weight_at(now, half_life), now, settings)
        if other.last_seen >= self.last_seen:  # the session is the latest activity: it is the current one
            if self.session_id is not None and self.session_id == other.session_id:
                for c, n in other.session_categories.items():
                    _count_category(self.session_categories, c, n)
                self.session_start = min(self.session_start, other.session_start)
            else:
                self.session_categories = dict(other.session_categories)
                self.session_start = other.session_start
            self.session_id = other.session_id or self.session_id
            self.page_category = other.page_category or self.page_category
        self.last_seen = now
        self.user_id = self.user_id or other.user_id
        self.n_events += other.n_events
        self.n_unknown += other.n_unknown
        self._forget_old_purchase_categories(settings)
        self._added += other.byte_bound()
        self.keep_within(settings.max_state_bytes)

    # --- size ---

    def byte_bound(self) -> int:
        """A cheap upper bound of `len(self.to_bytes())`: the size last measured plus what was added since.

        O(1): `keep_within` serialises only when this passes the limit, and then measures afresh (so an
        ordinary state is serialised for its size once every few thousand events, not on every one).
        """
        if self._measured < 0:
            self._measured, self._added = len(self.to_bytes()), 0
        return self._measured + self._added

    def keep_within(self, max_bytes: int) -> bool:
        """Trim the oldest, least useful parts until `to_bytes()` fits in `max_bytes`; True if it trimmed.

        The worker writes each state as one changelog message, which the broker rejects (or drops) past
        its `message.max.bytes`. Trimmed in turn, each time by half, until it fits: items seen, history,
        dedup ids, session categories, purchase-category suppressions, and the exact purchased and
        dismissed items (into the Bloom filter, so they stay hidden). What cannot be trimmed (ids,
        interests, the filter: ~13 KB at 64 dimensions) is the floor: see `state_bytes_bound`.
        """
        if self.byte_bound() <= max_bytes:
            return False
        size = len(self.to_bytes())
        self._measured, self._added = size, 0
        trimmed = False
        steps = (self._halve_seen, self._halve_history, self._halve_event_ids, self._halve_session_categories,
                 self._halve_purchase_categories, self._halve_purchased, self._halve_dismissed)
        while size > max_bytes:
            progressed = False
            for step in steps:
                if size <= max_bytes:
                    break
                if step():
                    progressed = trimmed = True
                    size = len(self.to_bytes())
            if not progressed:
                break
        self._measured, self._added = size, 0
        return trimmed

    @staticmethod
    def _drop_oldest(d: dict[str, int]) -> list[str]:
        gone = list(d)[: (len(d) + 1) // 2]
        for k in gone:
            del d[k]
        return gone

    def _halve_seen(self) -> bool:
        return bool(self._drop_oldest(self.seen))

    def _halve_history(self) -> bool:
        n = (len(self.history) + 1) // 2
        del self.history[:n]
        return n > 0

    def _halve_event_ids(self) -> bool:
        n = (len(self.event_ids) + 1) // 2
        del self.event_ids[:n]
        return n > 0

    def _halve_session_categories(self) -> bool:
        ranked = sorted(self.session_categories.items(), key=lambda kv: -kv[1])  # stable: older first on ties
        keep = len(ranked) // 2
        self.session_categories = dict(kv for kv in self.session_categories.items() if kv in ranked[:keep])
        return bool(ranked)

    def _halve_purchase_categories(self) -> bool:
        return bool(self._drop_oldest(self.purchase_categories))

    def _halve_purchased(self) -> bool:
        gone = self._drop_oldest(self.purchased)
        self._forget_owned(PURCHASED, gone)
        return bool(gone)

    def _halve_dismissed(self) -> bool:
        gone = self._drop_oldest(self.dismissed)
        self._forget_owned(DISMISSED, gone)
        return bool(gone)

    # --- serialisation ---

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict with short keys (vectors as base64 float16, so they round-trip exactly)."""
        d: dict[str, Any] = {
            "f": STATE_FORMAT,
            "u": self.user_id,
            "s": self.session_id,
            "ss": self.session_start,
            "ls": self.last_seen,
            "h": [list(h) for h in self.history],
            "n": self.n_events,
        }
        optional = {
            "pg": self.page_category,
            "sc": self.session_categories,
            "sn": self.seen,
            "p": self.purchased,
            "d": self.dismissed,
            "pc": self.purchase_categories,
            "i": [[_b64(it.vector), it.weight, it.updated_at, it.count] for it in self.interests],
            "e": self.event_ids,
            "nu": self.n_unknown,
            "ob": self.owned_filter.to_text() if self.owned_filter is not None else None,
        }
        d.update({k: v for k, v in optional.items() if v})
        return d

    def to_bytes(self) -> bytes:
        # A copy of exactly the encoded size: orjson hands back its over-allocated buffer shrunk in place,
        # and a table keeping one per visitor then holds ~4 KB of heap per ~1 KB state (measured:
        # docs/benchmarks.md). The copy costs well under a microsecond.
        return memoryview(orjson.dumps(self.to_dict())).tobytes()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VisitorState:
        fmt = d.get("f")
        if fmt not in READABLE_FORMATS:
            raise StateError(f"unsupported visitor state format {fmt!r}")
        return cls(
            user_id=d.get("u"),
            session_id=d.get("s"),
            session_start=int(d.get("ss", 0)),
            last_seen=int(d.get("ls", 0)),
            page_category=d.get("pg"),
            history=[(str(h[0]), int(h[1]), int(h[2])) for h in d.get("h", ())],
            session_categories={str(k): int(v) for k, v in d.get("sc", {}).items()},
            seen={str(k): int(v) for k, v in d.get("sn", {}).items()},
            purchased={str(k): int(v) for k, v in d.get("p", {}).items()},
            dismissed={str(k): int(v) for k, v in d.get("d", {}).items()},
            purchase_categories={str(k): int(v) for k, v in d.get("pc", {}).items()},
            interests=[
                Interest(vector=_unb64(v, fmt), weight=float(w), updated_at=int(t), count=int(c))
                for v, w, t, c in d.get("i", ())
            ],
            event_ids=[str(e) for e in d.get("e", ())],
            n_events=int(d.get("n", 0)),
            n_unknown=int(d.get("nu", 0)),
            owned_filter=BloomFilter.from_text(d["ob"]) if d.get("ob") else None,
            _measured=-1,
        )

    @classmethod
    def from_bytes(cls, b: bytes) -> VisitorState:
        try:
            state = cls.from_dict(orjson.loads(b))
            state._measured = len(b)
            return state
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, StateError):
                raise
            raise StateError(f"cannot read visitor state: {exc}") from exc

    def approx_memory_bytes(self) -> int:
        """Rough in-memory size (objects reachable from this state), for benchmarks and reports."""
        return _deep_size(self)


def state_bytes_bound(settings: CoreSettings) -> int:
    """The guaranteed upper bound of `len(VisitorState.to_bytes())` for a state the core updated under
    `settings`: `max_state_bytes`, or the untrimmable floor if that is larger (user and session ids at the
    schema's 256 characters, the page category key, `max_interests` vectors and the owned-items filter;
    about 13 KB at 64 dimensions), whatever the events. The worker may rely on it for its changelog writes.
    """
    ids = 3 * (6 * MAX_ID_CHARS + ENTRY_OVERHEAD)  # user id, session id, page category key (all <= 256 chars)
    vectors = settings.max_interests * _vector_bytes(np.zeros(settings.embedding_dim))
    owned = 4 * (BLOOM_BITS // 8 + 2) // 3 + ENTRY_OVERHEAD
    return max(settings.max_state_bytes, FIXED_OVERHEAD + ids + vectors + owned)


#: decoded states a `DecodedStates` keeps (a worker batch touches at most `batch_size` visitors, 256 by default)
DECODED_STATES_CAP = 512


class DecodedStates:
    """The decoded `VisitorState` of recently read or written bytes, for stores that keep `to_bytes()`.

    A worker reads a visitor's state three times per event (observe, the list, its user and session ids)
    and decoding costs ~30 us each (docs/benchmarks.md). An entry is used only while the store still holds
    *the same bytes object* it was decoded from or encoded to (`is`, not `==`), so a value replaced behind
    the store's back (changelog recovery, another writer) is decoded afresh. The state object is shared
    between reads, as with a store of live objects: callers that change a state put it back (the core
    always does), and putting re-associates the object with its new bytes.
    """

    __slots__ = ("_entries", "cap")

    def __init__(self, cap: int = DECODED_STATES_CAP) -> None:
        self.cap = cap
        self._entries: dict[bytes, tuple[bytes, VisitorState]] = {}

    def get(self, key: bytes, raw: bytes) -> VisitorState:
        """The state `raw` (the store's current value for `key`) decodes to."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] is raw:
            return hit[1]
        state = VisitorState.from_bytes(raw)
        self.remember(key, raw, state)
        return state

    def remember(self, key: bytes, raw: bytes, state: VisitorState) -> None:
        """`state` is what `raw`, now stored under `key`, decodes to (it was just encoded from it)."""
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (raw, state)
        if len(entries) > self.cap:
            del entries[next(iter(entries))]

    def forget(self, key: bytes) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


def leaf_of(category_path: str) -> str:
    """The last part of a category path ("Furniture/Living room/Sofas" -> "Sofas")."""
    return category_path.rsplit(CATEGORY_SEP, 1)[-1]


def parent_of(category_path: str) -> str:
    """The parent path ("Furniture/Living room/Sofas" -> "Furniture/Living room"; top level -> "")."""
    return category_path.rsplit(CATEGORY_SEP, 1)[0] if CATEGORY_SEP in category_path else ""


def _deep_size(obj: object, _seen: set[int] | None = None) -> int:
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, np.ndarray):
        return size if obj.base is None else size + obj.nbytes
    children: Iterable[object]
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set | frozenset):
        children = obj
    elif hasattr(obj, "__dataclass_fields__"):
        children = [getattr(obj, f) for f in obj.__dataclass_fields__]
        if hasattr(obj, "__dict__"):
            size += sys.getsizeof(obj.__dict__)
    else:
        children = ()
    return size + sum(_deep_size(c, seen) for c in children)
