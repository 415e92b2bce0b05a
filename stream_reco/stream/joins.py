"""Login joins across partitions: the session's state is forwarded through the events topic.

The problem. A login event (`user_id` u with the earlier `session_id` s) is keyed by u, so it lands on u's
partition P(u); the anonymous session's state lives in the visitor table on P(s). When P(s) != P(u), P(s) may
belong to another worker: the core's join (`Recommender.observe`) then found no session state and silently
did not join (measured with two workers: every login whose session sat on the other worker lost the session's
history; tests/integration/test_reliability_scale.py), and when both partitions happened to be local the join
depended on the current assignment, and it read and deleted state of a partition the event did not come from.

The protocol, through the events topic itself so that each partition's log stays the complete history of its
visitors (statistics rebuilds replay it, stream/recovery.py):

1. The worker of P(u) applies the login event to u as usual: the table shows the core only visitors of
   the event's partition, so across partitions nothing is joined yet. If s hashes to another partition and u's
   state did not have session s yet, it sends a *join request* keyed by s: it lands on P(s), after every
   event of s the shop produced before the login. (When this worker owns P(s) too, it does steps 2 and 3 at
   once, so that the login's own list already reflects the session, and still writes both records to the
   log, where they arrive as no-ops: the session is gone and the join's id is known.)
2. The worker of P(s) takes s's state if it is still anonymous, deletes it (a tombstone on P(s)'s changelog,
   written by P(s)'s owner) and sends a *join state* keyed by u, carrying the state.
3. The worker of P(u) merges it into u (`VisitorState.merge`, as the core does for a local join), remembers
   the join's id among u's event ids (a redelivered join state is ignored) and publishes u's list again,
   triggered by the login event.

Control records are JSON objects whose first key is `stream_reco` (the record kind); anything else that fails
event validation is dead-lettered as before, and so is a malformed control record. A login whose session and
user share a partition is joined at once by the core, exactly like the in-process replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.partitioner import DefaultPartitioner

from stream_reco import schemas
from stream_reco.core.events import Event
from stream_reco.core.recommender import VisitorStore
from stream_reco.core.state import StateError, VisitorState
from stream_reco.settings import Settings

CONTROL_FIELD = "stream_reco"
#: a control record's bytes start with this (orjson keeps key order; the producer below puts it first)
CONTROL_PREFIX = b'{"' + CONTROL_FIELD.encode() + b'":'
JOIN_REQUEST = "join_request"
JOIN_STATE = "join_state"
#: the id a join is remembered under in the user's event ids (dedup of a redelivered join state)
JOIN_ID_PREFIX = "join:"
#: bounds of the ids a control record carries (event.schema.json: ids up to 256, event ids up to 128)
MAX_VISITOR_ID_CHARS = 256
MAX_EVENT_ID_CHARS = 128
MAX_TIMESTAMP_MS = 4_102_444_800_000  # event.schema.json: epoch_ms maximum

_partitioner = DefaultPartitioner()


def partition_of(key: str, partitions: int) -> int:
    """The events partition of a visitor key, as the shop's producer (Kafka's default partitioner) puts it."""
    all_partitions = list(range(partitions))
    return int(_partitioner(key.encode(), all_partitions, all_partitions))


@dataclass(frozen=True, slots=True)
class Control:
    """A parsed control record."""

    kind: str
    session_id: str
    user_id: str
    login_event_id: str
    timestamp: int
    state: VisitorState | None = None

    @property
    def key(self) -> str:
        """The visitor key the record is keyed by (and whose partition handles it)."""
        return self.session_id if self.kind == JOIN_REQUEST else self.user_id

    @property
    def join_id(self) -> str:
        return JOIN_ID_PREFIX + self.login_event_id

    def trigger(self) -> Event:
        """The login event, as the trigger of the list published after the join."""
        return Event(event_id=self.login_event_id, event_type="view", item_id="", timestamp=self.timestamp,
                     user_id=self.user_id, session_id=self.session_id)


def is_control(raw: bytes | bytearray | memoryview | None) -> bool:
    return raw is not None and bytes(raw[: len(CONTROL_PREFIX)]) == CONTROL_PREFIX


def encode(kind: str, session_id: str, user_id: str, login_event_id: str, timestamp: int,
           state: VisitorState | None = None) -> bytes:
    doc: dict[str, Any] = {CONTROL_FIELD: kind, "session_id": session_id, "user_id": user_id,
                           "login_event_id": login_event_id, "timestamp": timestamp}
    if state is not None:
        doc["state"] = state.to_dict()
    return orjson.dumps(doc)


def _text(doc: dict[str, Any], name: str, limit: int) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise schemas.InvalidMessage(f"must be a string of 1 to {limit} characters", name)
    return value


def parse(raw: bytes | bytearray | memoryview, max_bytes: int) -> Control:
    """A control record, or InvalidMessage (dead-lettered like any bad message) if it is malformed."""
    size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
    if size > max_bytes:
        raise schemas.InvalidMessage(f"message is {size} bytes, larger than the limit of {max_bytes} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise schemas.InvalidMessage(f"not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise schemas.InvalidMessage("control record must be a JSON object")
    kind = doc.get(CONTROL_FIELD)
    if kind not in (JOIN_REQUEST, JOIN_STATE):
        raise schemas.InvalidMessage(f"unknown control record kind {str(kind)[:40]!r}", CONTROL_FIELD)
    timestamp = doc.get("timestamp")
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP_MS:
        raise schemas.InvalidMessage(f"must be an integer from 0 to {MAX_TIMESTAMP_MS}", "timestamp")
    state = None
    if kind == JOIN_STATE:
        if type(doc.get("state")) is not dict:
            raise schemas.InvalidMessage("must be a visitor state object", "state")
        try:
            state = VisitorState.from_dict(doc["state"])
        except (StateError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise schemas.InvalidMessage(f"not a readable visitor state: {exc}", "state") from None
    return Control(kind=kind, session_id=_text(doc, "session_id", MAX_VISITOR_ID_CHARS),
                   user_id=_text(doc, "user_id", MAX_VISITOR_ID_CHARS),
                   login_event_id=_text(doc, "login_event_id", MAX_EVENT_ID_CHARS), timestamp=timestamp,
                   state=state)


def crosses_partitions(event: Event, partition: int, partitions: int) -> bool:
    """A login event whose session's state lives on another partition than the event's."""
    session = event.session_id
    return (bool(event.user_id) and bool(session) and session != event.user_id
            and partition_of(session, partitions) != partition)  # type: ignore[arg-type]


def join_request(event: Event) -> tuple[Control, bytes, bytes]:
    """The join request for a login event, and its (key, value): keyed by the session, so it lands on P(s)."""
    assert event.session_id is not None and event.user_id is not None
    control = Control(JOIN_REQUEST, event.session_id, event.user_id, event.event_id, int(event.timestamp))
    return control, event.session_id.encode(), encode(JOIN_REQUEST, event.session_id, event.user_id,
                                                       event.event_id, int(event.timestamp))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying a control record asks the worker to do next."""

    send: tuple[tuple[bytes, bytes], ...] = ()
    republish: Event | None = None  # publish this visitor's list again, with this trigger
    join_state: Control | None = None  # the join state sent (a worker owning both partitions applies it at once)


def apply(control: Control, store: VisitorStore, settings: Settings) -> Outcome:
    """Apply a control record to `store` (the table on its partition, or a recovery shadow's store)."""
    if control.kind == JOIN_REQUEST:
        anon = store.get(control.session_id)
        if anon is None or anon.user_id is not None or anon.n_events == 0:
            return Outcome()  # unknown, already joined, or not anonymous: nothing to forward
        delete = getattr(store, "delete", None)
        if callable(delete):
            delete(control.session_id)
        else:
            store.put(control.session_id, VisitorState())
        value = encode(JOIN_STATE, control.session_id, control.user_id, control.login_event_id, control.timestamp,
                       anon)
        followup = Control(JOIN_STATE, control.session_id, control.user_id, control.login_event_id,
                           control.timestamp, anon)
        return Outcome(send=((control.user_id.encode(), value),), join_state=followup)
    state = store.get(control.user_id) or VisitorState()
    if state.has_seen_event(control.join_id) or control.state is None:
        return Outcome()  # a redelivered join state
    state.merge(control.state, settings)
    state.user_id = state.user_id or control.user_id
    state.event_ids.append(control.join_id)
    if len(state.event_ids) > settings.dedup_window:
        del state.event_ids[: len(state.event_ids) - settings.dedup_window]
    store.put(control.user_id, state)
    return Outcome(republish=control.trigger())


def state_holds(control: Control, store: VisitorStore) -> bool:
    """Evidence for recovery that the table already applied this record (only a join state leaves some)."""
    if control.kind != JOIN_STATE:
        return False
    state = store.get(control.user_id)
    return state is not None and state.has_seen_event(control.join_id)
