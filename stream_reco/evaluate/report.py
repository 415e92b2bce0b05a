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
     "goal": {"ratio_required", per variant and metric: ours / best baseline, "met"}}

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


def goal(methods: dict[str, dict[str, Any]], violations: int | None) -> dict[str, Any]:
    """Ours over the best baseline per variant and metric; `met` needs every ratio >= GOAL_RATIO."""
    if OURS not in methods:
        return {"ratio_required": GOAL_RATIO, "met": None, "note": f"{OURS} was not evaluated"}
    baselines = {n: m for n, m in methods.items() if n != OURS}
    out: dict[str, Any] = {"ratio_required": GOAL_RATIO}
    met = bool(baselines) and not violations
    for variant in VARIANTS:
        for metric in GOAL_METRICS:
            ours = float(methods[OURS][variant][metric])
            best_name, best = max(((n, float(m[variant][metric])) for n, m in baselines.items()),
                                  key=lambda p: p[1], default=("", 0.0))
            ratio = ours / best if best > 0 else None
            out[f"{variant}/{metric}"] = {"ours": ours, "best_baseline": best_name, "best": best,
                                         "ratio": round(ratio, 4) if ratio is not None else None}
            met = met and ratio is not None and ratio >= GOAL_RATIO
    out["met"] = met
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
    }
    if extra:
        report.update(extra)
    return report


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return path


def table(report: dict[str, Any]) -> str:
    """A plain-text table of HR@20 / MRR@20 per method and variant (what the CLI prints)."""
    lines = [f"{report['dataset']}: {report['n_events']} events, test {report['n_test']}",
             f"{'method':<12}" + "".join(f"{v + ' HR@20/MRR@20':>26}" for v in VARIANTS)]
    for name, m in report["methods"].items():
        cells = "".join(
            f"{m[v]['hr@20']:>12.3f} / {m[v]['mrr@20']:.3f} ({m[v]['targets']:>5})" for v in VARIANTS
        )
        lines.append(f"{name:<12}{cells}")
    quality = report["methods"].get(OURS, {}).get("quality")
    if quality:
        lines.append(
            f"{OURS}: coverage {quality['catalog_coverage']:.3f}, personalisation {quality['personalisation']:.3f}, "
            f"diversity {quality['intra_list_diversity']}, violations {quality['violations']['total']}"
        )
    t = report.get("timings", {})
    if "wall_s" in t:
        lines.append(f"time: {t['wall_s']:.1f}s wall, {t['cpu_s']:.1f}s CPU")
    g = report.get("goal", {})
    if g.get("met") is not None:
        ratios = ", ".join(f"{key} x{val['ratio']}" for key, val in g.items() if isinstance(val, dict))
        lines.append(f"goal (>= x{g['ratio_required']}): {'met' if g['met'] else 'not met'}; {ratios}")
    return "\n".join(lines)
