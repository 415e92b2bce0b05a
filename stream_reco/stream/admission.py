"""Edge checks a schema-valid message must also pass before it may change any state.

The schema says what one message looks like; these checks relate it to where and when it arrived:

- **Key.** An event's Kafka key must be its visitor (`user_id`, else `session_id`), a catalog message's key
  its `item_id`. Kafka places a record by its key and the worker writes the visitor's state to the changelog
  partition of the record, so a mis-keyed event would write one visitor's state into another partition's
  changelog (and a catalog record keyed by another item survives compaction beside, or instead of, the right
  one). A tombstone (no value) carries its item in the key and needs no check.
- **Clock.** An event stamped later than the reference time plus `max_clock_skew_s` is from the future: one
  such event would age every shop-wide statistic at once (issue 11). The reference is the wall clock, or the
  Kafka record's own timestamp when that is earlier: the record timestamp is the producer's send time, so a
  worker that reads a backlog (or rebuilds its statistics from the log, stream/recovery.py) decides as it did
  when the event was new. (Not exactly: a record whose producer's clock ran ahead of the worker's by more than
  the skew is judged by the wall clock live and by its own, later, time in a rebuild; the core's ceiling still
  keeps such an event to its fair share.) Old timestamps are never rejected here: `stream-reco replay` sends historical
  logs with their original times, and the core orders late events itself.

Both the live worker (stream/ingest.py) and the statistics rebuild (stream/recovery.py) apply these checks, so a
message the worker dead-lettered is never learned by a rebuild either.
"""

from __future__ import annotations

import time

from stream_reco.core.events import CatalogItem, Event
from stream_reco.schemas import InvalidMessage, decode_event
from stream_reco.settings import Settings

MS_PER_SECOND = 1000


def reference_ms(record_timestamp_ms: float | None, now_ms: float | None = None) -> int:
    """The time an event is judged against: the wall clock, or the record's timestamp when earlier.

    `record_timestamp_ms` is the Kafka record timestamp in ms (None or <= 0 when unknown)."""
    wall = time.time() * MS_PER_SECOND if now_ms is None else now_ms
    if record_timestamp_ms is not None and record_timestamp_ms > 0:
        return int(min(wall, record_timestamp_ms))
    return int(wall)


def ceiling_ms(reference: int, max_clock_skew_s: float) -> int:
    """The latest time the core may apply an event at: the reference plus the tolerated skew (the core's
    `Recommender.observe(now_ms=...)`). With the check off (skew 0) events are still applied no later than the
    reference: a clamp, not a rejection."""
    return reference + int(max(max_clock_skew_s, 0.0) * MS_PER_SECOND)


def check_event(event: Event, key: bytes | None, reference: int, max_clock_skew_s: float) -> None:
    """Raise `InvalidMessage` when `event` may not be applied: wrong key, or timestamp from the future."""
    want = event.visitor_key
    if key is None or key != want.encode():
        shown = "none" if key is None else repr(key.decode("utf-8", "replace"))
        raise InvalidMessage(
            f"the Kafka key ({shown}) is not the event's visitor ({want!r}: user_id, else session_id); "
            "events must be keyed by their visitor", "user_id" if event.user_id else "session_id")
    if max_clock_skew_s > 0 and event.timestamp > reference + max_clock_skew_s * MS_PER_SECOND:
        raise InvalidMessage(
            f"timestamp {event.timestamp} is in the future: more than the tolerated clock skew (max_clock_skew_s = "
            f"{max_clock_skew_s:g} s) after the message arrived", "timestamp")


def admit(raw: bytes | bytearray | None, key: bytes | None, reference: int, settings: Settings) -> Event:
    """The event in `raw` if a worker may apply it (the schema, then `check_event`), else `InvalidMessage`: the one
    decision the live worker and the statistics rebuild share."""
    event = decode_event(raw, max_bytes=settings.max_message_bytes)
    check_event(event, key, reference, settings.max_clock_skew_s)
    return event


def check_item(item: CatalogItem, key: bytes | None) -> None:
    """Raise `InvalidMessage` when a catalog message's key is not its `item_id`."""
    if key is None or key != item.item_id.encode():
        shown = "none" if key is None else repr(key.decode("utf-8", "replace"))
        raise InvalidMessage(f"the Kafka key ({shown}) is not the item's item_id ({item.item_id!r}); "
                             "catalog messages must be keyed by their item", "item_id")
