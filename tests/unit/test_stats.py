"""Co-visitation and decayed popularity: counting, bounds, priors, decay, determinism."""

from __future__ import annotations

import random

import pytest

from stream_reco.core.stats import GLOBAL, CoVisitation, DecayedCounts, Popularity, category_prefixes
from tests.unit.core_fixtures import HOUR, T0


def test_covis_is_symmetric_and_ignores_self_pairs():
    c = CoVisitation(max_neighbours=10)
    c.add("a", "b", 1.0)
    c.add("a", "a", 5.0)
    c.observe("c", [("a", 1.0), ("b", 0.5)])
    assert c.neighbours("a") == {"b": 1.0, "c": 1.0}
    assert c.neighbours("b") == {"a": 1.0, "c": 0.5}
    assert c.neighbours("unknown") == {}


def test_covis_prunes_to_strongest_neighbours():
    c = CoVisitation(max_neighbours=3)
    for n in range(20):
        c.add("hub", f"n{n:02d}", float(n + 1))
    assert len(c.pairs["hub"]) <= 2 * 3
    assert [k for k, _ in c.top_neighbours("hub", 3)] == ["n19", "n18", "n17"]


def test_covis_prior_adds_to_streamed_and_is_replaced_on_reload():
    c = CoVisitation(max_neighbours=5)
    c.add("a", "b", 1.0)
    c.set_prior({"a": [("b", 2.0), ("z", 1.0)]})
    assert c.neighbours("a") == {"b": 3.0, "z": 1.0}
    c.set_prior({"a": [("y", 4.0)]})
    assert c.neighbours("a") == {"b": 1.0, "y": 4.0}


def test_covis_ties_break_by_item_id():
    c = CoVisitation(max_neighbours=2)
    for n in "edcba":
        c.add("x", n, 1.0)
    assert c.top_neighbours("x", 2) == [("a", 1.0), ("b", 1.0)]


def test_category_prefixes_cover_every_level_and_global():
    assert category_prefixes("A/B/C") == ["A/B/C", "A/B", "A", GLOBAL]
    assert category_prefixes("") == [GLOBAL]


def test_popularity_decays_with_half_life():
    p = DecayedCounts(half_life_h=1.0)
    p.add("a", "K/A", 4.0, T0)
    assert p.score("a", T0) == pytest.approx(4.0)
    assert p.score("a", T0 + HOUR) == pytest.approx(2.0)
    assert p.score("a", T0 + 2 * HOUR) == pytest.approx(1.0)


def test_recent_events_beat_older_bigger_counts():
    p = DecayedCounts(half_life_h=1.0)
    for _ in range(3):
        p.add("old", "K/A", 1.0, T0)
    p.add("new", "K/A", 1.0, T0 + 3 * HOUR)
    assert [k for k, _ in p.top("K/A", 2, T0 + 3 * HOUR)] == ["new", "old"]


def test_popularity_top_per_category_and_parent_and_global():
    p = DecayedCounts(half_life_h=24.0)
    p.add("sofa", "F/Living/Sofas", 3.0, T0)
    p.add("table", "F/Living/Tables", 2.0, T0)
    p.add("spade", "G/Tools", 5.0, T0)
    assert [k for k, _ in p.top("F/Living/Sofas", 5, T0)] == ["sofa"]
    assert [k for k, _ in p.top("F/Living", 5, T0)] == ["sofa", "table"]
    assert [k for k, _ in p.top(GLOBAL, 5, T0)] == ["spade", "sofa", "table"]
    assert p.top("Nope", 5, T0) == []


def test_top_list_stays_exact_under_a_small_cap():
    rng = random.Random(3)
    p = DecayedCounts(half_life_h=1.0, top_cap=5)
    exact: dict[str, float] = {}
    for n in range(2000):
        item = f"i{rng.randrange(40)}"
        ts = T0 + n * 60_000
        p.add(item, "C", 1.0, ts)
        exact[item] = exact.get(item, 0.0) + 0.5 ** ((T0 + 2000 * 60_000 - ts) / HOUR)
    got = p.top("C", 5, T0 + 2000 * 60_000)
    want = sorted(exact.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert [k for k, _ in got] == [k for k, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want])


def test_popularity_is_order_independent():
    events = [(f"i{n % 7}", f"C/{n % 3}", 1.0 + n % 2, T0 + n * 1000) for n in range(100)]
    a, b = DecayedCounts(24.0), DecayedCounts(24.0)
    for e in events:
        a.add(*e)
    for e in reversed(events):
        b.add(*e)
    now = T0 + 10**6
    top_a, top_b = a.top(GLOBAL, 7, now), b.top(GLOBAL, 7, now)
    assert [k for k, _ in top_a] == [k for k, _ in top_b]
    assert [v for _, v in top_a] == pytest.approx([v for _, v in top_b])
    for item in ("i0", "i3"):
        assert a.score(item, now) == pytest.approx(b.score(item, now))


def test_popularity_rescales_far_in_the_future_without_overflow():
    p = DecayedCounts(half_life_h=1.0)
    p.add("a", "C", 1.0, T0)
    p.add("b", "C", 1.0, T0 + 200 * HOUR)  # 200 half-lives later: forces a rescale
    assert p.score("b", T0 + 200 * HOUR) == pytest.approx(1.0)
    assert p.score("a", T0 + 200 * HOUR) == pytest.approx(0.0, abs=1e-12)
    assert [k for k, _ in p.top("C", 2, T0 + 200 * HOUR)] == ["b", "a"]


def test_popularity_prior_is_dated_at_first_event_and_fades():
    pop = Popularity(half_life_h=1.0)
    pop.set_prior({"p": 8.0}, {"p": "K/A"})
    pop.add("s", "K/A", 1.0, T0)
    assert pop.score("p", T0) == pytest.approx(8.0)
    assert pop.score("p", T0 + HOUR) == pytest.approx(4.0)
    assert [k for k, _ in pop.top("K", 2, T0)] == ["p", "s"]
    assert [k for k, _ in pop.top(GLOBAL, 2, T0 + 5 * HOUR)] == ["p", "s"]


def test_popularity_prior_swap_replaces_the_old_prior():
    pop = Popularity(half_life_h=24.0)
    pop.add("s", "K/A", 1.0, T0)
    pop.set_prior({"p": 5.0}, {"p": "K/A"})
    pop.set_prior({"q": 2.0}, {"q": "K/A"})
    assert pop.score("p", T0) == 0.0
    assert [k for k, _ in pop.top("K/A", 5, T0)] == ["q", "s"]


def test_popularity_merges_items_present_in_only_one_top_list():
    pop = Popularity(half_life_h=24.0, top_cap=1)
    pop.set_prior({"a": 1.0, "b": 0.9}, {"a": "C", "b": "C"})
    pop.add("b", "C", 0.5, T0)
    # b is top of the stream but not of the prior; its prior count must still be added
    assert pop.top("C", 2, T0)[0] == ("b", pytest.approx(1.4))


def test_covis_can_weigh_forward_more_than_backward():
    c = CoVisitation(max_neighbours=5, backward_weight=0.25)
    c.observe("b", [("a", 1.0)])  # a viewed, then b
    assert c.neighbours("a") == {"b": 1.0}
    assert c.neighbours("b") == {"a": 0.25}


def test_popularity_prior_can_be_dated_by_the_model():
    pop = Popularity(half_life_h=1.0)
    pop.set_prior({"p": 8.0}, {"p": "K/A"}, as_of=T0 + HOUR)
    pop.add("s", "K/A", 1.0, T0)  # an earlier event does not re-date the prior
    assert pop.score("p", T0 + HOUR) == pytest.approx(8.0)
