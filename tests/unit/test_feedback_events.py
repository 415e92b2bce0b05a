"""Feedback events (docs/contracts.md, "Feedback events"): impressions and clicks through the decoder, the
producer client, the log reader, the core and the evaluation.

A click is an interest like a view; an impression is what the shop showed: accepted and deduplicated, but it
changes no visitor state or shop statistic and triggers no list.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from stream_reco import logs, schemas
from stream_reco.cli import cli
from stream_reco.client import prepare_event
from stream_reco.core.events import Event
from stream_reco.core.recommender import Recommender
from stream_reco.core.state import VisitorState
from stream_reco.evaluate.loaders import load_log
from stream_reco.settings import Settings
from tests.unit.core_fixtures import (
    HOUR,
    MINUTE,
    T0,
    ev,
    item_id,
    make_artifact,
    make_catalog,
    make_items,
    make_settings,
)

LIST_ID = "l-5b0e3c1d2e4f40a1b2c3d4e5f6a7b8c9"
IMPRESSION: dict[str, Any] = {
    "event_id": "e-imp-1", "event_type": "impression", "user_id": "u-42", "timestamp": 1764150000100,
    "context": {"list_id": LIST_ID, "shown": ["sku-456", "sku-789", "sku-123"]},
}
CLICK: dict[str, Any] = {
    "event_id": "e-clk-1", "event_type": "click", "user_id": "u-42", "item_id": "sku-789",
    "timestamp": 1764150003000, "context": {"list_id": LIST_ID, "position": 2},
}


# --- decoder and client ------------------------------------------------------------------------------------


def test_decoder_reads_an_impression_without_item_id() -> None:
    event = schemas.decode_event(orjson.dumps(IMPRESSION))
    assert event.event_type == "impression" and event.is_shown
    assert event.item_id == "" and event.list_id == LIST_ID
    assert event.shown == ("sku-456", "sku-789", "sku-123")
    assert event.position is None
    assert event.to_dict() == IMPRESSION  # round trip: no item_id comes back


def test_decoder_reads_a_click_with_list_and_position() -> None:
    doc = copy.deepcopy(CLICK)
    doc["context"]["position"] = 2.0  # JSON Schema: an integral float is an integer
    event = schemas.decode_event(orjson.dumps(doc))
    assert (event.event_type, event.item_id, event.list_id, event.position) == ("click", "sku-789", LIST_ID, 2)
    assert type(event.position) is int and not event.is_shown
    assert event.to_dict() == CLICK


def test_purchase_and_add_to_cart_may_carry_the_list_id() -> None:
    for kind in ("purchase", "add_to_cart"):
        doc = {**CLICK, "event_type": kind, "context": {"list_id": LIST_ID, "quantity": 1}}
        assert schemas.decode_event(orjson.dumps(doc)).list_id == LIST_ID


@pytest.mark.parametrize(("doc", "field"), [
    ({**IMPRESSION, "context": {"shown": ["a"]}}, "context.list_id"),
    ({**IMPRESSION, "context": {"list_id": "l-1"}}, "context.shown"),
    ({**IMPRESSION, "context": {"list_id": "l-1", "shown": []}}, "context.shown"),
    ({k: v for k, v in IMPRESSION.items() if k != "context"}, "context"),
    ({k: v for k, v in CLICK.items() if k != "item_id"}, "item_id"),
    ({**CLICK, "context": {"position": 0}}, "context.position"),
])
def test_decoder_rejects_broken_feedback_events(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.decode_event(orjson.dumps(doc))
    assert info.value.field == field


def test_the_producer_client_prepares_impressions_and_clicks() -> None:
    settings = Settings()
    for doc in (IMPRESSION, CLICK):
        prepared = prepare_event(settings, doc)
        assert prepared.key == b"u-42" and orjson.loads(prepared.value) == doc
    assert prepare_event(settings, schemas.decode_event(orjson.dumps(IMPRESSION))).key == b"u-42"


def test_the_log_reader_reads_feedback_events_from_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(d) for d in (IMPRESSION, CLICK)) + b"\n")
    assert [e.event_type for _, e in logs.read_events(jsonl)] == ["impression", "click"]
    csv = tmp_path / "events.csv"
    csv.write_text(
        "event_id,event_type,user_id,session_id,item_id,timestamp,list_id,position,shown\n"
        f"e-1,impression,u-42,,,1764150000100,{LIST_ID},,sku-456|sku-789\n"
        f"e-2,click,u-42,,sku-789,1764150003000,{LIST_ID},2,\n"
    )
    records = list(logs.read_log(csv))
    assert all(r.ok for r in records), [r.error for r in records]
    imp, click = (Event.from_dict(r.doc) for r in records if r.doc is not None)
    assert imp.shown == ("sku-456", "sku-789") and imp.item_id == "" and imp.list_id == LIST_ID
    assert click.position == 2 and click.item_id == "sku-789"


def test_replay_dry_run_accepts_feedback_events(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"\n".join(orjson.dumps(d) for d in (IMPRESSION, CLICK)) + b"\n")
    result = CliRunner().invoke(cli, ["replay", str(log), "--dry-run"],
                                env={"STREAM_RECO_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == 0, result.output


# --- the core ------------------------------------------------------------------------------------------------


def recommender() -> Recommender:
    settings = make_settings()
    rec = Recommender(settings, make_catalog(settings, make_artifact()))
    return rec


def feedback(kind: str, item: str, ts: int, event_id: str, **extra: Any) -> Event:
    return Event(event_id=event_id, event_type=kind, item_id=item, timestamp=ts,  # type: ignore[arg-type]
                 session_id="s1", **extra)


def test_a_click_moves_interests_and_covisitation_like_a_view() -> None:
    """Two visitors, the same items; one views the second item, the other clicks it: same state, same stats."""
    a, b = recommender(), recommender()
    first, second = item_id(0, 1), item_id(0, 2)
    a.observe(ev("view", first, T0, event_id="v1"))
    b.observe(ev("view", first, T0, event_id="v1"))
    a.observe(ev("view", second, T0 + MINUTE, event_id="x2"))
    b.observe(feedback("click", second, T0 + MINUTE, "x2", list_id="l-1", position=1))
    sa, sb = a.visitor("s1"), b.visitor("s1")
    assert sa is not None and sb is not None
    assert sb.to_bytes() == sa.to_bytes()  # history (as a view code), interests, categories, dedup: identical
    assert [h[2] for h in sb.history] == [0, 0]
    assert b.covis.neighbours(second) == a.covis.neighbours(second) and b.covis.neighbours(second)
    assert b.sessions.items == a.sessions.items
    assert a.popularity.score(second, T0 + MINUTE) == pytest.approx(b.popularity.score(second, T0 + MINUTE))
    # the next list is the same too
    assert [i.item_id for i in a.recommend("s1", T0 + 2 * MINUTE)] == [
        i.item_id for i in b.recommend("s1", T0 + 2 * MINUTE)]


def test_an_impression_changes_no_state_or_statistics_and_is_deduplicated() -> None:
    rec = recommender()
    rec.observe(ev("view", item_id(3, 1), T0, event_id="v1"))
    before = rec.visitor("s1")
    assert before is not None
    state_before = VisitorState.from_bytes(before.to_bytes())
    stats_before = (rec.covis.neighbours(item_id(3, 1)), rec.popularity.score(item_id(3, 2), T0 + HOUR),
                    rec.clock, rec.n_observed, copy.deepcopy(rec.sessions.items))
    impression = feedback("impression", "", T0 + 5 * MINUTE, "imp-1", list_id="l-unknown",
                          shown=(item_id(3, 2), item_id(3, 3)))
    assert rec.process(impression) is None  # accepted, but no list
    after = rec.visitor("s1")
    assert after is not None and after.has_seen_event("imp-1")
    # nothing but the dedup window moved
    assert after.event_ids[:-1] == state_before.event_ids
    assert after.event_ids[-1] == "imp-1"
    after_fields = VisitorState.from_bytes(after.to_bytes()).to_dict()
    expected = state_before.to_dict()
    expected["e"] = [*expected["e"], "imp-1"]
    assert after_fields == expected
    assert (rec.covis.neighbours(item_id(3, 1)), rec.popularity.score(item_id(3, 2), T0 + HOUR), rec.clock,
            rec.n_observed - 1, rec.sessions.items) == stats_before
    # a redelivered impression is a duplicate like any event
    assert rec.observe(impression) is False and rec.n_duplicates == 1
    # an impression for a visitor never seen creates no history either
    rec.observe(Event("imp-2", "impression", "", T0, session_id="s-new", list_id="l-x", shown=("a",)))
    fresh = rec.visitor("s-new")
    assert fresh is not None and fresh.n_events == 0 and fresh.history == [] and fresh.interests == []


def test_the_statistics_feed_learns_nothing_from_an_impression() -> None:
    from stream_reco.core.stats_context import StatsContexts

    rec = recommender()
    contexts = StatsContexts(rec.settings)
    impression = feedback("impression", "", T0, "imp-1", list_id="l-1", shown=(item_id(1, 1),))
    assert rec.learn_stats(impression, None, contexts) is False
    assert "s1" not in contexts and rec.clock is None
    click = feedback("click", item_id(1, 1), T0, "c-1", list_id="l-1")
    assert rec.learn_stats(click, None, contexts) is True


def test_replay_publishes_no_list_for_an_impression_and_a_list_for_a_click() -> None:
    from stream_reco.core.replay import replay

    rec = recommender()
    published: list[str | None] = []
    final = replay(rec, [ev("view", item_id(2, 1), T0, event_id="v1"),
                         feedback("impression", "", T0 + 1, "imp-1", list_id="l-1", shown=(item_id(2, 2),)),
                         feedback("click", item_id(2, 2), T0 + 2, "c-1", list_id="l-1", position=1)],
                   on_list=lambda r: published.append(r.trigger_event_id))
    assert published == ["v1", "c-1"]
    # the clicked item's page is on screen: it is not in the list the click triggers
    assert final["s1"].items and item_id(2, 2) not in [i.item_id for i in final["s1"].items]


def test_old_states_still_read_and_click_codes_stay_within_two_bits() -> None:
    settings = make_settings()
    state = VisitorState()
    state.apply(feedback("click", item_id(0, 1), T0, "c-1"), settings)
    assert all(0 <= h[2] <= 3 for h in state.history)
    old = {"f": 2, "u": None, "s": "s1", "ss": T0, "ls": T0, "h": [["i0-01", T0, 0], ["i0-02", T0, 3]], "n": 2}
    assert VisitorState.from_bytes(orjson.dumps(old)).history == [("i0-01", T0, 0), ("i0-02", T0, 3)]


# --- evaluate ------------------------------------------------------------------------------------------------


def _log(tmp_path: Path) -> Path:
    """A hand-made log: 4 visitors, each view view click purchase with impressions in between."""
    rows: list[dict[str, Any]] = []
    for v in range(4):
        t = T0 + v * HOUR
        s = f"s{v}"
        a, b, c, d = (item_id(v % 8, n) for n in (1, 2, 3, 4))
        rows += [
            {"event_id": f"{s}-1", "event_type": "view", "session_id": s, "item_id": a, "timestamp": t},
            {"event_id": f"{s}-2", "event_type": "impression", "session_id": s, "timestamp": t + 1,
             "context": {"list_id": f"l-{s}", "shown": [b, c]}},
            {"event_id": f"{s}-3", "event_type": "view", "session_id": s, "item_id": b, "timestamp": t + 2},
            {"event_id": f"{s}-4", "event_type": "click", "session_id": s, "item_id": c, "timestamp": t + 3,
             "context": {"list_id": f"l-{s}", "position": 2}},
            {"event_id": f"{s}-5", "event_type": "impression", "session_id": s, "timestamp": t + 4,
             "context": {"list_id": "l-unknown", "shown": [d]}},
            {"event_id": f"{s}-6", "event_type": "purchase", "session_id": s, "item_id": d, "timestamp": t + 5},
        ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    (tmp_path / "catalog.jsonl").write_bytes(b"\n".join(orjson.dumps(i.to_dict()) for i in make_items()) + b"\n")
    return path


def test_evaluate_loader_skips_impressions_and_targets_clicks_only_when_asked(tmp_path: Path) -> None:
    path = _log(tmp_path)
    loaded = load_log(path, progress=False)
    kinds = [(r.event.event_type, r.target) for r in loaded.records]
    assert loaded.impressions_skipped == 8
    assert [k for k, _ in kinds].count("impression") == 0
    assert sum(t for _, t in kinds) == 12  # views and purchases: 3 per visitor
    assert all(not t for k, t in kinds if k == "click") and [k for k, _ in kinds].count("click") == 4
    with_clicks = load_log(path, progress=False, clicks_as_targets=True)
    assert sum(r.target for r in with_clicks.records) == 16


def test_evaluate_command_on_a_log_with_feedback_events(tmp_path: Path) -> None:
    path = _log(tmp_path)
    env = {"STREAM_RECO_DATA_DIR": str(tmp_path / "data"), "STREAM_RECO_EMBEDDING_DIM": "16"}
    runner = CliRunner()
    reports = {}
    for name, extra in (("default", []), ("clicks", ["--targets-include-clicks"])):
        out = tmp_path / f"{name}.json"
        result = runner.invoke(cli, ["evaluate", str(path), "--report", str(out), "--no-progress", "--no-plots",
                                     "--methods", "POP", "--jobs", "1", *extra], env=env)
        assert result.exit_code == 0, result.output
        reports[name] = orjson.loads(out.read_bytes())
    assert reports["default"]["impressions_skipped"] == 8
    counts = {name: _targets(r) for name, r in reports.items()}
    assert counts["clicks"] > counts["default"] > 0


def _targets(report: dict[str, Any]) -> int:
    """The number of scored targets a report says its methods were asked about (any method, all variant)."""
    found: list[int] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("targets", "n_targets") and isinstance(v, int):
                    found.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(report)
    assert found, "the report names no target count"
    return max(found)
