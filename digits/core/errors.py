"""The one base class of errors that reach the user as a single line, the helper that makes that line, and the
one that keeps libraries' chatter out of the user's log."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class DigitsError(Exception):
    """An error whose message is one self-contained line for the user; no traceback is shown for it."""

    exit_code = 1


def first_line(error: BaseException | str | None, default: str = "") -> str:
    """The first non-empty line of an error's message, for a one-line report.

    Takes an exception or a message. MLflow's exceptions keep their text in ``message``; SQLAlchemy wraps the
    driver's error in ``orig``, whose text is the useful part. An empty message gives ``default``, else the
    exception's class name.
    """
    if isinstance(error, BaseException):
        error = getattr(error, "orig", None) or error
        text = str(getattr(error, "message", "") or error).strip()
        fallback = default or type(error).__name__
    else:
        text = str(error or "").strip()
        fallback = default or "unknown error"
    return text.splitlines()[0].strip() if text else fallback


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the named loggers to WARNING inside the block (libraries that log INFO lines nobody needs)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
