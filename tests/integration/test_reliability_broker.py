"""Broker restart: stop and restart the Kafka broker during a replay; the worker reconnects, finishes, loses nothing.

Runs its OWN broker (free ports below the ephemeral range, a tmp data dir), never the shared one on 9092 that
other tests use, and stops it whatever happens. The replay and its proof are the crash test's
(tests/integration/test_reliability_crash.py): one partition and `batch_size` 1, the final list of every
visitor equals an uninterrupted in-process replay's, and every event triggered a list.

CI: one clean restart (SIGTERM, Kafka flushes and closes its logs). Slow: a clean restart, then a `kill -9` of
the broker (Kafka recovers its logs on start), each with an outage of a few seconds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream_reco import broker
from stream_reco.settings import Settings

from .harness import WorkerProcess, free_ports, wait_until
from .test_reliability_crash import CI_EVENTS, check_disrupted_replay

pytestmark = pytest.mark.integration

#: how long the broker stays away: longer than a few heartbeats, shorter than the session timeout
OUTAGE_S = 5.0
CI_RESTART_AT = (0.35,)
SLOW_RESTART_AT = (0.25, 0.6)
KILL_WAIT_S = 30.0


@pytest.fixture
def own_broker(tmp_path: Path, unique_settings: Settings) -> Iterator[Settings]:
    """A private broker (own ports, tmp data dir) and settings pointing at it; stopped whatever happens."""
    port, controller_port = free_ports(2)
    settings = unique_settings.replace(
        bootstrap=f"127.0.0.1:{port}", broker_port=port, controller_port=controller_port, broker_sasl_port=0,
        data_dir=str(tmp_path), partitions=1, batch_size=1, web_port=0,
    )
    broker.start(settings)
    try:
        yield settings
    finally:
        broker.stop(settings)


def _kill_broker(settings: Settings) -> None:
    """kill -9 the private broker: no clean shutdown, Kafka must recover its logs on the next start."""
    pid = broker.status(settings, timeout_s=1.0).pid
    assert pid is not None, "the private broker runs"
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not broker.is_ready(settings, timeout_s=1.0), KILL_WAIT_S, "broker gone after kill -9")


def restart_broker(settings: Settings, hard: Callable[[int], bool]) -> Callable[[int, WorkerProcess], WorkerProcess]:
    """A disruption for check_disrupted_replay: stop (or kill) the broker, wait OUTAGE_S, start it again."""

    def disrupt(i: int, worker: WorkerProcess) -> WorkerProcess:
        if hard(i):
            _kill_broker(settings)
        else:
            broker.stop(settings)
        time.sleep(OUTAGE_S)
        assert worker.proc.poll() is None, f"the worker died while the broker was away:\n{worker.output()}"
        broker.start(settings)
        return worker  # the same worker process must carry on

    return disrupt


def test_broker_restart_mid_replay_loses_nothing(own_broker: Settings) -> None:
    run = check_disrupted_replay(own_broker, CI_RESTART_AT, restart_broker(own_broker, hard=lambda i: False),
                                 CI_EVENTS)
    assert len(run.workers) == 1, "one worker process did the whole replay"


@pytest.mark.slow
def test_broker_restart_and_kill_mid_replay_loses_nothing(own_broker: Settings) -> None:
    run = check_disrupted_replay(own_broker, SLOW_RESTART_AT, restart_broker(own_broker, hard=lambda i: i == 2))
    assert len(run.workers) == 1, "one worker process did the whole replay"
