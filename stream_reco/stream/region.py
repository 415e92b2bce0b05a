"""Which redelivered events the visitor table already holds: the decision behind a recovery region.

After a crash the changelog may be *ahead* of the committed offset: events applied (and written to the
changelog) but not yet committed are delivered again, and the table already reflects them (stream/recovery.py,
step 2). `applied` decides, *per visitor*, which of them the table holds: a visitor's state reflects that
visitor's events in log order up to some point (one consumer applies a partition in order), so every event of
the visitor up to the last one whose event_id its state holds was applied, and the later ones were not.
Only an event's *first* occurrence is evidence: a producer's duplicate of an event applied long ago is in the
state whatever happened to the events before it (issue 11, defect 4: taking it as evidence hid an unapplied
purchase). An anonymous session joined into a user by a login later in the log (same partition) counts as that
user's: its own key then shows nothing.

The same evidence (`held`) tells the messages the consumer skipped (never applied by anyone) from those it
only delivers again, and `joined` finds the held logins whose join across partitions the table holds.

The held events of a region are applied by a *shadow* (`ShadowRecommender` over a `BytesVisitorStore`), which
holds the partition's visitors as of the log position, so that the list republished for each is the one the
dead worker computed or would have.
"""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord

from stream_reco import schemas
from stream_reco.core.events import Event
from stream_reco.core.recommender import Recommender, VisitorStore
from stream_reco.core.state import VisitorState
from stream_reco.settings import Settings
from stream_reco.stream import admission, joins
from stream_reco.stream.joins import partition_of


class BytesVisitorStore:
    """Visitor states kept serialised, like the worker's table: a shadow of a big partition costs what the
    table costs (~1.7 kB per visitor on the simulated shop) instead of ~4x that as live objects."""

    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}

    def get(self, key: str) -> VisitorState | None:
        raw = self.states.get(key)
        return VisitorState.from_bytes(raw) if raw is not None else None

    def put(self, key: str, state: VisitorState) -> None:
        self.states[key] = state.to_bytes()

    def delete(self, key: str) -> None:
        self.states.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self.states

    def __len__(self) -> int:
        return len(self.states)


class ShadowRecommender(Recommender):
    """A recovery shadow that merges, right after a redelivered login, the session a join across partitions
    brought the user before the crash (`pending_joins`, by login event id), as the table holds it."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.pending_joins: dict[str, joins.Control] = {}

    def observe(self, event: Event, *args: Any, **kwargs: Any) -> bool:
        observed = super().observe(event, *args, **kwargs)
        control = self.pending_joins.pop(event.event_id, None)
        if control is not None:
            joins.apply(control, self.store, self.settings)
        return observed



def decode(msg: ConsumerRecord, settings: Settings) -> Event | None:
    """The event, or None for a message the worker rejects (dead-lettered when it was handled): the schema
    and the same edge checks as the worker (key, clock: stream/admission.py), judged by the record's own
    timestamp so that a rebuild decides as the worker did when the event was new."""
    try:
        return admission.admit(msg.value, msg.key, admission.reference_ms(msg.timestamp), settings)
    except schemas.InvalidMessage:
        return None


def held(store: VisitorStore, event: Event) -> bool:
    """Whether the table's state of the event's visitor holds its id (evidence that it was applied)."""
    state = store.get(event.visitor_key)
    return state is not None and state.has_seen_event(event.event_id)


def joined(store: VisitorStore, event: Event) -> bool:
    """A login whose session was on another partition, and whose join the table holds."""
    if not (event.user_id and event.session_id and event.session_id != event.user_id):
        return False
    state = store.get(event.user_id)
    return state is not None and state.has_seen_event(joins.JOIN_ID_PREFIX + event.event_id)


def applied(entries: list[tuple[int, Event | None]], store: VisitorStore, earlier: VisitorStore, partition: int,
            partitions: int) -> set[int]:
    """The offsets of `entries` (messages of `partition` in log order) whose effect the table (`store`) already
    holds.

    Decided per visitor (module docstring): a visitor's events up to the last one whose *first* occurrence the
    table's state holds. `earlier` holds the visitors as of the first entry (the shadow), to tell a first
    occurrence from a producer's duplicate. An event whose visitor has no state at all (an anonymous session
    whose state a login on another partition took away, or one never applied) and a message the worker rejects
    are decided by position instead: handled when any held event follows them (one consumer applies a partition
    in order)."""
    logins: dict[str, list[tuple[int, str]]] = {}  # session -> (offset, user) of its logins on this partition
    for offset, event in entries:
        if (event is not None and event.user_id and event.session_id and event.session_id != event.user_id
                and partition_of(event.session_id, partitions) == partition):
            logins.setdefault(event.session_id, []).append((offset, event.user_id))

    def visitor(offset: int, event: Event) -> str:
        """Whose state holds the event: an anonymous session joined at a later login (its own state gone) is
        the user's."""
        if event.user_id is None and event.session_id in logins and store.get(event.session_id) is None:
            later = [user for at, user in logins[event.session_id] if at > offset]
            if later:
                return later[0]
        return event.visitor_key

    seen: dict[str, set[str]] = {}
    last_held: dict[str, int] = {}
    last_any = -1
    for offset, event in entries:
        if event is None:
            continue
        ids = seen.setdefault(event.visitor_key, set())
        repeated = event.event_id in ids
        ids.add(event.event_id)
        key = visitor(offset, event)
        state = store.get(key)
        if repeated or state is None or not state.has_seen_event(event.event_id):
            continue
        before = earlier.get(event.visitor_key)  # only now: decoding a shadow's state costs ~50 µs
        if before is not None and before.has_seen_event(event.event_id):
            continue  # a duplicate of an event from before these entries: no evidence
        last_held[key] = offset
        last_any = offset

    def is_held(offset: int, event: Event | None) -> bool:
        if event is None:
            return offset < last_any
        key = visitor(offset, event)
        if store.get(key) is None:
            return offset < last_any
        return offset <= last_held.get(key, -1)

    return {offset for offset, event in entries if is_held(offset, event)}
