"""The `stream-reco` command line: a thin shell over the package's modules.

Subcommands are imported lazily, when they run: quick commands (`tail`, `broker status`) do not pay for
numpy, faust and annoy imports they do not use, and `stream-reco worker` never imports the development
tools (the local broker manager, plotting, benchmarking; tests/unit/test_extras.py checks it). Each
subcommand module exposes one click command; shared state (the loaded settings) travels in `ctx.obj` as a
`CliState`.

A command whose optional dependencies are not installed stops with one line naming the extra to install
and exit status 2 (stream_reco/extras.py). Exit statuses: stream_reco/exit_codes.py.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any

import click

from stream_reco.exit_codes import EXIT_USAGE
from stream_reco.extras import MissingExtra, missing_module
from stream_reco.settings import Settings, SettingsError, render_effective, render_markdown, render_toml_example

# name -> (module:attribute, one-line help shown even when the module cannot be imported)
COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("stream_reco.broker:broker_cli", "Start, stop or check the local Apache Kafka broker."),
    "worker": ("stream_reco.stream.worker:worker_cmd", "Run a stream processing worker."),
    "simulate": ("stream_reco.shop.simulate:simulate_cmd", "Write a deterministic synthetic shop."),
    "replay": ("stream_reco.shop.replay:replay_cmd", "Send an event log (and catalog) to the topics."),
    "tail": ("stream_reco.shop.tail:tail_cmd", "Print recommendation lists as they are published."),
    "train": ("stream_reco.model.train:train_cmd", "Learn item embeddings and write a model artifact."),
    "evaluate": ("stream_reco.evaluate.cli:evaluate_cmd", "Replay a log in-process and report quality."),
    "bench": ("stream_reco.bench_cli:bench_cmd", "Measure throughput, latency, ANN quality and memory."),
    "demo": ("stream_reco.shop.demo:demo_cmd", "Run the whole system end to end on a simulated shop."),
    "topics": ("stream_reco.stream.topics:topics_cmd", "Create the contract's topics on the broker."),
}


@dataclass
class CliState:
    config_file: str | None
    verbose: int
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = Settings.load(self.config_file)
            except SettingsError as exc:
                raise click.UsageError(str(exc)) from exc
            from stream_reco import redact

            redact.install(self._settings)  # client libraries log login requests; never their secrets
        return self._settings


def _not_implemented(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text + " (not implemented yet)", context_settings={
        "ignore_unknown_options": True, "allow_extra_args": True})
    def cmd() -> None:
        click.echo(f"stream-reco {name}: not implemented yet", err=True)
        sys.exit(EXIT_USAGE)

    return cmd


def _needs_extra(name: str, help_text: str, module: str) -> click.Command:
    """Stands in for a command whose module cannot be imported without `module`, an optional dependency."""
    error = MissingExtra(module, name)

    @click.command(name=name, help=f"{help_text} (needs: pip install 'stream-reco[{error.extra}]')",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def cmd() -> None:
        raise error

    return cmd


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*COMMANDS, *super().list_commands(ctx)])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        target, help_text = COMMANDS[cmd_name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return _not_implemented(cmd_name, help_text)
            missing = missing_module(exc)
            if missing is not None:
                return _needs_extra(cmd_name, help_text, missing)
            raise
        return getattr(module, attr)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; an optional dependency it imports late and cannot find ends it with one line
        naming the extra to install (exit status 2), not a traceback."""
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            missing = missing_module(exc)
            if missing is None:
                raise
            raise MissingExtra(missing, ctx.invoked_subcommand) from exc


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", envvar="STREAM_RECO_CONFIG", type=click.Path(dir_okay=False),
              help="TOML settings file (env: STREAM_RECO_CONFIG).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="stream-reco")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: int) -> None:
    """stream_reco: a streaming product recommender over Kafka.

    Every setting is read from STREAM_RECO_<NAME> environment variables or a TOML --config file;
    `stream-reco config` shows the effective values.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = CliState(config_file=config_file, verbose=verbose)


@cli.command("config")
@click.option("--doc", is_flag=True, help="Show each setting's environment variable, default and meaning.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "toml"]), default="text",
              help="markdown: the README's tables of defaults; toml: the commented example config file.")
@click.pass_obj
def config_cmd(state: CliState, doc: bool, fmt: str) -> None:
    """Print the effective settings by section (secrets masked), or document the defaults.

    The text output is itself TOML, section by section, so it can start a config file; the internal fields
    follow, commented out, for diagnosis only (they are not settings).
    """
    if fmt == "markdown":
        click.echo(render_markdown())
    elif fmt == "toml":
        click.echo(render_toml_example())
    else:
        click.echo(render_effective(state.settings, doc=doc))


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="stream-reco")


if __name__ == "__main__":  # pragma: no cover
    main()
