"""Exit statuses live in one module (stream_reco/exit_codes.py), keep their values, and match the README."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from stream_reco import exit_codes

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "stream_reco"

EXPECTED = {
    "EXIT_OK": 0,
    "EXIT_FAILURE": 1,
    "EXIT_USAGE": 2,
    "EXIT_REJECTED": 3,
    "EXIT_BROKER_NOT_READY": 4,
    "EXIT_FAUST_INCOMPATIBLE": 5,
    "EXIT_RESTART": 6,
}


def test_the_values_are_the_contract() -> None:
    defined = {name: getattr(exit_codes, name) for name in dir(exit_codes) if name.startswith("EXIT_")}
    assert defined == EXPECTED
    assert exit_codes.signal_status(signal.SIGINT) == 130
    assert exit_codes.signal_status(signal.SIGTERM) == 143


def test_the_docstring_table_lists_every_code() -> None:
    doc = exit_codes.__doc__ or ""
    for name, value in EXPECTED.items():
        assert re.search(rf"^{value}\s+``{name}``", doc, re.MULTILINE), name


def test_the_readme_lists_every_code() -> None:
    readme = (ROOT / "README.md").read_text()
    sentence = readme[readme.index("Exit codes"):]
    sentence = sentence[: sentence.index("\n\n")]
    for value in EXPECTED.values():
        assert re.search(rf"\b{value} [a-z]", sentence), f"README's exit codes do not list {value}"


def test_no_module_defines_or_hard_codes_an_exit_status() -> None:
    """Every `EXIT_*` is defined once, and no exit call takes a bare number."""
    definition = re.compile(r"^\s*EXIT_\w+\s*(:[^=]*)?=", re.MULTILINE)
    literal_exit = re.compile(r"(sys\.exit|SystemExit|ctx\.exit|os\._exit)\(\s*\d")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "exit_codes.py":
            continue
        text = path.read_text()
        if definition.search(text) or literal_exit.search(text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"exit statuses defined or hard-coded outside stream_reco/exit_codes.py: {offenders}"
