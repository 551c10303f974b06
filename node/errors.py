"""The node's exception hierarchy, translated at the edges.

SCP handlers map these to DIMSE statuses, HTTP handlers to status codes, Celery tasks to
retry-or-fail, and the CLI to an exit code with one clear line.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterable


class SpinexrError(Exception):
    """Root of every error the node raises on purpose."""

    exit_code = 1


class ConfigError(SpinexrError):
    """Invalid settings; carries one readable line per problem."""

    exit_code = 2

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class DatabaseError(SpinexrError):
    """The database cannot be reached or is not at the expected schema revision."""


class InvalidTransitionError(SpinexrError):
    """A job was asked to move to a state its state machine does not allow."""


class IngestError(SpinexrError):
    """A received instance cannot be accepted.

    ``reason`` is a short code the SCP and STOW-RS map to a status: ``unparseable``,
    ``truncated``, ``missing_uid``, ``invalid_uid``, ``too_deep``, ``too_large``,
    ``unsupported_sop_class``, ``out_of_resources``, ``not_authorised``.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_SQLSTATE = "53100"  # PostgreSQL disk_full


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says that the disk or a quota is full.

    An ``OSError`` with ``ENOSPC`` or ``EDQUOT``; SQLite's ``SQLITE_FULL`` ("database or disk
    is full"); PostgreSQL's SQLSTATE 53100. SQLAlchemy's errors are read through ``orig``.

    Parameters
    ----------
    exc : BaseException
        The exception.

    Returns
    -------
    bool
        True when the cause is a full disk: the answer is "out of resources", retry later.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL_ERRNOS:
            return True
        if isinstance(cause, sqlite3.Error) and cause.sqlite_errorcode == sqlite3.SQLITE_FULL:
            return True
        if getattr(cause, "sqlstate", None) == _DISK_FULL_SQLSTATE:
            return True
        cause = getattr(cause, "orig", None) or cause.__cause__
    return False


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached or used right now.

    SQLAlchemy's ``OperationalError`` (connection refused or lost, server shutting down,
    SQLite busy) and ``DisconnectionError``: errors that a later try can clear, as opposed
    to a constraint or a programming error.

    Parameters
    ----------
    exc : BaseException
        The exception.

    Returns
    -------
    bool
        True when the answer is "unavailable, retry later".
    """
    from sqlalchemy.exc import DisconnectionError, OperationalError

    return isinstance(exc, OperationalError | DisconnectionError)
