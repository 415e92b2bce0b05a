"""`stream-reco bench`: measure throughput, freshness, ANN quality, memory and scaling; write JSON + PNG.

The measurements live in the repository's `bench/` folder (`bench/suite.py` and the modules it uses,
including `bench/ann.py`), which is not part of the installed package: benchmarks need the source
checkout, a running broker and a few minutes, none of which a shop's deployment has. This command finds
that folder next to the package and runs it with the effective settings.

BLAS threads: the bench process limits OpenBLAS to one thread (unless the variable is already set) before
numpy loads, so the in-process figures do not depend on how busy the other core is; the workers it starts
do not inherit that limit and run as deployed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from stream_reco.exit_codes import EXIT_FAILURE
from stream_reco.extras import require

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
BENCH_THREADS = "1"
DEFAULT_OUTPUT = "bench-result.json"


def _limit_blas_threads() -> tuple[str, ...]:
    """Set one BLAS thread for this process where the user did not choose; returns the names set."""
    set_here = tuple(name for name in BLAS_THREAD_VARIABLES if name not in os.environ)
    for name in set_here:
        os.environ[name] = BENCH_THREADS
    return set_here


def _bench_root() -> Path:
    """The source checkout holding `bench/`; importable as the `bench` namespace package from there."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "suite.py").is_file():
        raise click.ClickException(f"bench/ not found next to the package ({root}): run from a source checkout")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


@click.command("bench")
@click.option("--quick", is_flag=True, help="Small shops and short phases (< 2 minutes); for CI.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUTPUT,
              show_default=True, help="JSON result; the PNG summary is written next to it (.png).")
@click.option("--ann-sizes", default=None,
              help="Comma-separated catalogue sizes for the ANN section (e.g. 10000,100000,1000000).")
@click.option("--seed", type=int, default=None, help="Simulation and index seed (default: the `seed` setting).")
@click.option("--soak", "soak_minutes", type=float, default=None,
              help="Instead: run a soak of this many minutes at half the max rate, sampling lag, memory and "
                   "latency (bench/soak.py); the result says whether any of them grows.")
@click.pass_obj
def bench_cmd(state: object, quick: bool, output: Path, ann_sizes: str | None, seed: int | None,
              soak_minutes: float | None) -> None:
    """Measure throughput, latency, ANN quality and memory on a simulated shop; write a JSON result.

    Needs the broker (`stream-reco broker start`). Topics, consumer groups and app ids are unique to the
    run and deleted at the end, so it never disturbs other users of the broker.
    """
    # said now rather than after minutes of measurements: the harness samples processes with psutil and draws
    # its summary with matplotlib
    require("bench", "psutil", "matplotlib")
    if soak_minutes is not None:
        _bench_root()
        from bench import soak

        if output == DEFAULT_OUTPUT:  # keep the benchmark's latest result
            output = DEFAULT_OUTPUT.with_name("soak.json")
        sys.exit(soak.main(["--minutes", str(soak_minutes), "--output", str(output)]))
    drop_env = _limit_blas_threads()
    _bench_root()
    from bench import suite  # after the BLAS limit: numpy reads it when it loads
    from stream_reco import broker

    settings = state.settings  # type: ignore[attr-defined]
    broker.ensure_running(settings)
    sizes = tuple(int(s.replace("_", "")) for s in ann_sizes.split(",") if s.strip()) if ann_sizes else None
    result = suite.run(settings, quick=quick, output=output, ann_sizes=sizes, seed=seed, drop_env=drop_env)
    click.echo(suite.report.summary(result))
    if result["problems"]:
        for problem in result["problems"]:
            click.echo(f"problem: {problem}", err=True)
        sys.exit(EXIT_FAILURE)  # the run finished, but its result is incomplete or holds non-finite numbers
