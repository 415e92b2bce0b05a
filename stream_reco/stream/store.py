"""What the worker keeps between events: visitor states in the changelogged faust table (`TableStore`), the
latest list per visitor for the HTTP view (`LatestLists`) and its counters (`WorkerStats`).

Visitor state lives in a faust table with a changelog topic (`<app_id>-visitors-changelog`), so a restarted or
rebalanced worker recovers it. The table stores the core's compact `VisitorState.to_bytes()`. Writes go through
`Table.send_changelog` with the event's own partition, because in a batch faust's "current event" is not the
event whose state is being written.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from stream_reco.core.state import DecodedStates, VisitorState
from stream_reco.settings import MAX_CHANGELOG_MESSAGE_BYTES

log = logging.getLogger(__name__)

#: the largest visitor state written to the changelog (settings.py says why)
CHANGELOG_MAX_BYTES = MAX_CHANGELOG_MESSAGE_BYTES
#: latest published lists kept for the HTTP view, least recently used dropped first (~1-2 kB each, so tens
#: of MB at the cap); a visitor past the cap is answered from its recovered state, as after a restart
LATEST_LISTS_CAP = 20_000


class TableStore:
    """The core's `VisitorStore` backed by a faust table, so visitor state has a changelog.

    `partition` is set by the agent to the partition of the event being applied: state for that event's
    visitor (`current_key`) is written to the matching changelog partition. Other keys (a session joined to a
    user on login) are placed with Kafka's default partitioner, as a shop's producer would key them.

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
        self.partition: int | None = None
        self.current_key: str | None = None
        #: while the core applies an event, only visitors of the event's partition are visible (stream/joins.py)
        self.only_partition: int | None = None
        self._partitioner = DefaultPartitioner()
        #: one decode per visitor and batch instead of one per read (state.DecodedStates)
        self.decoded = DecodedStates()

    def get(self, key: str) -> VisitorState | None:
        if self.only_partition is not None and key != self.current_key and self._partitioner(
                key.encode(), self.partitions, self.partitions) != self.only_partition:
            return None  # another partition's visitor (maybe another worker's): logins are forwarded instead
        kb = key.encode()
        raw = self.table.data.get(kb)
        return self.decoded.get(kb, raw) if raw else None

    def put(self, key: str, state: VisitorState) -> None:
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
        self.table.send_changelog(self._partition_for(key, kb), kb, value)

    def delete(self, key: str) -> None:
        kb = key.encode()
        self.decoded.forget(kb)
        if self.table.data.pop(kb, None) is not None:
            self.table.send_changelog(self._partition_for(key, kb), kb, None)

    def partition_of(self, kb: bytes) -> int:
        """The partition Kafka's default partitioner gives the key `kb` (a shop's producer keys events so)."""
        return self._partitioner(kb, self.partitions, self.partitions)

    def _partition_for(self, key: str, kb: bytes) -> int:
        if key == self.current_key and self.partition is not None:
            return self.partition
        return self.partition_of(kb)

    def __len__(self) -> int:
        return len(self.table.data)


class WorkerStats:
    """Counters a worker logs periodically and tests and benchmarks read."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        return {**self.counts, "uptime_s": round(time.monotonic() - self.started, 1)}


class LatestLists(OrderedDict[str, bytes]):
    """The latest list published per visitor, for the HTTP view: at most `cap` (default `LATEST_LISTS_CAP`),
    least recently used dropped."""

    def __init__(self, cap: int | None = None) -> None:
        super().__init__()
        self.cap = LATEST_LISTS_CAP if cap is None else cap

    def get(self, key: str, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        value = super().get(key, default)
        if value is not None:
            self.move_to_end(key)
        return value

    def __setitem__(self, key: str, value: bytes) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)
