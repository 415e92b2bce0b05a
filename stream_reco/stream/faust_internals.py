"""The one place that touches faust-streaming's (and aiokafka's) private internals, and checks them at start-up.

The worker repairs faust-streaming 0.15.3's failures (stream/repairs.py, docs/operations.md) and tunes what
faust offers no setting for; both need faust internals: the consumer's record of commits, the table
recovery's progress, the fetch wait of the consumer aiokafka creates, the web server's built-in blueprints.
Read through `getattr(..., None) or {}`, a renamed internal would silently turn a repair off after an upgrade.
So every internal is read here only, directly (a missing one raises), and `check()` verifies at start-up that
the installed faust is the pinned version and that each internal is where this module expects it:
`stream-reco worker` refuses to start otherwise (exit status `EXIT_FAUST_INCOMPATIBLE`, stream_reco/exit_codes.py),
naming what is missing.

Upgrading faust: bump `FAUST_VERSION` with the pin in pyproject.toml once the reliability tests pass on it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from faust.tables.recovery import Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import Message
from faust.web import base as faust_web

#: the faust-streaming version whose internals this module was written against (pyproject.toml pins it)
FAUST_VERSION = "0.15.3"


class FaustIncompatible(RuntimeError):
    """The installed faust-streaming lacks an internal the worker relies on."""


def _source_mentions(obj: Any, text: str) -> bool:
    try:
        return text in inspect.getsource(obj)
    except (OSError, TypeError):
        return False


#: (what the worker relies on, a test that it is there); each is used below. The two methods the worker
#: overrides must be defined by the aiokafka driver's own classes: the base class only declares them.
CHECKS: list[tuple[str, Callable[[], bool]]] = [
    ("faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._create_worker_consumer (fetch wait)",
     lambda: callable(vars(faust_aiokafka.AIOKafkaConsumerThread).get("_create_worker_consumer"))),
    ("faust.transport.drivers.aiokafka.Consumer._new_consumer_thread (fetch wait)",
     lambda: callable(vars(faust_aiokafka.Consumer).get("_new_consumer_thread"))),
    ("aiokafka.AIOKafkaConsumer._fetch_max_wait_ms, read when the consumer starts (fetch wait)",
     lambda: _source_mentions(AIOKafkaConsumer.start, "self._fetch_max_wait_ms")),
    ("faust Consumer._committed_offset (skipped-event repair)",
     lambda: _source_mentions(faust_consumer.Consumer.__init__, "self._committed_offset =")),
    ("faust.tables.recovery.Recovery.in_recovery and .active_remaining_total() (stuck-recovery watch)",
     lambda: hasattr(Recovery, "in_recovery") and callable(getattr(Recovery, "active_remaining_total", None))),
    ("faust.web.base.BlueprintManager and Web.blueprints (only documented HTTP routes)",
     lambda: hasattr(faust_web, "BlueprintManager") and _source_mentions(faust_web.Web.__init__,
                                                                          "self.blueprints =")),
    ("faust.Stream.take_events (batches)", lambda: callable(getattr(faust.Stream, "take_events", None))),
    ("faust.Table.send_changelog and .data (visitor table)",
     lambda: callable(getattr(faust.Table, "send_changelog", None)) and hasattr(faust.Table, "data")),
    ("faust Message.timestamp in seconds (clock check)",
     lambda: "timestamp" in Message.__slots__ and _source_mentions(faust_aiokafka, "timestamp / 1000.0")),
]


def check(version: str | None = None) -> list[str]:
    """What is missing or different in the installed faust (empty when the worker may start)."""
    problems = []
    installed = faust.__version__ if version is None else version
    if installed != FAUST_VERSION:
        problems.append(f"faust-streaming {installed} is installed; this worker is written and tested against "
                        f"{FAUST_VERSION} (pyproject.toml pins it)")
    for what, present in CHECKS:
        try:
            ok = present()
        except Exception:  # an import-time rename surfaces as an AttributeError inside the test
            ok = False
        if not ok:
            problems.append(f"missing faust internal: {what}")
    return problems


def require() -> None:
    """Raise `FaustIncompatible` listing every problem `check()` finds."""
    problems = check()
    if problems:
        raise FaustIncompatible("refusing to start: " + "; ".join(problems))


# --- the internals themselves ----------------------------------------------------------------------------


def install_fetch_max_wait(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Give this app's events consumer a shorter fetch wait (faust hard-codes 1500 ms; no setting exists)."""

    class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when the consumer starts its fetcher
            return consumer

    class _Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    app.transport.Consumer = _Consumer  # this app's consumer only


def committed_offsets(app: faust.App) -> dict[TP, int | None]:
    """faust's record of the offsets its consumer committed, per topic partition."""
    return dict(app.consumer._committed_offset)


def table_recovery(app: faust.App) -> tuple[bool, int]:
    """(whether faust's table recovery runs, changelog records it still has to read)."""
    recovery = app.tables.recovery
    return bool(recovery.in_recovery), int(recovery.active_remaining_total())


def serve_only_own_routes(app: faust.App) -> None:
    """Drop faust's built-in web blueprints (`/router`, `/table`, `/graph`, its statistics and index pages):
    they would be served beside the worker's own routes, on the same port and without authentication.
    Call before the web server starts; views added with `app.page` are unaffected."""
    app.web.blueprints = faust_web.BlueprintManager()


def record_time_ms(msg: Any) -> float | None:
    """The Kafka record timestamp of `msg` in ms: faust's `Message` keeps seconds, aiokafka's record ms."""
    ts = getattr(msg, "timestamp", None)
    if ts is None:
        return None
    return float(ts) * 1000.0 if isinstance(msg, Message) else float(ts)
