"""The pure parts of bench/pages.py: percentiles, which pulls are direct, the summaries and what counts as a
refreshed list. The measured figures come from real workers; a mistake here would misstate them silently."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bench import pages
from stream_reco.stream.app import ASSIGNED_LINE
from stream_reco.stream.joins import partition_of


def test_quantiles_are_nearest_rank_and_empty_samples_give_none_not_nan() -> None:
    q = pages.quantiles([float(x) for x in range(1, 101)])
    assert (q["p50"], q["p90"], q["p99"], q["max"], q["n"]) == (50.0, 90.0, 99.0, 100.0, 100)
    assert q["mean"] == pytest.approx(50.5)
    assert pages.quantiles([3.0])["p99"] == 3.0
    empty = pages.quantiles([])
    assert empty["n"] == 0 and all(empty[k] is None for k in ("p50", "p90", "p99", "mean", "max"))


def test_the_latest_assignment_line_says_which_partitions_a_worker_owns() -> None:
    lines = ["noise", f"[info] {ASSIGNED_LINE} [0, 1, 2, 3, 4, 5]", f"x {ASSIGNED_LINE} [4, 1]", "more"]
    assert pages.owned_partitions(lines) == [1, 4]
    assert pages.owned_partitions(["nothing"]) == []
    assert pages.settled([[0, 1, 2], [3, 4, 5]], 6)
    assert not pages.settled([[0, 1, 2, 3, 4, 5], []], 6), "forwarding needs both workers to own some"
    assert not pages.settled([[0, 1, 2], [2, 3, 4, 5]], 6), "a partition owned twice: a rebalance in progress"
    assert not pages.settled([[0, 1], [3, 4, 5]], 6)


def test_a_pull_is_direct_exactly_when_the_worker_asked_owns_the_visitors_partition() -> None:
    assignments = [[0, 2, 4], [1, 3, 5]]
    for n in range(50):
        visitor = f"s-{n}"
        p = partition_of(visitor, 6)
        mine = 0 if p % 2 == 0 else 1
        assert pages.classify(visitor, mine, assignments, 6) == "direct"
        assert pages.classify(visitor, 1 - mine, assignments, 6) == "forwarded"
        assert pages.owner_of(visitor, assignments, 6) == mine
    assert pages.owner_of("s-1", [[], []], 6) is None


def _pull(cls: str, ms: float, ok: bool = True, placement: str = "home") -> dict[str, object]:
    return {"cls": cls, "ms": ms, "ok": ok, "state": ok, "placement": placement}


def test_pull_summary_separates_the_classes_and_prices_forwarding_by_the_difference_of_medians() -> None:
    pulls = [_pull("direct", 2.0 + i * 0.01) for i in range(100)]
    pulls += [_pull("forwarded", 3.0 + i * 0.01, placement="product" if i % 10 == 0 else "home") for i in range(100)]
    out = pages.pull_summary(pulls)
    assert out["ms"]["direct"]["n"] == 100 and out["ms"]["forwarded"]["n"] == 100 and out["ms"]["all"]["n"] == 200
    assert out["ms"]["product"]["n"] == 10
    assert out["forwarding_cost_ms"]["p50"] == pytest.approx(1.0)
    assert out["failures"] == 0 and out["met"]
    assert out["answered_with_state"] == {"direct": 100, "forwarded": 100}

    failed = pages.pull_summary([*pulls, {**_pull("forwarded", 9.0, ok=False), "error": "500: boom"}])
    assert failed["failures"] == 1 and not failed["met"], "a failed pull misses the target whatever the latency"
    assert failed["ms"]["forwarded"]["n"] == 100, "a failed pull's time is not a latency"
    assert failed["failure_examples"] == ["500: boom"]
    slow = pages.pull_summary([_pull("direct", 25.0)] * 10)
    assert not slow["met"] and slow["forwarding_cost_ms"]["p50"] is None


def test_forward_check_compares_the_bench_count_with_the_workers_counters() -> None:
    pulls = {"forwarded_incl_warmup": 7, "total_incl_warmup": 20}
    agree = pages.forward_check(pulls, [{"pulls": 12, "pulls_forwarded": 3}, {"pulls": 8, "pulls_forwarded": 4}])
    assert agree["comparable"] and agree["agree"]
    stale = pages.forward_check(pulls, [{"pulls": 5, "pulls_forwarded": 1}, None])
    assert not stale["comparable"] and not stale["agree"], "counters logged before the last pull say nothing"


def test_withdraw_ranks_start_at_the_most_shown_item_and_spread_without_repeats() -> None:
    assert pages.withdraw_ranks(5, 1000) == [0, 3, 10, 32, 100]
    assert pages.withdraw_ranks(3, 1000) == [0, 10, 100]
    small = pages.withdraw_ranks(5, 4)
    assert small[0] == 0 and small == sorted(set(small))
    assert pages.withdraw_ranks(1, 1000) == [0]
    assert pages.withdraw_ranks(3, 1) == [0]


def test_shown_counts_count_each_list_once_most_shown_first() -> None:
    latest = {"a": ("x", "y", "x"), "b": ("y", "z"), "c": ("y",)}
    assert pages.shown_counts(latest) == [("y", 3), ("x", 1), ("z", 1)]


def test_refresh_outcome_times_the_first_null_trigger_list_without_the_item() -> None:
    old = pages.PushedRecord(("gone", "b"), "e-1", 100.0)
    history = [old, pages.PushedRecord(("gone", "c"), None, 100.2), pages.PushedRecord(("b", "c"), None, 100.5),
               pages.PushedRecord(("b", "d"), None, 100.9)]
    out = pages.refresh_outcome(history, 1, "gone", sent=100.1)
    assert out["seconds"] == pytest.approx(0.4) and out["length"] == 2
    assert out["still_showing"] == 1 and out["extra"] == 1 and out["by_event"] == 0
    assert pages.refresh_outcome([old], 1, "gone", 100.1)["seconds"] is None, "nothing newer: not refreshed"
    by_event = pages.refresh_outcome([old, pages.PushedRecord(("b",), "e-2", 100.3)], 1, "gone", 100.1)
    assert by_event["seconds"] is None and by_event["by_event"] == 1, "only a refresh (trigger null) counts"


def test_item_and_overall_summaries_count_late_and_missing_visitors() -> None:
    rng = random.Random(1)
    outcomes = {f"v{i}": {"seconds": rng.uniform(0.01, 0.5), "still_showing": 0, "by_event": 0, "extra": 0,
                          "length": 10} for i in range(99)}
    outcomes["late"] = {"seconds": 40.0, "still_showing": 0, "by_event": 0, "extra": 0, "length": 10}
    outcomes["never"] = {"seconds": None, "still_showing": 1, "by_event": 0, "extra": 0, "length": None}
    row = pages.item_summary("sku-1", 0, outcomes, Counter({0: 60, 1: 41}), 0, timeout_s=30.0)
    assert row["affected"] == 101 and row["refreshed"] == 100 and row["not_refreshed"] == 1
    assert row["not_refreshed_in_timeout"] == 2 and row["still_showing_lists"] == 1
    assert row["affected_by_worker"] == {"w0": 60, "w1": 41}
    assert row["seconds"]["max"] == 40.0 and row["refreshed_list_length_min"] == 10
    fast = pages.item_summary("sku-2", 3, {"v": {"seconds": 0.2, "still_showing": 0, "by_event": 0, "extra": 0,
                                                 "length": 10}}, Counter({0: 1}), 0, timeout_s=30.0)
    overall = pages.refresh_summary([row, fast], [0.2] * 200)
    assert overall["affected"] == 102 and overall["not_refreshed"] == 1 and overall["not_refreshed_in_timeout"] == 2
    assert not overall["met"], "a visitor never refreshed misses the target whatever the percentiles"
    assert overall["items_within_target"] == 1 and overall["worst_item"]["item_id"] == "sku-1"
    assert pages.refresh_summary([fast], [0.2])["met"]
    assert pages.refresh_summary([], [])["seconds"]["n"] == 0


def test_parse_stats_reads_the_latest_counters_line() -> None:
    lines = ["[info] stats {'pulls': 3, 'pulls_forwarded': 1}", "x", "[info] stats {'pulls': 9, 'uptime_s': 2.5}",
             "[info] stats {broken"]
    assert pages.parse_stats(lines) == {"pulls": 9, "uptime_s": 2.5}
    assert pages.parse_stats(["none"]) is None


def test_visitor_events_give_each_visitor_a_few_views_in_order_keyed_by_session() -> None:
    docs = pages.visitor_events(50, 3, ["sku-1", "sku-2"], "t", 1_000_000, random.Random(2))
    per = Counter(d["session_id"] for d in docs)
    assert len(per) == 50 and set(per.values()) <= {1, 2, 3}
    assert len({d["event_id"] for d in docs}) == len(docs)
    for s in per:
        stamps = [d["timestamp"] for d in docs if d["session_id"] == s]
        assert stamps == sorted(stamps) and max(stamps) < 1_000_000, "in order, never from the future"


def test_sentence_and_plots_take_a_section_with_empty_samples() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pulls = pages.pull_summary([_pull("direct", 2.0)])
    pulls["samples_ms"] = {"direct": [2.0], "forwarded": []}
    section = {"pulls": pulls, "visitors": 10, "workers_count": 2,
               "refresh": {"items": [], "overall": pages.refresh_summary([], [])}}
    assert "forwarded -/-" in pages.sentence(section)
    fig, axes = plt.subplots(1, 2)
    pages.plot_pulls(section, axes[0])
    pages.plot_refresh(section, axes[1])
    plt.close(fig)
