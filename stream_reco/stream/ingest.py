"""The event path: a batch of the events topic in, visitor states and statistics updated, lists out.

    shop.events --(take_events: batch within coalesce_ms)--> decode+validate --bad--> reco.dead-letter
                                                              |
                                              Recommender.observe(event)   (visitor state -> table + changelog)
                                                              |
                        one Recommender.recommendation() per visitor in the batch --> reco.recommendations

Read top to bottom: `handle_batch` takes a batch; `_apply_batch` first applies, per message, what the consumer
skipped before it (`_recovered_before`, stream/recovery.py), then the message itself (`_handle_safely`,
`_handle_message`: admit, observe, forward a login's join, note the list to publish with `_trigger`); then
`_publish_all` publishes one list per visitor touched (`publish`). What goes wrong is confined to its message
(`failed`, `dead_letter`).

Design choices, and why:
- Events are consumed as raw bytes and validated here, so a malformed message becomes a dead-letter record
  instead of a crashed agent (faust's own deserialisation would raise inside the stream).
- `take_events` batches what arrived within `coalesce_ms`: a burst from one visitor yields one list that
  reflects all of it, and offsets are acknowledged only after the batch's lists were handed to the producer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from stream_reco import schemas
from stream_reco.core.events import Event, Recommendation, new_list_id
from stream_reco.core.recommender import Recommender
from stream_reco.settings import Settings
from stream_reco.stream import admission, faust_internals
from stream_reco.stream.metrics import WorkerMetrics
from stream_reco.stream.pushed import PushedLists
from stream_reco.stream.recovery import StatsRecovery
from stream_reco.stream.store import TableStore, WorkerStats

if TYPE_CHECKING:  # the join agent publishes through this module: imported here for the annotation only
    from stream_reco.stream.join_agent import JoinForwarder

log = logging.getLogger(__name__)


def raw_bytes(value: Any) -> bytes | bytearray | None:
    """A consumed value as bytes (faust may hand a memoryview), None kept for a tombstone."""
    return value if value is None or isinstance(value, bytes | bytearray) else bytes(value)


def list_time(recommender: Recommender, trigger: Event) -> int:
    """The time a list triggered by `trigger` is computed at: the trigger's own time, but never past the shop
    clock, since the core applied the trigger no later than that (a clamped event, core/recommender.py)."""
    clock = recommender.clock
    return int(trigger.timestamp if clock is None else min(trigger.timestamp, clock))


def list_time_now(recommender: Recommender) -> int:
    """The time a list with no trigger (a pull, a stock refresh) is computed at: the shop clock (the latest time
    an event was applied at), so it reflects the same session as the pushed one; the wall clock before any event."""
    return int(recommender.clock) if recommender.clock is not None else int(time.time() * 1000)


class Ingest:
    """Applies batches of the events topic to the core and publishes the lists (module docstring)."""

    def __init__(self, settings: Settings, recommender: Recommender, store: TableStore, recovery: StatsRecovery,
                 forwarder: JoinForwarder, stats: WorkerStats, pushed: PushedLists,
                 recommendations_topic: Any, dead_letter_topic: Any, apply_lock: asyncio.Lock,
                 metrics: WorkerMetrics | None = None) -> None:
        """`apply_lock`: one step at a time applies events (a batch, a repair of skipped ones, a join record).
        `metrics`: the worker's Prometheus metrics (stream/metrics.py); a private set when not given."""
        self.settings = settings
        self.recommender = recommender
        self.store = store
        self.recovery = recovery
        self.forwarder = forwarder
        self.stats = stats
        self.pushed = pushed
        self.recommendations_topic = recommendations_topic
        self.dead_letter_topic = dead_letter_topic
        self.apply_lock = apply_lock
        self.metrics = metrics or WorkerMetrics()
        #: the latest event time applied (never beyond the wall clock plus `max_clock_skew_s`): the visitor TTL's
        #: clock (stream/sweep.py)
        self.stream_time_ms = 0

    async def handle_batch(self, batch: Sequence[Any]) -> None:
        """Apply every event of the batch in order, then publish one list per visitor touched."""
        async with self.apply_lock:
            await self._apply_batch(batch)

    async def _apply_batch(self, batch: Sequence[Any]) -> None:
        triggers: dict[str, Event] = {}
        replayed: dict[str, tuple[Event, Recommendation]] = {}  # lists of redelivered events (recovery.py)
        for fevent in batch:
            msg = fevent.message
            # messages the consumer skipped (faust can, around a rebalance) come first, each as its own batch,
            # as if it had been delivered (stream/recovery.py)
            for missed in await self._recovered_before(msg):
                await self.apply_alone(missed)
            # None for a tombstone: decode_event says so, instead of "not valid JSON"
            await self._handle_safely(msg, raw_bytes(fevent.value), triggers, replayed)
        await self._publish_all(triggers, replayed)

    async def apply_alone(self, msg: Any) -> None:
        """One message outside the stream (skipped by the consumer), handled and published on its own."""
        triggers: dict[str, Event] = {}
        replayed: dict[str, tuple[Event, Recommendation]] = {}
        await self._handle_safely(msg, msg.value, triggers, replayed)
        await self._publish_all(triggers, replayed)

    async def _recovered_before(self, msg: Any) -> list[Any]:
        """`StatsRecovery.before`, with its failure confined: a rebuild that cannot finish (a broker read error)
        is logged and counted, and the message is handled as usual; escaping, it would make faust acknowledge the
        whole batch unapplied (see `_handle_safely`)."""
        try:
            return await self.recovery.before(msg.partition, msg.offset)
        except Exception:
            self.stats.counts["recovery_failed"] += 1
            log.exception("statistics recovery before %s[%d]@%d failed; handling the message without it",
                          msg.topic, msg.partition, msg.offset)
            return []

    async def _handle_safely(self, msg: Any, raw: bytes | bytearray | None, triggers: dict[str, Event],
                             replayed: dict[str, tuple[Event, Recommendation]]) -> None:
        """`_handle_message`, with a failure confined to its message: dead-lettered with the exception as the
        reason, and the batch goes on. An exception escaping the batch would be worse: faust's `take_events`
        acknowledges the whole batch in `finally`, so the failing event and every other list of the batch would
        be lost without a trace."""
        try:
            await self._handle_message(msg, raw, triggers, replayed)
        except Exception as exc:
            await self.failed(msg, raw, exc)

    async def _handle_message(self, msg: Any, raw: bytes | bytearray | None, triggers: dict[str, Event],
                              replayed: dict[str, tuple[Event, Recommendation]]) -> None:
        """One message of the events topic: an event, or a bad message (dead-lettered with the reason).

        Beyond the schema, an event must be keyed by its visitor and not come from the future
        (stream/admission.py). Login-join records live on an internal topic: here they are bad messages."""
        settings = self.settings
        reference = admission.reference_ms(faust_internals.record_time_ms(msg))
        try:
            event = admission.admit(raw, msg.key, reference, settings)
        except schemas.InvalidMessage as exc:
            await self.dead_letter(msg, raw, exc)  # type: ignore[arg-type]
            return
        # the core applies the event at most at this ceiling (admission already refused anything beyond it)
        ceiling = admission.ceiling_ms(reference, settings.max_clock_skew_s)
        # the statistics feed or a snapshot may have counted this event's statistics before the worker took the
        # partition (stream/stats_feed.py): then only the visitor's state learns it
        learn_stats = self.recovery.learns(msg.partition, msg.offset)
        # in a recovery region (after a crash) a shadow applies redelivered events (stream/recovery.py)
        held, shadow = self.recovery.region_of(msg.partition, msg.offset)
        if held and shadow is None:  # held, no shadow: statistics only, and the list from the table's state
            if learn_stats:
                self.recovery.learn_held(event, ceiling)
            self.stats.counts["region_relisted"] += 1
            self._trigger(event.visitor_key, event, None, triggers, replayed)
            return
        recommender = shadow or self.recommender
        forward = self.forwarder.needs_join_request(event, msg.partition, recommender)
        # the table as this event sees it: its visitor's state goes to its partition, other partitions' visitors
        # are invisible (a login's session there is joined over the joins topic); a shadow has its own store
        view = self.store.for_event(event.visitor_key, msg.partition, only_partition=True) if shadow is None else None
        observed = recommender.observe(event, now_ms=ceiling, learn_stats=learn_stats, store=view)
        if not observed:
            self.stats.counts["duplicates"] += 1
            return
        if recommender.last_applied_ms is not None:  # the time it was applied at: the visitor TTL's clock
            self.stream_time_ms = max(self.stream_time_ms, recommender.last_applied_ms)
        if forward:
            await self.forwarder.join_across(event, msg.partition, local=shadow is None)
        self.stats.counts["events"] += 1
        self.metrics.event(event.event_type)
        self._trigger(event.visitor_key, event, shadow, triggers, replayed)

    @staticmethod
    def _trigger(key: str, trigger: Event, shadow: Recommender | None, triggers: dict[str, Event],
                 replayed: dict[str, tuple[Event, Recommendation]]) -> None:
        """Note the visitor's list to publish after the batch; a shadow's is computed now, at this log position.
        An impression triggers none (`Event.is_shown`): the shop just showed a list, and a new one per impression
        would replace it on screen; an earlier trigger of the batch for the visitor still stands."""
        if trigger.is_shown:
            return
        if shadow is None:
            triggers[key] = trigger
            replayed.pop(key, None)
        else:
            replayed[key] = (trigger, shadow.recommendation(key, now_ms=list_time(shadow, trigger), trigger=trigger))
            triggers.pop(key, None)

    async def _publish_all(self, triggers: dict[str, Event], replayed: dict[str, tuple[Event, Recommendation]]
                           ) -> None:
        """Publish the batch's lists; one that fails is logged and counted (its event was applied: nothing to
        dead-letter), and the others are still published."""
        lists: list[tuple[str, Event, Recommendation | None]] = [
            *((key, event, rec) for key, (event, rec) in replayed.items()),
            *((key, event, None) for key, event in triggers.items())]
        for key, event, rec in lists:
            try:
                await self.publish(key, event, rec)
            except Exception:
                self.stats.counts["failed_lists"] += 1
                log.exception("the list of visitor %r (trigger %s) failed; not published", key, event.event_id)

    async def publish(self, key: str, trigger: Event, rec: Recommendation | None = None) -> None:
        """Publish the visitor's list (`rec`, or the live core's now), triggered by `trigger`."""
        if rec is None:
            rec = self.recommender.recommendation(key, now_ms=list_time(self.recommender, trigger), trigger=trigger)
        await self._send(key, rec, trigger.timestamp)
        self.stats.counts["lists"] += 1

    async def refresh(self, key: str) -> None:
        """Publish the visitor's list again with no trigger (stream/refresh.py: an item in it was withdrawn)."""
        rec = self.recommender.recommendation(key, now_ms=list_time_now(self.recommender))
        await self._send(key, rec, None)

    async def drop_withdrawn(self, key: str, document: bytes) -> bytes | None:
        """Publish the visitor's current list (`document`, as published) again without the items the catalogue
        now marks unavailable, as a new list with no trigger (stream/refresh.py: the fast first pass); the bytes
        published, or None when no item needed dropping."""
        doc = orjson.loads(document)
        catalog = self.recommender.catalog
        kept = [i for i in doc["items"] if (item := catalog.get(i["item_id"])) is None or item.recommendable]
        if len(kept) == len(doc["items"]):
            return None
        doc.update(items=kept, list_id=new_list_id(), trigger_event_id=None)
        doc.pop("latency_ms", None)
        return await self._send_document(key, doc, [i["item_id"] for i in kept], None)

    async def _send(self, key: str, rec: Recommendation, trigger_ms: float | None) -> None:
        await self._send_document(key, rec.to_dict(), [item.item_id for item in rec.items], trigger_ms)

    async def _send_document(self, key: str, doc: dict[str, Any], items: list[str], trigger_ms: float | None
                             ) -> bytes:
        """Stamp the publication time (and the latency from the trigger's timestamp), send, and remember which
        items the visitor's current list shows (stream/pushed.py)."""
        now_ms = time.time() * 1000.0
        doc["generated_at"] = int(now_ms)
        if trigger_ms is not None:
            doc["latency_ms"] = round(max(now_ms - trigger_ms, 0.0), 3)
        value = orjson.dumps(doc)
        await self.recommendations_topic.send(key=key.encode(), value=value)
        if trigger_ms is not None:
            self.metrics.list_published(doc["latency_ms"] / 1000.0)
        self.pushed.record(key, items, value)
        return value

    async def failed(self, msg: Any, raw: bytes | bytearray | None, exc: Exception) -> None:
        """A message whose handling raised: logged, counted and dead-lettered with the exception as the reason."""
        # the core may have changed a cached state object before it raised: read states afresh from the table
        self.store.decoded.clear()
        self.stats.counts["failed_events"] += 1
        log.exception("applying %s[%d]@%d failed", msg.topic, msg.partition, msg.offset)
        await self.dead_letter(msg, None if raw is None else bytes(raw),
                               f"the worker failed to apply this message: {exc!r}")

    async def dead_letter(self, msg: Any, raw: bytes | None, exc: schemas.InvalidMessage | str) -> None:
        """A bad message to the dead-letter topic, with where it came from and why (any consumed topic)."""
        record = schemas.dead_letter_record(
            raw, exc, topic=msg.topic, partition=msg.partition, offset=msg.offset,
            received_at=int(time.time() * 1000),
        )
        await self.dead_letter_topic.send(key=msg.key, value=orjson.dumps(record))
        self.stats.counts["dead_letter"] += 1
        self.metrics.dead_letter(msg.topic)
        log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, record["error"])
