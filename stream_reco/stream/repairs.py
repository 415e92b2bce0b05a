"""The worker's repairs of faust-streaming 0.15.3, behind one seam: faust timers that notice when faust skips
or wedges and apply, re-read or restart (docs/operations.md). What faust internals they read, they read through
stream/faust_internals.py, the only file that touches them.

- `check_events_applied` (every `skip_check_s`): events the consumer committed without delivering them are
  applied now (`StatsRecovery.acknowledged_unseen`, stream/recovery.py), then `watch_delivery` looks whether a
  partition's waiting events stop reaching the worker (`DeliveryWatch`): re-read once, then restart.
- `watch_recovery` (every `RECOVERY_WATCH_S`): faust's table recovery stuck (`StallWatch`): restart.
- `restart`: exit with `EXIT_RESTART`, for the process supervisor to start the worker again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from faust.types import TP

from stream_reco.exit_codes import EXIT_RESTART
from stream_reco.settings import Settings
from stream_reco.stream import faust_internals
from stream_reco.stream.log_reader import DELIVERY_QUERY_TIMEOUT_S, LogEnds
from stream_reco.stream.recovery import StatsRecovery
from stream_reco.stream.store import WorkerStats

log = logging.getLogger(__name__)

#: how often the worker checks whether faust's table recovery is stuck (`recovery_stall_s` decides)
RECOVERY_WATCH_S = 5.0


def restart(reason: str) -> None:
    """Exit with `EXIT_RESTART` so that the process supervisor (systemd, Kubernetes, docker-compose
    `restart:`) starts this worker again and counts the restart: the cure for a wedged faust, and safe,
    because state is in the changelogs and offsets cover only applied events (docs/operations.md).

    The exit is immediate (`os._exit`), as the in-place re-execution it replaces was: a wedged faust may
    never finish a graceful shutdown, and nothing uncommitted needs one."""
    log.error("%s: restarting this worker (exit status %d: its supervisor starts it again)", reason, EXIT_RESTART)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_RESTART)


class Repairs:
    """The faust repair timers of one worker (module docstring)."""

    def __init__(self, settings: Settings, app: faust.App, recovery: StatsRecovery, log_ends: LogEnds,
                 stats: WorkerStats, apply_lock: asyncio.Lock, applying: asyncio.Event, active_partitions: set[int],
                 apply_alone: Callable[[Any], Awaitable[None]]) -> None:
        """`applying` is set once the worker applies events (delivery checks start then); `active_partitions` is
        the worker's set of events partitions, kept current by the rebalance callbacks; `apply_alone` handles
        and publishes one message the consumer skipped (stream/ingest.py)."""
        self.settings = settings
        self.app = app
        self.recovery = recovery
        self.log_ends = log_ends
        self.stats = stats
        self.apply_lock = apply_lock
        self.applying = applying
        self.active_partitions = active_partitions
        self.apply_alone = apply_alone
        self.stall_watch = StallWatch(settings.recovery_stall_s)
        self.delivery_watch = DeliveryWatch(settings.delivery_stall_s)

    async def check_events_applied(self) -> None:
        """Apply events the consumer committed without delivering them, and re-read (or restart) when waiting
        events stop arriving: faust-streaming can skip or wedge (stream/recovery.py, docs/operations.md)."""
        if not self.applying.is_set() or faust_internals.table_recovery(self.app)[0]:  # not yet / table not whole
            self.delivery_watch.reset()
            return
        committed = faust_internals.committed_offsets(self.app)  # faust's record of commits
        topic = self.settings.events_topic
        offsets = {tp.partition: off for tp, off in committed.items()
                   if tp.topic == topic and off is not None and tp.partition in self.active_partitions}
        if offsets:
            async with self.apply_lock:
                for missed in await self.recovery.acknowledged_unseen(offsets):
                    await self.apply_alone(missed)
        await self.watch_delivery(committed)

    async def watch_delivery(self, committed: dict[Any, int | None]) -> None:
        """Rewind, then restart, when a partition's waiting events stop reaching the worker (`DeliveryWatch`)."""
        topic = self.settings.events_topic
        tps = [TP(topic, p) for p in sorted(self.active_partitions)]
        if not tps or self.apply_lock.locked():
            # busy applying (a long statistics rebuild holds the lock for minutes): that is not a stall
            self.delivery_watch.reset()
            return
        try:
            end = await asyncio.wait_for(self.log_ends([tp.partition for tp in tps]),
                                         timeout=DELIVERY_QUERY_TIMEOUT_S)
        except Exception as exc:  # a broker hiccup: look again at the next tick
            log.warning("delivery check: log end offsets unavailable (%r)", exc)
            return
        expected = self.recovery.next_offset
        position = {tp.partition: expected.get(tp.partition, committed.get(tp) or 0) for tp in tps}
        rewind, stuck = self.delivery_watch.check(time.monotonic(), position, end)
        for partition in rewind:
            log.warning("partition %d: no event reached the worker for %.0f s although the log holds offsets %d-%d; "
                        "re-reading from offset %d", partition, self.settings.delivery_stall_s, position[partition],
                        end[partition] - 1, position[partition])
            self.stats.counts["rewinds"] += 1
            await self.app.consumer.seek(TP(topic, partition), position[partition])
        if stuck:
            restart(f"partitions {stuck} still receive no events after a re-read")

    async def watch_recovery(self) -> None:
        """Restart this process when faust's table recovery is stuck (`StallWatch`)."""
        in_recovery, remaining = faust_internals.table_recovery(self.app)
        if not self.stall_watch.stalled(time.monotonic(), in_recovery, remaining):
            return
        restart(f"table recovery made no progress for {self.settings.recovery_stall_s:.0f} s "
                f"({remaining} changelog records remaining)")


class StallWatch:
    """Decides when faust's table recovery is stuck, so that the worker restarts itself.

    faust-streaming 0.15.3 can wait forever for changelog records it never fetches ("No event received for
    active tp ... since recovery start", faust-streaming/faust#155; seen in test_reliability_scale.py after a
    third worker joined: the worker that kept two of its partitions never finished recovering them and never
    processed another event). A fresh process recovers the same changelogs fine (the kill -9 tests), and a
    restart is safe: offsets were committed only for applied events, and the changelogs hold the state. So a
    worker whose recovery has made no progress (same records remaining) for `stall_s` restarts."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._remaining: int | None = None
        self._since = 0.0

    def stalled(self, now: float, in_recovery: bool, remaining: int) -> bool:
        """Whether recovery has been stuck at `remaining` records for `stall_s` seconds by `now`."""
        if not in_recovery or remaining <= 0 or self.stall_s <= 0:
            self._remaining = None
            return False
        if remaining != self._remaining:
            self._remaining, self._since = remaining, now
            return False
        return now - self._since >= self.stall_s


class DeliveryWatch:
    """Finds partitions whose events stop reaching the worker although the log holds more of them.

    faust-streaming 0.15.3 wedges in two more ways seen in the reliability tests: right after a rebalance the
    consumer hands a partition's next messages to the stream (its read offset moves on) but they never reach
    the agent and are never acknowledged, so nothing fetches them again until the next rebalance
    (test_reliability_scale.py); and a freshly started worker, assigned a partition with 1,200 events waiting,
    receives none of them for minutes (test_reliability_crash.py, about one run in five). A partition is
    *pending* when its log ends beyond the worker's position (the next offset it expects); pending without
    progress for `grace_s` is a stall. The first time, the worker seeks the consumer back to its position
    (an event that was only slow then arrives twice; the second is a duplicate that changes nothing); if that
    does not help within another `grace_s`, the partition is *stuck* and the worker restarts itself."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        #: per partition: the position last seen, since when, and whether it was rewound at that position
        self._since: dict[int, tuple[int, float, bool]] = {}

    def reset(self) -> None:
        """Forget every clock: the worker was busy, so time without progress so far proves nothing."""
        self._since.clear()

    def check(self, now: float, position: Mapping[int, int], end: Mapping[int, int]) -> tuple[list[int], list[int]]:
        """(partitions to rewind to `position[p]`, partitions still stalled after a rewind)."""
        rewind: list[int] = []
        stuck: list[int] = []
        for partition in sorted(set(self._since) | set(position)):
            at = position.get(partition)
            log_end = end.get(partition)
            if self.grace_s <= 0 or at is None or log_end is None or log_end <= at:
                self._since.pop(partition, None)
                continue
            seen = self._since.get(partition)
            if seen is None or seen[0] != at:
                self._since[partition] = (at, now, False)
            elif now - seen[1] >= self.grace_s:
                (stuck if seen[2] else rewind).append(partition)
                self._since[partition] = (at, now, True)
        return rewind, stuck
