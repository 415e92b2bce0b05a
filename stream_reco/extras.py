"""Optional dependencies: which extra of the package provides which module, and the error that names it.

`pip install stream-reco` installs what a worker (and the shop-side commands replay, tail, simulate,
topics) needs. The rest is in extras (pyproject.toml):

=========  ================================  ==============================================================
extra      modules                           needed by
=========  ================================  ==============================================================
``train``  scipy                             ``stream-reco train``; ``evaluate`` of our own method
``tools``  the ``train`` extra, matplotlib,  ``broker`` (the local Kafka manager), ``demo``, ``bench``,
           psutil                            ``evaluate``'s plots
``dev``    the ``tools`` extra, test tools   ``./dev setup``, CI
=========  ================================  ==============================================================

A command that needs a module that is not installed stops with `MissingExtra`: one line naming the
module and the ``pip install`` that provides it, exit status `EXIT_USAGE` (2), no traceback. The CLI
turns any `ModuleNotFoundError` for a module of `EXTRA_OF` into it (stream_reco/cli.py); commands that
would find out only late (after minutes of work) call `require` first.
"""

from __future__ import annotations

import importlib.util

import click

from stream_reco.exit_codes import EXIT_USAGE

#: top-level module -> the extra that installs it
EXTRA_OF: dict[str, str] = {
    "scipy": "train",
    "matplotlib": "tools",
    "psutil": "tools",
}


class MissingExtra(click.ClickException):
    """A command needs a module from an extra that is not installed."""

    exit_code = EXIT_USAGE

    def __init__(self, module: str, command: str | None = None) -> None:
        self.module = module
        self.extra = EXTRA_OF.get(module, "tools")
        who = f"stream-reco {command}" if command else "this command"
        super().__init__(f"{who} needs {module}, which is not installed: "
                         f"pip install 'stream-reco[{self.extra}]'")


def missing_module(exc: ModuleNotFoundError) -> str | None:
    """The module of `EXTRA_OF` whose absence caused `exc`, or None when it is about another module."""
    root = (exc.name or "").split(".")[0]
    return root if root in EXTRA_OF else None


def require(command: str, *modules: str) -> None:
    """Raise `MissingExtra` for the first of `modules` that is not installed (found without importing it)."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
            found = False
        if not found:
            raise MissingExtra(module, command)
