"""Visitor state: interests (split, merge, decay, push-away), session, caps, login join, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from stream_reco.core.interests import Interest, decay_factor, update_interests
from stream_reco.core.state import StateError, VisitorState, leaf_of, parent_of
from tests.unit.core_fixtures import DAY, HOUR, MINUTE, T0, ev, make_settings

DIM = 8


def axis(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


def near(i: int, j: int, mix: float = 0.1) -> np.ndarray:
    v = axis(i) + mix * axis(j)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def settings():
    return make_settings(embedding_dim=DIM)


def test_decay_factor_halves_per_half_life_and_never_grows():
    assert decay_factor(HOUR, HOUR) == pytest.approx(0.5)
    assert decay_factor(2 * HOUR, HOUR) == pytest.approx(0.25)
    assert decay_factor(-HOUR, HOUR) == 1.0  # out-of-order events do not grow weights


def test_similar_items_feed_one_interest(settings):
    interests: list[Interest] = []
    for n, v in enumerate([axis(0), near(0, 1), near(0, 2)]):
        update_interests(interests, v, 1.0, T0 + n, settings)
    assert len(interests) == 1
    assert interests[0].count == 3
    assert float(interests[0].vector @ axis(0)) > 0.95


def test_distinct_regions_split_into_interests(settings):
    interests: list[Interest] = []
    update_interests(interests, axis(0), 1.0, T0, settings)
    update_interests(interests, axis(1), 1.0, T0 + 1, settings)
    assert len(interests) == 2
    sims = sorted(float(it.vector @ axis(0)) for it in interests)
    assert sims[-1] == pytest.approx(1.0) and sims[0] == pytest.approx(0.0)


def test_interest_cap_merges_the_closest_pair(settings):
    s = settings.replace(max_interests=2)
    interests: list[Interest] = []
    update_interests(interests, axis(0), 1.0, T0, s)
    update_interests(interests, near(0, 1, 1.5), 1.0, T0 + 1, s)  # its own interest (cos ~0.55 < split)
    s2 = s.replace(interest_split_cosine=0.9)
    interests2: list[Interest] = []
    update_interests(interests2, axis(0), 1.0, T0, s2)
    update_interests(interests2, near(0, 1, 0.6), 1.0, T0 + 1, s2)  # cos ~0.86: a second interest
    assert len(interests2) == 2
    update_interests(interests2, axis(5), 1.0, T0 + 2, s2)  # far from both: the close pair merges
    assert len(interests2) == 2
    assert max(float(it.vector @ axis(5)) for it in interests2) == pytest.approx(1.0)
    assert sum(it.count for it in interests2) == 3


def test_interest_cap_joins_nearest_when_pairs_are_far(settings):
    s = settings.replace(max_interests=2, interest_split_cosine=0.5)
    interests: list[Interest] = []
    update_interests(interests, axis(0), 1.0, T0, s)
    update_interests(interests, axis(1), 1.0, T0 + 1, s)
    update_interests(interests, near(2, 0, 0.2), 1.0, T0 + 2, s)  # nearer to axis 0 than 0 is to 1
    assert len(interests) == 2
    assert sorted(it.count for it in interests) == [1, 2]


def test_interests_decay_with_half_life_and_fade_out(settings):
    s = settings.replace(interest_half_life_h=1.0)
    state = VisitorState()
    state.apply(ev("view", "a", T0), s, vector=axis(0))
    assert state.interest_weights(T0 + HOUR, s)[0] == pytest.approx(s.weight_view / 2)
    state.apply(ev("view", "b", T0 + 40 * HOUR), s, vector=axis(1))
    assert len(state.interests) == 1  # the first one decayed below the floor and was forgotten
    assert float(state.interests[0].vector @ axis(1)) == pytest.approx(1.0)


def test_event_weights_pull_harder_for_purchases(settings):
    state = VisitorState()
    state.apply(ev("view", "a", T0), settings, vector=axis(0))
    state.apply(ev("purchase", "b", T0 + 1), settings, vector=near(0, 1, 0.5))
    assert state.interests[0].weight == pytest.approx(settings.weight_view + settings.weight_purchase)


def test_dismissal_pushes_the_interest_away(settings):
    state = VisitorState()
    target = near(0, 1, 0.5)
    state.apply(ev("view", "a", T0), settings, vector=axis(0))
    before = float(state.interests[0].vector @ target)
    w_before = state.interests[0].weight
    state.apply(ev("dismiss", "b", T0 + 1), settings, vector=target)
    assert float(state.interests[0].vector @ target) < before
    assert state.interests[0].weight == pytest.approx(w_before)  # a dismissal adds no weight
    assert "b" in state.dismissed


def test_unknown_item_is_kept_and_counted_but_moves_nothing(settings):
    state = VisitorState()
    state.apply(ev("view", "ghost", T0, page_category="Garden/Tools"), settings, vector=None)
    assert state.history[-1][0] == "ghost"
    assert state.n_events == 1 and state.n_unknown == 1
    assert state.interests == []
    assert state.session_categories == {"Garden/Tools": 1}  # the page's category stands in


def test_session_ends_after_gap_and_on_new_session_id(settings):
    state = VisitorState()
    state.apply(ev("view", "a", T0, page_category="X"), settings, category="K/A")
    state.apply(ev("view", "b", T0 + MINUTE), settings, category="K/A")
    assert [h[0] for h in state.session_history(T0 + MINUTE, settings)] == ["a", "b"]
    assert state.session_category_counts(T0 + MINUTE, settings) == {"K/A": 2}
    later = T0 + MINUTE + settings.session_gap_s * 1000 + 1
    assert state.session_history(later, settings) == []  # timed out, even before the next event
    state.apply(ev("view", "c", later), settings, category="K/B")
    assert [h[0] for h in state.session_history(later, settings)] == ["c"]
    assert state.session_category_counts(later, settings) == {"K/B": 1}
    state.apply(ev("view", "d", later + 1, session="s2"), settings, category="K/B")
    assert [h[0] for h in state.session_history(later + 1, settings)] == ["d"]
    assert state.session_id == "s2"


def test_caps_bound_memory(settings):
    s = settings.replace(history_cap=5, owned_cap=3, dedup_window=4)
    state = VisitorState()
    for n in range(20):
        state.apply(ev("purchase", f"p{n}", T0 + n), s, category=f"C/{n}")
        state.apply(ev("dismiss", f"d{n}", T0 + n), s)
    assert len(state.history) == 5
    assert list(state.purchased) == ["p17", "p18", "p19"]
    assert list(state.dismissed) == ["d17", "d18", "d19"]
    assert len(state.seen) == 3 and len(state.event_ids) == 4 and len(state.purchase_categories) == 3


def test_duplicate_detection_within_window(settings):
    state = VisitorState()
    state.apply(ev("view", "a", T0, event_id="x1"), settings)
    assert state.has_seen_event("x1") and not state.has_seen_event("x2")


def test_purchase_categories_expire_after_window(settings):
    state = VisitorState()
    state.apply(ev("purchase", "a", T0), settings, category="F/Sofas")
    assert state.suppressed_categories(T0 + DAY, settings) == ["F/Sofas"]
    after = T0 + int(settings.purchase_suppress_days * DAY) + 1
    assert state.suppressed_categories(after, settings) == []
    state.apply(ev("view", "b", after), settings)
    assert state.purchase_categories == {}  # forgotten, not just hidden


def test_recent_items_are_distinct_most_recent_first_and_positive(settings):
    state = VisitorState()
    for n, item in enumerate(["a", "b", "a", "c"]):
        state.apply(ev("view", item, T0 + n), settings)
    state.apply(ev("dismiss", "d", T0 + 9), settings)
    assert [h[0] for h in state.recent_items(5)] == ["c", "a", "b"]


def test_login_merge_joins_history_interests_and_owned_items(settings):
    user = VisitorState()
    user.apply(ev("view", "u1", T0, user="u", session="old"), settings, vector=axis(0))
    user.apply(ev("purchase", "u2", T0 + 1, user="u", session="old"), settings, vector=axis(0), category="K/A")
    anon = VisitorState()
    anon.apply(ev("view", "a1", T0 + DAY, session="s9"), settings, vector=axis(3), category="G/T")
    anon.apply(ev("dismiss", "a2", T0 + DAY + 1, session="s9"), settings, vector=axis(4))
    user.merge(anon, settings)
    assert [h[0] for h in user.history] == ["u1", "u2", "a1", "a2"]
    assert "a2" in user.dismissed and "u2" in user.purchased
    assert user.session_id == "s9" and user.user_id == "u"
    assert user.session_category_counts(T0 + DAY + 2, settings) == {"G/T": 1}
    assert len(user.interests) == 2
    assert user.n_events == 4
    assert all(user.has_seen_event(e) for e in anon.event_ids)


def test_merge_of_empty_state_changes_nothing(settings):
    user = VisitorState()
    user.apply(ev("view", "u1", T0, user="u"), settings, vector=axis(0))
    before = user.to_bytes()
    user.merge(VisitorState(), settings)
    assert user.to_bytes() == before


def test_bytes_round_trip_is_exact(settings):
    state = VisitorState()
    state.apply(ev("view", "a", T0, user="u", page_category="K/A"), settings, vector=near(0, 1), category="K/A")
    state.apply(ev("purchase", "b", T0 + 1, user="u"), settings, vector=axis(2), category="K/B")
    state.apply(ev("dismiss", "c", T0 + 2, user="u"), settings, vector=axis(2))
    state.apply(ev("view", "ghost", T0 + 3, user="u"), settings)
    b = state.to_bytes()
    back = VisitorState.from_bytes(b)
    assert back.to_bytes() == b
    assert back.history == state.history and back.purchased == state.purchased
    for x, y in zip(back.interests, state.interests, strict=True):
        assert np.array_equal(x.vector, y.vector) and x.weight == y.weight
    assert b"pickle" not in b and b.startswith(b"{")


def test_from_bytes_rejects_garbage():
    with pytest.raises(StateError):
        VisitorState.from_bytes(b"not json")
    with pytest.raises(StateError):
        VisitorState.from_bytes(b'{"f": 99}')


def test_profile_vector_is_weighted_mean_of_interests(settings):
    state = VisitorState()
    assert state.profile_vector(T0, settings) is None
    state.apply(ev("view", "a", T0), settings, vector=axis(0))
    state.apply(ev("purchase", "b", T0), settings, vector=axis(1))
    p = state.profile_vector(T0, settings)
    assert p is not None and float(p @ axis(1)) > float(p @ axis(0)) > 0


def test_category_path_helpers():
    assert leaf_of("Furniture/Living room/Sofas") == "Sofas"
    assert parent_of("Furniture/Living room/Sofas") == "Furniture/Living room"
    assert parent_of("Furniture") == ""
