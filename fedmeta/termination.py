"""A terminated or interrupted command stops for real.

SIGTERM is raised in the main thread as ``Terminated`` (a ``KeyboardInterrupt``), so it unwinds
like Ctrl-C: output directories are released, local Ray clusters stopped, finished work kept.

A Flower simulation runs its ServerApp in a non-daemon thread that waits for hospital replies
(up to ``federation.reply_timeout_s``) and nothing can stop it from outside; once everything this
process owns has unwound, ``leave`` ends the process instead of waiting for that thread.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Terminated", "leave", "sigterm_interrupts"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def sigterm_interrupts() -> Iterator[set[threading.Thread]]:
    """Within the block SIGTERM raises ``Terminated`` (main thread only); yields the threads alive
    before it, so that ``leave`` knows which ones the command started."""
    before = set(threading.enumerate())
    if threading.current_thread() is not threading.main_thread():
        yield before
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield before
    finally:
        signal.signal(signal.SIGTERM, previous)


def leave(code: int, before: set[threading.Thread]) -> int:
    """``code`` for the caller to return; the process ends here instead where a thread the command
    started (and that must not outlive it) is still alive."""
    left = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    if not left:
        return code
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():  # os._exit skips the atexit hook that would do this
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
