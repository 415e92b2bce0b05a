"""The evaluation report: one JSON document, methods under `methods`, ours named `stream_reco`.

Layout (all metric values are means over target events, rounded to 6 decimals):

    {"dataset", "log", "protocol": {...}, "n_events", "n_train", "n_test", "timings": {...},
     "methods": {NAME: {"all":   {"targets", "hr@10", "hr@20", "mrr@20", "ndcg@20",
                                  "seen": {...same keys}, "new": {...}},
                        "novel": {...},
                        "hr_curve": {"all": [HR@1 .. HR@K], "novel": [...]},
                        "timing": {"fit_s", "test_s", "requests", "ms_per_request"}},
                 "stream_reco": {..., "quality": {"catalog_coverage", "personalisation",
                                                  "intra_list_diversity", "violations": {...}}}},
     "goal": {"ratio_required", per variant and metric: ours / best baseline, "met"},
     "tables": {VARIANT: {"targets", "methods": {NAME: {"hr@20", "mrr@20"}},
                          "vs_best": {METRIC: {"best_baseline", "best", "ratio"}}}},
     "rule_prices": {"default": {...}, "rules": {RULE: {...}}}}     (only with --rule-prices)

`rule_prices` (`rule_price_report`): our method re-run with one product rule switched off at a time.
Per rule: "switched_off" (the overriding settings), "settings_used" (every rule setting that run had),
"all"/"novel" HR@20 and MRR@20 with the rule off, "price" (off - default per variant/metric: what the rule
costs, negative when it earns), "ratio" (off / default), and the quality of that run's lists
("violations", "intra_list_diversity", "personalisation", "catalog_coverage").

The goal block restates docs/evaluation.md's target (ours >= 1.05 x the best baseline on HR@20 and MRR@20,
both variants, zero violations) so a reader need not compute it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from stream_reco.evaluate.protocol import GROUPS, OURS, VARIANTS, MethodResult, ProtocolResult

GOAL_RATIO = 1.05
GOAL_METRICS: tuple[str, ...] = ("hr@20", "mrr@20")
MS_PER_S = 1000.0


def method_report(result: MethodResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        groups = result.ranks[variant]
        block: dict[str, Any] = dict(groups["overall"].summary())
        for group in GROUPS[1:]:
            block[group] = groups[group].summary()
        out[variant] = block
    out["hr_curve"] = {v: result.ranks[v]["overall"].hr_curve() for v in VARIANTS}
    out["timing"] = {
        "fit_s": round(result.fit_s, 3),
        "test_s": round(result.test_s, 3),
        "requests": result.requests,
        "ms_per_request": round(MS_PER_S * result.test_s / result.requests, 4) if result.requests else None,
    }
    return out


def vs_best(methods: dict[str, dict[str, Any]], variant: str, metric: str) -> dict[str, Any]:
    """Ours against the best baseline on one cell: {"ours", "best_baseline", "best", "ratio"}."""
    ours = float(methods[OURS][variant][metric])
    best_name, best = max(((n, float(m[variant][metric])) for n, m in methods.items() if n != OURS),
                          key=lambda p: p[1], default=("", 0.0))
    ratio = ours / best if best > 0 else None
    return {"ours": ours, "best_baseline": best_name, "best": best,
            "ratio": round(ratio, 4) if ratio is not None else None}


def goal(methods: dict[str, dict[str, Any]], violations: int | None) -> dict[str, Any]:
    """Ours over the best baseline per variant and metric; `met` needs every ratio >= GOAL_RATIO."""
    if OURS not in methods:
        return {"ratio_required": GOAL_RATIO, "met": None, "note": f"{OURS} was not evaluated"}
    out: dict[str, Any] = {"ratio_required": GOAL_RATIO}
    met = len(methods) > 1 and not violations
    for variant in VARIANTS:
        for metric in GOAL_METRICS:
            cell = vs_best(methods, variant, metric)
            out[f"{variant}/{metric}"] = cell
            met = met and cell["ratio"] is not None and cell["ratio"] >= GOAL_RATIO
    out["met"] = met
    return out


def tables(methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per variant: every method's HR@20 / MRR@20 and, when ours ran beside baselines, its ratio per cell."""
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        block: dict[str, Any] = {
            "targets": next((m[variant]["targets"] for m in methods.values()), 0),
            "methods": {n: {metric: m[variant][metric] for metric in GOAL_METRICS} for n, m in methods.items()},
        }
        if OURS in methods and len(methods) > 1:
            block["vs_best"] = {metric: vs_best(methods, variant, metric) for metric in GOAL_METRICS}
        out[variant] = block
    return out


def rule_price_report(
    ours: dict[str, Any],
    default_used: dict[str, Any],
    runs: dict[str, tuple[dict[str, Any], dict[str, Any], MethodResult, dict[str, Any]]],
) -> dict[str, Any]:
    """The price of each product rule: `runs` maps a rule to (settings switched off, rule settings that run
    used, its result, its list quality); `ours` is our default run's method report."""
    quality = ours.get("quality", {})
    out: dict[str, Any] = {
        "default": {
            "settings_used": default_used,
            **{v: {metric: ours[v][metric] for metric in GOAL_METRICS} for v in VARIANTS},
            "violations": quality.get("violations", {}).get("total"),
            "intra_list_diversity": quality.get("intra_list_diversity"),
            "personalisation": quality.get("personalisation"),
        },
        "rules": {},
    }
    for rule, (off, used, result, q) in runs.items():
        report = method_report(result)
        block: dict[str, Any] = {"switched_off": off, "settings_used": used}
        price: dict[str, float] = {}
        ratio: dict[str, float | None] = {}
        for v in VARIANTS:
            block[v] = {metric: report[v][metric] for metric in GOAL_METRICS}
            for metric in GOAL_METRICS:
                base = float(ours[v][metric])
                value = float(report[v][metric])
                price[f"{v}/{metric}"] = round(value - base, 6)
                ratio[f"{v}/{metric}"] = round(value / base, 4) if base > 0 else None
        block.update(
            price=price,
            ratio=ratio,
            violations=q.get("violations", {}),
            intra_list_diversity=q.get("intra_list_diversity"),
            personalisation=q.get("personalisation"),
            catalog_coverage=q.get("catalog_coverage"),
        )
        out["rules"][rule] = block
    return out


def build_report(
    result: ProtocolResult,
    *,
    dataset: str,
    log_path: str,
    k: int,
    train_fraction: float,
    quality: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    load_s: float = 0.0,
) -> dict[str, Any]:
    methods = {name: method_report(r) for name, r in result.methods.items()}
    if quality is not None and OURS in methods:
        methods[OURS]["quality"] = quality
    violations = quality["violations"]["total"] if quality is not None else None
    report: dict[str, Any] = {
        "dataset": dataset,
        "log": log_path,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "protocol": {
            "k": k,
            "train_fraction": train_fraction,
            "variants": list(VARIANTS),
            "groups": list(GROUPS),
            "description": "prequential test-then-learn, docs/evaluation.md",
        },
        "n_events": result.n_events,
        "n_train": result.n_train,
        "n_test": result.n_test,
        "train_visitors": result.train_visitors,
        "timings": {"load_s": round(load_s, 3), "protocol_s": round(result.elapsed_s, 3)},
        "methods": methods,
        "goal": goal(methods, violations),
        "tables": tables(methods),
    }
    if extra:
        report.update(extra)
    return report


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return path


def _num(x: Any, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def table(report: dict[str, Any]) -> str:
    """The plain-text summary the CLI prints: per variant every method's HR@20 / MRR@20 and ours against the
    best baseline per cell (naming it), our list quality, the goal, and the rule prices when measured."""
    lines = [f"{report['dataset']}: {report['n_events']} events, test {report['n_test']}"]
    for variant, block in (report.get("tables") or tables(report["methods"])).items():
        lines.append(f"{variant + ' (' + str(block['targets']) + ' targets)':<26}{'HR@20':>10}{'MRR@20':>10}")
        for name, cells in block["methods"].items():
            lines.append(f"  {name:<24}{cells['hr@20']:>10.3f}{cells['mrr@20']:>10.3f}")
        best = block.get("vs_best")
        if best:
            cells_text = "   ".join(
                f"{metric.upper()} x{_num(c['ratio'], '.2f')} vs {c['best_baseline']}"
                for metric, c in best.items()
            )
            lines.append(f"  {OURS} vs best baseline: {cells_text}")
    quality = report["methods"].get(OURS, {}).get("quality")
    if quality:
        lines.append(
            f"{OURS}: coverage {quality['catalog_coverage']:.3f}, personalisation {quality['personalisation']:.3f}, "
            f"intra-list diversity {quality['intra_list_diversity']}, violations {quality['violations']['total']}"
        )
    t = report.get("timings", {})
    if "wall_s" in t:
        lines.append(f"time: {t['wall_s']:.1f}s wall, {t['cpu_s']:.1f}s CPU")
    g = report.get("goal", {})
    if g.get("met") is not None:
        ratios = ", ".join(f"{key} x{val['ratio']}" for key, val in g.items() if isinstance(val, dict))
        lines.append(f"goal (>= x{g['ratio_required']}): {'met' if g['met'] else 'not met'}; {ratios}")
    prices = report.get("rule_prices")
    if prices:
        lines.append(f"rule prices ({OURS} with one rule off; price = off - default, + means the rule costs):")
        width = 33
        lines.append(f"  {'rule off':<22}" + "".join(f"{v + ' HR@20 / MRR@20':>{width}}" for v in VARIANTS)
                     + f"{'violations':>12}{'diversity':>11}{'personal.':>11}")
        rows = [("(default)", prices["default"], None)] + [(r, b, b["price"]) for r, b in prices["rules"].items()]
        for rule, b, price in rows:
            cells = ""
            for v in VARIANTS:
                hr, mrr = f"{b[v]['hr@20']:.3f}", f"{b[v]['mrr@20']:.3f}"
                if price is not None:
                    hr += f" ({price[v + '/hr@20']:+.3f})"
                    mrr += f" ({price[v + '/mrr@20']:+.3f})"
                cells += f"{hr + ' / ' + mrr:>{width}}"
            violations = b["violations"].get("total") if isinstance(b["violations"], dict) else b["violations"]
            lines.append(f"  {rule:<22}{cells}{_num(violations, 'd'):>12}"
                         f"{_num(b['intra_list_diversity'], '.2f'):>11}{_num(b['personalisation']):>11}")
    return "\n".join(lines)
