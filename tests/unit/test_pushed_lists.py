"""Which visitors' current pushed lists show an item (stream/pushed.py), and the stock refresh that republishes
them when the item is withdrawn (stream/refresh.py)."""

from __future__ import annotations

import asyncio

from stream_reco.stream.pushed import PushedLists
from stream_reco.stream.refresh import DROP_CHUNK, StockRefresh
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


class Fake:
    """The worker side of a refresh: full recomputations and fast drops, recorded."""

    def __init__(self, pushed: PushedLists, lock: asyncio.Lock, fail: set[str] = frozenset()) -> None:
        self.pushed, self.lock, self.fail = pushed, lock, fail
        self.computed: list[str] = []
        self.dropped: list[str] = []

    async def publish(self, visitor: str) -> None:
        assert self.lock.locked(), "lists are computed under the apply lock"
        if visitor in self.fail:
            raise RuntimeError("boom")
        self.computed.append(visitor)
        self.pushed.record(visitor, ["fresh"], b"full")

    async def drop(self, visitor: str, document: bytes) -> bytes | None:
        assert self.lock.locked()
        if visitor in self.fail:
            raise RuntimeError("boom")
        self.dropped.append(visitor)
        kept = [i for i in (self.pushed.items_of(visitor) or ()) if i != "sold-out"]
        value = b"shorter:" + visitor.encode()
        self.pushed.record(visitor, kept, value)
        return value


def refresher(pushed: PushedLists, owned: set[str], fail: set[str] = frozenset()) -> tuple[StockRefresh, Fake]:
    lock = asyncio.Lock()
    fake = Fake(pushed, lock, fail)
    return StockRefresh(pushed, fake.publish, fake.drop, lambda v: v in owned, lock, WorkerStats()), fake


def test_only_the_lists_showing_the_item_on_owned_partitions_are_republished_at_once_then_refilled() -> None:
    pushed = PushedLists(cap=100)
    pushed.record("mine-1", ["sold-out", "x"], b"doc-1")
    pushed.record("mine-2", ["x"], b"doc-2")
    pushed.record("theirs", ["sold-out"], b"doc-3")
    pushed.record("learned-without-bytes", ["sold-out"])
    refresh, fake = refresher(pushed, owned={"mine-1", "mine-2", "learned-without-bytes"})
    refresh.withdrawn("sold-out")
    assert asyncio.run(refresh.refresh_pending()) == 2
    assert fake.dropped == ["mine-1"] and fake.computed == ["learned-without-bytes"]
    assert pushed.showing("sold-out") == set(), "the other worker's visitor is forgotten here, not republished"
    assert refresh.stats.counts["lists_refreshed"] == 2
    assert asyncio.run(refresh.refill_some()) == 1, "the shortened list is computed afresh afterwards"
    assert fake.computed == ["learned-without-bytes", "mine-1"] and not refresh.refill


def test_a_list_replaced_by_the_visitors_own_next_list_is_not_recomputed() -> None:
    pushed = PushedLists(cap=100)
    pushed.record("u-1", ["sold-out", "x"], b"doc")
    refresh, fake = refresher(pushed, owned={"u-1"})
    refresh.withdrawn("sold-out")
    asyncio.run(refresh.refresh_pending())
    pushed.record("u-1", ["y"], b"after the visitor's next event")
    assert asyncio.run(refresh.refill_some()) == 0 and fake.computed == []


def test_a_failing_list_does_not_stop_the_refresh_and_chunks_cover_everyone() -> None:
    pushed = PushedLists(cap=5000)
    visitors = [f"u-{i:04d}" for i in range(DROP_CHUNK * 2 + 5)]
    for v in visitors:
        pushed.record(v, ["sold-out"], b"doc")
    refresh, fake = refresher(pushed, owned=set(visitors), fail={"u-0007"})
    refresh.withdrawn("sold-out")
    done = asyncio.run(refresh.refresh_pending())
    assert sorted(fake.dropped) == [v for v in visitors if v != "u-0007"] and done == len(visitors) - 1
    assert refresh.stats.counts["failed_lists"] == 1
