"""The node's exception hierarchy, translated at the edges.

SCP handlers map these to DIMSE statuses, HTTP handlers to status codes, Celery tasks to
retry-or-fail, and the CLI to an exit code with one clear line.
"""

from __future__ import annotations

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
