"""Memory of the shop-wide statistics per million events, and proof that it levels off at the caps.

Why: issue 12 snapshots the statistics (co-visitation, popularity, the session-kNN index and the statistics
feed's visitor contexts) to disk, so their size is both a memory figure and the size of every snapshot. Each
structure is bounded by a setting (`covis_neighbours`, `stats_max_items`, `popularity_max_categories`,
`sknn_max_sessions`, the contexts' `max_visitors`) or by the catalogue; this section shows where each one
stops growing, on the simulated shop, in process (no Kafka).

How: events of the simulated shop (`stream_reco.shop.simulate`) are learned by a `Recommender` holding the
whole catalogue, through `Recommender.learn_stats` with a `StatsContexts` - the statistics feed's path, which
learns exactly the statistics `observe` learns (core/stats_context.py) without building visitor states, so a
million events fit the bench's time budget. Two recommenders learn the same events side by side: one with the
settings' caps, one with tight caps (`TIGHT_CAPS`) that the events reach within the run, so the levelling-off
is visible for every cap, not only for those a bench-sized shop reaches.

Memory is measured by deep sizing, not tracemalloc (tracemalloc slows every allocation several fold, and a
million events would not fit the budget): at each step every object reachable from the four structures is
counted once with `sys.getsizeof` (dicts, lists, tuples, floats, ints, strings, arrays, slotted objects),
walking the structures in a fixed order with one shared "seen" set, so an item-id string held by both
co-visitation and popularity counts once, towards the first. Strings are reported apart (`strings_bytes`):
item ids are mostly the same string objects the catalogue already holds, so they cost little extra in a
worker. The figures are CPython 3.11 object sizes; allocator overhead (pymalloc pools, fragmentation) is not
in them, so RSS grows somewhat more.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.section_output import write_section
from stream_reco.core.events import Event
from stream_reco.core.recommender import Recommender
from stream_reco.core.stats_context import DEFAULT_MAX_VISITORS, StatsContexts
from stream_reco.settings import Settings

MIB = 2**20
#: the tight-cap series: small enough that a quick run reaches each one (items and sessions scale with the shop)
TIGHT_CAPS = {"covis_neighbours": 10, "popularity_max_categories": 20}
#: tight caps that are fractions of the shop: items (co-visitation, popularity) and sessions/visitors
TIGHT_ITEMS_SHARE = 0.25
TIGHT_SESSIONS_SHARE = 0.1
#: objects whose size is not the statistics' (shared, immortal or code): never walked into
_SKIP_TYPES = (type, type(sys), type(len), type(lambda: 0))


@dataclass(frozen=True)
class MemoryPlan:
    """One stepped run: the shop and the cumulative event counts at which everything is measured."""

    items: int
    visitors: int
    steps: tuple[int, ...]
    #: the tight-cap series stops after this many events (it reaches its caps within the first step; the
    #: steps after that only cost time); 0: every step
    tight_until: int = 0


PLANS: dict[str, MemoryPlan] = {
    # ~12.5 events per visitor on the simulated shop: 80 k visitors give the million events the last step needs
    "default": MemoryPlan(items=20_000, visitors=85_000, steps=(100_000, 250_000, 500_000, 1_000_000),
                          tight_until=250_000),
    "quick": MemoryPlan(items=2_000, visitors=8_000, steps=(10_000, 25_000, 50_000, 100_000)),
}


def tight_settings(base: Settings, plan: MemoryPlan) -> tuple[Settings, int]:
    """Settings with caps the run reaches, and the contexts' visitor cap to go with them."""
    sessions = max(100, int(plan.visitors * TIGHT_SESSIONS_SHARE))
    return base.replace(stats_max_items=max(100, int(plan.items * TIGHT_ITEMS_SHARE)), sknn_max_sessions=sessions,
                        **TIGHT_CAPS), sessions


def caps_of(settings: Settings, max_visitors: int) -> dict[str, int]:
    """The bound of each counted key under `settings` (None-free: every key has one)."""
    return {
        "covis_items": settings.stats_max_items,
        # an item's neighbour map may reach PRUNE_SLACK (2) times the cap before it is pruned back
        "covis_neighbours_per_item": max(settings.covis_neighbours + 1, 2 * settings.covis_neighbours),
        "popularity_items": settings.stats_max_items,
        "popularity_categories": settings.popularity_max_categories,
        "sessions": settings.sknn_max_sessions,
        "contexts": max_visitors,
    }


# ------------------------------------------------------------------------------------------- sizing
def deep_size(roots: Iterable[Any], seen: set[int] | None = None) -> tuple[int, int]:
    """(bytes of non-string objects, bytes of strings) reachable from `roots`, each object counted once.

    `seen` is shared between calls so that a second structure does not count objects the first one held.
    """
    seen = set() if seen is None else seen
    other = strings = 0
    stack = list(roots)
    getsizeof = sys.getsizeof
    while stack:
        obj = stack.pop()
        oid = id(obj)
        if oid in seen or isinstance(obj, _SKIP_TYPES):
            continue
        seen.add(oid)
        if isinstance(obj, str):
            strings += getsizeof(obj)
            continue
        if isinstance(obj, np.ndarray):
            other += getsizeof(obj) + (0 if obj.flags.owndata else obj.nbytes)
            continue
        other += getsizeof(obj)
        if isinstance(obj, float | int | bytes | array | bool) or obj is None:
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        else:  # slotted or plain objects: their attribute values (gc.get_referents also yields the type: skipped)
            stack.extend(gc.get_referents(obj))
    return other, strings


def structures(rec: Recommender, contexts: StatsContexts) -> dict[str, list[Any]]:
    """The objects each statistic consists of (streamed parts only: the model priors are not snapshot)."""
    pop = rec.popularity.stream
    sessions = rec.sessions
    return {
        "covis": [rec.covis.pairs],
        "popularity": [pop.scores, pop.tops],
        "sessions": [sessions.ids, sessions.keys, sessions.items, sessions.by_item],
        "contexts": [contexts._contexts],
    }


def measure(rec: Recommender, contexts: StatsContexts) -> dict[str, Any]:
    """Bytes per structure (first-holder attribution of shared objects, see the module docstring) and keys."""
    seen: set[int] = set()
    out: dict[str, Any] = {}
    total = total_strings = 0
    for name, roots in structures(rec, contexts).items():
        other, strings = deep_size(roots, seen)
        out[f"{name}_bytes"] = other + strings
        total += other
        total_strings += strings
    out["total_bytes"] = total + total_strings
    out["strings_bytes"] = total_strings
    out["keys"] = keys(rec, contexts)
    return out


def keys(rec: Recommender, contexts: StatsContexts) -> dict[str, int]:
    """What each structure holds: the counts its caps bound."""
    pairs = rec.covis.pairs
    pop = rec.popularity.stream
    sessions = rec.sessions
    return {
        "covis_items": len(pairs),
        "covis_pairs": rec.covis.n_pairs,
        "covis_neighbours_per_item_max": max((len(v) for v in pairs.values()), default=0),
        "popularity_items": len(pop.scores),
        "popularity_categories": len(pop.tops),
        "popularity_top_entries": sum(len(t.members) for t in pop.tops.values()),
        "sessions": len(sessions.items),
        "session_items": sum(len(v) for v in sessions.items.values()),
        "sknn_items": len(sessions.by_item),
        "contexts": len(contexts),
    }


def at_caps(k: dict[str, int], caps: dict[str, int]) -> list[str]:
    """The keys that reached their cap (within the structures' prune slack: they may sit a little above)."""
    reached = {
        "covis_items": k["covis_items"] >= caps["covis_items"],
        "covis_neighbours_per_item": k["covis_neighbours_per_item_max"] >= caps["covis_neighbours_per_item"] // 2,
        "popularity_items": k["popularity_items"] >= caps["popularity_items"],
        "popularity_categories": k["popularity_categories"] >= caps["popularity_categories"] * 0.9,
        "sessions": k["sessions"] >= caps["sessions"],
        "contexts": k["contexts"] >= caps["contexts"],
    }
    return sorted(name for name, hit in reached.items() if hit)


# ------------------------------------------------------------------------------------------ stepping
@dataclass
class Learner:
    """One recommender's statistics and the statistics feed's contexts, learned event by event."""

    label: str
    rec: Recommender
    contexts: StatsContexts
    caps: dict[str, int]
    #: learns no more events past this count (0: no limit); its later steps are not measured
    until: int = 0

    def learn(self, event: Event) -> None:
        self.rec.learn_stats(event, None, self.contexts)


def with_sknn(settings: Settings) -> Settings:
    """Session-kNN on (weight 1 when the settings have it off): an index that is off stays empty and shows
    nothing of its cap, while a shop that turns it on pays for up to `sknn_max_sessions` sessions."""
    return settings if settings.weight_sknn > 0 else settings.replace(weight_sknn=1.0)


def learners(base: Settings, plan: MemoryPlan, catalog: Any) -> list[Learner]:
    """The settings' caps and the tight caps, sharing one catalogue (categories come from it)."""
    base = with_sknn(base)
    tight, tight_visitors = tight_settings(base, plan)
    out = []
    for label, settings, max_visitors, until in (("settings' caps", base, DEFAULT_MAX_VISITORS, 0),
                                                 ("tight caps", tight, tight_visitors, plan.tight_until)):
        rec = Recommender(settings, catalog=catalog)
        out.append(Learner(label, rec, StatsContexts(settings, max_visitors=max_visitors),
                           caps_of(settings, max_visitors), until))
    return out


def step_through(events: Iterator[dict[str, Any]], steps: Sequence[int], runs: Sequence[Learner],
                 progress: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Feed `events` to every learner up to each cumulative count in `steps`; measure after each step.

    Stops early (with the rows so far) when the simulated log runs out. Learning time is per learner.
    """
    rows: list[dict[str, Any]] = []
    done = 0
    learn_s = [0.0] * len(runs)
    for target in steps:
        batch = []
        for doc in events:
            batch.append(Event.from_dict(doc))
            if done + len(batch) >= target:
                break
        if not batch:
            break
        live = [i for i, run in enumerate(runs) if not run.until or done < run.until]
        for i in live:
            t0 = time.perf_counter()
            learn = runs[i].learn
            for event in batch:
                learn(event)
            learn_s[i] += time.perf_counter() - t0
        done += len(batch)
        row: dict[str, Any] = {"events": done, "series": {}}
        for i in live:
            run = runs[i]
            t0 = time.perf_counter()
            m = measure(run.rec, run.contexts)
            m["sizing_s"] = time.perf_counter() - t0
            m["learn_s_cumulative"] = learn_s[i]
            m["at_caps"] = at_caps(m["keys"], run.caps)
            row["series"][run.label] = m
        rows.append(row)
        progress(f"stats memory: {done:,} events: " + ", ".join(
            f"{m['total_bytes'] / MIB:.1f} MiB ({label})" for label, m in row["series"].items()))
        if done < target:
            break
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per series: bytes per million events at each step (cumulative), the marginal cost of the last step's
    events (the slope: near 0 once every bound is reached) and its ratio to the first step's."""
    out: dict[str, Any] = {}
    if not rows:
        return out
    for label in rows[0]["series"]:
        mine = [r for r in rows if label in r["series"]]
        points = [(r["events"], r["series"][label]["total_bytes"]) for r in mine]
        per_million = [b / e * 1e6 for e, b in points]
        marginal = [(b1 - b0) / (e1 - e0) * 1e6 for (e0, b0), (e1, b1) in itertools.pairwise(points)
                    if e1 > e0]
        first_slope = points[0][1] / points[0][0] * 1e6
        out[label] = {
            "bytes_per_million_events": per_million,
            "marginal_bytes_per_million_events": marginal,
            "last_step_slope_vs_first": (marginal[-1] / first_slope) if marginal and first_slope else None,
            "final_bytes": points[-1][1],
            "at_caps_final": mine[-1]["series"][label]["at_caps"],
            "events_final": points[-1][0],
        }
    return out


def run(settings: Settings, quick: bool, seed: int, progress: Callable[[str], None] = lambda _: None,
        plan: MemoryPlan | None = None) -> dict[str, Any]:
    """The whole section: simulate, load the catalogue, step, summarise (the result is JSON-able)."""
    from bench import core_cost
    from bench.suite import simulator

    plan = plan or PLANS["quick" if quick else "default"]
    started = time.perf_counter()
    sim = simulator(plan.items, plan.visitors, seed)
    base, _ = core_cost.load_catalog(settings, sim.catalog())
    runs = learners(settings, plan, base.catalog)
    rows = step_through(sim.events(), plan.steps, runs, progress)
    return {
        "method": "deep sizing: sys.getsizeof of every object reachable from the structures, each counted once "
                  "(shared strings to the first holder: covis, popularity, sessions, contexts); no allocator "
                  "overhead; learned through Recommender.learn_stats with StatsContexts (no visitor states)",
        "plan": asdict(plan),
        "weight_sknn": runs[0].rec.settings.weight_sknn,
        "weight_sknn_setting": settings.weight_sknn,
        "caps": {run.label: run.caps for run in runs},
        "steps": rows,
        "summary": summarise(rows),
        "wall_s": time.perf_counter() - started,
    }


# -------------------------------------------------------------------------------------------- output
def plot(section: dict[str, Any], ax: Any, keys_ax: Any | None = None) -> None:
    """Memory (MiB) vs events per series on `ax`; the keys of the tight series vs events on `keys_ax`."""
    rows = section.get("steps") or []
    events = [r["events"] for r in rows]
    for label in (rows[0]["series"] if rows else {}):
        mine = [r for r in rows if label in r["series"]]
        ax.plot([r["events"] for r in mine], [r["series"][label]["total_bytes"] / MIB for r in mine], marker="o",
                label=label)
    ax.set_xlabel("events learned")
    ax.set_ylabel("MiB (deep size)")
    ax.set_title("Statistics memory vs events (covis + popularity + sessions + contexts)", fontsize=10)
    ax.legend(fontsize=8)
    if keys_ax is None or not rows:
        return
    label = next(iter(rows[0]["series"]))
    for key in ("covis_items", "covis_pairs", "popularity_items", "popularity_categories", "sessions", "contexts"):
        keys_ax.plot(events, [max(r["series"][label]["keys"][key], 1) for r in rows], marker=".", label=key)
    keys_ax.set_yscale("log")
    keys_ax.set_xlabel("events learned")
    keys_ax.set_title(f"Keys per structure ({label})", fontsize=10)
    keys_ax.legend(fontsize=8)


def write(section: dict[str, Any], output: Path) -> None:
    """Standalone run: JSON and a two-panel PNG beside it."""
    write_section(section, output, lambda axes: plot(section, axes[0], axes[1]), panels=2)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small shop, up to 100 k events")
    p.add_argument("--output", type=Path, default=Path("stats-memory.json"))
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    settings = Settings.load()
    section = run(settings, args.quick, settings.seed if args.seed is None else args.seed,
                  progress=lambda m: print(m, file=sys.stderr))
    write(section, args.output)
    for label, s in section["summary"].items():
        print(f"{label}: final {s['final_bytes'] / MIB:.1f} MiB, per million events "
              f"{', '.join(f'{b / MIB:.0f}' for b in s['bytes_per_million_events'])} MiB, marginal "
              f"{', '.join(f'{b / MIB:.1f}' for b in s['marginal_bytes_per_million_events'])} MiB; "
              f"at caps: {', '.join(s['at_caps_final']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
