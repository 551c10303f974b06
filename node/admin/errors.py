"""Errors of the admin use cases, translated at each edge (HTTP status, CLI exit code)."""

from __future__ import annotations

from spinexr.node.errors import SpinexrError


class NotFoundError(SpinexrError):
    """The study, job, instance or destination does not exist (HTTP 404)."""


class ConflictError(SpinexrError):
    """The action is not possible in the object's current state (HTTP 409)."""


class UnprocessableError(SpinexrError):
    """The request names something that exists but cannot be processed (HTTP 422)."""
