"""Keep secrets out of every log record a process emits, whoever logs them.

Why: settings are masked wherever stream_reco prints them, but libraries log what they send. aiokafka, at
DEBUG, logs each request it sends, and a SASL PLAIN login request carries `\\x00user\\x00password` in clear
(found by tests/integration/test_security.py: the password was in a DEBUG worker's output). Masking at the
source is impossible (it is another package's log line), and a filter on handlers is lost when faust
reconfigures logging at worker start. So `install(settings)` wraps the process-wide log record factory:
every record's formatted message is checked for the configured secrets (also as they appear inside a
`bytes` repr) and rewritten with `***`. Records are only created for enabled levels, so a quiet process pays
nothing; a record that holds no secret is left untouched (its arguments are not pre-formatted).

Not covered: text written to stdout without logging, and traceback text (formatted later by handlers).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from stream_reco.settings import SECRET_FIELDS, Settings

MASK = "***"

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()  # replaced whole, never mutated: log calls from any thread read it
_installed = False


def _forms(secret: str) -> set[str]:
    """The secret as text, and as it shows inside the repr of the bytes a client sends (non-ASCII escaped)."""
    return {secret, repr(secret.encode())[2:-1]}


def redact(text: str) -> str:
    """`text` with every registered secret replaced by MASK."""
    for secret in sorted(_secrets, key=len, reverse=True):  # longer first: one secret may contain another
        text = text.replace(secret, MASK)
    return text


def install(settings: Settings) -> None:
    """Redact these settings' secrets (sasl_password, ssl_password) from all log records of this process."""
    global _installed, _secrets
    with _lock:
        for name in SECRET_FIELDS:
            value = getattr(settings, name, "")
            if value:
                _secrets = _secrets | _forms(value)
        if _installed or not _secrets:
            return
        previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                text = record.getMessage()
            except Exception:  # a broken format string: leave it to the handler to report, as without us
                return record
            if any(secret in text for secret in _secrets):
                record.msg, record.args = redact(text), ()  # () not None: mode's formatter wraps None in a tuple
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
