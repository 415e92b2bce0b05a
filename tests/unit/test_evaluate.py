"""The prequential protocol (split, novel variant, seen/new), rule checks, and end-to-end `evaluate`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream_reco.cli import cli
from stream_reco.core.events import CatalogItem, Event, EventType
from stream_reco.evaluate.loaders import LogRecord, dataset_path
from stream_reco.evaluate.metrics import METRIC_NAMES
from stream_reco.evaluate.protocol import (
    GROUPS,
    OURS,
    VARIANTS,
    ProtocolError,
    QualityTracker,
    run_protocol,
    split,
)
from stream_reco.settings import Settings


def rec(visitor: str, item: str, t: int, kind: EventType = "view", target: bool | None = None) -> LogRecord:
    event = Event(f"{visitor}-{item}-{t}", kind, item, t, session_id=visitor)
    return LogRecord(event, kind != "dismiss" if target is None else target)


class Recording:
    """A method that always shows the same list and records what it was asked."""

    def __init__(self, shown: list[str], name: str = "REC") -> None:
        self.name = name
        self.shown = shown
        self.fitted: list[LogRecord] = []
        self.learned: list[LogRecord] = []
        self.asked: list[tuple[str, int, AbstractSet[str] | None]] = []

    def fit(self, records: Sequence[LogRecord]) -> None:
        self.fitted = list(records)

    def recommend(self, visitor: str, now_ms: int, k: int, exclude: AbstractSet[str] | None = None) -> list[str]:
        self.asked.append((visitor, now_ms, set(exclude) if exclude is not None else None))
        return [i for i in self.shown if not exclude or i not in exclude][:k]

    def learn(self, record: LogRecord) -> None:
        self.learned.append(record)


def test_split_is_by_position_of_the_time_sorted_log() -> None:
    records = [rec("v", str(i), i) for i in range(10)]
    train, test = split(records, 0.8)
    assert [r.event.item_id for r in train] == [str(i) for i in range(8)]
    assert [r.event.item_id for r in test] == ["8", "9"]
    with pytest.raises(ProtocolError):
        split(records, 1.0)
    with pytest.raises(ProtocolError):
        run_protocol(records[:1], [Recording([])], progress=False)


def test_protocol_asks_before_learning_and_filters_novel_targets() -> None:
    train = [rec("v", "a", 1), rec("v", "c", 2, target=False), rec("x", "z", 3), rec("x", "z", 4)]
    test = [
        rec("v", "a", 10),  # repeat: 'all' only
        rec("v", "c", 11),  # c was a non-target signal in training: interacted, so not novel
        rec("v", "b", 12),  # novel, earlier items {a, c} removed from the list
        rec("w", "a", 13),  # new visitor, novel
        rec("w", "d", 14, "dismiss"),  # not a target, only learned
        rec("v", "e", 15, target=False),  # non-target kind: learned, never scored
        rec("v", "b", 16),  # b is now known: 'all' only
        rec("w", "q", 17),
    ]
    method = Recording(["a", "b", "c", "e"])
    result = run_protocol(
        train + test, [method], k=3, train_fraction=len(train) / len(train + test) + 1e-9, progress=False
    )
    assert method.fitted == train
    assert method.learned == test
    all_ranks = result.methods["REC"].ranks["all"]
    novel = result.methods["REC"].ranks["novel"]
    assert all_ranks["overall"].n == 6 and novel["overall"].n == 3
    assert all_ranks["seen"].n == 4 and all_ranks["new"].n == 2
    # novel asks carry the visitor's earlier items, including the training part and non-target kinds
    novel_asks = [(v, t, ex) for v, t, ex in method.asked if ex is not None]
    assert novel_asks == [("v", 12, {"a", "c"}), ("w", 13, set()), ("w", 17, {"a", "d"})]
    # ranks: v/a -> 1, v/c -> 3, v/b -> 2, w/a -> 1, v/b -> 2, w/q -> miss
    assert all_ranks["overall"].counts[1:4] == [2, 2, 1] and all_ranks["overall"].misses == 1
    # novel: v/b with {a, c} removed -> [b, e] rank 1; w/a rank 1; w/q miss
    assert novel["overall"].counts[1] == 2 and novel["overall"].misses == 1
    assert result.n_train == len(train) and result.n_test == len(test) and result.train_visitors == 2


def test_quality_tracker_counts_each_rule_violation() -> None:
    catalog = [
        CatalogItem("gone", in_stock=False),
        CatalogItem("soap", repurchasable=True, category=("Home",)),
        CatalogItem("sofa", category=("Furniture",)),
    ]
    tracker = QualityTracker("M", catalog, n_known_items=10, k=3, sample_visitors=10, seed=1)
    tracker.learn(rec("v", "x", 1, "dismiss"))
    tracker.learn(rec("v", "sofa", 2, "purchase"))
    tracker.learn(rec("v", "soap", 3, "purchase"))
    target = rec("v", "y", 4)
    tracker.observe("M", "all", target, ["x", "gone", "sofa", "soap"])
    tracker.observe("OTHER", "all", target, ["x"])  # other methods are not checked
    summary = tracker.summary()
    assert summary["violations"] == {"dismissed": 1, "out_of_stock": 1, "purchased": 1, "total": 3}
    assert summary["catalog_coverage"] == 0.4
    assert summary["intra_list_diversity"] == 2


def shop_log(seed: int = 3) -> tuple[list[Event], list[CatalogItem]]:
    """A small shop with categories, carts, purchases, dismissals and out-of-stock items."""
    rng = random.Random(seed)
    catalog = []
    for c in range(4):
        for i in range(15):
            catalog.append(
                CatalogItem(
                    f"c{c}-{i}",
                    title=f"item {c}-{i}",
                    category=("Shop", f"cat{c}"),
                    price=10.0 + i,
                    in_stock=i != 3,
                    repurchasable=c == 0,
                )
            )
    in_stock = [i.item_id for i in catalog if i.in_stock] + ["c1-3"]  # an out-of-stock item is still viewed
    events: list[Event] = []
    t = 1_700_000_000_000
    for v in range(80):
        ids = {"user_id": f"u{v % 30}"} if v % 2 else {"session_id": f"s{v}"}
        cluster = v % 4
        for n in range(rng.randint(3, 12)):
            t += rng.randint(1_000, 60_000)
            item = rng.choice([i for i in in_stock if i.startswith(f"c{cluster}-")] + ["c1-3"])
            roll = rng.random()
            kind: EventType = (
                "purchase" if roll < 0.06 else "add_to_cart" if roll < 0.15 else "dismiss" if roll < 0.2 else "view"
            )
            events.append(Event(f"e{v}-{n}", kind, item, t, **ids))
    return events, catalog


def write_jsonl(path: Path, rows: Sequence[dict[str, object]]) -> None:
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")


def assert_complete(report: dict[str, object], methods: Sequence[str]) -> None:
    got = report["methods"]
    assert isinstance(got, dict) and list(got) == list(methods)
    for name in methods:
        for variant in VARIANTS:
            block = got[name][variant]
            for metric in METRIC_NAMES:
                assert 0.0 <= block[metric] <= 1.0
            for group in GROUPS[1:]:
                assert set(METRIC_NAMES) <= set(block[group])
            assert block["targets"] == block["seen"]["targets"] + block["new"]["targets"]
        assert len(got[name]["hr_curve"]["all"]) == 20


def test_evaluate_command_end_to_end_on_a_shop_log(tmp_path: Path) -> None:
    events, catalog = shop_log()
    write_jsonl(tmp_path / "events.jsonl", [e.to_dict() for e in events])
    write_jsonl(tmp_path / "catalog.jsonl", [i.to_dict() for i in catalog])
    report_path = tmp_path / "out" / "shop.json"
    env = {"STREAM_RECO_DATA_DIR": str(tmp_path / "data"), "STREAM_RECO_EMBEDDING_DIM": "16"}
    result = CliRunner().invoke(
        cli, ["evaluate", str(tmp_path / "events.jsonl"), "--report", str(report_path), "--no-progress"], env=env
    )
    assert result.exit_code == 0, result.output
    report = orjson.loads(report_path.read_bytes())
    methods = ["POP", "RPOP", "COVIS", "SKNN", "V-SKNN", "STAN", "VSTAN", OURS]
    assert_complete(report, methods)
    quality = report["methods"][OURS]["quality"]
    assert quality["violations"]["total"] == 0, quality["violation_examples"]
    assert 0 < quality["catalog_coverage"] <= 1 and quality["intra_list_diversity"] >= 1
    assert set(report["goal"]) >= {"ratio_required", "met", "all/hr@20", "novel/mrr@20"}
    assert (tmp_path / "out" / "shop.metrics.png").stat().st_size > 0
    assert (tmp_path / "out" / "shop.hr_at_k.png").stat().st_size > 0
    assert "stream_reco" in result.output


def test_evaluate_a_dataset_subset(tmp_path: Path) -> None:
    settings = Settings.load(env={})
    if not dataset_path("diginetica", settings.shared_data_dir).is_file():
        pytest.skip("shared dataset 'diginetica' not found (set STREAM_RECO_SHARED_DATA_DIR)")
    report_path = tmp_path / "dig.json"
    env = {"STREAM_RECO_DATA_DIR": str(tmp_path / "data"), "STREAM_RECO_EMBEDDING_DIM": "16"}
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--dataset",
            "diginetica",
            "--max-events",
            "1500",
            "--report",
            str(report_path),
            "--no-plots",
            "--no-progress",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    report = orjson.loads(report_path.read_bytes())
    assert report["n_events"] == 1500 and report["n_test"] == 300
    assert_complete(report, ["POP", "RPOP", "COVIS", "SKNN", "V-SKNN", "STAN", "VSTAN", OURS])
    assert report["methods"][OURS]["quality"]["violations"]["total"] == 0


def test_evaluate_rejects_unknown_methods_and_missing_logs(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["evaluate"]).exit_code == 2
    assert runner.invoke(cli, ["evaluate", str(tmp_path / "nope.jsonl")]).exit_code == 1
    events, _ = shop_log()
    write_jsonl(tmp_path / "e.jsonl", [e.to_dict() for e in events])
    bad = runner.invoke(cli, ["evaluate", str(tmp_path / "e.jsonl"), "--methods", "POP,NOPE", "--no-progress"])
    assert bad.exit_code == 2 and "NOPE" in bad.output


def test_two_processes_give_the_same_ranks_as_one() -> None:
    from stream_reco.evaluate.cli import evaluate
    from stream_reco.evaluate.loaders import LoadedLog, sort_by_time

    events, catalog = shop_log(seed=5)
    loaded = LoadedLog(records=sort_by_time(LogRecord(e, e.event_type != "dismiss") for e in events),
                       catalog=catalog)
    settings = Settings.load(env={}, embedding_dim=8)
    one = evaluate(loaded, settings, methods=["COVIS", OURS], catalog_upfront=True, progress=False, jobs=1)
    two = evaluate(loaded, settings, methods=["COVIS", OURS], catalog_upfront=True, progress=False, jobs=2)
    assert two["jobs"] == 2 and one["jobs"] == 1
    for name in ("COVIS", OURS):
        for variant in VARIANTS:
            assert one["methods"][name][variant] == two["methods"][name][variant]
    assert one["methods"][OURS]["quality"]["violations"] == two["methods"][OURS]["quality"]["violations"]
