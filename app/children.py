"""Child processes that end when the process that started them ends, however it ends.

`herald dev` starts the API, a worker and (unless DATABASE_URL / REDIS_URL are set) an
embedded PostgreSQL and Redis. Killed with SIGKILL it runs no cleanup at all, so on Linux
each child asks the kernel, between fork and exec, for a signal when its parent dies
(`prctl(PR_SET_PDEATHSIG)`): the signal that shuts that child down cleanly. Where prctl does
not exist, an embedded server left behind is stopped at the next start (app/runtime.py).

The kernel sends the signal when the *thread* that forked the child ends, so start children
from a thread that lives as long as the process (the main thread, as the CLI does).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Loaded once here: a forked child must not load libraries before it execs.
_PRCTL = _load_prctl()


def ending_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`: the child receives `sig` when this process dies.

    None where the kernel offers no such request; Popen takes None as "nothing to run".
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), sig)

    return arm


def end_with_parent(sig: signal.Signals) -> None:
    """Ask for `sig` when this process's own parent dies (`herald dev` under a killed make)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(sig))
