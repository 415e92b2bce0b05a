"""Exit statuses of every `stream-reco` command: the one place that defines them.

====  ===========================  ==========================================================================
code  name                         meaning
====  ===========================  ==========================================================================
0     ``EXIT_OK``                  done
1     ``EXIT_FAILURE``             a runtime failure (messages not acknowledged, an incomplete bench result,
                                   a demo that saw no list, ...)
2     ``EXIT_USAGE``               usage or configuration error: bad arguments or settings, a file that is
                                   not a log, a command not implemented yet, an optional extra not installed
3     ``EXIT_REJECTED``            some records were rejected (replay); the valid ones were sent
4     ``EXIT_BROKER_NOT_READY``    the broker cannot be reached or is not ready
5     ``EXIT_FAUST_INCOMPATIBLE``  the worker refused to start: the installed faust-streaming is not the
                                   pinned version or lacks an internal the worker relies on
6     ``EXIT_RESTART``             the worker exited so that its supervisor starts it again (faust wedged)
====  ===========================  ==========================================================================

A command interrupted by a signal exits with the shell's convention, 128 + the signal number
(`signal_status`). The README's "Commands" section lists the same table; tests/unit/test_exit_codes.py
checks that the two agree.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_REJECTED: Final = 3
EXIT_BROKER_NOT_READY: Final = 4
EXIT_FAUST_INCOMPATIBLE: Final = 5
EXIT_RESTART: Final = 6

#: 128 + signal number: how a shell reports a process ended by a signal
SIGNAL_BASE: Final = 128


def signal_status(signum: int) -> int:
    """The exit status of a command that stopped because of signal `signum` (130 for SIGINT)."""
    return SIGNAL_BASE + signum
