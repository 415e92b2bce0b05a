"""annoy vs exact search on clustered item vectors: recall, speed, build time, the delta path, the crossover.

Why this exists: `ItemCatalog` searches exactly below `exact_index_max_items` and through an annoy snapshot
plus an exact delta above it, with `annoy_n_trees` / `annoy_search_k`. Those three defaults are numbers
this script measures, on the machine it runs on, instead of guesses.

Data: synthetic 64-d unit vectors shaped like trained embeddings: departments, categories (clusters)
around them with uneven sizes, items around their category's centre, all L2-normalised. Queries are like
visitor interest vectors: means of 3-5 items of one category (half) or of two categories (half; the case
where ANN recall is lost, see docs/stack-findings.md).

For each size it measures, medians over repeats in the same run:
- `exact`: ms per query of one matrix-vector product + argpartition, and per query of batches of 64
  (one matrix-matrix product); this is also the ground truth for recall@k;
- `annoy`: for each n_trees, build time and file size, then for each search_k recall@k (overall, one-
  and two-category queries) and ms per query; the fastest setting with recall >= the target;
- `catalog`: the whole `ItemCatalog.search` path (filters, id mapping, tie-break) for the exact index and
  for annoy at the chosen setting, then with 100 / 1000 new items in the delta (projected from their
  category, searched exactly and merged), the cost of an upsert, and a rebuild that absorbs the delta.
Then the crossover size where annoy starts to beat exact search (log-log interpolation between sizes),
and the annoy setting that reaches the target at every measured size where annoy would be used.

Usage: `.venv/bin/python bench/ann.py --sizes 10000,100000 --output FILE.json` (`--quick`: one small size
and a short sweep, well under 30 s). BLAS threads default to 1 (`--blas-threads`): on a small shared
machine a multi-threaded matrix-vector product spends its time waiting for busy cores, and one serving
thread is what a worker gives the recommender anyway.
"""

from __future__ import annotations

import os
import sys


def _blas_threads_from_argv(argv: list[str], default: str = "1") -> str:
    """`--blas-threads N` must take effect before numpy loads OpenBLAS, so it is read here by hand."""
    for i, arg in enumerate(argv):
        if arg == "--blas-threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--blas-threads="):
            return arg.split("=", 1)[1]
    return default


if __name__ == "__main__":
    _threads = _blas_threads_from_argv(sys.argv[1:])
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from stream_reco.core.events import CatalogItem  # noqa: E402
from stream_reco.core.index import AnnoyIndex, ExactIndex  # noqa: E402
from stream_reco.core.items import ItemCatalog  # noqa: E402
from stream_reco.model.artifact import ModelArtifact  # noqa: E402
from stream_reco.settings import Settings  # noqa: E402

K = 20
TARGET_RECALL = 0.95
#: stop raising search_k for a forest once recall reaches this: larger values only cost time
RECALL_SATURATED = 0.999
BATCH = 64
DIM = 64
TREES = (10, 20, 50, 100)
SEARCH_KS = (100, 250, 500, 1000, 2000, 4000, 8000, 16000)
DELTA_SIZES = (100, 1000)
#: data shape: departments, categories, and how far items and categories scatter around their centres
DEPARTMENTS = 40
CATEGORIES = 2000
CATEGORY_SPREAD = 0.7
ITEM_SPREAD = 0.8
#: lognormal sigma of category sizes (a few big categories, a long tail)
CATEGORY_SIZE_SIGMA = 1.0
ITEMS_PER_QUERY = (3, 5)
#: the default `exact_index_max_items` is where annoy gets this many times faster than exact search, not
#: merely as fast: below it annoy saves a fraction of a millisecond per query but costs recall (~0.95 vs 1),
#: a background build of seconds every `delta_rebuild_items` catalog changes, and the memory of its trees
ANNOY_MIN_SPEEDUP = 2.0
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCK = CLOCKS["cpu"]
QUICK = {"sizes": "10000", "queries": 200, "repeats": 2, "trees": "10,50", "search_ks": "250,1000,4000"}


@dataclass
class Data:
    ids: list[str]
    vectors: np.ndarray
    department: np.ndarray
    category: np.ndarray
    queries: np.ndarray
    two_category: np.ndarray
    category_centres: np.ndarray
    category_weights: np.ndarray
    category_department: np.ndarray


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(n: int, n_queries: int, seed: int) -> Data:
    """Clustered unit vectors like trained item embeddings, and visitor-like queries over them."""
    rng = np.random.default_rng(seed)
    n_cat = min(CATEGORIES, max(1, n // 5))
    dept_centres = unit_rows(rng.standard_normal((DEPARTMENTS, DIM)))
    cat_dept = rng.integers(0, DEPARTMENTS, n_cat)
    cat_centres = unit_rows(dept_centres[cat_dept] + CATEGORY_SPREAD * rng.standard_normal((n_cat, DIM)) / 8)
    weights = rng.lognormal(0.0, CATEGORY_SIZE_SIGMA, n_cat)
    weights /= weights.sum()
    category = rng.choice(n_cat, size=n, p=weights)
    noise = ITEM_SPREAD * rng.standard_normal((n, DIM)) / math.sqrt(DIM)
    vectors = unit_rows(cat_centres[category] + noise)
    members = [np.flatnonzero(category == c) for c in range(n_cat)]
    usable = [c for c in range(n_cat) if members[c].size >= ITEMS_PER_QUERY[1]]
    queries, two = [], []
    for j in range(n_queries):
        is_two = j % 2 == 1
        cats = rng.choice(usable, size=2 if is_two else 1, replace=False)
        pool = np.concatenate([members[c] for c in cats])
        take = int(rng.integers(ITEMS_PER_QUERY[0], ITEMS_PER_QUERY[1] + 1))
        if is_two:  # make sure both categories are in the mix
            picks = [rng.choice(members[cats[0]]), rng.choice(members[cats[1]])]
            rest = rng.choice(pool, size=take - 2, replace=False)
            chosen = np.concatenate([picks, rest])
        else:
            chosen = rng.choice(pool, size=take, replace=False)
        queries.append(vectors[chosen].mean(axis=0))
        two.append(is_two)
    ids = [f"item-{i:07d}" for i in range(n)]
    return Data(
        ids,
        vectors,
        cat_dept[category],
        category,
        unit_rows(np.asarray(queries)),
        np.asarray(two),
        cat_centres,
        weights,
        cat_dept,
    )


def median_ms_per_query(fn: Callable[[], object], n_queries: int, repeats: int) -> float:
    """Median over `repeats` of the time of one call of `fn` (which runs all queries) / n_queries, in ms.

    The time is this process's CPU time (`--clock cpu`, the default) or wall time (`--clock wall`). On a
    shared machine wall time mostly measures how long we waited for a core; CPU time is the work a query
    costs, which is what decides between two indexes. With one BLAS thread the two agree on an idle box.
    """
    fn()  # warm-up: caches, lazy imports, page faults of a fresh index
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = CLOCK()
        fn()
        times.append((CLOCK() - t0) / n_queries * 1e3)
    return statistics.median(times)


def recall(got: Sequence[Sequence[Any]], truth: Sequence[Sequence[Any]], mask: np.ndarray | None = None) -> float:
    pairs = [(g, t) for j, (g, t) in enumerate(zip(got, truth, strict=True)) if mask is None or mask[j]]
    hits = sum(len(set(g) & set(t)) for g, t in pairs)
    total = sum(len(t) for _, t in pairs)
    return hits / total if total else float("nan")


def bench_exact(data: Data, repeats: int) -> tuple[dict[str, Any], list[list[int]]]:
    index = ExactIndex(data.vectors)
    q = data.queries
    truth = [h.rows.tolist() for h in index.search_many(q, K)]

    def singles() -> None:
        for v in q:
            index.search(v, K)

    def batched() -> None:
        for start in range(0, len(q), BATCH):
            index.search_many(q[start : start + BATCH], K)

    single = median_ms_per_query(singles, len(q), repeats)
    batch = median_ms_per_query(batched, len(q), repeats)
    return {"single_ms": single, "batched_ms": batch, "batch": BATCH}, truth


def bench_annoy(
    data: Data, truth: list[list[int]], trees: Sequence[int], search_ks: Sequence[int], repeats: int, seed: int
) -> dict[str, Any]:
    q = data.queries
    runs: list[dict[str, Any]] = []
    builds: list[dict[str, Any]] = []
    for n_trees in trees:
        t0 = time.perf_counter()
        index = AnnoyIndex.build(data.vectors, n_trees=n_trees, search_k=-1, seed=seed)
        build_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            # annoy's save() re-opens the index from the file (mmap), as a worker loading a model artifact
            # would; the mapping outlives the deleted file
            path = Path(tmp) / "index.ann"
            index._index.save(str(path))  # type: ignore[attr-defined]
            size_mb = path.stat().st_size / 2**20
        builds.append({"n_trees": n_trees, "build_s": build_s, "file_mb": size_mb})
        for search_k in search_ks:
            index.search_k = search_k
            got = [index.search(v, K).rows.tolist() for v in q]

            def run(index: AnnoyIndex = index) -> None:
                for v in q:
                    index.search(v, K)

            r = recall(got, truth)
            runs.append(
                {
                    "n_trees": n_trees,
                    "search_k": search_k,
                    "recall": r,
                    "recall_one_category": recall(got, truth, ~data.two_category),
                    "recall_two_categories": recall(got, truth, data.two_category),
                    "ms": median_ms_per_query(run, len(q), repeats),
                }
            )
            print(
                f"    annoy trees={n_trees:<4} search_k={search_k:<6} recall={r:.3f} "
                f"ms={runs[-1]['ms']:.3f}  (one {runs[-1]['recall_one_category']:.3f}, "
                f"two {runs[-1]['recall_two_categories']:.3f})",
                flush=True,
            )
            if r >= RECALL_SATURATED:
                break
        del index
        gc.collect()
    ok = [r for r in runs if r["recall"] >= TARGET_RECALL]
    best = min(ok, key=lambda r: r["ms"]) if ok else None
    if best is not None:  # raw annoy, without our wrapper, at the best setting: the wrapper's overhead
        index = AnnoyIndex.build(data.vectors, n_trees=best["n_trees"], search_k=best["search_k"], seed=seed)
        raw = index._index  # type: ignore[attr-defined]
        lists = [v.tolist() for v in q]

        def raw_run() -> None:
            for v in lists:
                raw.get_nns_by_vector(v, K, search_k=best["search_k"])

        best = {**best, "raw_annoy_ms": median_ms_per_query(raw_run, len(q), repeats)}
    return {"builds": builds, "sweep": runs, "best": best}


def catalog_items(data: Data, rows: Sequence[int]) -> list[CatalogItem]:
    """Catalog entries whose category path is the item's department / category in the synthetic data."""
    return [
        CatalogItem(
            item_id=data.ids[r],
            category=(f"dept{data.department[r]}", f"cat{data.category[r]}"),
            price=float(10 + r % 90),
        )
        for r in rows
    ]


def bench_catalog(data: Data, n_trees: int, search_k: int, repeats: int, seed: int) -> dict[str, Any]:
    """The production path: `ItemCatalog.search`, exact and annoy, then with a growing delta of new items."""
    n = len(data.ids)
    art = ModelArtifact("bench", data.ids, data.vectors, catalog=catalog_items(data, range(n)))
    base = Settings(
        annoy_n_trees=n_trees, annoy_search_k=search_k, seed=seed, delta_rebuild_items=10**9, embedding_dim=DIM
    )
    q = data.queries
    out: dict[str, Any] = {"n_trees": n_trees, "search_k": search_k}

    exact = ItemCatalog(base.replace(exact_index_max_items=10**9))
    t0 = time.perf_counter()
    exact.load_model(art)
    out["exact_load_s"] = time.perf_counter() - t0

    def exact_single() -> None:
        for v in q:
            exact.search(v, K)

    def exact_batched() -> None:
        for start in range(0, len(q), BATCH):
            exact.search_many(q[start : start + BATCH], K)

    out["exact_ms"] = median_ms_per_query(exact_single, len(q), repeats)
    out["exact_batched_ms"] = median_ms_per_query(exact_batched, len(q), repeats)

    ann = ItemCatalog(base.replace(exact_index_max_items=0))
    t0 = time.perf_counter()
    ann.load_model(art, background=False)
    out["annoy_load_and_build_s"] = time.perf_counter() - t0
    assert ann.index_kind == "annoy"

    def ann_single() -> None:
        for v in q:
            ann.search(v, K)

    def truth_now() -> list[list[str]]:
        return [[i for i, _ in r] for r in exact.search_many(q, K)]

    def measure(label: str) -> dict[str, Any]:
        truth = truth_now()
        got = [[i for i, _ in ann.search(v, K)] for v in q]
        new_in_truth = sum(i.startswith("new-") for t in truth for i in t)
        new_found = sum(len({i for i in g if i.startswith("new-")} & set(t)) for g, t in zip(got, truth, strict=True))
        row = {
            "delta": ann.delta_size,
            "recall": recall(got, truth),
            "ms": median_ms_per_query(ann_single, len(q), repeats),
            "new_items_in_truth": new_in_truth,
            "new_items_recall": new_found / new_in_truth if new_in_truth else None,
        }
        print(
            f"    catalog annoy {label:<14} delta={row['delta']:<5} recall={row['recall']:.3f} ms={row['ms']:.3f}"
            + (f" new-item recall={row['new_items_recall']:.3f}" if new_in_truth else ""),
            flush=True,
        )
        return row

    out["annoy"] = [measure("after build")]
    rng = np.random.default_rng(seed + 1)
    added = 0
    upsert_us = []
    for target in DELTA_SIZES:
        # new items drawn like the catalogue's own, projected from their category: they compete for the top k
        rows = rng.choice(n, size=target - added)
        new_items = [
            CatalogItem(f"new-{added + j:05d}", category=it.category, price=it.price)
            for j, it in enumerate(catalog_items(data, rows))
        ]
        t0 = time.perf_counter()
        for item in new_items:
            ann.upsert(item)
        upsert_us.append((time.perf_counter() - t0) / len(new_items) * 1e6)
        for item in new_items:
            exact.upsert(item)
        added = target
        out["annoy"].append(measure(f"+{target} new"))
    out["upsert_us"] = statistics.median(upsert_us)
    t0 = time.perf_counter()
    ann.rebuild()
    out["rebuild_s"] = time.perf_counter() - t0
    out["annoy"].append(measure("after rebuild"))
    out["exact_ms_after_new"] = median_ms_per_query(exact_single, len(q), repeats)
    return out


def crossover(
    sizes: Sequence[int], exact_ms: Sequence[float], annoy_ms: Sequence[float | None], speedup: float = 1.0
) -> dict[str, Any]:
    """Size from which annoy is `speedup` times faster than exact (log-log interpolation between sizes)."""
    pts = [(n, e / speedup, a) for n, e, a in zip(sizes, exact_ms, annoy_ms, strict=True) if a is not None]
    if not pts:
        return {"items": None, "note": "annoy never reached the target recall"}
    if pts[0][1] >= pts[0][2]:
        return {"items": pts[0][0], "note": f"already reached at the smallest size ({pts[0][0]})"}
    for (n0, e0, a0), (n1, e1, a1) in itertools.pairwise(pts):
        if e1 >= a1:
            r0, r1 = math.log(e0 / a0), math.log(e1 / a1)
            t = r0 / (r0 - r1)
            items = math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
            return {"items": round(items), "note": f"interpolated between {n0} and {n1}"}
    return {"items": None, "note": f"not reached at the largest size ({pts[-1][0]})"}


def round_items(items: float) -> int:
    """Two significant digits: a threshold is not precise to the item."""
    digits = max(0, int(math.log10(items)) - 1)
    return int(round(items / 10**digits) * 10**digits)


def robust_setting(results: list[dict[str, Any]], min_size: int) -> dict[str, Any] | None:
    """The (n_trees, search_k) reaching the target at every measured size >= min_size, lowest worst-case ms."""
    scoped = [r for r in results if r["items"] >= min_size] or results[-1:]
    common: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for res in scoped:
        for run in res["annoy"]["sweep"]:
            common.setdefault((run["n_trees"], run["search_k"]), []).append(run)
    ok = {key: runs for key, runs in common.items() if len(runs) == len(scoped)}
    ok = {key: runs for key, runs in ok.items() if all(r["recall"] >= TARGET_RECALL for r in runs)}
    if not ok:
        return None
    key = min(ok, key=lambda key: (max(r["ms"] for r in ok[key]), key))
    return {
        "n_trees": key[0],
        "search_k": key[1],
        "sizes": [r["items"] for r in scoped],
        "recall": [r["recall"] for r in ok[key]],
        "ms": [r["ms"] for r in ok[key]],
    }


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "annoy": metadata.version("annoy"),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "machine": platform.machine(),
        "args": vars(args),
        "data": {
            "dim": DIM,
            "departments": DEPARTMENTS,
            "categories": CATEGORIES,
            "category_spread": CATEGORY_SPREAD,
            "item_spread": ITEM_SPREAD,
            "items_per_query": ITEMS_PER_QUERY,
            "k": K,
            "target_recall": TARGET_RECALL,
        },
    }


def ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="comma-separated catalogue sizes")
    p.add_argument("--output", type=Path, required=True, help="JSON result file")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trees", default=",".join(map(str, TREES)))
    p.add_argument("--search-ks", default=",".join(map(str, SEARCH_KS)))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-catalog", action="store_true", help="skip the ItemCatalog (end-to-end) part")
    p.add_argument("--quick", action="store_true", help="one small size, short sweep (< 30 s)")
    p.add_argument("--blas-threads", default="1", help="OpenBLAS threads (set before numpy loads)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="what a query's time is (see above)")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    sizes, trees, search_ks = ints(args.sizes), ints(args.trees), ints(args.search_ks)

    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    for n in sizes:
        print(f"== {n} items", flush=True)
        data = make_data(n, args.queries, args.seed)
        exact, truth = bench_exact(data, args.repeats)
        print(f"    exact single {exact['single_ms']:.3f} ms, batched {exact['batched_ms']:.4f} ms/query", flush=True)
        annoy_res = bench_annoy(data, truth, trees, search_ks, args.repeats, args.seed)
        res: dict[str, Any] = {"items": n, "exact": exact, "annoy": annoy_res}
        best = annoy_res["best"]
        if best is not None:
            res["speedup_vs_exact_single"] = exact["single_ms"] / best["ms"]
            res["speedup_vs_exact_batched"] = exact["batched_ms"] / best["ms"]
        if not args.no_catalog and best is not None:
            res["catalog"] = bench_catalog(data, best["n_trees"], best["search_k"], args.repeats, args.seed)
        results.append(res)
        del data
        gc.collect()

    exact_index = [r["exact"]["single_ms"] for r in results]
    annoy_index = [(r["annoy"]["best"] or {}).get("ms") for r in results]
    report: dict[str, Any] = {
        "environment": environment(args),
        "results": results,
        "crossover_index": crossover(sizes, exact_index, annoy_index),
        "crossover_index_batched": crossover(sizes, [r["exact"]["batched_ms"] for r in results], annoy_index),
        f"crossover_index_{ANNOY_MIN_SPEEDUP:g}x": crossover(sizes, exact_index, annoy_index, ANNOY_MIN_SPEEDUP),
        "wall_s": None,
    }
    decisive = report[f"crossover_index_{ANNOY_MIN_SPEEDUP:g}x"]
    if all("catalog" in r for r in results):
        exact_cat = [r["catalog"]["exact_ms"] for r in results]
        annoy_cat = [r["catalog"]["annoy"][0]["ms"] for r in results]
        report["crossover_catalog"] = crossover(sizes, exact_cat, annoy_cat)
        decisive = crossover(sizes, exact_cat, annoy_cat, ANNOY_MIN_SPEEDUP)
        report[f"crossover_catalog_{ANNOY_MIN_SPEEDUP:g}x"] = decisive
    threshold = round_items(decisive["items"]) if decisive.get("items") else None
    report["suggested"] = {
        "exact_index_max_items": threshold,
        "rule": f"catalogue size from which annoy (recall >= {TARGET_RECALL}) is {ANNOY_MIN_SPEEDUP:g}x faster",
        "annoy": robust_setting(results, threshold or 0),
    }
    report["wall_s"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str))
    print_summary(report)
    return 0


def print_summary(report: dict[str, Any]) -> None:
    print()
    print(f"{'items':>9} {'exact ms':>9} {'exact batched':>13} {'annoy best':>26} {'recall':>7} {'build s':>8}")
    for r in report["results"]:
        best = r["annoy"]["best"]
        build = next((b["build_s"] for b in r["annoy"]["builds"] if best and b["n_trees"] == best["n_trees"]), None)
        desc = f"{best['ms']:.3f} ms (t={best['n_trees']}, k={best['search_k']})" if best else "not reached"
        print(
            f"{r['items']:>9} {r['exact']['single_ms']:>9.3f} {r['exact']['batched_ms']:>13.4f} {desc:>26} "
            f"{(best or {}).get('recall', float('nan')):>7.3f} {build if build is not None else float('nan'):>8.2f}"
        )
        if "catalog" in r:
            c = r["catalog"]
            print(
                f"{'':>9} catalog: exact {c['exact_ms']:.3f} ms, batched {c['exact_batched_ms']:.4f}, annoy "
                + ", ".join(f"{a['ms']:.3f} ms @delta {a['delta']} (recall {a['recall']:.3f})" for a in c["annoy"])
                + f"; upsert {c['upsert_us']:.0f} us, rebuild {c['rebuild_s']:.2f} s"
            )
    for key, value in report.items():
        if key.startswith("crossover"):
            print(f"{key}: {value}")
    print(f"suggested: {report['suggested']}")
    print(f"wall time {report['wall_s']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
