"""Which visitors' current pushed lists show an item (stream/pushed.py), and the stock refresh that republishes
them when the item is withdrawn (stream/refresh.py)."""

from __future__ import annotations

import asyncio

from stream_reco.stream.pushed import PushedLists
from stream_reco.stream.refresh import CHUNK, StockRefresh
from stream_reco.stream.store import WorkerStats


def test_a_new_list_replaces_the_old_one_in_the_reverse_index() -> None:
    pushed = PushedLists(cap=10)
    pushed.record("u-1", ["a", "b"])
    pushed.record("u-2", ["b", "c"])
    assert pushed.showing("b") == {"u-1", "u-2"}
    pushed.record("u-1", ["c"])
    assert (pushed.showing("a"), pushed.showing("b"), pushed.showing("c")) == (set(), {"u-2"}, {"u-1", "u-2"})
    pushed.forget("u-2")
    assert pushed.showing("b") == set() and pushed.showing("c") == {"u-1"} and len(pushed) == 1
    assert "a" not in pushed._showing, "an item nobody shows leaves no empty entry behind"


def test_the_index_is_bounded_least_recently_published_first() -> None:
    pushed = PushedLists(cap=2)
    pushed.record("u-1", ["a"])
    pushed.record("u-2", ["a"])
    pushed.record("u-1", ["a"])  # republished: now the most recent
    pushed.record("u-3", ["a"])
    assert len(pushed) == 2 and pushed.showing("a") == {"u-1", "u-3"}
    off = PushedLists(cap=0)
    off.record("u-1", ["a"])
    assert len(off) == 0 and off.showing("a") == set()


def run_refresh(pushed: PushedLists, owned: set[str], fail: set[str] = frozenset()) -> tuple[list[str], int, WorkerStats]:  # noqa: E501
    published: list[str] = []
    lock = asyncio.Lock()
    stats = WorkerStats()

    async def publish(visitor: str) -> None:
        assert lock.locked(), "lists are computed under the apply lock"
        if visitor in fail:
            raise RuntimeError("boom")
        published.append(visitor)
        pushed.record(visitor, ["fresh"])

    refresh = StockRefresh(pushed, publish, lambda v: v in owned, lock, stats)
    refresh.withdrawn("sold-out")
    done = asyncio.run(refresh.refresh_pending())
    return published, done, stats


def test_only_the_lists_showing_the_item_on_owned_partitions_are_republished() -> None:
    pushed = PushedLists(cap=100)
    pushed.record("mine-1", ["sold-out", "x"])
    pushed.record("mine-2", ["x"])
    pushed.record("theirs", ["sold-out"])
    published, done, stats = run_refresh(pushed, owned={"mine-1", "mine-2"})
    assert published == ["mine-1"] and done == 1 and stats.counts["lists_refreshed"] == 1
    assert pushed.showing("sold-out") == set(), "the other worker's visitor is forgotten here, not republished"


def test_a_failing_list_does_not_stop_the_refresh_and_chunks_cover_everyone() -> None:
    pushed = PushedLists(cap=1000)
    visitors = [f"u-{i:03d}" for i in range(CHUNK * 2 + 5)]
    for v in visitors:
        pushed.record(v, ["sold-out"])
    published, done, stats = run_refresh(pushed, owned=set(visitors), fail={"u-007"})
    assert sorted(published) == [v for v in visitors if v != "u-007"] and done == len(visitors) - 1
    assert stats.counts["failed_lists"] == 1
