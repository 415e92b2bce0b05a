"""What the worker keeps between events: visitor states in the changelogged faust table (`TableStore`, seen by
one event through `EventView`) and its counters (`WorkerStats`).

Visitor state lives in a faust table with a changelog topic (`<app_id>-visitors-changelog`), so a restarted or
rebalanced worker recovers it. The table stores the core's compact `VisitorState.to_bytes()`. Writes go through
`Table.send_changelog` with the event's own partition, because in a batch faust's "current event" is not the
event whose state is being written.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from stream_reco.core.state import DecodedStates, VisitorState
from stream_reco.settings import MAX_CHANGELOG_MESSAGE_BYTES

log = logging.getLogger(__name__)

#: the largest visitor state written to the changelog (settings.py says why)
CHANGELOG_MAX_BYTES = MAX_CHANGELOG_MESSAGE_BYTES


class TableStore:
    """The core's `VisitorStore` backed by a faust table, so visitor state has a changelog.

    A state is written to the changelog partition Kafka's default partitioner gives its key, as a shop's
    producer keys events; the state of the visitor whose event is being applied goes to that event's own
    partition instead (`for_event`), because in a batch faust's "current event" is not the event whose state
    is being written, and a shop may partition its events otherwise.

    A state whose bytes exceed `max_state_bytes` is never written: the broker would refuse it (or drop it
    silently), and the table and its changelog would disagree from then on. The visitor keeps its previous
    state (the event's change to it is lost, logged and counted in `oversized`); the core caps the state so that
    this is the last line of defence, not the way states are bounded.
    """

    def __init__(self, table: Any, partitions: int, max_state_bytes: int = CHANGELOG_MAX_BYTES) -> None:
        self.table = table
        self.max_state_bytes = max_state_bytes
        #: states not written because they were too large
        self.oversized = 0
        self.partitions = list(range(partitions))
        self._partitioner = DefaultPartitioner()
        #: one decode per visitor and batch instead of one per read (state.DecodedStates)
        self.decoded = DecodedStates()

    def for_event(self, key: str, partition: int, only_partition: bool = False) -> EventView:
        """The table as the event of visitor `key` on `partition` sees it (`EventView`)."""
        return EventView(self, key, partition, only_partition)

    def get(self, key: str) -> VisitorState | None:
        kb = key.encode()
        raw = self.table.data.get(kb)
        return self.decoded.get(kb, raw) if raw else None

    def put(self, key: str, state: VisitorState, partition: int | None = None) -> None:
        """Write `key`'s state to the table and to the changelog `partition` (default: the key's own)."""
        kb = key.encode()
        value = state.to_bytes()
        if len(value) > self.max_state_bytes:
            self.oversized += 1
            self.decoded.forget(kb)  # the object was changed in place: the next read decodes the kept bytes
            log.error("visitor %r: state of %d bytes exceeds the %d-byte limit of a changelog message; not written, "
                      "the previous state is kept", key, len(value), self.max_state_bytes)
            return
        self.table.data[kb] = value
        self.decoded.remember(kb, value, state)
        self.table.send_changelog(self.partition_of(kb) if partition is None else partition, kb, value)

    def delete(self, key: str, partition: int | None = None) -> None:
        """Remove `key`, with a tombstone on the changelog `partition` (default: the key's own)."""
        kb = key.encode()
        self.decoded.forget(kb)
        if self.table.data.pop(kb, None) is not None:
            self.table.send_changelog(self.partition_of(kb) if partition is None else partition, kb, None)

    def partition_of(self, kb: bytes) -> int:
        """The partition Kafka's default partitioner gives the key `kb` (a shop's producer keys events so)."""
        return self._partitioner(kb, self.partitions, self.partitions)

    def __len__(self) -> int:
        return len(self.table.data)


class EventView:
    """The visitor table as one event (of visitor `key`, on events `partition`) sees it: a `VisitorStore` the
    worker hands the core with the event (`Recommender.observe(store=...)`), so the partition travels as an
    argument instead of being set on the shared table.

    `key`'s state is written to `partition`; other keys (a session joined to its user) to their own. With
    `only_partition`, other keys of other partitions read as absent: their state may be another worker's, and
    a login whose session lives elsewhere is joined over the joins topic instead (stream/joins.py)."""

    __slots__ = ("key", "only_partition", "partition", "table")

    def __init__(self, table: TableStore, key: str, partition: int, only_partition: bool = False) -> None:
        self.table = table
        self.key = key
        self.partition = partition
        self.only_partition = only_partition

    def get(self, key: str) -> VisitorState | None:
        if self.only_partition and key != self.key and self.table.partition_of(key.encode()) != self.partition:
            return None  # another partition's visitor (maybe another worker's): logins are forwarded instead
        return self.table.get(key)

    def put(self, key: str, state: VisitorState) -> None:
        self.table.put(key, state, self.partition if key == self.key else None)

    def delete(self, key: str) -> None:
        self.table.delete(key, self.partition if key == self.key else None)


class WorkerStats:
    """Counters a worker logs periodically and tests and benchmarks read."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        return {**self.counts, "uptime_s": round(time.monotonic() - self.started, 1)}
