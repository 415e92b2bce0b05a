"""Statistics snapshots: exact round trips (also of learning after the load), rejected bad bytes, caps at load.

Run as a script (`PYTHONPATH=. .venv/bin/python tests/unit/test_stats_snapshot.py --bench`) it measures dump
and load of statistics learned from ~1M synthetic events over 100k items (the numbers quoted in
core/stats_snapshot.py); the unit tests themselves time nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import struct
import sys

import pytest

from stream_reco.core import stats_snapshot as snapshot
from stream_reco.core.events import Event
from stream_reco.core.recommender import PRIORS_UNTIL_KEY, Recommender
from stream_reco.core.stats_context import StatsContext, StatsContexts, event_hash
from stream_reco.core.stats_snapshot import FORMAT_VERSION, Snapshot, SnapshotError
from stream_reco.settings import Settings
from tests.unit.core_fixtures import T0, ev, item_id, make_artifact, make_catalog
from tests.unit.test_stats_context import assert_same_stats, random_stream, settings_for_stats

META = {"events_topic": "shop.events", "partitions": 8, "created_ms": T0}
OFFSETS = {0: 120, 3: 7, 7: 0}


def own(e: Event) -> bool:
    """This worker's partitions (by visitor group, so a login and its session share one)."""
    return int(e.visitor_key[1:].split("-")[0]) % 3 == 0


def learn(rec: Recommender, contexts: StatsContexts, events: list[Event]) -> None:
    for e in events:
        if own(e):
            rec.observe(e)
        else:
            rec.learn_stats(e, None, contexts)


def with_priors(settings: Settings, until: int | None = T0 - 1) -> Recommender:
    """A recommender whose model has popularity and co-visitation priors (which a snapshot must not hold)."""
    rec = Recommender(settings, make_catalog(settings))
    artifact = dataclasses.replace(
        make_artifact(),
        popularity={item_id(0, 0): 9.0, item_id(1, 1): 4.0},
        covis={item_id(0, 0): [(item_id(0, 1), 7.0)]},
        training={} if until is None else {PRIORS_UNTIL_KEY: until},
    )
    rec.load_model(artifact)
    return rec


def assert_same_contexts(a: StatsContexts, b: StatsContexts) -> None:
    ia, ib = list(a.items()), list(b.items())
    assert [k for k, _ in ia] == [k for k, _ in ib]  # LRU order too
    for (_, x), (_, y) in zip(ia, ib, strict=True):
        assert x.history == y.history
        assert (x.session_start, x.last_seen, x.n_events, x.session_id, x.has_user) == (
            y.session_start, y.last_seen, y.n_events, y.session_id, y.has_user)
        assert x.event_ids == y.event_ids
    assert (a.n_learned, a.n_duplicates, a.n_evicted) == (b.n_learned, b.n_duplicates, b.n_evicted)


def test_round_trip_restores_everything_and_learning_continues_identically() -> None:
    settings = settings_for_stats()
    events = random_stream(11, n=5000)
    never_stopped, contexts = with_priors(settings), StatsContexts(settings)
    learn(never_stopped, contexts, events[:3000])

    data = snapshot.dump(never_stopped, contexts, OFFSETS, META)
    snap = snapshot.load(data, settings)
    assert isinstance(snap, Snapshot)
    assert snap.offsets == OFFSETS and snap.meta == META and snap.clock == never_stopped.clock
    assert not snap.covis.prior and not snap.popularity.prior.scores  # the model's part stays out
    assert_same_contexts(contexts, snap.contexts)

    restarted = with_priors(settings)
    # the visitor states live in the worker's table (its changelog), not in the snapshot
    restarted.store = copy.deepcopy(never_stopped.store)
    snap.install(restarted)
    assert_same_stats(never_stopped, restarted)
    assert restarted.covis.prior == never_stopped.covis.prior  # the priors came from the model
    now = never_stopped.clock
    assert now is not None
    for it in (item_id(0, 0), item_id(0, 1), item_id(5, 3)):
        assert restarted.covis.top_neighbours(it, 10) == never_stopped.covis.top_neighbours(it, 10)
        assert restarted.popularity.score(it, now) == never_stopped.popularity.score(it, now)
    assert restarted.popularity.top("", 20, now) == never_stopped.popularity.top("", 20, now)

    restarted_contexts = snap.contexts
    learn(never_stopped, contexts, events[3000:])
    learn(restarted, restarted_contexts, events[3000:])
    assert_same_stats(never_stopped, restarted)
    assert_same_contexts(contexts, restarted_contexts)
    # and a second generation: the snapshot of the restarted worker is byte-identical
    assert snapshot.dump(restarted, restarted_contexts, OFFSETS, META) == snapshot.dump(
        never_stopped, contexts, OFFSETS, META)


def test_undated_model_priors_are_dated_at_the_snapshot_clock() -> None:
    """A model without `last_event_ms` dates its popularity priors at the latest event seen (as a hot swap)."""
    settings = settings_for_stats()
    rec, contexts = with_priors(settings, until=None), StatsContexts(settings)
    learn(rec, contexts, random_stream(15, n=300))
    snap = snapshot.load(snapshot.dump(rec, contexts, {}, {}), settings)
    restarted = with_priors(settings, until=None)
    assert restarted.popularity._pending_prior
    snap.install(restarted)
    assert not restarted.popularity._pending_prior and restarted.popularity.prior.ref == rec.popularity.clock


def test_empty_statistics_round_trip() -> None:
    settings = settings_for_stats()
    rec = Recommender(settings, make_catalog(settings))
    snap = snapshot.load(snapshot.dump(rec, StatsContexts(settings), {}, None), settings)
    assert snap.offsets == {} and snap.meta == {} and snap.clock is None
    assert not snap.covis.pairs and not snap.popularity.stream.scores and len(snap.sessions) == 0
    assert len(snap.contexts) == 0 and snap.popularity.stream.ref is None
    fresh = Recommender(settings, make_catalog(settings))
    snap.install(fresh)
    assert fresh.clock is None
    contexts = StatsContexts(settings)
    for e in random_stream(12, n=500):
        rec.learn_stats(e, None, contexts)
        fresh.learn_stats(e, None, snap.contexts)
    assert_same_stats(rec, fresh)


def test_odd_strings_round_trip() -> None:
    """Ids with the separator byte, non-ASCII and empty strings take the length-prefixed path."""
    settings = settings_for_stats()
    rec = Recommender(settings, make_catalog(settings))
    contexts = StatsContexts(settings)
    for n, item in enumerate(["a\x00b", "é€🙂", "", item_id(0, 1), "a\x00b", "z"]):
        rec.learn_stats(ev("view", item, T0 + n, session="séss\x00ion", page_category="Kü/chen"), None, contexts)
    snap = snapshot.load(snapshot.dump(rec, contexts, {1: 2}, {"name": "ü"}), settings)
    assert snap.covis.pairs == rec.covis.pairs and snap.popularity.stream.scores == rec.popularity.stream.scores
    assert snap.meta == {"name": "ü"}
    assert_same_contexts(contexts, snap.contexts)


@pytest.fixture(scope="module")
def data() -> bytes:
    settings = settings_for_stats()
    rec = Recommender(settings, make_catalog(settings))
    contexts = StatsContexts(settings)
    learn(rec, contexts, random_stream(13, n=600))
    return snapshot.dump(rec, contexts, OFFSETS, META)


def test_corrupt_data_is_rejected(data: bytes) -> None:
    settings = settings_for_stats()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    with pytest.raises(SnapshotError, match="checksum"):
        snapshot.load(bytes(flipped), settings)


@pytest.mark.parametrize("cut", [0, 5, 23, 24, 100, -1])
def test_truncated_data_is_rejected(data: bytes, cut: int) -> None:
    with pytest.raises(SnapshotError, match="truncated"):
        snapshot.load(data[:cut], settings_for_stats())


def test_other_version_and_foreign_bytes_are_rejected(data: bytes) -> None:
    settings = settings_for_stats()
    other = data[:8] + struct.pack("<I", FORMAT_VERSION + 1) + data[12:]
    with pytest.raises(SnapshotError, match=f"version {FORMAT_VERSION + 1}"):
        snapshot.load(other, settings)
    with pytest.raises(SnapshotError, match="not a statistics snapshot"):
        snapshot.load(b"PK\x03\x04" + data[4:], settings)
    with pytest.raises(ValueError):  # SnapshotError is a ValueError
        snapshot.load(data + b"\x00", settings)


def test_inconsistent_body_with_valid_checksum_is_rejected(data: bytes) -> None:
    """A wrong writer (not a bit flip) still gives a clear error, not an IndexError deep in the load."""
    import zlib

    import orjson

    body = data[snapshot._PREFIX.size :]
    (head_len,) = struct.unpack_from("<I", body)
    header = orjson.loads(body[4 : 4 + head_len])
    header["n_strings"] = 1
    head = orjson.dumps(header)
    new_body = struct.pack("<I", len(head)) + head + body[4 + head_len :]
    bad = snapshot._PREFIX.pack(snapshot.MAGIC, FORMAT_VERSION, zlib.crc32(new_body), len(new_body)) + new_body
    with pytest.raises(SnapshotError):
        snapshot.load(bad, settings_for_stats())


def test_caps_come_from_the_settings_at_load() -> None:
    settings = settings_for_stats()
    rec = Recommender(settings, make_catalog(settings))
    contexts = StatsContexts(settings)
    for e in random_stream(14, n=3000):
        rec.learn_stats(e, None, contexts)
    data = snapshot.dump(rec, contexts, {}, {})
    small = settings.replace(stats_max_items=10, sknn_max_sessions=5, covis_window=2, dedup_window=3,
                             popularity_max_categories=4)
    snap = snapshot.load(data, small, max_visitors=7)
    assert len(snap.covis.pairs) <= 11 and len(snap.popularity.stream.scores) <= 11
    assert len(snap.popularity.stream.tops) <= 4 and "" in snap.popularity.stream.tops
    assert len(snap.sessions) == 5 and len(snap.contexts) == 7
    assert [k for k, _ in snap.contexts.items()] == [k for k, _ in contexts.items()][-7:]  # the most recent
    assert all(len(c.history) <= 2 and len(c.event_ids) <= 3 for _, c in snap.contexts.items())
    assert list(snap.covis.pairs) == list(rec.covis.pairs)[-10:]  # the most recently co-visited


# --- the one-off measurement quoted in core/stats_snapshot.py (not a test) ---


def _bench(n_events: int = 1_000_000, n_items: int = 100_000, n_visitors: int = 150_000) -> None:
    import time
    import tracemalloc

    import numpy as np

    settings = Settings(weight_sknn=1.0)
    rec = Recommender(settings)  # empty catalogue: categories come from the events' pages
    contexts = StatsContexts(settings)
    rng = np.random.default_rng(1)
    leaf_size = 200
    visitors = rng.zipf(1.3, n_events) % n_visitors
    theme = rng.integers(0, n_items // leaf_size, n_visitors)
    same_leaf = rng.random(n_events) < 0.8
    local = rng.integers(0, leaf_size, n_events)
    anywhere = (rng.zipf(1.2, n_events) * 7919) % n_items
    kinds = rng.choice(4, n_events, p=[0.85, 0.08, 0.03, 0.04])
    types = ("view", "add_to_cart", "purchase", "dismiss")
    ts = T0 + np.cumsum(rng.integers(0, 200, n_events))
    events = []
    for n in range(n_events):
        v = int(visitors[n])
        item = int(theme[v]) * leaf_size + int(local[n]) if same_leaf[n] else int(anywhere[n])
        leaf = item // leaf_size
        events.append(Event(f"e{n}", types[kinds[n]], f"item-{item:06d}", int(ts[n]), session_id=f"visitor-{v}",
                            page_category=f"Dept {leaf % 7}/Aisle {leaf % 50}/Leaf {leaf}"))
    t = time.perf_counter()
    for e in events:
        rec.learn_stats(e, None, contexts)
    learn_s = time.perf_counter() - t
    print(f"learn_stats: {n_events} events in {learn_s:.1f} s ({learn_s / n_events * 1e6:.1f} us/event); "
          f"covis items {len(rec.covis.pairs)} pairs {rec.covis.n_pairs}, popularity items "
          f"{len(rec.popularity.stream.scores)} categories {len(rec.popularity.stream.tops)}, sessions "
          f"{len(rec.sessions)}, contexts {len(contexts)}")
    t = time.perf_counter()
    data = snapshot.dump(rec, contexts, {p: 10_000 * p for p in range(12)}, META)
    dump_s = time.perf_counter() - t
    t = time.perf_counter()
    snap = snapshot.load(data, settings)
    load_s = time.perf_counter() - t
    print(f"dump {dump_s:.2f} s, load {load_s:.2f} s, size {len(data) / 1e6:.1f} MB")
    fresh = Recommender(settings)
    snap.install(fresh)
    assert fresh.covis.pairs == rec.covis.pairs and fresh.popularity.stream.scores == rec.popularity.stream.scores

    # memory per context, LRU slot included, measured on fresh string objects (as decoded from Kafka)
    tracemalloc.start()
    probe = StatsContexts(settings, max_visitors=10_000)
    before = tracemalloc.get_traced_memory()[0]
    for v in range(10_000):
        key = f"{v:08d}-aaaa-bbbb-cccc-dddddddddddd"
        ctx = StatsContext()
        for k in range(70):
            e = Event(f"{v:08d}-{k:04d}-0000-0000-000000000000", "view", f"item-{(v * 70 + k) % n_items:030d}",
                      T0 + k, session_id=f"{v:08d}-aaaa-bbbb-cccc-dddddddddddd")
            probe.apply(ctx, e, event_hash(e.event_id))
        probe.put(key, ctx)
    per = (tracemalloc.get_traced_memory()[0] - before) / 10_000
    tracemalloc.stop()
    strings = sum(c.approx_bytes() - c.approx_bytes(False) for _, c in probe.items()) / len(probe)
    print(f"memory per full context (36-char ids, 10 history entries, 64 event ids, LRU slot): {per:.0f} bytes "
          f"(of which item-id strings {strings:.0f}, shared with the catalogue for the items it knows)")


if __name__ == "__main__" and "--bench" in sys.argv:
    _bench()
