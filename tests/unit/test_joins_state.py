"""A join state carries every key `VisitorState.to_dict` can write (stream_reco/stream/joins.py).

The schema of the joins topic (schemas/join.schema.json) lists the state's keys with `additionalProperties:
false`, so a key the core writes but the schema lacks dead-letters that session's join: its history and
purchases would be lost at login. These tests build a session that writes every optional key (the owned-items
Bloom filter "ob" included: past `owned_cap` purchases and dismissals, and trimmed by `keep_within`), send it
through the joins encoding and check that the worker accepts it and the user keeps what the session owned.
"""

from __future__ import annotations

import base64
import dataclasses

import orjson
import pytest

from stream_reco import schemas
from stream_reco.core.bloom import BITS, BloomFilter
from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.recommender import InMemoryVisitorStore, Recommender
from stream_reco.core.state import VisitorState
from stream_reco.settings import Settings
from stream_reco.stream import joins

T0 = 1_764_150_000_000
SESSION, USER = "s-join", "u-join"
#: every key `VisitorState.to_dict` can write (required and optional)
ALL_KEYS = {"f", "u", "s", "ss", "ls", "h", "n", "pg", "sc", "sn", "p", "d", "pc", "i", "e", "nu", "ob"}


def _settings() -> Settings:
    return dataclasses.replace(Settings.load(env={}), owned_cap=5)


def _full_session(settings: Settings) -> tuple[Recommender, VisitorState]:
    """An anonymous session past `owned_cap` purchases and dismissals, with unknown items and a page category."""
    rec = Recommender(settings)
    for i in range(12):
        rec.upsert_item(CatalogItem(f"k-{i}", title=f"Kettle {i}", category=("Kitchen", "Kettles")))
    t = T0
    for i in range(12):
        t += 1000
        rec.process(Event(f"e-v{i}", "view", f"k-{i}", t, session_id=SESSION, page_category="Kitchen"))
        t += 1000
        rec.process(Event(f"e-p{i}", "purchase" if i < 8 else "dismiss", f"k-{i}", t, session_id=SESSION))
    t += 1000
    rec.process(Event("e-unknown", "view", "k-not-in-catalogue", t, session_id=SESSION))
    state = rec.store.get(SESSION)
    assert state is not None and state.user_id is None
    return rec, state


def test_the_session_writes_every_key() -> None:
    _, state = _full_session(_settings())
    assert set(state.to_dict()) == ALL_KEYS, "the test session must exercise every key the core writes"


def test_every_key_the_core_writes_is_in_the_join_schema() -> None:
    allowed = set(schemas.get_schema(joins.SCHEMA_KIND)["properties"]["state"]["properties"])
    assert allowed >= ALL_KEYS, f"missing from schemas/join.schema.json: {sorted(ALL_KEYS - allowed)}"


def test_a_full_session_joins_and_keeps_its_purchases() -> None:
    settings = _settings()
    rec, state = _full_session(settings)
    assert state.owned_filter is not None and len(state.purchased) == settings.owned_cap
    session_store, user_store = InMemoryVisitorStore(), InMemoryVisitorStore()  # two partitions' tables
    session_store.put(SESSION, state)
    login = Event("e-login", "view", "k-0", T0 + 100_000, user_id=USER, session_id=SESSION)

    request, _, _ = joins.join_request(login)
    outcome = joins.apply(request, session_store, settings)
    assert outcome.send and outcome.send[0][0] == USER.encode()
    sent = joins.parse(outcome.send[0][1], settings.max_message_bytes, dim=rec.catalog.dim)
    assert sent.state is not None and sent.state.owned_filter == state.owned_filter

    assert joins.apply(sent, user_store, settings).republish is not None
    user = user_store.get(USER)
    assert user is not None
    for i in range(8):
        assert user.has_purchased(f"k-{i}"), f"k-{i}: the session's purchase is the user's now"
    for i in range(8, 12):
        assert user.has_dismissed(f"k-{i}")


def test_a_trimmed_session_joins() -> None:
    """`keep_within` moves exact purchases into the filter: such a state must join too."""
    settings = dataclasses.replace(Settings.load(env={}), owned_cap=200)
    rec, state = _full_session(settings)
    assert state.owned_filter is None
    assert state.keep_within(1_000) and state.owned_filter is not None
    value = joins.encode(joins.JOIN_STATE, SESSION, USER, "e-login", T0 + 100_000, state)
    sent = joins.parse(value, settings.max_message_bytes, dim=rec.catalog.dim)
    assert sent.state is not None and sent.state.owned_filter == state.owned_filter
    user = VisitorState()
    user.merge(sent.state, settings)
    assert all(user.has_purchased(f"k-{i}") for i in range(8))


def test_the_schema_pins_the_filter_size() -> None:
    """schemas/join.schema.json states the filter's text length; it must follow core/bloom.py's BITS."""
    ob = schemas.get_schema(joins.SCHEMA_KIND)["properties"]["state"]["properties"]["ob"]
    assert ob["minLength"] == ob["maxLength"] == len(BloomFilter().to_text())


def _with_filter(text: object) -> bytes:
    _, state = _full_session(_settings())
    doc = orjson.loads(joins.encode(joins.JOIN_STATE, SESSION, USER, "e-login", T0 + 100_000, state))
    doc["state"]["ob"] = text
    return orjson.dumps(doc)


@pytest.mark.parametrize("text", [
    "",  # empty
    "AAAA",  # too short
    base64.b64encode(bytes(BITS // 8 + 3)).decode(),  # a filter of another size
    "!" * len(BloomFilter().to_text()),  # right length, not base64
    7,  # not a string
])
def test_a_malformed_filter_is_refused_naming_the_state(text: object) -> None:
    with pytest.raises(schemas.InvalidMessage) as info:
        joins.parse(_with_filter(text), 1_000_000)
    assert info.value.field is not None and info.value.field.startswith("state")


def test_a_filter_that_is_not_base64_is_refused_by_check_state() -> None:
    """What the schema's pattern may let through, `check_state` refuses with the reason."""
    good = BloomFilter().to_text()
    bad = good[:-2] + "=A"  # right length and alphabet, padding in the middle: not decodable
    _, state = _full_session(_settings())
    doc = state.to_dict()
    doc["ob"] = bad
    with pytest.raises(schemas.InvalidMessage) as info:
        joins.check_state(doc, SESSION, None)
    assert info.value.field == "state" and "owned-items filter" in info.value.reason


def test_apply_leaves_the_deleting_to_the_caller() -> None:
    """The session is deleted only after its join state was sent (a failed send would lose it otherwise)."""
    settings = _settings()
    _, state = _full_session(settings)
    store = InMemoryVisitorStore()
    store.put(SESSION, state)
    request, _, _ = joins.join_request(Event("e-login", "view", "k-0", T0 + 100_000, user_id=USER,
                                             session_id=SESSION))
    outcome = joins.apply(request, store, settings)
    assert outcome.delete == SESSION and outcome.send
    assert SESSION in store, "apply does not delete: the caller deletes after sending"
    joins.forget(store, outcome.delete)
    assert SESSION not in store
    assert joins.apply(request, store, settings) == joins.Outcome()
