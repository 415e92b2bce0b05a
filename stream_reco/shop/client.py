"""The producer client a shop uses to send behaviour events and catalog items to stream_reco.

Why a client at all when any Kafka producer works (see docs/producing.md): it gets the three things a shop
most often gets wrong right by construction —

* every message is checked against the contract's schema *before* it is sent, and refused with
  `stream_reco.schemas.InvalidMessage` (reason and field) instead of ending up on the dead-letter topic;
* the key is the one the contract requires (events: ``user_id``, else ``session_id``; items: ``item_id``), so
  one visitor's events stay in order on one partition;
* the value is compact UTF-8 JSON (orjson) and the connection uses the same security settings as the rest of
  stream_reco (``settings.kafka_client_kwargs()``).

Two flavours with the same methods: `EventProducer` for asyncio code, `SyncEventProducer` for scripts and
web back ends without an event loop (it runs one in a background thread).

Sending is asynchronous in both: ``send_*`` returns once the message is queued, with a future of its
delivery; ``flush()`` waits for everything queued and raises `DeliveryError` if the broker refused any of it.
Delivery is at least once: a retried send may duplicate a message, which the worker drops by ``event_id``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata

from stream_reco import schemas
from stream_reco.core.events import CatalogItem, Event
from stream_reco.schemas import InvalidMessage
from stream_reco.settings import Settings

log = logging.getLogger(__name__)

CLIENT_ID = "stream-reco-producer"
# Batching tuned for a shop's bulk loads and steady streams alike: a few ms of linger fills batches under load
# and costs a visitor nothing noticeable; 256 KiB batches (aiokafka's default is 16 KiB) cut per-request
# overhead ~3x in replay. acks=all: an event acknowledged is an event that survives a broker failure.
# Override any of them with EventProducer(settings, linger_ms=..., max_batch_size=..., acks=...).
LINGER_MS = 5
BATCH_BYTES = 262_144
ACKS = "all"
# Room for the record batch framing around the largest accepted message.
REQUEST_OVERHEAD_BYTES = 16_384
SYNC_TIMEOUT_S = 60.0  # longest a blocking call of SyncEventProducer waits (start, flush, stop, wait=True)
SYNC_MAX_PENDING = 10_000  # messages a SyncEventProducer queues before send_* blocks (bounded memory)
PARTITION_CACHE_MAX = 100_000  # keys whose partition send_batched remembers (murmur2 in Python is slow)


class DeliveryError(RuntimeError):
    """The broker did not acknowledge some messages (after the producer's retries)."""

    def __init__(self, failed: int, first: BaseException) -> None:
        super().__init__(f"{failed} message(s) were not delivered; first error: {first!r}")
        self.failed = failed
        self.first = first


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message checked and encoded, ready for any Kafka producer: topic, key and value bytes."""

    topic: str
    key: bytes
    value: bytes


def _as_doc(message: Mapping[str, Any] | Event | CatalogItem) -> Any:
    if isinstance(message, Event | CatalogItem):
        return message.to_dict()
    return message


def _encode_checked(kind: str, doc: Any, max_bytes: int) -> bytes:
    schemas.validate(kind, doc)
    value = schemas.encode(doc)
    if len(value) > max_bytes:
        raise InvalidMessage(f"message is {len(value)} bytes, larger than the limit of {max_bytes} bytes "
                             "(max_message_bytes); the worker would dead-letter it")
    return value


def prepare_event(settings: Settings, event: Mapping[str, Any] | Event) -> Prepared:
    """Validate and encode one event for ``settings.events_topic``; raises `InvalidMessage`.

    >>> p = prepare_event(Settings(), {"event_id": "e-1", "event_type": "view", "session_id": "s-1",
    ...                                "item_id": "sku-1", "timestamp": 1764150000000})
    >>> p.topic, p.key
    ('shop.events', b's-1')
    """
    doc = _as_doc(event)
    value = _encode_checked("event", doc, settings.max_message_bytes)
    key = doc.get("user_id") or doc["session_id"]  # the schema guarantees one of them
    return Prepared(settings.events_topic, key.encode(), value)


def prepare_item(settings: Settings, item: Mapping[str, Any] | CatalogItem) -> Prepared:
    """Validate and encode one catalog item for ``settings.catalog_topic``; raises `InvalidMessage`."""
    doc = _as_doc(item)
    value = _encode_checked("item", doc, settings.max_message_bytes)
    return Prepared(settings.catalog_topic, doc["item_id"].encode(), value)


class EventProducer:
    """Send contract events and catalog items from asyncio code.

    >>> async def main() -> None:  # doctest: +SKIP
    ...     async with EventProducer(Settings.load()) as producer:
    ...         await producer.send_item({"item_id": "sku-1", "title": "Sofa", "category": ["Furniture"]})
    ...         delivered = await producer.send_event({
    ...             "event_id": "e-1", "event_type": "view", "user_id": "u-42", "item_id": "sku-1",
    ...             "timestamp": 1764150000000})
    ...         metadata = await delivered          # optional: wait for this one message's acknowledgement
    ...     # leaving the block flushes and stops; it raises DeliveryError if anything was not delivered
    """

    def __init__(self, settings: Settings | None = None, **producer_kwargs: Any) -> None:
        """`producer_kwargs` override the aiokafka producer's arguments (e.g. ``compression_type="gzip"``)."""
        self.settings = settings or Settings.load()
        self._extra = producer_kwargs
        self._producer: AIOKafkaProducer | None = None
        self._failed = 0
        self._first_failure: BaseException | None = None
        self.sent = 0
        # send_batched: open batches per (topic, partition) with their message counts; partitions per topic
        self._batches: dict[tuple[str, int], tuple[BatchBuilder, list[int]]] = {}
        self._partitions: dict[str, list[int]] = {}
        # the partitioner aiokafka's send() uses (murmur2 of the key, like the Java client's), so a key lands
        # on the same partition whichever way it is sent
        self._partitioner = DefaultPartitioner()
        self._partition_of: dict[tuple[str, bytes], int] = {}

    def _producer_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kw: dict[str, Any] = {
            **s.kafka_client_kwargs(),
            "client_id": CLIENT_ID,
            "acks": ACKS,
            "linger_ms": LINGER_MS,
            "max_batch_size": BATCH_BYTES,
            "max_request_size": max(s.max_message_bytes + REQUEST_OVERHEAD_BYTES, BATCH_BYTES),
        }
        kw.update(self._extra)
        return kw

    async def start(self) -> None:
        """Connect to the brokers (raises aiokafka's KafkaConnectionError when none answers)."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**self._producer_kwargs())
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # release what a half-started producer holds
            raise
        self._producer = producer

    async def stop(self) -> None:
        """Flush what is queued, then disconnect. Raises `DeliveryError` if something was not delivered."""
        producer = self._producer
        if producer is None:
            return
        try:
            await self.flush_batches()
            await producer.flush()
            await asyncio.sleep(0)  # let the delivery callbacks of the last batch run
        finally:
            self._producer = None
            await producer.stop()
        self._raise_failures()

    async def flush(self) -> None:
        """Wait until every queued message is acknowledged; raises `DeliveryError` if any failed."""
        await self.flush_batches()
        await self._require().flush()
        await asyncio.sleep(0)
        self._raise_failures()

    async def send_event(self, event: Mapping[str, Any] | Event) -> asyncio.Future[RecordMetadata]:
        """Validate, key and queue one event. Returns the future of its delivery (awaiting it is optional:
        `flush()` reports failures too). Raises `InvalidMessage` and sends nothing when it is invalid."""
        return await self.send_prepared(prepare_event(self.settings, event))

    async def send_item(self, item: Mapping[str, Any] | CatalogItem) -> asyncio.Future[RecordMetadata]:
        """Validate, key and queue one catalog item (an upsert); like `send_event`."""
        return await self.send_prepared(prepare_item(self.settings, item))

    async def send_prepared(self, message: Prepared) -> asyncio.Future[RecordMetadata]:
        """Queue a message `prepare_event` / `prepare_item` already checked (lets a caller validate once)."""
        fut = await self._require().send(message.topic, message.value, key=message.key)
        fut.add_done_callback(self._on_delivery)
        self.sent += 1
        return fut

    async def send_batched(self, message: Prepared) -> None:
        """Queue an already checked message into a whole batch per partition (bulk loads such as replay:
        about three times the throughput of `send_prepared`). A batch goes to the broker when it is full;
        `flush_batches()` (or `flush()`) sends the partial ones. Messages of one key keep their order as long
        as they all go through `send_batched` (call `flush_batches()` before switching to `send_prepared`)."""
        producer = self._require()
        partition = self._partition_of.get((message.topic, message.key))
        if partition is None:
            partitions = self._partitions.get(message.topic)
            if partitions is None:
                partitions = self._partitions[message.topic] = sorted(await producer.partitions_for(message.topic))
            partition = self._partitioner(message.key, partitions, partitions)
            if len(self._partition_of) >= PARTITION_CACHE_MAX:
                self._partition_of.clear()
            self._partition_of[(message.topic, message.key)] = partition
        slot = (message.topic, partition)
        entry = self._batches.get(slot)
        if entry is None:
            entry = self._batches[slot] = (producer.create_batch(), [0])
        if entry[0].append(key=message.key, value=message.value, timestamp=None) is None:  # full
            await self._send_batch(slot, entry)
            entry = self._batches[slot] = (producer.create_batch(), [0])
            if entry[0].append(key=message.key, value=message.value, timestamp=None) is None:
                raise RuntimeError("an empty batch refused a message")  # aiokafka always takes the first one
        entry[1][0] += 1
        self.sent += 1

    async def flush_batches(self) -> None:
        """Send the partial batches of `send_batched` now (without waiting for their acknowledgement)."""
        batches, self._batches = self._batches, {}
        for slot, entry in batches.items():
            if entry[1][0]:
                await self._send_batch(slot, entry)

    async def _send_batch(self, slot: tuple[str, int], entry: tuple[BatchBuilder, list[int]]) -> None:
        fut = await self._require().send_batch(entry[0], slot[0], partition=slot[1])
        count = entry[1][0]
        fut.add_done_callback(lambda f: self._on_delivery(f, count))

    @property
    def failed(self) -> int:
        """Messages the broker did not acknowledge so far."""
        return self._failed

    def _on_delivery(self, fut: asyncio.Future[Any], count: int = 1) -> None:
        exc = None if fut.cancelled() else fut.exception()  # retrieving it silences "never retrieved" warnings
        if fut.cancelled() or exc is not None:
            self._failed += count
            if self._first_failure is None:
                self._first_failure = exc or asyncio.CancelledError()
                log.error("delivery failed: %r", self._first_failure)

    def _raise_failures(self) -> None:
        if self._failed and self._first_failure is not None:
            failed, first = self._failed, self._first_failure
            self._failed, self._first_failure = 0, None
            raise DeliveryError(failed, first)

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the producer is not started; call `await producer.start()` or use `async with`")
        return self._producer

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


_FLUSH = object()  # queue marker: flush everything queued before it
_STOP = object()  # queue marker: the sender ends after sending everything queued before it


class SyncEventProducer:
    """The blocking twin of `EventProducer`, for code without asyncio (scripts, WSGI back ends).

    It runs an event loop in a daemon thread; messages go through one queue to one sender task, so they are
    produced in the order the calls were made (one visitor's events stay in order) even from several threads.
    Validation happens in the calling thread, so `InvalidMessage` is raised right at the call.

    >>> with SyncEventProducer(Settings.load()) as producer:  # doctest: +SKIP
    ...     producer.send_event({"event_id": "e-1", "event_type": "purchase", "user_id": "u-42",
    ...                          "item_id": "sku-1", "timestamp": 1764150000000,
    ...                          "context": {"quantity": 1, "price": 499.0}})
    ...     producer.flush()                   # or: producer.send_event(event, wait=True)
    """

    def __init__(self, settings: Settings | None = None, *, timeout_s: float = SYNC_TIMEOUT_S,
                 max_pending: int = SYNC_MAX_PENDING, **producer_kwargs: Any) -> None:
        self.settings = settings or Settings.load()
        self.timeout_s = timeout_s
        self._producer = EventProducer(self.settings, **producer_kwargs)
        self._pending = threading.BoundedSemaphore(max_pending)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue[tuple[Any, concurrent.futures.Future[Any]]] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the background loop and connect; raises what `EventProducer.start` raises."""
        with self._lock:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="stream-reco-producer", daemon=True)
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(self._start_async(), loop).result(self.timeout_s)
            except BaseException:
                self._shutdown_loop(loop, thread)
                raise
            self._loop, self._thread = loop, thread

    async def _start_async(self) -> None:
        await self._producer.start()
        self._queue = asyncio.Queue()
        self._sender = asyncio.create_task(self._send_loop())

    async def _send_loop(self) -> None:
        assert self._queue is not None
        while True:
            message, result = await self._queue.get()
            if message is _STOP:
                result.set_result(None)
                return
            try:
                if message is _FLUSH:
                    await self._producer.flush()
                    result.set_result(None)
                    continue
                delivery = await self._producer.send_prepared(message)
            except Exception as exc:  # reported to the caller through its future
                result.set_exception(exc)
                continue
            delivery.add_done_callback(lambda f, r=result: _copy_outcome(f, r))

    def _submit(self, message: Any) -> concurrent.futures.Future[Any]:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            raise RuntimeError("the producer is not started; call `producer.start()` or use `with`")
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if not self._pending.acquire(timeout=self.timeout_s):
            raise TimeoutError(f"the producer queue stayed full for {self.timeout_s} s")
        result.add_done_callback(lambda _: self._pending.release())
        loop.call_soon_threadsafe(queue.put_nowait, (message, result))
        return result

    def send_event(self, event: Mapping[str, Any] | Event, *, wait: bool = False) -> Any:
        """Validate (raising `InvalidMessage` here), key and queue one event. Returns a
        `concurrent.futures.Future` of its RecordMetadata, or with ``wait=True`` the RecordMetadata itself."""
        fut = self._submit(prepare_event(self.settings, event))
        return fut.result(self.timeout_s) if wait else fut

    def send_item(self, item: Mapping[str, Any] | CatalogItem, *, wait: bool = False) -> Any:
        """Validate, key and queue one catalog item; like `send_event`."""
        fut = self._submit(prepare_item(self.settings, item))
        return fut.result(self.timeout_s) if wait else fut

    def flush(self) -> None:
        """Block until everything queued so far is acknowledged; raises `DeliveryError` if any failed."""
        self._submit(_FLUSH).result(self.timeout_s)

    @property
    def failed(self) -> int:
        return self._producer.failed

    def stop(self) -> None:
        """Flush, disconnect and end the background thread. Raises `DeliveryError` if something failed."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            self._loop = self._thread = None
            try:
                asyncio.run_coroutine_threadsafe(self._stop_async(), loop).result(self.timeout_s)
            finally:
                self._shutdown_loop(loop, thread)

    close = stop

    async def _stop_async(self) -> None:
        if self._sender is not None and self._queue is not None:
            self._queue.put_nowait((_STOP, concurrent.futures.Future()))  # after everything already queued
            await self._sender
        await self._producer.stop()

    @staticmethod
    def _shutdown_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def __enter__(self) -> SyncEventProducer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _copy_outcome(source: asyncio.Future[Any], target: concurrent.futures.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())  # type: ignore[arg-type]
    else:
        target.set_result(source.result())
