"""The Optuna storage: an SQL database (SQLite by default) with heartbeats, or a one-line error.

Light on purpose (optuna and SQLAlchemy only): ``digits tune`` checks the URL before it loads data or torch.

Why SQLite with a lock timeout rather than Optuna's journal file: optuna-dashboard and ``optuna.load_study`` read
``sqlite:///optuna.db`` directly; the RDB storage supports heartbeats, which tell a dead worker's RUNNING trial
from a live one's; and Optuna assigns trial numbers inside one write transaction, so workers sharing the file
can neither lose nor duplicate a trial. SQLite serialises writers, so they wait for the lock (``timeout``) instead
of failing. Several machines need a database server (PostgreSQL, MySQL): SQLite's locking is unreliable on network
file systems.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from digits.core.errors import DigitsError, first_line

# A live worker's heartbeat thread writes every HEARTBEAT_INTERVAL seconds; a RUNNING trial silent for the
# grace period (``SearchConfig.grace_period``, 60 s by default) is a dead worker's.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60  # SearchConfig.grace_period's default, for a storage opened without one
# SQLite lets one writer in at a time; the others wait up to this many seconds instead of failing at once.
SQLITE_LOCK_TIMEOUT = 60.0


class StorageError(DigitsError):
    """The Optuna storage URL cannot be opened."""


def heartbeat_interval(grace_period: int = GRACE_PERIOD) -> int:
    """``HEARTBEAT_INTERVAL``, or a third of a shorter grace period: a live worker beats several times per period."""
    return min(HEARTBEAT_INTERVAL, max(1, grace_period // 3))


def redact(url: str) -> str:
    """``url`` with any password masked, for logs and MLflow tags."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password we could find either
        return url


def open_storage(
    url: str,
    on_stale_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    grace_period: int = GRACE_PERIOD,
) -> optuna.storages.RDBStorage:
    """Open the Optuna database at ``url`` (creating its tables if needed) with heartbeats.

    ``grace_period``: seconds of silence after which a RUNNING trial is a dead worker's (``SearchConfig``).
    ``on_stale_trial`` is called for each RUNNING trial that Optuna fails because its heartbeat stopped.
    Raises ``StorageError`` (one line) when the URL cannot be parsed, its driver is missing or the database
    cannot be opened.
    """
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_LOCK_TIMEOUT}
    hint = "(expected a database URL such as sqlite:///optuna.db or postgresql://user@host/db)"
    last: Exception | None = None
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval(grace_period),
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=on_stale_trial,
                )
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as exc:
            # Two workers creating the tables of a new database at the same moment: one of them loses; retry.
            if not any(s in str(exc) for s in ("already exists", "UNIQUE constraint", "locked")):
                raise StorageError(f"cannot open Optuna storage {redact(url)}: {first_line(exc)}") from None
            last = exc
            time.sleep(0.5 * (attempt + 1))
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
            raise StorageError(f"cannot open Optuna storage {redact(url)}: {first_line(exc)} {hint}") from None
    raise StorageError(f"cannot open Optuna storage {redact(url)}: {first_line(last)}")
