"""The login-join protocol across partitions (stream_reco/stream/joins.py), in-process: no broker needed.

The end-to-end proof (two and three workers, sessions and users on different workers) is in
test_reliability_scale.py; these pin down the records and their idempotence, which recovery relies on.
"""

from __future__ import annotations

import pytest

from stream_reco import schemas
from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.recommender import InMemoryVisitorStore, Recommender
from stream_reco.settings import Settings
from stream_reco.stream import joins

T0 = 1_764_150_000_000
PARTITIONS = 6


def _pair(cross: bool) -> tuple[str, str]:
    """A (session, user) pair whose partitions differ (cross) or match."""
    for i in range(1000):
        session, user = f"s-{i}", f"u-{i}"
        if (joins.partition_of(session, PARTITIONS) != joins.partition_of(user, PARTITIONS)) == cross:
            return session, user
    raise AssertionError("no such pair")


@pytest.fixture
def rec() -> Recommender:
    r = Recommender(Settings.load(env={}))
    for i in range(4):
        r.upsert_item(CatalogItem(f"k-{i}", title=f"Kettle {i}", category=("Kitchen", "Kettles")))
    return r


def test_records_round_trip_and_are_recognised() -> None:
    session, user = _pair(cross=True)
    login = Event("e-login", "view", "k-0", T0, user_id=user, session_id=session)
    assert joins.crosses_partitions(login, joins.partition_of(user, PARTITIONS), PARTITIONS)
    control, key, value = joins.join_request(login)
    assert key == session.encode() and joins.is_control(value)
    assert joins.parse(value, 10_000) == control
    with pytest.raises(schemas.InvalidMessage):
        schemas.decode_event(value)  # never mistaken for an event


@pytest.mark.parametrize("value, field", [
    (b'{"stream_reco":"teleport","session_id":"s","user_id":"u","login_event_id":"e","timestamp":1}', "stream_reco"),
    (b'{"stream_reco":"join_request","user_id":"u","login_event_id":"e","timestamp":1}', "session_id"),
    (b'{"stream_reco":"join_request","session_id":"s","user_id":"u","login_event_id":"e","timestamp":1.5}',
     "timestamp"),
    (b'{"stream_reco":"join_state","session_id":"s","user_id":"u","login_event_id":"e","timestamp":1,"state":[]}',
     "state"),
    (b'{"stream_reco":"join_state","session_id":"s","user_id":"u","login_event_id":"e","timestamp":1,'
     b'"state":{"f":1,"h":[["x"]]}}', "state"),
    (b'{"stream_reco":', None),
])
def test_malformed_records_are_invalid(value: bytes, field: str | None) -> None:
    with pytest.raises(schemas.InvalidMessage) as info:
        joins.parse(value, 10_000)
    assert info.value.field == field


def test_join_moves_the_session_once(rec: Recommender) -> None:
    session, user = _pair(cross=True)
    rec.process(Event("e1", "view", "k-0", T0, session_id=session))
    rec.process(Event("e2", "purchase", "k-1", T0 + 1000, session_id=session))
    session_store, user_store = InMemoryVisitorStore(), InMemoryVisitorStore()  # two partitions' tables
    session_store.put(session, rec.store.get(session))  # type: ignore[arg-type]
    login = Event("e3", "view", "k-2", T0 + 2000, user_id=user, session_id=session)
    rec.store = user_store
    rec.observe(login)  # on the user's partition: the session is not there, nothing joined yet

    request, _, _ = joins.join_request(login)
    outcome = joins.apply(request, session_store, rec.settings)
    assert session not in session_store, "the session's state left its partition"
    assert outcome.join_state is not None and outcome.send[0][0] == user.encode()
    sent = joins.parse(outcome.send[0][1], 1_000_000)
    assert sent.kind == joins.JOIN_STATE and sent.key == user and sent.join_id == "join:e3"
    assert sent.state is not None and outcome.join_state.state is not None
    assert sent.state.to_bytes() == outcome.join_state.state.to_bytes()

    applied = joins.apply(sent, user_store, rec.settings)
    assert applied.republish is not None and applied.republish.event_id == "e3"
    state = user_store.get(user)
    assert state is not None and {"e1", "e2", "e3"} <= set(state.event_ids)
    assert "k-1" in state.purchased, "the session's purchase is the user's now"
    assert joins.state_holds(sent, user_store)

    # redelivered records change nothing (at-least-once delivery, recovery replays)
    before = state.to_bytes()
    assert joins.apply(sent, user_store, rec.settings) == joins.Outcome()
    assert joins.apply(request, session_store, rec.settings) == joins.Outcome()
    assert user_store.get(user).to_bytes() == before  # type: ignore[union-attr]


def test_a_logged_in_state_is_never_taken(rec: Recommender) -> None:
    session, user = _pair(cross=True)
    store = InMemoryVisitorStore()
    rec.store = store
    rec.observe(Event("e1", "view", "k-0", T0, user_id="u-other", session_id=session))
    store.put(session, store.get("u-other"))  # type: ignore[arg-type]  # a state that belongs to a user
    login = Event("e2", "view", "k-1", T0 + 1, user_id=user, session_id=session)
    assert joins.apply(joins.join_request(login)[0], store, rec.settings) == joins.Outcome()
    assert session in store


def test_same_partition_logins_are_left_to_the_core() -> None:
    session, user = _pair(cross=False)
    login = Event("e", "view", "k-0", T0, user_id=user, session_id=session)
    assert not joins.crosses_partitions(login, joins.partition_of(user, PARTITIONS), PARTITIONS)
    anonymous = Event("e", "view", "k-0", T0, session_id=session)
    assert not joins.crosses_partitions(anonymous, 0, PARTITIONS)
