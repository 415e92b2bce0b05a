"""Writing a bench result: strict JSON (no NaN), a check that it is complete, and the PNG summary.

Why strict: the result is read by scripts and CI (tests/integration/test_bench.py); a NaN or an infinity
means a measurement silently failed (an empty sample, a zero duration), so it is reported as a problem
instead of being written as the non-standard `NaN` token that most JSON readers reject.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.section_output import PNG_DPI

#: sections every result has; each must be a non-empty object
REQUIRED_SECTIONS = ("environment", "throughput", "freshness", "ann", "memory", "scaling")
#: keys (dotted paths) that must hold finite numbers
REQUIRED_NUMBERS = (
    "throughput.worker_events_per_s",
    "throughput.passthrough_events_per_s",
    "throughput.ratio_median",
    "freshness.max_rate_events_per_s",
    "freshness.p99_ms_at_target_fraction",
    "memory.bytes_per_visitor_serialised_mean",
    "memory.bytes_per_visitor_stored_rss",
    "memory.worker.rss_end_bytes",
    "scaling.core_cost_growth",
    "wall_s",
)
FIGURE_SIZE = (13.0, 18.0)
#: sections that are optional (older results lack them) but, when present, must not hold an error
OPTIONAL_SECTIONS = ("restart", "stats_memory", "pages")
LATENCY_PERCENTILES = ("p50", "p95", "p99")
#: the two delta sizes bench/ann.py measures (new items served exactly beside the annoy snapshot)
DELTA_SMALL, DELTA_LARGE = 100, 1000


def _get(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def _non_finite(doc: Any, path: str = "") -> Iterator[str]:
    if isinstance(doc, float) and not math.isfinite(doc):
        yield path or "<root>"
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield from _non_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(doc, list | tuple):
        for i, v in enumerate(doc):
            yield from _non_finite(v, f"{path}[{i}]")


def iter_problems(result: dict[str, Any]) -> Iterator[str]:
    """Why `result` is not a complete, valid bench result (nothing when it is)."""
    for name in REQUIRED_SECTIONS:
        if not isinstance(result.get(name), dict) or not result[name]:
            yield f"section {name!r} is missing or empty"
    for dotted in REQUIRED_NUMBERS:
        value = _get(result, dotted)
        if isinstance(value, bool) or not isinstance(value, int | float):
            yield f"{dotted} is not a number: {value!r}"
    for path in _non_finite(result):
        yield f"{path} is not finite"
    levels = _get(result, "freshness.levels") or []
    if len(levels) < 1 or any(not lv.get("complete") for lv in levels):
        yield "a freshness level did not receive every list"
    for shop, run in (_get(result, "shops") or {}).items():
        if run.get("worker_crashed"):
            yield f"the worker of shop {shop} crashed"
    for name in OPTIONAL_SECTIONS:
        section = result.get(name)
        if isinstance(section, dict) and section.get("error"):
            yield f"section {name!r} failed: {section['error'][:300]}"
    for row in _get(result, "restart.retentions") or []:
        for mode in ("off", "prime", "on"):
            if (row.get(mode) or {}).get("crashed"):
                yield f"the restarted worker ({mode}, {row['events']} events) crashed"
    for worker in _get(result, "pages.workers") or []:
        if worker.get("crashed"):
            yield f"a pages worker ({worker.get('name')}) crashed"


def _jsonable(doc: Any) -> Any:
    """NaN and infinities become null (strict JSON); the problem list says where they were."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    if isinstance(doc, dict):
        return {str(k): _jsonable(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_jsonable(v) for v in doc]
    return doc


def write(result: dict[str, Any], output: Path) -> list[str]:
    """Write `output` (JSON), the PNG and, for a complete result, the Markdown tables next to it (.png, .md);
    returns the problems found (also stored in the result)."""
    problems = list(iter_problems(result))
    result["problems"] = problems
    result["png"] = output.with_suffix(".png").name  # beside the JSON; no machine paths in results
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(_jsonable(result), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    plot(result, output.with_suffix(".png"))
    if not problems:
        output.with_suffix(".md").write_text(markdown(result))
    return problems


def plot(result: dict[str, Any], path: Path) -> None:
    """Eight panels: throughput vs pass-through, latency percentiles by load, ANN speed/recall, memory,
    restart, statistics memory, pull latency and stock refresh (the last four when their sections ran)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 2, figsize=FIGURE_SIZE)
    env = result.get("environment", {})
    fig.suptitle(f"stream-reco bench ({result.get('profile')}) - {env.get('date', '')} - "
                 f"{env.get('cpu_count')} cores, {env.get('cpu', '')[:48]}", fontsize=10)
    _plot_throughput(axes[0][0], result)
    _plot_latency(axes[0][1], result)
    _plot_ann(axes[1][0], result)
    _plot_memory(axes[1][1], result)
    _plot_restart(axes[2][0], result)
    _plot_stats_memory(axes[2][1], result)
    _plot_pages(axes[3][0], axes[3][1], result)
    fig.tight_layout()
    fig.savefig(path, dpi=PNG_DPI)
    plt.close(fig)


def _plot_throughput(ax: Any, result: dict[str, Any]) -> None:
    by_shop = _get(result, "throughput.by_shop") or {}
    labels = list(by_shop)
    worker = [by_shop[k]["worker"]["median_events_per_s"] for k in labels]
    passthrough = [by_shop[k]["passthrough"]["median_events_per_s"] for k in labels]
    x = range(len(labels))
    width = 0.38
    ax.bar([i - width / 2 for i in x], passthrough, width, label="aiokafka pass-through", color="#9bb7d4")
    ax.bar([i + width / 2 for i in x], worker, width, label="stream-reco worker", color="#d9822b")
    for i, k in enumerate(labels):
        ax.annotate(f"{by_shop[k]['ratio_median']:.1%}", (i + width / 2, worker[i]), ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(list(x), [f"{k} items" for k in labels])
    ax.set_yscale("log")
    ax.set_ylabel("events/s (median of bursts)")
    ax.set_title("Throughput: worker vs pass-through (label: ratio)", fontsize=10)
    ax.legend(fontsize=8)


def _plot_latency(ax: Any, result: dict[str, Any]) -> None:
    levels = _get(result, "freshness.levels") or []
    fractions = [lv["fraction"] * 100 for lv in levels]
    for p in LATENCY_PERCENTILES:
        ax.plot(fractions, [lv["latency_ms"][p] for lv in levels], marker="o", label=f"{p} (send -> receipt)")
    ax.plot(fractions, [lv["worker_ms"]["p50"] for lv in levels], marker="x", linestyle=":",
            label="p50 (send -> worker publish)")
    target = _get(result, "freshness.target_p99_ms")
    if target:
        ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target p99 < {target:.0f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("% of the max sustained rate")
    ax.set_ylabel("ms")
    rate = _get(result, "freshness.max_rate_events_per_s") or 0
    ax.set_title(f"Freshness, shop {_get(result, 'freshness.shop')} (max {rate:.0f} events/s)", fontsize=10)
    ax.legend(fontsize=8)


def _plot_ann(ax: Any, result: dict[str, Any]) -> None:
    sizes = _get(result, "ann.sizes") or []
    items = [s["items"] for s in sizes]
    ax.plot(items, [s["exact_ms"] for s in sizes], marker="o", label="exact, one query")
    ax.plot(items, [s["exact_batched_ms"] for s in sizes], marker="o", label="exact, batched (per query)")
    ax.plot(items, [s["annoy"]["ms"] for s in sizes], marker="o", label="annoy (best >= target recall)")
    for s in sizes:
        ax.annotate(f"recall {s['annoy']['recall']:.3f}", (s["items"], s["annoy"]["ms"]), fontsize=8,
                    textcoords="offset points", xytext=(4, -10))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items")
    ax.set_ylabel("ms per query (CPU)")
    ax.set_title("ANN: annoy vs exact", fontsize=10)
    ax.legend(fontsize=8)


def _plot_memory(ax: Any, result: dict[str, Any]) -> None:
    by_events = _get(result, "memory.states.to_bytes_p50_by_events") or {}
    labels = list(by_events)
    ax.bar(labels, [by_events[k] for k in labels], color="#7a9e7e", label="to_bytes() p50")
    target = _get(result, "memory.target_bytes_per_visitor")
    if target:
        ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target} B")
    rss = _get(result, "memory.bytes_per_visitor_stored_rss")
    if isinstance(rss, int | float) and math.isfinite(rss):
        ax.axhline(rss, color="black", linestyle=":", linewidth=1, label=f"RSS per stored visitor {rss:.0f} B")
    ax.set_xlabel("events per visitor")
    ax.set_ylabel("bytes")
    ax.set_title("Visitor state size", fontsize=10)
    ax.legend(fontsize=8)


def _usable(result: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A section that ran (present, no error), else None."""
    section = result.get(name)
    return section if isinstance(section, dict) and section and not section.get("error") else None


def _plot_unavailable(ax: Any, result: dict[str, Any], name: str) -> None:
    section = result.get(name)
    reason = section.get("error", "failed") if isinstance(section, dict) and section else "not in this result"
    ax.text(0.5, 0.5, f"{name}: {reason[:80]}", ha="center", va="center", fontsize=8, wrap=True)
    ax.set_axis_off()


def _plot_restart(ax: Any, result: dict[str, Any]) -> None:
    section = _usable(result, "restart")
    if section is None:
        _plot_unavailable(ax, result, "restart")
        return
    from bench import restart

    restart.plot(section, ax)
    for row in section.get("retentions") or []:
        if row.get("on") is None and row.get("on_skipped"):
            ax.annotate("snapshots on: not measured", (row["events"], row["off"]["served_s"]), fontsize=7,
                        textcoords="offset points", xytext=(-60, 8))
            break


def _plot_stats_memory(ax: Any, result: dict[str, Any]) -> None:
    section = _usable(result, "stats_memory")
    if section is None:
        _plot_unavailable(ax, result, "stats_memory")
        return
    from bench import stats_memory

    stats_memory.plot(section, ax)


def _plot_pages(ax_pulls: Any, ax_refresh: Any, result: dict[str, Any]) -> None:
    section = _usable(result, "pages")
    if section is None:
        _plot_unavailable(ax_pulls, result, "pages")
        _plot_unavailable(ax_refresh, result, "pages")
        return
    from bench import pages

    pages.plot_pulls(section, ax_pulls)
    pages.plot_refresh(section, ax_refresh)


def _pages_lines(result: dict[str, Any]) -> list[str]:
    section = _usable(result, "pages")
    if section is None:
        return []
    lines = [f"pages: {section['sentence']}"]
    if section["visitors"] < section["issue_visitors"]:
        lines.append(f"pages: {section['note']}")
    return lines


def _restart_lines(result: dict[str, Any]) -> list[str]:
    section = _usable(result, "restart")
    if section is None:
        return []
    lines = [f"restart: {section['summary']['sentence']}"]
    for row in section["retentions"]:
        if row.get("on") is None and row.get("on_skipped"):
            lines.append(f"restart: snapshots on not measured: {row['on_skipped']}")
            break
    return lines


def _stats_memory_lines(result: dict[str, Any]) -> list[str]:
    section = _usable(result, "stats_memory")
    if section is None:
        return []
    out = []
    for label, s in section["summary"].items():
        per_m = s["bytes_per_million_events"]
        marginal = s["marginal_bytes_per_million_events"]
        out.append(f"stats memory ({label}): {s['final_bytes'] / 2**20:.1f} MiB after {s['events_final']:,} events "
                   f"({per_m[-1] / 2**20:.0f} MiB per million events; the last step's events cost "
                   f"{(marginal[-1] if marginal else float('nan')) / 2**20:.1f} MiB per million); at caps: "
                   f"{', '.join(s['at_caps_final']) or 'none'}")
    return out


def summary(result: dict[str, Any]) -> str:
    """The headline figures as a few lines of text (printed by `stream-reco bench`)."""
    thr, fresh, mem = result["throughput"], result["freshness"], result["memory"]
    lines = [
        f"bench ({result['profile']}) in {result['wall_s']:.0f} s -> {result.get('png', '')}",
        f"throughput (shop {thr['shop']}): worker {thr['worker_events_per_s']:.0f} events/s, pass-through "
        f"{thr['passthrough_events_per_s']:.0f}/s, ratio {thr['ratio_median']:.1%} "
        f"(target {thr['target_ratio']:.0%}: {'met' if thr['met'] else 'missed'})",
    ]
    for lv in fresh["levels"]:
        lat = lv["latency_ms"]
        lines.append(f"freshness at {lv['fraction']:.0%} ({lv['target_rate']:.0f}/s): p50 {lat['p50']:.1f} ms, "
                     f"p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms")
    lines.append(f"freshness target p99 < {fresh['target_p99_ms']:.0f} ms at {fresh['target_fraction']:.0%}: "
                 f"{'met' if fresh['met'] else 'missed'}")
    for s in result["ann"]["sizes"]:
        lines.append(f"ann {s['items']:>9,} items: annoy recall@{result['ann']['k']} {s['annoy']['recall']:.3f}, "
                     f"{s['speed_ratio_vs_exact']:.1f}x exact ({s['annoy']['ms']:.3f} vs {s['exact_ms']:.3f} ms)")
    lines.append(f"memory: {mem['bytes_per_visitor_serialised_mean']:.0f} B/visitor serialised (mean), "
                 f"{mem['bytes_per_visitor_stored_rss']:.0f} B RSS per stored visitor, worker RSS "
                 f"{mem['worker']['rss_end_bytes'] / 2**20:.0f} MiB at {mem['worker']['visitors']:,} visitors "
                 f"(target {mem['target_bytes_per_visitor']} B: {'met' if mem['met'] else 'missed'})")
    lines.append(f"scaling: {result['scaling']['sentence']}")
    lines.extend(_restart_lines(result))
    lines.extend(_stats_memory_lines(result))
    lines.extend(_pages_lines(result))
    for name in OPTIONAL_SECTIONS:
        if isinstance(result.get(name), dict) and result[name].get("error"):
            lines.append(f"{name}: failed: {result[name]['error'][:200]}")
    return "\n".join(lines)


def _f(value: Any, digits: int = 1) -> str:
    """A number for a table cell ('-' when absent)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The figures as Markdown tables (docs/benchmarks.md quotes them; written next to the JSON)."""
    out: list[str] = []
    env = result["environment"]
    out.append(f"Run {result['run_id']} ({result['profile']}), {env['date']}, {env['cpu_count']} x {env['cpu']}, "
               f"{env['memory_gib']} GiB, load average {env['load_average_start'][0]:.1f} at start, "
               f"commit {env['git_commit']}; {result['wall_s']:.0f} s.\n")
    out.append("| shop (items / visitors) | worker events/s | pass-through events/s | ratio | worker CPU ms/event "
               "| pass-through CPU ms/event | CPU-time ratio |")
    out.append("|---|---|---|---|---|---|---|")
    for label, thr in result["throughput"]["by_shop"].items():
        shop = result["shops"][label]
        cpu_w = [r["cpu_ms_per_event"] for r in thr["worker"]["runs"]]
        cpu_p = [r["cpu_ms_per_event"] for r in thr["passthrough"]["runs"]]
        out.append(f"| {shop['items']:,} / {shop['visitors']:,} | {_f(thr['worker']['median_events_per_s'], 0)} "
                   f"| {_f(thr['passthrough']['median_events_per_s'], 0)} | {thr['ratio_median']:.1%} "
                   f"| {_f(sorted(cpu_w)[len(cpu_w) // 2], 2)} | {_f(sorted(cpu_p)[len(cpu_p) // 2], 3)} "
                   f"| {thr['cpu_ratio']:.1%} |")
    out.append("")
    fresh = result["freshness"]
    out.append(f"Freshness, shop {fresh['shop']}, max rate {fresh['max_rate_events_per_s']:.0f} events/s (ms):\n")
    out.append("| load | events/s | p50 | p95 | p99 | worker stamp p50 / p99 | send -> batch start p50 / p99 "
               "| batch wall p50 (CPU) | batch size p50 | worker CPU ms/event | CPU stall share |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for lv in fresh["levels"]:
        lat, wk, bd = lv["latency_ms"], lv.get("worker_ms", {}), lv.get("breakdown", {})
        wait = bd.get("send_to_batch_start_ms", {})
        out.append(f"| {lv['fraction']:.0%} | {_f(lv['target_rate'], 0)} | {_f(lat['p50'])} | {_f(lat['p95'])} "
                   f"| {_f(lat['p99'])} | {_f(wk.get('p50'))} / {_f(wk.get('p99'))} "
                   f"| {_f(wait.get('p50'))} / {_f(wait.get('p99'))} "
                   f"| {_f(bd.get('batch_processing_ms', {}).get('p50'))} "
                   f"({_f(bd.get('batch_processing_cpu_ms', {}).get('p50'))}) "
                   f"| {_f(bd.get('batch_size', {}).get('p50'), 0)} | {_f(lv.get('worker_cpu_ms_per_event'), 2)} "
                   f"| {_f(lv['cpu_stall_share'], 2)} |")
    pt = fresh["passthrough_at_target_fraction"]
    out.append(f"| pass-through at {pt['fraction']:.0%} | {_f(pt['target_rate'], 0)} | {_f(pt['latency_ms']['p50'])} "
               f"| {_f(pt['latency_ms']['p95'])} | {_f(pt['latency_ms']['p99'])} | - | - | - | - | - "
               f"| {_f(pt['cpu_stall_share'], 2)} |")
    out.append("")
    ann = result["ann"]
    out.append(f"ANN (recall@{ann['k']}, {ann['clock']}):\n")
    out.append("| items | exact ms | exact batched ms | annoy (trees, search_k) | recall (one / two categories) "
               "| annoy ms | speed vs exact | vs batched exact | build s | +100 new: recall, new-item recall "
               "| +1000 new: recall, new-item recall, ms |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in ann["sizes"]:
        a, d = s["annoy"], s["delta_path"]
        d100 = next((r for r in d if r["delta"] == DELTA_SMALL), {})
        d1000 = next((r for r in d if r["delta"] == DELTA_LARGE), {})
        out.append(f"| {s['items']:,} | {_f(s['exact_ms'], 3)} | {_f(s['exact_batched_ms'], 3)} "
                   f"| {a['n_trees']}, {a['search_k']} | {a['recall']:.3f} ({a['recall_one_category']:.3f} / "
                   f"{a['recall_two_categories']:.3f}) | {_f(a['ms'], 3)} | {s['speed_ratio_vs_exact']:.1f}x "
                   f"| {s['speed_ratio_vs_exact_batched']:.1f}x | {_f(s['build_s'], 2)} "
                   f"| {_f(d100.get('recall'), 3)}, {_f(d100.get('new_items_recall'), 3)} "
                   f"| {_f(d1000.get('recall'), 3)}, {_f(d1000.get('new_items_recall'), 3)}, "
                   f"{_f(d1000.get('ms'), 3)} |")
    out.append("")
    mem = result["memory"]
    st = mem["states"]
    out.append(f"Visitor state ({st['visitors']:,} visitors built from the log, "
               f"{st['events_per_visitor']['mean']:.1f} events each on average):\n")
    out.append("| measure | mean | p50 | p95 | max |")
    out.append("|---|---|---|---|---|")
    for name, key in (("to_bytes() length, B", "to_bytes"), ("live VisitorState object, B", "in_memory_live_object")):
        v = st[key]
        out.append(f"| {name} | {_f(v['mean'], 0)} | {_f(v['p50'], 0)} | {_f(v['p95'], 0)} | {_f(v['max'], 0)} |")
    out.append("")
    out.append("| visitors stored as the worker stores them | RSS per visitor, B | object sizes per visitor, B |")
    out.append("|---|---|---|")
    for m in mem["store"]:
        if "skipped" in m:
            out.append(f"| {m['visitors']:,} | skipped: {m['skipped']} | |")
            continue
        out.append(f"| {m['visitors']:,} | {_f(m['rss_bytes_per_visitor'], 0)} "
                   f"| {_f(m['objects_bytes_per_visitor'], 0)} |")
    w = mem["worker"]
    out.append(f"\nWorker RSS with {w['items']:,} items and {w['visitors']:,} visitor states: "
               f"{w['rss_ready_bytes'] / 2**20:.0f} MiB when ready, {w['rss_end_bytes'] / 2**20:.0f} MiB at the end.\n")
    out.append("| shop (items / visitors) | worker events/s | latency at 50 % p50 / p99 ms | worker RSS MiB "
               "| ready s | in-process us/event (few visitors -> all) |")
    out.append("|---|---|---|---|---|---|")
    for row in result["scaling"]["worker"]:
        core = result["scaling"]["core"][row["shop"]]["cost_by_visitors"]
        out.append(f"| {row['items']:,} / {row['visitors']:,} | {_f(row['events_per_s'], 0)} "
                   f"| {_f(row['latency_at_half_load_ms']['p50'])} / {_f(row['latency_at_half_load_ms']['p99'])} "
                   f"| {row['rss_end_bytes'] / 2**20:.0f} | {_f(row['worker_ready_s'])} "
                   f"| {_f(core[0]['total_us'], 0)} ({core[0]['visitors']:,}) -> {_f(core[-1]['total_us'], 0)} "
                   f"({core[-1]['visitors']:,}) |")
    out.append(f"\n{result['scaling']['sentence']}")
    out.extend(_restart_markdown(result))
    out.extend(_stats_memory_markdown(result))
    out.extend(_pages_markdown(result))
    return "\n".join(out) + "\n"


def _restart_markdown(result: dict[str, Any]) -> list[str]:
    """Restart time per retention and mode (empty when the section did not run)."""
    section = _usable(result, "restart")
    if section is None:
        return []
    out = [f"\nWorker restart ({section['plan']['items']:,} items, {section['partitions']} partitions, "
           f"fill: {section['plan']['fill']}): {section['definition']}.\n"]
    out.append("| retained events | snapshots | serving again s | ready line s | first list s | events rebuilt "
               "| snapshot MiB | snapshot write s | restore s | stop s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for row in section["retentions"]:
        for mode in ("off", "prime", "on"):
            start = row.get(mode)
            if not start:
                continue
            saved = start.get("snapshot_saved") or {}
            restored = start.get("snapshot_restored") or {}
            size = saved.get("bytes")
            out.append(f"| {row['events']:,} | {mode} | {_f(start.get('served_s'))} | {_f(start.get('ready_s'))} "
                       f"| {_f(start.get('first_list_s'))} | {start.get('rebuilt_events', 0):,} "
                       f"| {_f(size / 2**20 if size else None, 2)} | {_f(saved.get('seconds'), 2)} "
                       f"| {_f(restored.get('seconds'), 2)} | {_f(start.get('stop_s'))} |")
        if row.get("on") is None and row.get("on_skipped"):
            out.append(f"| {row['events']:,} | on | not measured: {row['on_skipped']} | | | | | | | |")
    out.append(f"\n{section['summary']['sentence']}")
    return out


def _stats_memory_markdown(result: dict[str, Any]) -> list[str]:
    """Statistics memory and keys per step (empty when the section did not run)."""
    section = _usable(result, "stats_memory")
    if section is None:
        return []
    plan = section["plan"]
    out = [f"\nStatistics memory ({plan['items']:,} items, {plan['visitors']:,} visitors simulated; "
           f"weight_sknn {section['weight_sknn']}); {section['method']}.\n"]
    out.append("| caps | events | total MiB | MiB per million events | covis / popularity / sessions / contexts MiB "
               "| covis items, pairs | popularity items, categories | sessions | contexts | at caps |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for row in section["steps"]:
        for label, m in row["series"].items():
            k = m["keys"]
            parts = " / ".join(f"{m[f'{name}_bytes'] / 2**20:.1f}" for name in ("covis", "popularity", "sessions",
                                                                                  "contexts"))
            out.append(f"| {label} | {row['events']:,} | {m['total_bytes'] / 2**20:.1f} "
                       f"| {m['total_bytes'] / row['events'] * 1e6 / 2**20:.0f} | {parts} "
                       f"| {k['covis_items']:,}, {k['covis_pairs']:,} | {k['popularity_items']:,}, "
                       f"{k['popularity_categories']:,} | {k['sessions']:,} | {k['contexts']:,} "
                       f"| {', '.join(m['at_caps']) or '-'} |")
    caps = "; ".join(f"{label}: " + ", ".join(f"{k} {v:,}" for k, v in c.items())
                     for label, c in section["caps"].items())
    out.append(f"\nCaps: {caps}.")
    return out


def _pages_markdown(result: dict[str, Any]) -> list[str]:
    """Pull latency per class and refresh time per withdrawn item (empty when the section did not run)."""
    section = _usable(result, "pages")
    if section is None:
        return []
    pulls = section["pulls"]
    out = [f"\nPages ({section['workers_count']} workers, {section['partitions']} partitions, "
           f"{section['visitors']:,} visitors, {section['plan']['items']:,} items): pulls "
           f"{pulls['interval_ms']:.0f} ms apart, one at a time.\n"]
    out.append("| pulls | n | p50 ms | p90 ms | p99 ms | max ms |")
    out.append("|---|---|---|---|---|---|")
    for cls in ("direct", "forwarded", "all", "product"):
        q = pulls["ms"][cls]
        out.append(f"| {cls} | {q['n']} | {_f(q['p50'], 2)} | {_f(q['p90'], 2)} | {_f(q['p99'], 2)} "
                   f"| {_f(q['max'], 2)} |")
    out.append(f"\nForwarding costs {_f(pulls['forwarding_cost_ms']['p50'], 2)} ms at the median; "
               f"{pulls['failures']} of {pulls['pulls']} pulls failed; the machine's CPU stall share during the "
               f"pulls {_f(pulls.get('cpu_stall_share'), 2)} (other jobs queueing for a core).\n")
    out.append("| withdrawn item (rank) | lists showing it | refreshed | p50 s | p90 s | p99 s | max s "
               "| not refreshed in time | still showing it | workers' CPU ms per list | CPU stall share |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for item in section["refresh"]["items"]:
        q = item["seconds"]
        out.append(f"| {item['item_id']} ({item['rank']}) | {item['affected']:,} | {item['refreshed']:,} "
                   f"| {_f(q['p50'], 3)} | {_f(q['p90'], 3)} | {_f(q['p99'], 3)} | {_f(q['max'], 3)} "
                   f"| {item['not_refreshed_in_timeout']} | {item['still_showing_lists']} "
                   f"| {_f(item.get('workers_cpu_ms_per_list'), 2)} | {_f(item.get('cpu_stall_share'), 2)} |")
    out.append(f"\n{section['sentence']}. {section['note']}")
    return out
