"""The visitor TTL sweep: visitors without events for `visitor_ttl_days` are deleted (a tombstone on the
changelog), a bounded number per tick, so that the table does not grow with every visitor ever seen.

The clock is event time (the latest event time applied, stream/ingest.py), not the wall clock: a replayed
historical log keeps its visitors. Only visitors of partitions this worker owns are looked at (another worker
writes the others' changelogs), and nothing while faust recovers the table or a batch is being applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import faust

from stream_reco.core.state import VisitorState
from stream_reco.settings import Settings
from stream_reco.stream import faust_internals
from stream_reco.stream.pushed import PushedLists
from stream_reco.stream.store import TableStore, WorkerStats

#: how often the visitor TTL sweep runs, and how many visitors one run examines at most (a run decodes each,
#: ~30 us: a few tens of ms per run, so the event loop is never held for long; 1 M visitors take ~40 min)
SWEEP_INTERVAL_S = 2.5
SWEEP_KEYS_PER_TICK = 1_000
MS_PER_DAY = 86_400_000


class VisitorSweep:
    """The TTL sweep of one worker's visitor table (module docstring)."""

    def __init__(self, settings: Settings, app: faust.App, store: TableStore, pushed: PushedLists,
                 stats: WorkerStats, apply_lock: asyncio.Lock, applying: asyncio.Event, active_partitions: set[int],
                 stream_time_ms: Callable[[], int]) -> None:
        """`applying`: set once the worker applies events; `active_partitions`: its events partitions, kept
        current by the rebalance callbacks; `stream_time_ms`: the latest event time applied (the TTL's clock)."""
        self.settings = settings
        self.app = app
        self.store = store
        self.pushed = pushed
        self.stats = stats
        self.apply_lock = apply_lock
        self.applying = applying
        self.active_partitions = active_partitions
        self.stream_time_ms = stream_time_ms
        self._keys: list[bytes] = []  # the visitors the current sweep round has still to look at

    async def sweep_visitors(self) -> None:
        """Delete visitors without events for `visitor_ttl_days`, a bounded number per tick: a round takes the
        table's keys once, then looks at `SWEEP_KEYS_PER_TICK` of them per tick."""
        now_ms = self.stream_time_ms()
        if (self.settings.visitor_ttl_days <= 0 or not self.applying.is_set() or now_ms <= 0
                or self.apply_lock.locked() or faust_internals.table_recovery(self.app)[0]):
            return
        async with self.apply_lock:
            data = self.store.table.data
            if not self._keys:
                self._keys = list(data.keys())
            batch, self._keys = self._keys[:SWEEP_KEYS_PER_TICK], self._keys[SWEEP_KEYS_PER_TICK:]
            oldest = now_ms - self.settings.visitor_ttl_days * MS_PER_DAY
            for kb in batch:
                raw = data.get(kb)
                if not raw or self.store.partition_of(kb) not in self.active_partitions:
                    continue
                try:
                    last_seen = VisitorState.from_bytes(raw).last_seen
                except Exception:  # a state the core cannot read is not this sweep's business
                    continue
                if last_seen < oldest:
                    self.store.delete(kb.decode("utf-8", "replace"))
                    self.pushed.forget(kb.decode("utf-8", "replace"))
                    self.stats.counts["visitors_expired"] += 1
