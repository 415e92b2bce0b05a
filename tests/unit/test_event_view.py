"""The visitor table as one event sees it (stream/store.py `EventView`): the event's partition travels as an
argument, never as a field set on the shared table."""

from __future__ import annotations

from stream_reco.core.events import Event
from stream_reco.core.recommender import Recommender
from stream_reco.core.state import VisitorState
from stream_reco.settings import Settings
from stream_reco.stream.store import TableStore

from .test_worker_trust import FakeTable


def keys_on_other_partitions(store: TableStore, partition: int, n: int) -> list[str]:
    return [k for k in (f"v-{i}" for i in range(200)) if store.partition_of(k.encode()) != partition][:n]


def test_the_events_visitor_is_written_to_the_events_partition_and_others_to_their_own() -> None:
    table = FakeTable()
    store = TableStore(table, partitions=6)
    user, other = keys_on_other_partitions(store, 0, 2)  # the shop put user's event on partition 0 all the same
    view = store.for_event(user, 0)
    view.put(user, VisitorState())
    view.put(other, VisitorState())
    view.delete(user)
    assert [(p, k) for p, k, _ in table.changelog] == [
        (0, user.encode()), (store.partition_of(other.encode()), other.encode()), (0, user.encode())]
    store.put(other, VisitorState())  # outside any event: the key's own partition
    assert table.changelog[-1][0] == store.partition_of(other.encode())


def test_only_partition_hides_other_partitions_visitors_but_not_the_events_own() -> None:
    store = TableStore(FakeTable(), partitions=6)
    user, elsewhere = keys_on_other_partitions(store, 0, 2)
    store.put(user, VisitorState())
    store.put(elsewhere, VisitorState())
    view = store.for_event(user, 0, only_partition=True)
    assert view.get(user) is not None, "the event's own visitor, whatever partition the shop chose"
    assert view.get(elsewhere) is None, "another partition's visitor may be another worker's"
    assert store.for_event(user, 0).get(elsewhere) is not None
    assert store.get(elsewhere) is not None


def test_a_login_whose_session_is_on_another_partition_is_not_joined_by_the_core_through_the_view() -> None:
    store = TableStore(FakeTable(), partitions=6)
    rec = Recommender(Settings(), store=store)
    user = "u-1"
    p_user = store.partition_of(user.encode())
    session = next(s for s in (f"s-{i}" for i in range(200)) if store.partition_of(s.encode()) != p_user)
    same = next(s for s in (f"t-{i}" for i in range(200)) if store.partition_of(s.encode()) == p_user)
    for sid in (session, same):
        rec.observe(Event(event_id=f"e-{sid}", event_type="view", item_id="i-1", timestamp=1_000, session_id=sid),
                    store=store.for_event(sid, store.partition_of(sid.encode()), only_partition=True))
    login = Event(event_id="e-login", event_type="view", item_id="i-2", timestamp=2_000, user_id=user,
                  session_id=session)
    rec.observe(login, store=store.for_event(user, p_user, only_partition=True))
    assert store.get(session) is not None, "the other partition's session stays for the joins topic"
    login_same = Event(event_id="e-login-2", event_type="view", item_id="i-3", timestamp=3_000, user_id=user,
                       session_id=same)
    rec.observe(login_same, store=store.for_event(user, p_user, only_partition=True))
    assert store.get(same) is None, "a session on the event's partition is joined at once and deleted"
    joined = store.get(user)
    assert joined is not None and joined.has_seen_event(f"e-{same}") and not joined.has_seen_event(f"e-{session}")
