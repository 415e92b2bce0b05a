"""`stream-reco worker`: run one stream processing worker; start several to share the partitions."""

from __future__ import annotations

import logging

import click

from stream_reco.exit_codes import EXIT_FAUST_INCOMPATIBLE
from stream_reco.settings import Settings

LOG_LEVELS = ("crit", "error", "warn", "info", "debug")


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Check the installed faust, create the topics if needed, then run the faust worker until SIGINT/SIGTERM.

    A faust whose internals are not where stream/faust_internals.py expects them would silently turn off the
    worker's repairs: the worker refuses to start (exit status `EXIT_FAUST_INCOMPATIBLE`) and says why.
    """
    from stream_reco.stream import faust_internals

    problems = faust_internals.check()
    if problems:
        message = "stream-reco worker: refusing to start: " + "; ".join(problems)
        logging.getLogger(__name__).critical("%s", message)
        click.echo(message, err=True)
        raise SystemExit(EXIT_FAUST_INCOMPATIBLE)

    import faust

    from stream_reco.stream.app import RecoWorker
    from stream_reco.stream.topics import ensure_topics

    ensure_topics(settings)
    worker = RecoWorker(settings)
    runner = faust.Worker(worker.app, loglevel=loglevel, quiet=True)
    # No progress spinner: at levels >= warn faust sets the root logger to DEBUG to feed it, and every debug
    # call of faust and aiokafka (one per message sent) then builds a log record: ~4 % of a busy worker's
    # CPU (py-spy, docs/benchmarks.md). Output is a pipe or a log file anyway, where the spinner draws nothing.
    runner.spinner = None
    runner.execute_from_commandline()


@click.command("worker")
@click.option("--loglevel", type=click.Choice(LOG_LEVELS), default="warn", show_default=True,
              help="faust and stream_reco log level.")
@click.option("--web-port", type=int, default=None,
              help="HTTP port for GET /recommendations/{id} (0 disables; env STREAM_RECO_WEB_PORT).")
@click.pass_obj
def worker_cmd(state: object, loglevel: str, web_port: int | None) -> None:
    """Run a stream processing worker (several share the partitions of the events topic)."""
    settings: Settings = state.settings  # type: ignore[attr-defined]
    if web_port is not None:
        settings = settings.replace(web_port=web_port)
    logging.getLogger("stream_reco").setLevel(loglevel.upper().replace("CRIT", "CRITICAL").replace("WARN", "WARNING"))
    run_worker(settings, loglevel=loglevel)
