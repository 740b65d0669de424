"""Ctrl-C and SIGTERM, raised where a run can unwind cleanly: at once, or held while Optuna does its bookkeeping.

The signal handlers (``workflow.cli``) call ``interrupt``; the search loop holds interruptions
(``interrupts_held``) and a trial's body releases them (``interrupts_released``). Standard library only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class RunInterrupted(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so that runs end as KILLED and studies stay consistent."""


# Where a Ctrl-C or SIGTERM may unwind at once, and where it must wait. Inside `interrupts_held()` (the Optuna
# search loop) the interruption is kept until the next `interrupts_released()` block (a trial's body) starts, or
# the held block ends: raised in the middle of Optuna's own bookkeeping (its tell after a trial), it leaves
# the trial's state unwritten and Optuna 5.1's `_run_trial` then fails with an UnboundLocalError instead.
_held = 0


_pending: BaseException | None = None


def interrupt(exc: BaseException) -> None:
    """Raise ``exc`` (a KeyboardInterrupt or RunInterrupted from a signal handler) now, or when it is safe."""
    global _pending
    if _held:
        _pending = _pending or exc
        return
    raise exc


def _raise_pending() -> None:
    global _pending
    exc, _pending = _pending, None
    if exc is not None:
        raise exc


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Keep interruptions that arrive inside this block for the next ``interrupts_released`` block, or its end."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1
    if not _held:
        _raise_pending()


@contextlib.contextmanager
def interrupts_released() -> Iterator[None]:
    """Inside ``interrupts_held``: let interruptions raise at once here (first the one that is waiting, if any)."""
    global _held
    saved, _held = _held, 0
    try:
        _raise_pending()
        yield
    finally:
        _held = saved
