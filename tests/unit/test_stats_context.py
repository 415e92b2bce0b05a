"""The statistics feed's path: `Recommender.learn_stats` with `StatsContexts` learns exactly what `observe` learns.

Two recommenders over the same catalogue see the same interleaved stream of many visitors (views, carts,
purchases, dismissals, duplicates, logins joining anonymous sessions, session gaps and new session ids, late and
far-future events, items the catalogue does not know); one observes, the other only learns statistics. Their
co-visitation, popularity, session index and shop clock must be identical, not merely close.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from stream_reco.core.events import Event
from stream_reco.core.recommender import PRIORS_UNTIL_KEY, Recommender
from stream_reco.core.stats import SessionIndex
from stream_reco.core.stats_context import StatsContext, StatsContexts, event_hash
from stream_reco.settings import Settings
from tests.unit.core_fixtures import (
    DAY,
    HOUR,
    ITEMS_PER_LEAF,
    LEAVES,
    MINUTE,
    T0,
    ev,
    item_id,
    make_artifact,
    make_catalog,
    make_settings,
)


def settings_for_stats(**overrides: object) -> Settings:
    """Session-kNN on (its index is only kept when it has a weight) and a small co-visitation cap."""
    return make_settings(**{"weight_sknn": 0.5, "covis_neighbours": 4, **overrides})


def make_pair(settings: Settings, priors_until: int | None = None) -> tuple[Recommender, Recommender]:
    recs = []
    for _ in range(2):
        rec = Recommender(settings, make_catalog(settings))
        if priors_until is not None:
            artifact = dataclasses.replace(
                make_artifact(), training={PRIORS_UNTIL_KEY: priors_until}, popularity={item_id(0, 0): 3.0}
            )
            rec.load_model(artifact)
        recs.append(rec)
    return recs[0], recs[1]


def random_stream(seed: int, n: int = 4000, groups: int = 40) -> list[Event]:
    """An interleaved shop stream; visitor `g` is anonymous session `s{g}-{k}` until it logs in as `u{g}`."""
    rng = random.Random(seed)
    now = T0
    session_no = [0] * groups
    logged_in = [False] * groups
    out: list[Event] = []
    sent: list[Event] = []
    for _ in range(n):
        g = rng.randrange(groups)
        now += rng.randrange(0, 20_000)
        r = rng.random()
        if r < 0.03 and sent:  # a redelivered duplicate
            out.append(rng.choice(sent[-50:]))
            continue
        if r < 0.05:  # a long gap for this visitor's next event: a new session by time
            now += 45 * MINUTE
        elif r < 0.07:  # a new session id
            session_no[g] += 1
        session = f"s{g}-{session_no[g]}"
        user = None
        if logged_in[g]:
            user = f"u{g}"
        elif rng.random() < 0.02:
            logged_in[g] = True  # this event is the login: user and the anonymous session together
            user = f"u{g}"
        kind = rng.choices(["view", "add_to_cart", "purchase", "dismiss"], [80, 10, 4, 6])[0]
        leaf = rng.randrange(len(LEAVES)) if rng.random() < 0.7 else g % len(LEAVES)
        item = item_id(leaf, rng.randrange(ITEMS_PER_LEAF)) if rng.random() < 0.95 else f"unknown-{rng.randrange(9)}"
        page = "/".join(LEAVES[leaf]) if rng.random() < 0.5 else None
        ts = now
        if rng.random() < 0.03:
            ts = now - rng.randrange(1, 3 * HOUR)  # late
        elif rng.random() < 0.005:
            ts = now + 365 * DAY  # a producer with a broken clock
        e = ev(kind, item, ts, user=user, session=session, page_category=page)
        out.append(e)
        sent.append(e)
    return out


def assert_same_stats(a: Recommender, b: Recommender) -> None:
    assert a.covis.pairs == b.covis.pairs
    assert list(a.covis.pairs) == list(b.covis.pairs)  # eviction order too
    sa, sb = a.popularity.stream, b.popularity.stream
    assert sa.ref == sb.ref and a.popularity.clock == b.popularity.clock
    assert sa.scores == sb.scores
    assert {c: t.order for c, t in sa.tops.items()} == {c: t.order for c, t in sb.tops.items()}
    now = a.clock or T0
    for cat in sa.categories():
        assert a.popularity.top(cat, 50, now) == b.popularity.top(cat, 50, now)
    assert_same_sessions(a.sessions, b.sessions)
    assert a.clock == b.clock


def assert_same_sessions(a: SessionIndex, b: SessionIndex) -> None:
    assert a.ids == b.ids
    assert list(a.keys.items()) == list(b.keys.items())
    assert {s: list(i) for s, i in a.items.items()} == {s: list(i) for s, i in b.items.items()}
    assert a.by_item == b.by_item
    assert a._next == b._next


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("with_now", [False, True])
def test_learn_stats_matches_observe_exactly(seed: int, with_now: bool) -> None:
    settings = settings_for_stats()
    observed, learned = make_pair(settings)
    contexts = StatsContexts(settings)
    n_dup_observe = n_dup_learn = 0
    for e in random_stream(seed):
        # a worker's wall clock (plus skew): a minute past ordinary events, so a far-future one is applied now
        far = e.timestamp > T0 + 300 * DAY
        now_ms = ((observed.clock or T0) + MINUTE if far else e.timestamp + MINUTE) if with_now else None
        n_dup_observe += not observed.observe(e, now_ms=now_ms)
        n_dup_learn += not learned.learn_stats(e, now_ms, contexts)
    assert n_dup_observe == n_dup_learn == contexts.n_duplicates > 0
    assert observed.covis.n_pairs > 100 and len(observed.sessions) > 50
    assert_same_stats(observed, learned)
    # every context mirrors its visitor's state
    assert set(dict(contexts.items())) == set(observed.store.states)  # type: ignore[attr-defined]
    for key, ctx in contexts.items():
        state = observed.visitor(key)
        assert state is not None
        assert ctx.history == state.history[-settings.covis_window :]
        assert (ctx.session_start, ctx.last_seen) == (state.session_start, state.last_seen)
        assert ctx.n_events == state.n_events
        assert ctx.session_id == state.session_id and ctx.has_user == (state.user_id is not None)
        assert list(ctx.event_ids) == [event_hash(i) for i in state.event_ids]


def test_learn_stats_matches_observe_with_priors_until() -> None:
    """Events the model's priors already count are not counted again, but still go into the session index."""
    settings = settings_for_stats()
    events = random_stream(4, n=1500)
    until = events[700].timestamp
    observed, learned = make_pair(settings, priors_until=until)
    contexts = StatsContexts(settings)
    for e in events:
        observed.observe(e)
        learned.learn_stats(e, None, contexts)
    assert_same_stats(observed, learned)
    assert observed.popularity.prior.scores  # the priors are there, and the same on both sides
    assert observed.popularity.top("", 5, until) == learned.popularity.top("", 5, until)


def test_login_joins_the_anonymous_context() -> None:
    settings = settings_for_stats()
    observed, learned = make_pair(settings)
    contexts = StatsContexts(settings)
    a, b, c = item_id(0, 1), item_id(0, 2), item_id(3, 1)
    events = [
        ev("view", c, T0, user="u1", session="old"),  # the user, earlier, in another session
        ev("view", a, T0 + 10 * MINUTE, session="anon"),
        ev("add_to_cart", b, T0 + 11 * MINUTE, session="anon"),
        ev("view", c, T0 + 12 * MINUTE, user="u1", session="anon"),  # login
        ev("view", a, T0 + 13 * MINUTE, user="u1", session="anon"),
    ]
    for e in events:
        assert observed.observe(e)
        assert learned.learn_stats(e, None, contexts)
    assert_same_stats(observed, learned)
    assert "anon" not in contexts and "u1" in contexts
    ctx = contexts.get("u1")
    assert ctx is not None and ctx.session_start == T0 + 10 * MINUTE and ctx.n_events == 5
    assert learned.covis.pairs[b][c] > 0  # the login's item co-visited with the anonymous session's
    # a redelivered anonymous event after the join is still a duplicate for the user
    assert not observed.observe(events[3]) and not learned.learn_stats(events[3], None, contexts)


def test_duplicate_is_ignored_and_does_not_move_the_clock() -> None:
    settings = settings_for_stats()
    rec = Recommender(settings, make_catalog(settings))
    contexts = StatsContexts(settings)
    e = ev("view", item_id(0, 1), T0)
    assert rec.learn_stats(e, None, contexts)
    before = dict(rec.popularity.stream.scores)
    late_copy = dataclasses.replace(e, timestamp=T0 + DAY)
    assert not rec.learn_stats(late_copy, None, contexts)
    assert rec.popularity.stream.scores == before and rec.clock == T0
    assert contexts.n_learned == 1 and contexts.n_duplicates == 1


def test_observe_without_stats_applies_state_only() -> None:
    settings = settings_for_stats()
    full, state_only = make_pair(settings)
    for e in random_stream(5, n=800):
        full.observe(e)
        state_only.observe(e, learn_stats=False)
    assert not state_only.covis.pairs and not state_only.popularity.stream.scores and len(state_only.sessions) == 0
    assert full.covis.pairs and full.popularity.stream.scores and len(full.sessions) > 0
    assert state_only.clock == full.clock and state_only.n_observed == full.n_observed
    states_full = full.store.states  # type: ignore[attr-defined]
    states_only = state_only.store.states  # type: ignore[attr-defined]
    assert states_full.keys() == states_only.keys()
    for key, state in states_full.items():
        assert states_only[key].to_dict() == state.to_dict()


def test_own_partitions_plus_feed_equal_one_worker_seeing_everything() -> None:
    """A worker observes its visitors with statistics and learns the others' from the feed: the shop's stats."""
    settings = settings_for_stats()
    everything, worker = make_pair(settings)
    contexts = StatsContexts(settings)

    def own(e: Event) -> bool:  # partition by visitor group, so a login and its session share a worker
        return int(e.visitor_key[1:].split("-")[0]) % 2 == 0

    for e in random_stream(6, n=3000):
        everything.observe(e)
        if own(e):
            worker.observe(e)
        else:
            worker.learn_stats(e, None, contexts)
    assert_same_stats(everything, worker)


def test_lru_bound_holds() -> None:
    settings = settings_for_stats(covis_window=3, dedup_window=4)
    rec = Recommender(settings, make_catalog(settings))
    contexts = StatsContexts(settings, max_visitors=5)
    for n in range(200):
        rec.learn_stats(ev("view", item_id(n % 8, n % 12), T0 + n * 1000, session=f"v{n % 20}"), None, contexts)
        assert len(contexts) <= 5
    assert contexts.n_evicted == 20 - 5 + (200 - 20)  # round-robin over 20 visitors: every event evicts
    assert [k for k, _ in contexts.items()] == [f"v{n % 20}" for n in range(195, 200)]
    for _, ctx in contexts.items():
        assert len(ctx.history) <= 3 and len(ctx.event_ids) <= 4


def test_context_is_small() -> None:
    """The docstring's memory figure: a full context (36-character ids) is ~2 KB, ~2.8 KB with its item ids."""
    settings = make_settings()
    contexts = StatsContexts(settings)
    ctx = StatsContext()
    for n in range(100):
        e = Event(f"{n:036d}", "view", f"item-{n:031d}", T0 + n, session_id="s" * 36)  # 36-character ids
        contexts.apply(ctx, e, event_hash(e.event_id))
    assert len(ctx.history) == settings.covis_window and len(ctx.event_ids) == settings.dedup_window
    assert 1500 < ctx.approx_bytes(item_ids=False) < 2200 and ctx.approx_bytes() < 3000
