"""SIGINT (Ctrl-C) and SIGTERM in the command line: the first raises Interrupted where the take can be cleaned up
(its temporaries removed, the previous files kept), a second one exits at once. While Blender saves or exports the
signal is only recorded (`hold_interrupts`; raised inside an operator, Blender would turn it into an operator
error) and raised afterwards by `check_interrupt()`. Standard library only.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived: stop after cleaning up the take in progress."""


class _InterruptState:
    signal: int | None = None  # the first signal received, None while running normally
    held = 0  # > 0 while Blender saves/exports: the signal is only recorded, raised afterwards


def interrupted() -> bool:
    return _InterruptState.signal is not None


def check_interrupt() -> None:
    """Raise Interrupted if a signal arrived meanwhile (e.g. during an operator, where it was held)."""
    if _InterruptState.signal is not None:
        raise Interrupted(signal.Signals(_InterruptState.signal).name)


def _on_signal(signum: int, _frame: object) -> None:
    if _InterruptState.signal is not None:  # the second one: no more cleaning up
        with suppress(OSError):
            os.write(2, b"flametalk: interrupted again: exiting now\n")
        os._exit(EXIT_INTERRUPTED)
    _InterruptState.signal = signum
    if _InterruptState.held == 0:
        raise Interrupted(signal.Signals(signum).name)


@contextmanager
def handle_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted (once; a second one exits at once) inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _InterruptState.signal, _InterruptState.held = None, 0
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def hold_interrupts() -> Iterator[None]:
    """While Blender saves or exports, only record a signal (raised inside an operator, Blender would report it
    as the operator's error and go on); the caller calls check_interrupt() afterwards."""
    _InterruptState.held += 1
    try:
        yield
    finally:
        _InterruptState.held -= 1

