"""`stream-reco evaluate`: replay a log in-process through our recommender and the baselines, and report.

`evaluate(...)` is the API (tests and the bench call it); `evaluate_cmd` is the thin click command. The
protocol is docs/evaluation.md's (see `protocol.py`); the report layout is `report.py`'s.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from stream_reco.evaluate.baselines import Baseline, Covis, Method, Pop, RecentPop, SessionKnn
from stream_reco.evaluate.loaders import LoadedLog, LogFormatError, load_log, resolve_log_path
from stream_reco.evaluate.protocol import (
    OURS,
    ProtocolError,
    ProtocolResult,
    QualityTracker,
    StreamRecoMethod,
    run_protocol,
)
from stream_reco.evaluate.report import build_report, rule_price_report, table, write_report
from stream_reco.evaluate.session_knn import Stan, VSkNN, VStan
from stream_reco.extras import require
from stream_reco.settings import Settings

# the seven baselines of docs/evaluation.md, in its table's order
BASELINES: dict[str, type[Baseline]] = {
    "POP": Pop,
    "RPOP": RecentPop,
    "COVIS": Covis,
    "SKNN": SessionKnn,
    "V-SKNN": VSkNN,
    "STAN": Stan,
    "VSTAN": VStan,
}
ALL_METHODS: tuple[str, ...] = (*BASELINES, OURS)
REPORTS_DIR = "reports"


def make_methods(
    names: Sequence[str], loaded: LoadedLog, settings: Settings, catalog_upfront: bool, progress: bool
) -> list[Method]:
    """Fresh methods by name; the RPOP half-life is the dataset's unless `eval_rpop_half_life_h` is set."""
    half_life = settings.eval_rpop_half_life_h or loaded.rpop_half_life_h
    methods: list[Method] = []
    for name in names:
        if name == OURS:
            methods.append(StreamRecoMethod(settings, loaded.catalog, catalog_upfront=catalog_upfront,
                                            progress=progress))
        elif name in BASELINES:
            methods.append(BASELINES[name](half_life))
        else:
            raise click.BadParameter(f"unknown method {name!r}; known: {', '.join(ALL_METHODS)}")
    return methods


# the product rules whose price `--rule-prices` measures: each is switched off alone and our method re-run
# (docs/evaluation.md's rules that stay enforced, dismissed / out of stock / bought, are not among them)
RULE_OFF: dict[str, dict[str, Any]] = {
    "purchase_suppression": {"purchase_suppress_days": 0.0},
    "category_cap": {"max_category_share": 0.0},
    "seen_in_session": {"viewed_penalty": 1.0},
}
RULE_SETTINGS: tuple[str, ...] = tuple(key for off in RULE_OFF.values() for key in off)


def rule_settings(settings: Settings, rule: str | None) -> Settings:
    """The settings of one run: the defaults given, or them with `rule` switched off."""
    return settings if rule is None else settings.replace(**RULE_OFF[rule])


@dataclass
class _GroupOutcome:
    """What one group of methods sends back from its (possibly forked) run."""

    result: ProtocolResult
    quality: dict[str, Any] | None
    model: dict[str, Any] | None
    # the rule settings our method actually ran with (None when the group has no `stream_reco`)
    rules_used: dict[str, Any] | None = None


# the log handed to forked workers: set just before the pool forks, so children inherit it instead of
# receiving a pickled copy of every record
_FORK_SHARED: dict[str, Any] = {}


def _run_group(
    names: Sequence[str], loaded: LoadedLog, settings: Settings, catalog_upfront: bool, progress: bool,
    desc: str = "test-then-learn",
) -> _GroupOutcome:
    k = settings.eval_list_k
    built = make_methods(names, loaded, settings, catalog_upfront, progress)
    ours = next((m for m in built if isinstance(m, StreamRecoMethod)), None)
    tracker = None
    if ours is not None:
        known_items = {r.event.item_id for r in loaded.records} | {i.item_id for i in loaded.catalog}
        tracker = QualityTracker(OURS, loaded.catalog, len(known_items), k, settings.eval_sample_visitors,
                                 settings.seed)
    result = run_protocol(
        loaded.records,
        built,
        k=k,
        train_fraction=settings.eval_train_fraction,
        observers=[tracker.observe] if tracker else [],
        learn_observers=[tracker.learn] if tracker else [],
        progress=progress,
        desc=desc,
    )
    model = None
    rules_used = None
    if ours is not None:
        rules_used = {key: getattr(ours.settings, key) for key in RULE_SETTINGS}
        if ours.artifact is not None:
            model = {"version": ours.artifact.version, "training": ours.artifact.training,
                     "train_s": round(ours.train_s, 3)}
    return _GroupOutcome(result, tracker.summary() if tracker else None, model, rules_used)


def _run_forked_group(names: Sequence[str], rule: str | None, catalog_upfront: bool, progress: bool) -> _GroupOutcome:
    return _run_group(names, _FORK_SHARED["loaded"], rule_settings(_FORK_SHARED["settings"], rule),
                      catalog_upfront, progress, _desc(rule))


def _desc(rule: str | None) -> str:
    return "test-then-learn" if rule is None else f"{OURS} without {rule}"


def evaluate(
    loaded: LoadedLog,
    settings: Settings,
    *,
    methods: Sequence[str] = ALL_METHODS,
    catalog_upfront: bool = False,
    progress: bool = True,
    load_s: float = 0.0,
    jobs: int = 1,
    rule_prices: bool = False,
) -> dict[str, Any]:
    """Run the protocol on a loaded log for the named methods and return the report (nothing is written).

    Methods never interact, so with `jobs` > 1 our method and the baselines run in forked processes
    (on JD our method costs more than the seven baselines together); the ranks are identical to a
    single-process run, only the wall time shrinks.

    `rule_prices` re-runs our method once per product rule of `RULE_OFF`, that rule switched off and every
    other setting as given, and reports what each rule costs (`report["rule_prices"]`). The baselines do
    not depend on these settings and are not re-run.
    """
    names = list(dict.fromkeys(methods))
    make_methods(names, loaded, settings, catalog_upfront, progress=False)  # reject unknown names early
    if rule_prices and OURS not in names:
        raise ValueError(f"rule prices re-run {OURS}, which is not among the methods")
    groups = [g for g in ([n for n in names if n == OURS], [n for n in names if n != OURS]) if g]
    tasks: list[tuple[list[str], str | None]] = [(g, None) for g in groups]
    if rule_prices:
        tasks += [([OURS], rule) for rule in RULE_OFF]
    if jobs > 1 and len(tasks) > 1 and "fork" in multiprocessing.get_all_start_methods():
        _FORK_SHARED.update(loaded=loaded, settings=settings)
        try:
            with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                                     mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_run_forked_group, g, rule, catalog_upfront, progress) for g, rule in tasks]
                all_outcomes = [f.result() for f in futures]
        finally:
            _FORK_SHARED.clear()
        outcomes = all_outcomes[:len(groups)]
    else:
        outcomes = [_run_group(names, loaded, settings, catalog_upfront, progress)]
        all_outcomes = outcomes + [
            _run_group([OURS], loaded, rule_settings(settings, rule), catalog_upfront, progress, _desc(rule))
            for _, rule in tasks[len(groups):]
        ]
    rule_outcomes = all_outcomes[len(outcomes):]
    merged = outcomes[0].result
    by_name = {name: r for o in outcomes for name, r in o.result.methods.items()}
    merged.methods = {name: by_name[name] for name in names}
    merged.elapsed_s = max(o.result.elapsed_s for o in outcomes)
    quality = next((o.quality for o in outcomes if o.quality is not None), None)
    model = next((o.model for o in outcomes if o.model is not None), None)
    extra: dict[str, Any] = {"settings": settings.masked(), "jobs": min(jobs, len(tasks)) if jobs > 1 else 1}
    if loaded.impressions_skipped:
        extra["impressions_skipped"] = loaded.impressions_skipped
    if model is not None:
        extra["model"] = model
    report = build_report(
        merged,
        dataset=loaded.dataset,
        log_path=str(loaded.path or ""),
        k=settings.eval_list_k,
        train_fraction=settings.eval_train_fraction,
        quality=quality,
        extra=extra,
        load_s=load_s,
    )
    if rule_prices:
        default_used = next(o.rules_used for o in outcomes if o.rules_used is not None)
        report["rule_prices"] = rule_price_report(
            report["methods"][OURS],
            default_used,
            {rule: (RULE_OFF[rule], o.rules_used or {}, o.result.methods[OURS], o.quality or {})
             for (_, rule), o in zip(tasks[len(groups):], rule_outcomes, strict=True) if rule is not None},
        )
        report["timings"]["rule_prices_s"] = round(sum(o.result.elapsed_s for o in rule_outcomes), 3)
    return report


@click.command("evaluate")
@click.argument("log_path", metavar="LOG", required=False)
@click.option("--catalog", type=click.Path(exists=True, dir_okay=False), help="Contract catalog JSONL.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="JSON report file (default: <data_dir>/reports/<dataset>.json); PNG plots go beside it.")
@click.option("--dataset", help="Shared dataset to evaluate when LOG is omitted (jd, diginetica, taobao); "
                                "otherwise the name used in the report.")
@click.option("--max-events", type=int, default=None, help="Use only the first N events by time.")
@click.option("--methods", default=",".join(ALL_METHODS), show_default=True,
              help="Comma-separated methods to evaluate.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write the PNG plots.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm progress bars.")
@click.option("--jobs", type=click.IntRange(1, 5), default=min(2, os.cpu_count() or 1), show_default=True,
              help="Processes: 2 runs our method and the baselines side by side; with --rule-prices up to 5 "
                   "(one per run).")
@click.option("--rule-prices", is_flag=True,
              help="Also re-run our method with each product rule switched off in turn (purchase suppression, "
                   "category cap, seen-in-session penalty) and report what each rule costs; one more run of "
                   "our method per rule.")
@click.option("--targets-include-clicks", "clicks_as_targets", is_flag=True,
              help="Also score clicks as next-item targets. By default a click is learned as a signal of interest "
                   "but is no target: it is mostly the product of the list the shop had on screen, which the "
                   "replayed method did not show, so scoring it rewards copying the old recommender. Impressions "
                   "(what the shop showed, not what the visitor did) are never targets and are left out.")
@click.pass_obj
def evaluate_cmd(state: Any, log_path: str | None, catalog: str | None, report_path: str | None,
                 dataset: str | None, max_events: int | None, methods: str, plots: bool, progress: bool,
                 jobs: int, rule_prices: bool, clicks_as_targets: bool) -> None:
    """Replay LOG (JSONL, a shared dataset file, or a dataset name) test-then-learn and report quality."""
    settings: Settings = state.settings
    source = log_path or dataset
    if not source:
        raise click.UsageError("give a LOG or --dataset NAME")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if rule_prices and OURS not in names:
        raise click.UsageError(f"--rule-prices re-runs {OURS}; add it to --methods")
    # said now rather than after a replay of minutes: training our method needs scipy, plots matplotlib
    require("evaluate", *(["scipy"] if OURS in names else []), *(["matplotlib"] if plots else []))
    t0 = time.perf_counter()
    try:
        loaded = load_log(resolve_log_path(source, settings.shared_data_dir), catalog, max_events=max_events,
                          progress=progress, clicks_as_targets=clicks_as_targets)
    except (LogFormatError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    load_s = time.perf_counter() - t0
    # a catalogue the shop gave (a file) is known up front; one derived from a dataset's rows is not
    upfront = catalog is not None or loaded.dataset == "jsonl"
    if dataset:
        loaded.dataset = dataset
    try:
        report = evaluate(loaded, settings, methods=names, catalog_upfront=upfront, progress=progress,
                          load_s=load_s, jobs=jobs, rule_prices=rule_prices)
    except ProtocolError as exc:
        raise click.ClickException(str(exc)) from exc
    # CPU seconds of this process and its forked workers: wall time alone misleads on a shared machine
    times = os.times()
    report["timings"].update(wall_s=round(time.perf_counter() - t0, 3),
                             cpu_s=round(times.user + times.system + times.children_user + times.children_system, 3))
    out = Path(report_path) if report_path else settings.data_path / REPORTS_DIR / f"{loaded.dataset}.json"
    write_report(report, out)
    written = [out]
    if plots:
        from stream_reco.evaluate.plots import plot_report

        written += plot_report(report, out)
    click.echo(table(report))
    click.echo("wrote " + ", ".join(str(p) for p in written))
