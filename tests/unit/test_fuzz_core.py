"""Property-based fuzz of the decoder and the core (issue 11): any schema-valid event sequence keeps the
core's invariants.

Hypothesis draws sequences of event documents over the schema's whole range (timestamps 0 to 2100, ids
and categories up to their maximum lengths in any characters, every event type, logins, exact
redeliveries) interleaved with catalogue changes (sold out, deleted, repurchasable), encodes each to
bytes and decodes it with the worker's decoder, then feeds the recommender. After every event:

- the visitor's list holds no item it dismissed, no non-repurchasable item it bought (by a ground truth
  kept here, login joins included) and no item that is unknown, out of stock or deleted;
- every visitor state is within its caps and its bytes within `max_state_bytes`;
- shop-wide statistics are finite, non-negative and within their caps.

Caps are set small so eviction, the owned-items filter and byte trimming are all exercised. Derandomised
and without an example database, so every run draws the same examples (a few seconds).
"""

from __future__ import annotations

import dataclasses
import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_reco import schemas
from stream_reco.core.events import CatalogItem, Event
from stream_reco.core.limits import MAX_CATEGORY_DEPTH, MAX_CATEGORY_KEY_CHARS, MAX_SESSION_CATEGORIES
from stream_reco.core.recommender import Recommender
from stream_reco.core.state import VisitorState
from stream_reco.core.stats import _pruned_size
from tests.unit.core_fixtures import DAY, LEAVES, T0, make_catalog, make_items, make_settings

MAX_TS = 4_102_444_800_000
CAPS = dict(
    owned_cap=3,
    history_cap=8,
    dedup_window=6,
    max_interests=2,
    max_state_bytes=30_000,
    stats_max_items=40,
    popularity_max_categories=12,
    list_size=10,
)
CATALOGUE = [it.item_id for it in make_items()]
PATHS = ["/".join(p) for p in LEAVES]

texts = st.text(min_size=1, max_size=256)
#: mostly a few catalogue items, so owned items are evicted from the exact sets and then come up as candidates
few = st.sampled_from(CATALOGUE[:16])
item_ids = st.one_of(few, few, st.sampled_from(CATALOGUE), texts)
timestamps = st.one_of(
    st.integers(0, MAX_TS),
    st.integers(T0 - 30 * DAY, T0 + 30 * DAY),
    st.integers(T0, T0 + 3_600_000),
)
categories = st.one_of(
    st.none(),
    st.sampled_from(PATHS),
    st.text(max_size=1024),
    st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=20).map("/".join).filter(lambda c: len(c) <= 1024),
)
visitors = st.sampled_from(["u1", "x" * 256])
sessions = st.sampled_from(["s1", "é" * 256])


@st.composite
def event_docs(draw: st.DrawFn) -> dict:
    user = draw(st.one_of(st.none(), visitors))
    session = draw(sessions) if user is None else draw(st.one_of(st.none(), sessions))
    doc: dict = {
        "event_id": draw(st.one_of(st.text(min_size=1, max_size=128), st.sampled_from(["dup-a", "dup-b"]))),
        "event_type": draw(st.sampled_from(["view", "add_to_cart", "purchase", "purchase", "dismiss", "dismiss"])),
        "item_id": draw(item_ids),
        "timestamp": draw(timestamps),
    }
    if user is not None:
        doc["user_id"] = user
    if session is not None:
        doc["session_id"] = session
    page = draw(categories)
    if page is not None:
        doc["context"] = {"page_category": page}
    return doc


catalogue_changes = st.tuples(
    st.sampled_from(CATALOGUE), st.sampled_from(["sold_out", "deleted", "repurchasable", "restocked"])
)
steps = st.lists(
    st.one_of(event_docs(), event_docs(), event_docs(), st.tuples(st.just("replay"), st.integers(0, 100)),
              catalogue_changes),
    min_size=20,
    max_size=60,
)


class Truth:
    """What each visitor bought and dismissed, by the contract's rules (login joins move a session's)."""

    def __init__(self) -> None:
        self.bought: dict[str, set[str]] = {}
        self.dismissed: dict[str, set[str]] = {}

    def join(self, user: str, session: str) -> None:
        for sets in (self.bought, self.dismissed):
            sets.setdefault(user, set()).update(sets.pop(session, set()))

    def record(self, e: Event) -> None:
        if e.event_type == "purchase":
            self.bought.setdefault(e.visitor_key, set()).add(e.item_id)
        elif e.event_type == "dismiss":
            self.dismissed.setdefault(e.visitor_key, set()).add(e.item_id)


def _check_state(state: VisitorState, rec: Recommender) -> None:
    s = rec.settings
    assert len(state.history) <= s.history_cap
    assert len(state.event_ids) <= s.dedup_window
    assert len(state.interests) <= s.max_interests
    for d in (state.seen, state.purchased, state.dismissed, state.purchase_categories):
        assert len(d) <= s.owned_cap
    assert len(state.session_categories) <= MAX_SESSION_CATEGORIES
    for c in [*state.session_categories, *state.purchase_categories, state.page_category or ""]:
        assert len(c) <= MAX_CATEGORY_KEY_CHARS and c.count("/") < MAX_CATEGORY_DEPTH
    assert len(state.to_bytes()) <= s.max_state_bytes
    for it in state.interests:
        assert math.isfinite(it.weight) and it.weight >= 0


def _check_stats(rec: Recommender, now: int) -> None:
    for counts in (rec.popularity.stream, rec.popularity.prior):
        assert len(counts.scores) <= _pruned_size(counts.max_items)
        assert len(counts.tops) <= counts.max_categories
        assert all(math.isfinite(v) and v >= 0 for v in counts.scores.values())
        for cat in counts.tops:
            assert len(cat) <= MAX_CATEGORY_KEY_CHARS
            assert all(math.isfinite(v) and v >= 0 for _, v in rec.popularity.top(cat, 5, now))
    assert len(rec.covis.pairs) <= _pruned_size(rec.covis.max_items)
    for nbrs in rec.covis.pairs.values():
        assert len(nbrs) <= rec.covis._limit
        assert all(math.isfinite(w) and w > 0 for w in nbrs.values())


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps)
def test_any_valid_event_sequence_keeps_the_core_invariants(plan: list) -> None:
    s = make_settings(**CAPS)
    rec = Recommender(s, make_catalog(s))
    truth = Truth()
    sent: list[bytes] = []
    for step in plan:
        if isinstance(step, tuple) and step[0] == "replay":
            if not sent:
                continue
            raw = sent[step[1] % len(sent)]  # an exact redelivery of an earlier message
        elif isinstance(step, tuple):
            item_id, change = step
            item = rec.catalog.get(item_id) or CatalogItem(item_id=item_id)
            changed = {
                "sold_out": dict(in_stock=False),
                "deleted": dict(deleted=True),
                "repurchasable": dict(repurchasable=not item.repurchasable),
                "restocked": dict(in_stock=True, deleted=False),
            }[change]
            rec.upsert_item(dataclasses.replace(item, **changed))
            continue
        else:
            raw = orjson.dumps(step)
            sent.append(raw)
        event = schemas.decode_event(raw)  # schema-valid by construction: a raise here is a generator bug
        key = event.visitor_key
        if event.user_id and event.session_id and event.session_id != key:
            anon = rec.visitor(event.session_id)
            if anon is not None and anon.user_id is None:
                truth.join(key, event.session_id)
        rec_list = rec.process(event)
        if rec_list is not None:  # None: a duplicate event id, ignored by contract
            truth.record(event)
        now = rec.clock
        assert now is not None
        state = rec.visitor(key)
        assert state is not None
        _check_state(state, rec)
        _check_list(rec, truth, key, rec_list.items if rec_list is not None else rec.recommend(key, now))
    now = rec.clock or T0
    _check_stats(rec, now)
    for key in {*truth.bought, *truth.dismissed}:  # the longest lists: every item the rules let through
        if rec.visitor(key) is not None:
            _check_list(rec, truth, key, rec.recommend(key, now, k=len(CATALOGUE)))


def _check_list(rec: Recommender, truth: Truth, key: str, lst: object) -> None:
    for r in lst:  # type: ignore[attr-defined]
        item = rec.catalog.get(r.item_id)
        assert item is not None and item.recommendable, r.item_id
        assert r.item_id not in truth.dismissed.get(key, set()), r.item_id
        assert item.repurchasable or r.item_id not in truth.bought.get(key, set()), r.item_id
        assert math.isfinite(r.score) and r.score >= 0
