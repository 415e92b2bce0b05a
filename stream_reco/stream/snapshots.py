"""Statistics snapshots on disk: a restarted worker serves again in seconds, whatever the events' retention.

Without them a worker rebuilt its shop-wide statistics by replaying the retained events topic on every start
(minutes for tens of millions of events), and replayed any poisoned event into them each time. Now the worker
writes, every `stats_snapshot_interval_s` and when it stops cleanly, its statistics with the offsets they cover
(`core/stats_snapshot.py`, one file, replaced atomically) to `data_dir/snapshots/<app_id>.stats`. At start it
loads the file, and the statistics feed and the per-partition rebuild read only what follows those offsets
(stream/recovery.py, stream/stats_feed.py).

Every worker's statistics are the whole shop's (the feed), so any worker's snapshot serves any worker of the
same app: workers sharing a data dir overwrite one file, and the newest is the one to start from. A snapshot
that cannot be read (corrupt, another format, another topic or partition count) is logged and ignored: the
worker then rebuilds from the topic as without one. The snapshot is taken under the worker's apply lock, so
the statistics and the offsets describe the same moment; writing the file happens off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from stream_reco.core import stats_snapshot
from stream_reco.core.recommender import Recommender
from stream_reco.core.stats_context import StatsContexts
from stream_reco.settings import Settings

log = logging.getLogger(__name__)


def snapshot_path(settings: Settings) -> Path:
    return settings.data_path / "snapshots" / f"{settings.app_id}.stats"


def _meta(settings: Settings) -> dict[str, object]:
    return {"events_topic": settings.events_topic, "partitions": settings.partitions}


def restore(settings: Settings, recommender: Recommender, counted: dict[int, int]) -> StatsContexts | None:
    """Load the latest snapshot into `recommender` and `counted`; its contexts, or None without a usable one."""
    path = snapshot_path(settings)
    if not path.exists():
        return None
    began = time.monotonic()
    try:
        snap = stats_snapshot.load(path.read_bytes(), settings, max_visitors=settings.stats_feed_max_visitors)
    except (OSError, stats_snapshot.SnapshotError) as exc:
        log.warning("statistics snapshot %s ignored (%s): statistics are rebuilt from the events topic", path, exc)
        return None
    wanted = _meta(settings)
    got = {k: snap.meta.get(k) for k in wanted}
    if got != wanted:
        log.warning("statistics snapshot %s ignored: it is of %s, this worker reads %s", path, got, wanted)
        return None
    snap.install(recommender)
    counted.update({int(p): int(o) for p, o in snap.offsets.items()})
    log.info("statistics restored from snapshot %s in %.2f s (offsets %s)", path, time.monotonic() - began,
             dict(sorted(counted.items())))
    return snap.contexts


def _write(path: Path, data: bytes) -> None:
    """Write and rename: a reader (or a crash) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failure (a full disk): the old snapshot stays, the partial one goes


async def save(settings: Settings, recommender: Recommender, contexts: StatsContexts, counted: dict[int, int],
               lock: asyncio.Lock) -> Path:
    """Snapshot the statistics with the offsets they cover (under `lock`: no event half applied), write it."""
    began = time.monotonic()
    async with lock:
        data = stats_snapshot.dump(recommender, contexts, dict(counted), {**_meta(settings), "created": time.time()})
    encoded = time.monotonic() - began
    path = snapshot_path(settings)
    await asyncio.to_thread(_write, path, data)
    log.info("statistics snapshot saved: %s (%d bytes) in %.2f s (%.2f s of it holding events back)", path, len(data),
             time.monotonic() - began, encoded)
    return path
