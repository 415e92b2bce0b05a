"""Issue 11, the pure core's side: no valid-looking event may poison, resurrect or grow without bound.

1. A far-future (or weeks-late) event moves no shop-wide statistic by more than its fair share and
   does not wipe or rewind the visitor's state (the shop clock clamps the time it is applied at).
6. Every per-visitor and shop-wide structure is capped; a visitor state's bytes stay within
   `max_state_bytes`, whatever the ids and categories.
11. Purchases and dismissals beyond the exact `owned_cap` stay hidden (the owned Bloom filter).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_reco.core.bloom import BloomFilter
from stream_reco.core.limits import MAX_CATEGORY_DEPTH, MAX_CATEGORY_KEY_CHARS, MAX_SESSION_CATEGORIES
from stream_reco.core.recommender import MAX_CLOCK_STEP_MS, Recommender
from stream_reco.core.state import VisitorState, state_bytes_bound
from stream_reco.core.stats import GLOBAL, SKNN_SWEEP_MIN_ITEMS, CoVisitation, DecayedCounts, SessionIndex
from tests.unit.core_fixtures import DAY, HOUR, LEAVES, MINUTE, T0, ev, item_id, make_catalog, make_settings

FAR_FUTURE = 4_070_908_800_000  # 2099-01-01, valid under the schema
SCHEMA_MAX_TS = 4_102_444_800_000
SOFAS = 3


def make_rec(**overrides: object) -> Recommender:
    s = make_settings(**overrides)
    return Recommender(s, make_catalog(s))


def _finite_non_negative(values: list[float]) -> bool:
    return all(math.isfinite(v) and v >= 0 for v in values)


# --- 1: far-future and late events ---


def test_far_future_event_does_not_poison_best_sellers():
    rec = make_rec()
    for n in range(10):
        rec.observe(ev("view", item_id(0, n % 3), T0 + n * MINUTE, session=f"a{n}"))
    rec.observe(ev("view", item_id(7, 0), FAR_FUTURE, session="bad"))
    normal = [item_id(1, 0)] * 600 + [item_id(2, 0)] * 400
    for n, it in enumerate(normal):
        rec.observe(ev("view", it, T0 + HOUR + n * 1000, session=f"b{n % 50}"))
    now = T0 + HOUR + len(normal) * 1000
    top = [i for i, _ in rec.popularity.top(GLOBAL, 3, now)]
    assert top[:2] == [item_id(1, 0), item_id(2, 0)]
    # the bad event counts as one view at most one clock step ahead: its fair share, not the whole shop
    one_view = rec.popularity.score(item_id(0, 0), now) / 4  # item (0, 0) had 4 views at T0
    assert rec.popularity.score(item_id(7, 0), now) <= one_view * 2 ** (MAX_CLOCK_STEP_MS / (168 * HOUR)) * 1.01
    assert rec.popularity.score(item_id(1, 0), now) > 100 * rec.popularity.score(item_id(7, 0), now)
    assert rec.clock is not None and rec.clock <= now + MAX_CLOCK_STEP_MS


def test_many_far_future_events_move_the_clock_by_a_bounded_step_each():
    rec = make_rec()
    rec.observe(ev("view", item_id(0, 0), T0))
    for n in range(5):
        rec.observe(ev("view", item_id(7, 0), FAR_FUTURE + n, session=f"x{n}"))
    assert rec.clock == T0 + 5 * MAX_CLOCK_STEP_MS
    assert rec.n_clamped == 5


def test_now_ms_ceiling_clamps_the_applied_time():
    rec = make_rec()
    e = ev("purchase", item_id(0, 0), FAR_FUTURE, session="s")
    assert rec.observe(e, now_ms=T0)
    assert rec.clock == T0
    assert rec.visitor("s").last_seen == T0
    assert rec.visitor("s").purchased[item_id(0, 0)] == T0


def test_an_ancient_first_event_does_not_hold_later_events_back_when_a_wall_clock_is_given():
    rec = make_rec()
    rec.observe(ev("view", item_id(0, 1), 1000, session="old"), now_ms=T0 + MINUTE)
    for n in range(5):
        assert rec.observe(ev("purchase", item_id(0, 2 + n), T0 + n, session="v"), now_ms=T0 + MINUTE)
    state = rec.visitor("v")
    assert state.last_seen == T0 + 4, "applied at their own times, not at 1970 plus a day per event"
    assert state.purchased[item_id(0, 2)] == T0
    assert rec.n_clamped == 0


def test_far_future_event_keeps_visitor_suppressions_and_interests():
    rec = make_rec()
    sofa = item_id(SOFAS, 0)
    rec.observe(ev("view", item_id(SOFAS, 1), T0, session="v"))
    rec.observe(ev("purchase", sofa, T0 + MINUTE, session="v"))
    weights_before = rec.visitor("v").interest_weights(T0 + MINUTE, rec.settings)
    rec.observe(ev("view", item_id(0, 0), FAR_FUTURE, session="v"))
    state = rec.visitor("v")
    assert "/".join(LEAVES[SOFAS]) in state.purchase_categories
    assert state.last_seen <= T0 + MINUTE + MAX_CLOCK_STEP_MS
    assert sum(state.interest_weights(state.last_seen, rec.settings)) >= 0.9 * sum(weights_before)
    items = [r.item_id for r in rec.recommend("v", T0 + 2 * HOUR, k=30)]
    assert sofa not in items
    assert not any(i.startswith(f"i{SOFAS}-") for i in items)  # the sofa category is still suppressed


def test_late_purchase_does_not_rewind_a_newer_suppression():
    rec = make_rec()
    rec.observe(ev("purchase", item_id(SOFAS, 0), T0 + 10 * DAY, session="v"))
    rec.observe(ev("purchase", item_id(SOFAS, 1), T0, session="v"))  # ten days late
    state = rec.visitor("v")
    assert state.purchase_categories["/".join(LEAVES[SOFAS])] == T0 + 10 * DAY
    assert state.purchased[item_id(SOFAS, 0)] == T0 + 10 * DAY
    items = [r.item_id for r in rec.recommend("v", T0 + 15 * DAY, k=30)]
    assert not any(i.startswith(f"i{SOFAS}-") for i in items)


def test_late_event_of_an_old_session_does_not_rewind_the_current_one():
    rec = make_rec()
    rec.observe(ev("view", item_id(0, 0), T0 + DAY, user="u", session="s2", page_category="Kitchen"))
    rec.observe(ev("view", item_id(1, 0), T0, user="u", session="s1", page_category="Garden"))
    state = rec.visitor("u")
    assert state.session_id == "s2"
    assert state.session_start == T0 + DAY
    assert state.page_category == "Kitchen"
    assert state.last_seen == T0 + DAY
    assert state.history[-1][0] == item_id(0, 0)  # the late one sorts in by time


def test_late_event_moves_interests_by_its_decayed_weight_only():
    rec = make_rec()
    rec.observe(ev("view", item_id(0, 0), T0 + 30 * DAY, session="v"))
    before = sum(rec.visitor("v").interest_weights(T0 + 30 * DAY, rec.settings))
    rec.observe(ev("purchase", item_id(6, 0), T0, session="v"))  # thirty days late, another region
    after = sum(rec.visitor("v").interest_weights(T0 + 30 * DAY, rec.settings))
    fair = rec.settings.weight_purchase * 0.5 ** (30 * 24 / rec.settings.interest_half_life_h)
    assert after - before <= fair + 1e-6


def test_extreme_timestamps_keep_statistics_finite_and_non_negative():
    rec = make_rec()
    for n, ts in enumerate([0, SCHEMA_MAX_TS, 1, T0, SCHEMA_MAX_TS, 0]):
        rec.observe(ev("purchase", item_id(n % 8, n), ts, session=f"s{n}"))
    now = rec.clock
    assert now is not None
    scores = [rec.popularity.score(item_id(n % 8, n), now) for n in range(6)]
    assert _finite_non_negative(scores)
    for cat in rec.popularity.stream.categories():
        assert _finite_non_negative([v for _, v in rec.popularity.top(cat, 10, now)])
    for nbrs in rec.covis.pairs.values():
        assert _finite_non_negative(list(nbrs.values()))


# --- 6: caps ---


def test_session_categories_are_capped():
    rec = make_rec()
    for n in range(1000):
        cat = f"{n:04d}" + "x" * 1020  # distinct 1 KB page categories
        rec.observe(ev("view", f"unknown-{n % 12}", T0 + n * 1000, session="v", page_category=cat))
    state = rec.visitor("v")
    assert len(state.session_categories) <= MAX_SESSION_CATEGORIES
    assert all(len(c) <= MAX_CATEGORY_KEY_CHARS for c in state.session_categories)
    assert len(state.to_bytes()) < 64_000


def test_category_keys_are_bounded_in_popularity():
    rec = make_rec(popularity_max_categories=100)
    for n in range(300):
        cat = "/".join(f"{n}-{d}" + "y" * 40 for d in range(24))  # ~1 KB, 24 levels deep
        rec.observe(ev("view", f"unknown-{n}", T0 + n * 1000, session=f"s{n}", page_category=cat))
    tops = rec.popularity.stream.tops
    assert GLOBAL in tops
    assert len(tops) <= 100
    assert all(len(c) <= MAX_CATEGORY_KEY_CHARS and c.count("/") < MAX_CATEGORY_DEPTH for c in tops)
    # a long category still finds its (bounded) key's best-sellers
    cat = "/".join("299-" + str(d) + "y" * 40 for d in range(24))
    assert rec.popularity.top(cat, 1, T0 + 300_000)[0][0] == "unknown-299"


def test_popularity_scores_and_covisitation_items_are_capped():
    counts = DecayedCounts(168.0, max_items=100)
    covis = CoVisitation(10, max_items=100)
    for n in range(1000):
        counts.add(f"it{n}", "A/B", 1.0 + (n % 7), T0 + n)
        covis.add(f"it{n}", f"it{n + 1}", 1.0)
    assert len(counts.scores) <= 110
    assert len(covis.pairs) <= 110
    assert "it999" in covis.pairs  # the least recently co-visited go first


def test_session_index_caps_items_per_session_and_forgets_dead_items():
    idx = SessionIndex(max_sessions=10, per_item=5)
    for n in range(5000):
        idx.add("bot", 0, f"i{n}")
    assert len(idx.items[idx.session_id("bot", 0)]) <= idx.max_session_items
    for n in range(3 * SKNN_SWEEP_MIN_ITEMS):
        idx.add(f"v{n}", n, f"j{n}")
    assert len(idx.by_item) <= SKNN_SWEEP_MIN_ITEMS + 1  # without the sweep: every item ever seen
    assert idx.neighbours([f"j{3 * SKNN_SWEEP_MIN_ITEMS - 1}"], 5)  # the live sessions still answer


def _hostile_event_stream(n_events: int, settings_user: str = "u" * 256):
    """Max-length ids (full of characters JSON must escape) and max-length categories."""
    esc = "\x01\"\\"
    for n in range(n_events):
        item = f"{n:06d}" + (esc * 100)[:250]
        cat = f"{n:06d}" + ("\x02/" * 600)[:1018]
        kind = ("view", "purchase", "dismiss", "add_to_cart")[n % 4]
        yield ev(kind, item, T0 + n * 1000, user=settings_user, session="s" * 256, page_category=cat,
                 event_id=f"{n:06d}" + "\x03" * 122)


def test_state_bytes_stay_within_max_state_bytes_under_hostile_input():
    rec = make_rec()
    limit = rec.settings.max_state_bytes
    for n, e in enumerate(_hostile_event_stream(800)):
        rec.observe(e)
        if n % 20 == 0:
            assert len(rec.visitor(e.visitor_key).to_bytes()) <= limit
    state = rec.visitor("u" * 256)
    assert limit // 2 < len(state.to_bytes()) <= limit
    assert len(state.seen) < rec.settings.owned_cap  # trimmed for bytes, not by the item cap
    assert VisitorState.from_bytes(state.to_bytes()).to_bytes() == state.to_bytes()


def test_trim_to_a_small_limit_keeps_owned_items_hidden():
    rec = make_rec(max_state_bytes=40_000)
    events = list(_hostile_event_stream(400))
    for e in events:
        rec.observe(e)
    state = rec.visitor(events[0].visitor_key)
    assert len(state.to_bytes()) <= 40_000
    for e in events:
        if e.event_type == "purchase":
            assert state.has_purchased(e.item_id)
        elif e.event_type == "dismiss":
            assert state.has_dismissed(e.item_id)


def test_state_bytes_bound_holds_even_below_the_untrimmable_floor():
    rec = make_rec(max_state_bytes=1_000)
    bound = state_bytes_bound(rec.settings)
    assert 1_000 < bound < 16_000  # ids, interests and the owned filter cannot be trimmed
    for e in _hostile_event_stream(300):
        rec.observe(e)
        assert len(rec.visitor(e.visitor_key).to_bytes()) <= bound
    assert all(rec.visitor(e.visitor_key).has_dismissed(x.item_id)
               for x in _hostile_event_stream(300) if x.event_type == "dismiss")


# --- 11: heavy buyers ---


def test_purchases_beyond_owned_cap_never_come_back():
    rec = make_rec(owned_cap=20, purchase_suppress_days=0)
    bought = [item_id(li, n) for li in range(4) for n in range(12)]  # 48 purchases, cap 20
    for n, it in enumerate(bought):
        rec.observe(ev("purchase", it, T0 + n * MINUTE, user="heavy"))
    state = rec.visitor("heavy")
    assert len(state.purchased) <= 20
    assert all(state.has_purchased(it) for it in bought)
    items = [r.item_id for r in rec.recommend("heavy", T0 + DAY, k=96)]
    assert items and not set(items) & set(bought)


def test_dismissals_beyond_owned_cap_never_come_back():
    rec = make_rec(owned_cap=10)
    gone = [item_id(li, n) for li in range(3) for n in range(12)]
    for n, it in enumerate(gone):
        rec.observe(ev("dismiss", it, T0 + n * MINUTE, user="picky"))
    items = [r.item_id for r in rec.recommend("picky", T0 + DAY, k=96)]
    assert items and not set(items) & set(gone)


def test_bloom_survives_bytes_and_merge_and_old_states_read():
    s = make_settings(owned_cap=5)
    a, b = VisitorState(), VisitorState()
    for n in range(20):
        a.apply(ev("purchase", f"a{n}", T0 + n, user="u"), s)
        b.apply(ev("dismiss", f"b{n}", T0 + n, session="anon"), s)
    back = VisitorState.from_bytes(a.to_bytes())
    assert back == a and all(back.has_purchased(f"a{n}") for n in range(20))
    back.merge(b, s)
    assert all(back.has_purchased(f"a{n}") for n in range(20))
    assert all(back.has_dismissed(f"b{n}") for n in range(20))
    old = a.to_dict()
    old.pop("ob", None)
    assert VisitorState.from_dict(old).purchased == a.purchased  # a state written before the filter


def test_bloom_false_positive_rate_at_design_capacity_is_within_the_documented_bound():
    f = BloomFilter()
    rng = np.random.default_rng(11)
    members = [f"item-{x}" for x in rng.integers(0, 2**62, BloomFilter.CAPACITY)]
    for m in members:
        f.add("p", m)
    assert all(f.contains("p", m) for m in members)  # no false negatives, ever
    probes = [f"other-{n}" for n in range(100_000)]
    rate = sum(f.contains("p", p) for p in probes) / len(probes)
    assert rate <= BloomFilter.FP_RATE_BOUND
    assert BloomFilter.theoretical_fp_rate(BloomFilter.CAPACITY) <= BloomFilter.FP_RATE_BOUND
    assert len(f.to_bytes()) <= 6 * 1024  # a few KB per heavy buyer
    assert BloomFilter.from_bytes(f.to_bytes()).contains("p", members[0])


@pytest.mark.parametrize("kind", ["purchase", "dismiss"])
def test_rules_consult_the_filter(kind):
    from stream_reco.core.rules import Batch, NotDismissed, NotPurchased, RuleContext, apply_rules

    s = make_settings(owned_cap=2)
    cat = make_catalog(s)
    state = VisitorState()
    for n in range(6):
        state.apply(ev(kind, item_id(0, n), T0 + n, user="u"), s)
    ctx = RuleContext(s, cat, state, T0 + DAY)
    ids = [item_id(0, n) for n in range(8)]
    mult = apply_rules([NotDismissed(), NotPurchased()], ctx, Batch.of(ids, cat))
    assert mult.tolist() == [0.0] * 6 + [1.0, 1.0]
