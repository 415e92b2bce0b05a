"""Development tools stay out of the product's runtime (issue 12, item 6).

A worker imports none of the development tools (the local broker manager, plotting, benchmarking, training),
so `pip install stream-reco` can leave them out; a command that needs an extra that is not installed says
which one in one line and exits 2. A missing module is simulated by setting it to None in `sys.modules`,
which makes its import fail exactly as an absent package does.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from stream_reco import extras
from stream_reco.cli import cli
from stream_reco.exit_codes import EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]

#: modules a worker process must never import: the extras' packages and the tools of this package
DEV_ONLY = ("matplotlib", "scipy", "psutil", "tqdm", "pytest", "bench", "stream_reco.broker",
            "stream_reco.bench_cli", "stream_reco.evaluate", "stream_reco.model.train", "stream_reco.shop")

# What `stream-reco worker` runs, in a fresh interpreter: the CLI resolves the subcommand (lazily), then
# `run_worker`'s own imports, then the worker is built (faust app, tables, agents; no broker needed).
WORKER_PATH = """
import sys
from stream_reco import cli
command = cli.cli.get_command(None, "worker")
assert command is not None and command.name == "worker"
from stream_reco.settings import Settings
from stream_reco.stream import faust_internals
from stream_reco.stream.app import RecoWorker
from stream_reco.stream.topics import ensure_topics
import faust
RecoWorker(Settings.load(env={"STREAM_RECO_DATA_DIR": sys.argv[1]}))
dev_only = sys.argv[2].split(",")
print(",".join(sorted(m for m in sys.modules if any(m == d or m.startswith(d + ".") for d in dev_only))))
"""


def test_a_worker_imports_no_development_tool(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", WORKER_PATH, str(tmp_path), ",".join(DEV_ONLY)],
                         capture_output=True, text=True, timeout=120, check=True)
    imported = out.stdout.strip()
    assert imported == "", f"a worker imports development tools: {imported}"


def block(monkeypatch: pytest.MonkeyPatch, module: str, *importers: str) -> None:
    """Make `import module` fail as if it were not installed, and forget the modules that import it."""
    for name in list(sys.modules):
        if name == module or name.startswith(module + ".") or name in importers:
            monkeypatch.delitem(sys.modules, name)
    for name in importers:  # `from stream_reco import broker` would find the attribute and import nothing
        parent, _, child = name.rpartition(".")
        if hasattr(sys.modules.get(parent), child):
            monkeypatch.delattr(sys.modules[parent], child)
    monkeypatch.setitem(sys.modules, module, None)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"STREAM_RECO_CONFIG": ""})
    return result.exit_code, result.output


def assert_names_the_extra(code: int, output: str, command: str, module: str, extra: str) -> None:
    assert code == EXIT_USAGE, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert f"stream-reco {command} needs {module}" in lines[0]
    assert f"pip install 'stream-reco[{extra}]'" in lines[0]


@pytest.mark.parametrize(
    ("argv", "module", "importers", "extra"),
    [
        pytest.param(("broker", "status"), "psutil", ("stream_reco.broker",), "tools", id="broker"),
        pytest.param(("train", "log.jsonl"), "scipy", ("stream_reco.model.train",), "train", id="train"),
        pytest.param(("demo",), "psutil", ("stream_reco.broker",), "tools", id="demo-imports-late"),
        pytest.param(("bench", "--quick"), "psutil", (), "tools", id="bench"),
        pytest.param(("evaluate", "no-such.jsonl"), "matplotlib", ("stream_reco.evaluate.plots",), "tools",
                     id="evaluate-plots"),
        pytest.param(("evaluate", "no-such.jsonl"), "scipy", ("stream_reco.model.train",), "train",
                     id="evaluate-ours"),
    ],
)
def test_a_command_without_its_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], module: str, importers: tuple[str, ...], extra: str
) -> None:
    block(monkeypatch, module, *importers)
    code, output = run(*argv)
    assert_names_the_extra(code, output, argv[0], module, extra)


def test_evaluate_needs_no_extra_for_what_it_does_not_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """Baselines without plots need neither scipy nor matplotlib: the missing log is the only error."""
    block(monkeypatch, "matplotlib", "stream_reco.evaluate.plots")
    block(monkeypatch, "scipy", "stream_reco.model.train")
    code, output = run("evaluate", "no-such.jsonl", "--no-plots", "--methods", "pop")
    assert code == 1 and "no such log file" in output, output


def test_help_still_lists_a_command_whose_extra_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "psutil", "stream_reco.broker")
    code, output = run("--help")
    assert code == 0, output
    broker_line = next(line for line in output.splitlines() if line.strip().startswith("broker"))
    assert "local Apache Kafka" in broker_line


def test_a_missing_module_of_no_extra_is_not_hidden() -> None:
    """Only the extras' modules get the friendly message; any other missing module is a real bug."""
    assert extras.missing_module(ModuleNotFoundError("No module named 'psutil'", name="psutil")) == "psutil"
    assert extras.missing_module(ModuleNotFoundError("x", name="scipy.sparse")) == "scipy"
    assert extras.missing_module(ModuleNotFoundError("x", name="faust")) is None
    assert extras.missing_module(ModuleNotFoundError("x")) is None


def test_the_real_exit_status_and_stderr_without_an_extra(tmp_path: Path) -> None:
    """Through `main` as the console script runs it: status 2 and the one line on stderr."""
    code = "import sys; sys.modules['psutil'] = None; from stream_reco.cli import main; main(['broker', 'status'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "STREAM_RECO_DATA_DIR": str(tmp_path)})
    assert out.returncode == EXIT_USAGE, out.stderr
    assert out.stderr.strip() == ("Error: stream-reco broker needs psutil, which is not installed: "
                                  "pip install 'stream-reco[tools]'")


def test_pyproject_keeps_the_tools_out_of_the_base_install() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    optional = {extra: {_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    for module, extra in extras.EXTRA_OF.items():
        assert module not in base, f"{module} is a base dependency; it belongs to the {extra!r} extra"
        assert module in optional[extra], f"the {extra!r} extra does not install {module}"
    # ./dev setup and CI install the dev extra: it must pull every tool the tests, demo, bench and evaluate use
    assert "stream-reco[tools]" in project["optional-dependencies"]["dev"]
    assert "stream-reco[train]" in project["optional-dependencies"]["tools"]
    assert re.search(r"pip\" install .*-e '\.\[dev\]'", (ROOT / "dev").read_text())


def _name(requirement: str) -> str:
    """`scipy>=1.13` -> `scipy`; `stream-reco[tools]` stays as it is."""
    match = re.match(r"[A-Za-z0-9_.-]+(\[[^\]]*\])?", requirement)
    assert match is not None, requirement
    return match.group(0)
