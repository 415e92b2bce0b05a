"""The login-join protocol across partitions (stream_reco/stream/joins.py).

The first tests are in-process (no broker): they pin down the records, their validation and their idempotence.
The last runs a real worker: forged join records are dead-lettered, valid joins still work. The end-to-end
proof with two and three workers (sessions and users on different workers) is in test_reliability_scale.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream_reco import schemas
from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.recommender import InMemoryVisitorStore, Recommender
from stream_reco.settings import Settings
from stream_reco.stream import joins, topics
from stream_reco.stream.topics import ensure_topics

from .harness import TopicReader, WorkerProcess, diagnostics, produce, send_events, send_items

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
     b'"state":{"f":1,"h":[["x"]]}}', "state.u"),
    (b'{"stream_reco":"join_state","session_id":"s","user_id":"u","login_event_id":"e","timestamp":1,'
     b'"state":{"f":2,"u":null,"s":"s","ss":1,"ls":1,"h":[["x"]],"n":1}}', "state.h[0]"),
    (b'{"stream_reco":"join_state","session_id":"s","user_id":"u","login_event_id":"e","timestamp":1,'
     b'"state":{"f":2,"u":null,"s":"s","ss":1,"ls":1,"h":[["x","y",0]],"n":1}}', "state"),
    (b'{"stream_reco":"join_state","session_id":"s","user_id":"u","login_event_id":"e","timestamp":1,'
     b'"state":{"f":2,"u":null,"s":"other","ss":1,"ls":1,"h":[],"n":1}}', "state"),
    (b'{"stream_reco":"join_request","session_id":"s","user_id":"u","login_event_id":"e","timestamp":1,"x":1}',
     None),
    (b'{"stream_reco":', None),
])
def test_malformed_records_are_invalid(value: bytes, field: str | None) -> None:
    with pytest.raises(schemas.InvalidMessage) as info:
        joins.parse(value, 10_000)
    assert info.value.field == field


def test_a_carried_state_must_fit_the_model(rec: Recommender) -> None:
    """A join state whose interest vectors have another dimension than the model's (or are not unit vectors)
    is refused with the reason (issue 11, defect 3): merged, it would make every later event of the user raise."""
    session, user = _pair(cross=True)
    rec.process(Event("e1", "view", "k-0", T0, session_id=session))
    state = rec.store.get(session)
    assert state is not None and state.interests
    dim = rec.catalog.dim
    good = joins.encode(joins.JOIN_STATE, session, user, "e-login", T0 + 1, state)
    assert joins.parse(good, 1_000_000, dim=dim).state is not None
    with pytest.raises(schemas.InvalidMessage) as info:
        joins.parse(good, 1_000_000, dim=dim + 1)
    assert info.value.field == "state" and f"dimension {dim}, the model's is {dim + 1}" in info.value.reason
    state.interests[0].vector = state.interests[0].vector * 3  # right dimension, not a unit vector
    with pytest.raises(schemas.InvalidMessage, match="unit vector"):
        joins.parse(joins.encode(joins.JOIN_STATE, session, user, "e-login", T0 + 1, state), 1_000_000, dim=dim)


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
    assert session in session_store and outcome.delete == session, "deleted by the caller, after the send"
    joins.forget(session_store, outcome.delete)  # the worker does this once the join state is sent
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


# --- against a real worker: the internal topic, and forged records (issue 11, defect 3) -------------------------

JOIN_KINDS = {"kettle": ["Kitchen", "Appliances", "Kettles"], "sofa": ["Furniture", "Living room", "Sofas"],
              "mixer": ["Kitchen", "Appliances", "Stand mixers"]}
#: a worker on 2 busy cores publishes within seconds; generous so only a lost list fails
LIST_TIMEOUT_S = 60.0


def _catalog() -> list[dict[str, Any]]:
    return [{"item_id": f"{kind}-{i}", "title": f"{path[-1]} {i}", "category": path, "price": 20.0 + i,
             "in_stock": True, "updated_at": T0} for kind, path in JOIN_KINDS.items() for i in range(6)]


def _event(n: int, visitor: str, event_type: str, item: str, session: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"event_id": f"j-{n}", "event_type": event_type, "item_id": item,
                           "timestamp": T0 + n * 1000}
    if visitor.startswith("u-"):
        doc["user_id"] = visitor
        if session:
            doc["session_id"] = session
    else:
        doc["session_id"] = visitor
    return doc


def _forged_join_state(settings: Settings, session: str, user: str) -> bytes:
    """A well-formed join state whose visitor state carries a 3-dimensional interest vector (the model's: 64)."""
    rec = Recommender(settings)
    for item in _catalog():
        rec.upsert_item(CatalogItem.from_dict(item))
    rec.process(Event("f-1", "view", "sofa-1", T0, session_id=session))
    state = rec.store.get(session)
    assert state is not None and state.interests
    for interest in state.interests:
        interest.vector = np.ones(3, dtype=np.float32) / np.float32(3**0.5)
    return joins.encode(joins.JOIN_STATE, session, user, "f-login", T0 + 1, state)


def _cross_pair(partitions: int) -> tuple[str, str]:
    for i in range(1000):
        session, user = f"s-x-{i}", f"u-x-{i}"
        if joins.partition_of(session, partitions) != joins.partition_of(user, partitions):
            return session, user
    raise AssertionError("no such pair")


@pytest.mark.integration
def test_forged_join_records_are_dead_lettered_and_valid_joins_still_work(unique_settings: Settings,
                                                                          tmp_path: Path) -> None:
    """A forged `join_state` whose interest vector has the wrong dimension, on the shop's events topic (where
    workers no longer read internal records) and on the internal joins topic (where they are validated), is
    dead-lettered with the reason; the user's later events still get lists; a valid login across partitions
    still joins the session (its kettle purchase suppresses kettles in the user's list)."""
    settings = unique_settings.replace(data_dir=str(tmp_path), web_port=0, list_size=5)
    victim = "u-victim"
    forged = _forged_join_state(settings, "s-forged", victim)
    internal = topics.joins_topic(settings)
    ensure_topics(settings)
    send_items(settings, _catalog())
    reader = TopicReader(settings, settings.recommendations_topic)
    dead = TopicReader(settings, settings.dead_letter_topic)
    worker = WorkerProcess(settings, name="joins-worker", loglevel="info")
    try:
        worker.wait_ready()
        asyncio.run(produce(settings, settings.events_topic, [(victim.encode(), forged)]))
        asyncio.run(produce(settings, internal, [(victim.encode(), forged)]))
        session, user = _cross_pair(settings.partitions)
        events = [_event(1, victim, "view", "sofa-2"), _event(2, victim, "view", "sofa-3"),
                  _event(3, session, "view", "kettle-1"), _event(4, session, "purchase", "kettle-1"),
                  _event(5, user, "view", "mixer-1", session=session)]
        send_events(settings, events[:4])
        reader.wait_for(lambda _: reader.latest().get(session, {}).get("trigger_event_id") == "j-4",
                        timeout=LIST_TIMEOUT_S)
        send_events(settings, events[4:])

        def done(_: list) -> bool:
            latest = reader.latest()
            doc = latest.get(user)
            return (latest.get(victim, {}).get("trigger_event_id") == "j-2" and doc is not None
                    and bool(doc["items"]) and not any(i["item_id"].startswith("kettle") for i in doc["items"]))

        reader.wait_for(done, timeout=LIST_TIMEOUT_S)
        dead.wait_for(lambda r: len(r) >= 2, timeout=LIST_TIMEOUT_S)
    finally:
        worker.stop()
    assert not worker.crashed(), worker.output()
    latest = reader.latest()
    assert latest.get(victim, {}).get("trigger_event_id") == "j-2", f"the victim's later events get lists\n" \
        f"{diagnostics([worker])}"
    assert latest[victim]["items"], "and the lists are not empty"
    assert done([]), f"the valid cross-partition login joined its session: {latest.get(user)}\n" \
        f"{diagnostics([worker])}"
    letters = [orjson.loads(v) for _, v in dead.records]
    by_topic = {d["topic"]: d for d in letters}
    assert set(by_topic) == {settings.events_topic, internal}, letters
    assert "dimension" in by_topic[internal]["error"], by_topic[internal]
    assert by_topic[internal]["field"] == "state"
