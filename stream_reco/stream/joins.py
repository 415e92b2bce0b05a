"""Login joins across partitions: the session's state is forwarded over the internal topic `<app_id>-joins`.

The problem. A login event (`user_id` u with the earlier `session_id` s) is keyed by u, so it lands on u's
partition P(u); the anonymous session's state lives in the visitor table on P(s). When P(s) != P(u), P(s) may
belong to another worker: the core's join (`Recommender.observe`) then finds no session state (the table shows
the core only visitors of the event's partition), and nothing would be joined (measured with two workers;
tests/integration/test_reliability_scale.py).

The protocol. Workers never write to the shop's topics (docs/contracts.md): join records go on the internal
topic `<app_id>-joins` (stream/topics.py), which has the events topic's partition count, so faust assigns its
partition p to the worker of events partition p, and a record keyed by a visitor is handled where that
visitor's state lives.

1. The worker of P(u) applies the login event to u as usual. If s hashes to another partition and u's state
   did not have session s yet, it sends a *join request* keyed by s (it lands on joins partition P(s)). When
   this worker owns P(s) too and has applied P(s) up to its log end, it joins at once instead (steps 2 and 3
   in-process), so that the login's own list already reflects the session; it still sends the join state,
   which arrives as a no-op (the join's id is known) and which a restart's recovery reads (stream/recovery.py).
2. The worker of P(s) first waits until its events partition P(s) has *committed* every offset that was in the
   log when the request arrived (`WAIT_S` at most). Ordering: the shop produced s's events before
   the login, so they are all below that offset; after the wait they are in s's state, and none of them can
   be redelivered (and re-applied to a fresh s) after s has moved. Then it takes s's state if it is still
   anonymous, sends a *join state* keyed by u, carrying it, and only once that send has succeeded deletes s
   (a tombstone on P(s)'s changelog): `apply` returns the key to delete (`Outcome.delete`) and the caller
   deletes it after the send (`forget`), so a failed send loses nothing (the request is tried again or
   dead-lettered, and s stays where it was).
   An anonymous event of s that the shop produces after the login is not joined: it starts a new session
   state, as it would in the in-process replay. If the wait runs out (P(s) lags by more than the bound), the
   join goes ahead with what was applied by then, and the session's later events stay with the session.
3. The worker of P(u) (once a restart's recovery region on P(u) has passed, `WAIT_S` at most, so that the
   lists the region republishes do not come after this one) merges it into u (`VisitorState.merge`, as the
   core does for a local join), remembers the join's id among u's event ids (a redelivered join state is
   ignored) and publishes u's list again, triggered by the login event.

Validation. Every record of the joins topic is checked like a shop's message before it is used: size, JSON,
the JSON Schema `schemas/join.schema.json` (the envelope and the state's shape), then the meaning of a carried
state (`check_state`: it decodes, is the named session's, and its interest vectors have the current model's
dimension and are finite unit vectors). Anything else is dead-lettered with the reason and the worker goes on.
A record shaped like a join record on the shop's events topic is just an invalid event there (dead letter).

The statistics rebuild (stream/recovery.py) does not read this topic: join records change visitor state, never
the shop-wide statistics, and the rebuild's shadow only needs visitor history as context (see recovery.py for
the one consequence). A login whose session and user share a partition is joined at once by the core,
exactly like the in-process replay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from aiokafka.partitioner import DefaultPartitioner

from stream_reco import schemas
from stream_reco.core import login
from stream_reco.core.bloom import BloomFilter
from stream_reco.core.events import Event
from stream_reco.core.recommender import VisitorStore
from stream_reco.core.state import StateError, VisitorState
from stream_reco.settings import Settings

CONTROL_FIELD = "stream_reco"
#: a join record's bytes start with this (orjson keeps key order; the producer below puts it first)
CONTROL_PREFIX = b'{"' + CONTROL_FIELD.encode() + b'":'
JOIN_REQUEST = "join_request"
JOIN_STATE = "join_state"
#: the id a join is remembered under in the user's event ids (dedup of a redelivered join state)
JOIN_ID_PREFIX = "join:"
#: schemas/join.schema.json
SCHEMA_KIND = "join"
#: longest wait of a join record for its events partition: a request for the partition to commit what was in
#: the log when it arrived (step 2 above), a join state for a restart's recovery region of the partition to pass
#: (stream/recovery.py). Past it the record is applied anyway. Longer than a commit interval plus a busy batch.
WAIT_S = 30.0
#: how far an interest vector's norm may be from 1 (they are unit vectors stored as float16)
UNIT_NORM_TOLERANCE = 0.01

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
    """Whether the bytes look like a join record (tests; the worker reads join records only from the joins
    topic and never looks for them on the shop's events topic)."""
    return raw is not None and bytes(raw[: len(CONTROL_PREFIX)]) == CONTROL_PREFIX


def encode(kind: str, session_id: str, user_id: str, login_event_id: str, timestamp: int,
           state: VisitorState | None = None) -> bytes:
    doc: dict[str, Any] = {CONTROL_FIELD: kind, "session_id": session_id, "user_id": user_id,
                           "login_event_id": login_event_id, "timestamp": timestamp}
    if state is not None:
        doc["state"] = state.to_dict()
    return orjson.dumps(doc)


def parse(raw: bytes | bytearray | memoryview | None, max_bytes: int, dim: int | None = None) -> Control:
    """A join record, or InvalidMessage (dead-lettered like any bad message) with the field and the reason.

    `dim` is the current model's item vector dimension: a carried state whose interests have another one
    would make every later event of the user raise, so it is refused here (`check_state`)."""
    if raw is None:
        raise schemas.InvalidMessage("message has no value (a tombstone); a join record is a JSON object")
    size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
    if size > max_bytes:
        raise schemas.InvalidMessage(f"message is {size} bytes, larger than the limit of {max_bytes} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise schemas.InvalidMessage(f"not valid JSON: {exc}") from None
    schemas.validate(SCHEMA_KIND, doc)
    kind = doc[CONTROL_FIELD]
    state = None
    if kind == JOIN_STATE:
        state = check_state(doc["state"], doc["session_id"], dim)
    return Control(kind=kind, session_id=doc["session_id"], user_id=doc["user_id"],
                   login_event_id=doc["login_event_id"], timestamp=int(doc["timestamp"]), state=state)


def parse_record(key: bytes | None, raw: bytes | bytearray | memoryview | None, max_bytes: int,
                 dim: int | None = None) -> Control:
    """`parse`, and the record's Kafka key must be the visitor it is keyed by (`Control.key`): a record on
    another visitor's partition would change state that another worker owns. Both readers of the joins topic
    (the worker's agent, the recovery of a restart) take records through here."""
    control = parse(raw, max_bytes, dim=dim)
    if key != control.key.encode():
        field = "session_id" if control.kind == JOIN_REQUEST else "user_id"
        raise schemas.InvalidMessage(f"the record's key is not its {field}", "key")
    return control


def check_state(doc: dict[str, Any], session_id: str, dim: int | None) -> VisitorState:
    """The carried state, decoded, if it may be merged into a user; else InvalidMessage naming `state`.

    The schema has checked its shape; this checks what a schema cannot: positions inside the history and
    interest entries, that the owned-items filter ("ob", core/bloom.py) decodes to a filter of the module's size,
    that it is the named session's, and that its interest vectors are finite unit vectors of the current model's
    dimension (`dim`; None: not checked). Caps need no check: the merge applies them."""
    if doc["s"] != session_id:
        raise schemas.InvalidMessage(f"the state is session {str(doc['s'])[:40]!r}'s, not the record's", "state")
    for entry in doc["h"]:
        if not (len(entry) == 3 and isinstance(entry[0], str) and 1 <= len(entry[0]) <= 256
                and type(entry[1]) is int and entry[1] >= 0 and type(entry[2]) is int and 0 <= entry[2] <= 3):
            raise schemas.InvalidMessage("history entries must be [item_id, epoch ms, action code 0-3]", "state")
    for entry in doc.get("i", ()):
        if not (len(entry) == 4 and isinstance(entry[0], str) and type(entry[1]) in (int, float)
                and math.isfinite(entry[1]) and entry[1] >= 0 and type(entry[2]) is int and entry[2] >= 0
                and type(entry[3]) is int and entry[3] >= 0):
            raise schemas.InvalidMessage("interest entries must be [vector, weight >= 0, epoch ms, count]", "state")
    if "ob" in doc:
        owned = doc["ob"]
        try:
            if not isinstance(owned, str):
                raise ValueError(f"a {type(owned).__name__}, not base64 text")
            BloomFilter.from_text(owned)  # as VisitorState.from_dict reads it (binascii.Error is a ValueError)
        except ValueError as exc:
            raise schemas.InvalidMessage(f"the owned-items filter (ob) does not decode: {exc}", "state") from None
    try:
        state = VisitorState.from_dict(doc)
    except (StateError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise schemas.InvalidMessage(f"not a readable visitor state: {exc}", "state") from None
    for it in state.interests:
        vector = np.asarray(it.vector, dtype=np.float64)
        if dim is not None and vector.shape != (dim,):
            raise schemas.InvalidMessage(f"an interest vector has dimension {vector.size}, the model's is {dim}",
                                         "state")
        if not np.all(np.isfinite(vector)) or abs(float(np.linalg.norm(vector)) - 1.0) > UNIT_NORM_TOLERANCE:
            raise schemas.InvalidMessage("an interest vector is not a finite unit vector", "state")
    return state


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
    #: a visitor key the caller deletes (`forget`) once every record of `send` has been sent, never before: the
    #: session a join request moves, which would be lost if it were gone and the send then failed
    delete: str | None = None


#: delete a visitor from a store (`Outcome.delete`, after the send); the core's, so both joins forget alike
forget = login.forget


def apply(control: Control, store: VisitorStore, settings: Settings) -> Outcome:
    """Apply a join record to `store` (the table, on the partition of the record's key).

    A join request changes nothing in `store`: it returns the session's join state to send and, in
    `Outcome.delete`, the session to delete. The caller sends `Outcome.send` first and then calls
    `forget(store, outcome.delete)` (on the session's partition), so a failed send leaves the session in place
    (its request is redelivered or dead-lettered, and a later request still finds it). Until then a repeated
    request sends the same join state again, which the user's side ignores (the join's id is remembered)."""
    if control.kind == JOIN_REQUEST:
        anon = store.get(control.session_id)
        if not login.joinable(anon) or anon.n_events == 0:  # type: ignore[union-attr]
            return Outcome()  # unknown, already joined, or not anonymous: nothing to forward
        value = encode(JOIN_STATE, control.session_id, control.user_id, control.login_event_id, control.timestamp,
                       anon)
        followup = Control(JOIN_STATE, control.session_id, control.user_id, control.login_event_id,
                           control.timestamp, anon)
        return Outcome(send=((control.user_id.encode(), value),), join_state=followup,
                       delete=control.session_id)
    if control.state is None:
        return Outcome()
    state = login.join(store.get(control.user_id), control.state, control.user_id, settings,
                       join_id=control.join_id)
    if state is None:
        return Outcome()  # a redelivered join state
    store.put(control.user_id, state)
    return Outcome(republish=control.trigger())
