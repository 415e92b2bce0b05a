"""Edge checks (stream/admission.py): the key and the clock, shared by the worker and the statistics rebuild."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import ConsumerRecord

from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.recommender import Recommender
from stream_reco.schemas import InvalidMessage
from stream_reco.settings import Settings
from stream_reco.stream import admission
from stream_reco.stream.recovery import StatsRecovery

NOW = 1_764_150_000_000  # in the past of any run: the wall clock never decides below
SKEW_S = 300.0


def ev(ts: int = NOW, user: str | None = "u-1", session: str | None = "s-1") -> Event:
    return Event(event_id="e", event_type="view", item_id="i", timestamp=ts, user_id=user, session_id=session)


def test_the_key_must_be_the_visitor() -> None:
    admission.check_event(ev(), b"u-1", NOW, SKEW_S)
    admission.check_event(ev(user=None), b"s-1", NOW, SKEW_S)  # anonymous: the session
    for key, event in [(b"s-1", ev()), (b"u-2", ev()), (None, ev()), (b"u-1", ev(user=None))]:
        with pytest.raises(InvalidMessage, match="Kafka key") as err:
            admission.check_event(event, key, NOW, SKEW_S)
        assert err.value.field == ("user_id" if event.user_id else "session_id")


def test_future_beyond_the_skew_is_refused_and_the_past_is_not() -> None:
    admission.check_event(ev(NOW + 300_000), b"u-1", NOW, SKEW_S)  # exactly the tolerated skew
    admission.check_event(ev(0), b"u-1", NOW, SKEW_S)  # old: a replayed log
    with pytest.raises(InvalidMessage, match="max_clock_skew_s") as err:
        admission.check_event(ev(NOW + 300_001), b"u-1", NOW, SKEW_S)
    assert err.value.field == "timestamp"
    admission.check_event(ev(4_102_444_800_000), b"u-1", NOW, 0)  # 0 turns the check off


def test_the_reference_is_the_earlier_of_wall_clock_and_record_time() -> None:
    assert admission.reference_ms(NOW - 5_000, now_ms=NOW) == NOW - 5_000  # a backlog judged as when it was new
    assert admission.reference_ms(NOW + 5_000, now_ms=NOW) == NOW  # a producer clock ahead does not help
    assert admission.reference_ms(None, now_ms=NOW) == NOW
    assert admission.reference_ms(-1, now_ms=NOW) == NOW  # no timestamp on the record


def test_a_catalog_key_must_be_the_item() -> None:
    item = CatalogItem(item_id="sku-1")
    admission.check_item(item, b"sku-1")
    for key in (b"sku-2", None):
        with pytest.raises(InvalidMessage, match="item_id") as err:
            admission.check_item(item, key)
        assert err.value.field == "item_id"


def record(key: bytes | None, ts: int, record_ts: int) -> ConsumerRecord:
    value = orjson.dumps({"event_id": "e", "event_type": "view", "item_id": "i", "timestamp": ts, "user_id": "u-1"})
    return ConsumerRecord("t", 0, 0, record_ts, 0, key, value, None, 0, len(value), [])


def test_the_statistics_rebuild_rejects_what_the_worker_rejects() -> None:
    settings = Settings.load(env={})
    recovery = StatsRecovery(settings, Recommender(settings), Recommender(settings).store)
    assert recovery._decode(record(b"u-1", NOW, NOW)) is not None
    assert recovery._decode(record(b"u-2", NOW, NOW)) is None, "mis-keyed"
    # an event an hour ahead of its record: refused, however late the rebuild runs
    assert recovery._decode(record(b"u-1", NOW + 3_600_000, NOW)) is None
