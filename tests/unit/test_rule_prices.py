"""`evaluate --rule-prices`: our method re-run with each product rule off, and the per-variant summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from stream_reco.cli import cli
from stream_reco.evaluate.cli import RULE_OFF, RULE_SETTINGS, evaluate, rule_settings
from stream_reco.evaluate.loaders import LoadedLog, LogRecord, sort_by_time
from stream_reco.evaluate.protocol import OURS, VARIANTS
from stream_reco.evaluate.report import table
from stream_reco.settings import Settings
from tests.unit.test_evaluate import shop_log, write_jsonl

CELLS = ("all/hr@20", "all/mrr@20", "novel/hr@20", "novel/mrr@20")


def _loaded() -> LoadedLog:
    events, catalog = shop_log(seed=5)
    return LoadedLog(records=sort_by_time(LogRecord(e, e.event_type != "dismiss") for e in events), catalog=catalog)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    settings = Settings.load(env={}, embedding_dim=8)
    return evaluate(_loaded(), settings, methods=["POP", "COVIS", OURS], catalog_upfront=True, progress=False,
                    jobs=1, rule_prices=True)


def test_rule_settings_switch_exactly_one_rule_off() -> None:
    settings = Settings.load(env={})
    assert rule_settings(settings, None) is settings
    assert rule_settings(settings, "purchase_suppression").purchase_suppress_days == 0
    assert rule_settings(settings, "category_cap").max_category_share == 0
    assert rule_settings(settings, "seen_in_session").viewed_penalty == 1.0
    # the defaults really have each rule on, or switching it off would measure nothing
    assert settings.purchase_suppress_days > 0 and settings.max_category_share > 0 and settings.viewed_penalty < 1


def test_report_has_a_price_block_per_rule_with_the_settings_each_run_used(report: dict[str, Any]) -> None:
    prices = report["rule_prices"]
    defaults = Settings.load(env={})
    default_used = {key: getattr(defaults, key) for key in RULE_SETTINGS}
    assert prices["default"]["settings_used"] == default_used
    for v in VARIANTS:
        assert prices["default"][v] == {m: report["methods"][OURS][v][m] for m in ("hr@20", "mrr@20")}
    assert list(prices["rules"]) == list(RULE_OFF)
    for rule, block in prices["rules"].items():
        assert set(block) == {"switched_off", "settings_used", "all", "novel", "price", "ratio", "violations",
                              "intra_list_diversity", "personalisation", "catalog_coverage"}
        # the run used the rule off and every other rule as by default
        assert block["switched_off"] == RULE_OFF[rule]
        assert block["settings_used"] == {**default_used, **RULE_OFF[rule]}
        assert block["settings_used"] != default_used
        assert set(block["price"]) == set(CELLS) == set(block["ratio"])
        for cell in CELLS:
            v, metric = cell.split("/")
            assert 0.0 <= block[v][metric] <= 1.0
            assert block["price"][cell] == pytest.approx(block[v][metric] - report["methods"][OURS][v][metric])
        # dismissed, out-of-stock and bought items stay filtered whichever product rule is off
        assert block["violations"]["total"] == 0
        assert block["intra_list_diversity"] >= 1
    # the baselines ran once: their figures are not repeated per rule
    assert set(report["methods"]) == {"POP", "COVIS", OURS}
    assert report["timings"]["rule_prices_s"] > 0


def test_summary_names_the_best_baseline_per_cell(report: dict[str, Any]) -> None:
    text = table(report)
    for v in VARIANTS:
        block = report["tables"][v]
        assert set(block["methods"]) == {"POP", "COVIS", OURS}
        for metric in ("hr@20", "mrr@20"):
            cell = block["vs_best"][metric]
            best = max(("POP", "COVIS"), key=lambda n: block["methods"][n][metric])
            assert cell["best_baseline"] == best
            assert cell["ours"] == block["methods"][OURS][metric]
            assert f"{metric.upper()} x{cell['ratio']:.2f} vs {best}" in text
        assert f"{v} ({block['targets']} targets)" in text
    assert "personalisation" in text and "intra-list diversity" in text
    assert "rule prices" in text
    for rule in RULE_OFF:
        assert rule in text


def test_forked_rule_runs_match_a_single_process() -> None:
    settings = Settings.load(env={}, embedding_dim=8)
    one = evaluate(_loaded(), settings, methods=["COVIS", OURS], catalog_upfront=True, progress=False, jobs=1,
                   rule_prices=True)
    two = evaluate(_loaded(), settings, methods=["COVIS", OURS], catalog_upfront=True, progress=False, jobs=2,
                   rule_prices=True)
    assert two["jobs"] == 2
    for rule in RULE_OFF:
        a, b = one["rule_prices"]["rules"][rule], two["rule_prices"]["rules"][rule]
        assert {k: a[k] for k in ("settings_used", "all", "novel", "violations")} == {
            k: b[k] for k in ("settings_used", "all", "novel", "violations")}


def test_cli_rule_prices(tmp_path: Path) -> None:
    events, catalog = shop_log()
    write_jsonl(tmp_path / "events.jsonl", [e.to_dict() for e in events])
    write_jsonl(tmp_path / "catalog.jsonl", [i.to_dict() for i in catalog])
    env = {"STREAM_RECO_DATA_DIR": str(tmp_path / "data"), "STREAM_RECO_EMBEDDING_DIM": "8"}
    runner = CliRunner()
    out = tmp_path / "r.json"
    log, cat = str(tmp_path / "events.jsonl"), str(tmp_path / "catalog.jsonl")
    result = runner.invoke(cli, ["evaluate", log, "--catalog", cat,
                                 "--methods", "COVIS,stream_reco", "--rule-prices", "--report", str(out),
                                 "--no-plots", "--no-progress", "--jobs", "1"], env=env)
    assert result.exit_code == 0, result.output
    assert list(orjson.loads(out.read_bytes())["rule_prices"]["rules"]) == list(RULE_OFF)
    assert "category_cap" in result.output and "vs COVIS" in result.output
    bad = runner.invoke(cli, ["evaluate", str(tmp_path / "events.jsonl"), "--methods", "POP", "--rule-prices",
                              "--no-progress", "--no-plots"], env=env)
    assert bad.exit_code == 2 and "--rule-prices" in bad.output
