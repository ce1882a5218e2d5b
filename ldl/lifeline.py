"""How an `ldl` process ends when it is told to, or when the sweep that started it is gone.

SIGTERM becomes SystemExit, so `finally` blocks run (the run folder's lock is released, temporary
files removed) as they do on Ctrl-C.

A sweep's child must not outlive the sweep, even one killed with SIGKILL, which it cannot
forward.  The sweep names itself in the child's environment (PARENT_ENV); the child watches its
parent PID from a daemon thread and terminates itself once it has been reparented.  A watch
thread rather than prctl(PR_SET_PDEATHSIG) in a preexec_fn: the sweep starts children from
worker threads, where preexec_fn may deadlock and PDEATHSIG fires when the starting *thread*
ends; getppid works the same on Linux and macOS, and the check at start covers a sweep that
died before the child ran.

A handler that raises (submitit's requeue on SIGUSR2 ends with sys.exit) must not run at an
arbitrary bytecode: raised inside torch.save, torch's zip writer replaces the SystemExit with a
RuntimeError (1 % of random moments in a tiny run), and C code that clears errors can swallow it,
so the job fails or trains on instead of being requeued.  `deferred_signal` holds such a signal
until `run_deferred()`, which the batch loader calls between batches.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

PARENT_ENV = "LDL_SWEEP_PARENT"
WATCH_INTERVAL_S = 0.5
_deferred: dict[int, Callable[[int, Any], Any]] = {}   # signal -> its real handler, while deferred
_pending: list[int] = []                                # deferred signals that arrived


def child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child that must end with this process."""
    return {**env, PARENT_ENV: str(os.getpid())}


def follow_parent() -> None:
    """If started by a sweep, terminate (SIGTERM to self) as soon as the sweep is gone."""
    parent = os.environ.pop(PARENT_ENV, None)  # popped: the child's own children are not watched
    if parent is None:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(WATCH_INTERVAL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="ldl-parent-watch", daemon=True).start()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) (signal handlers belong to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def deferred_signal(signum: int) -> Iterator[None]:
    """Within the block, `signum`'s current Python handler runs at the next `run_deferred()`
    instead of wherever the signal lands.  One that arrives after the last safe point is dropped:
    the work it would have stopped is done (main thread only, as signal handlers are)."""
    handler = signal.getsignal(signum)
    if not callable(handler) or threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferred[signum] = handler
    signal.signal(signum, lambda sig, frame: _pending.append(sig))
    try:
        yield
    finally:
        signal.signal(signum, handler)
        del _deferred[signum]
        _pending[:] = [sig for sig in _pending if sig != signum]


def run_deferred() -> None:
    """A safe point: run the handlers of the deferred signals that arrived (they may raise)."""
    while _pending:
        signum = _pending.pop(0)
        _deferred[signum](signum, None)
