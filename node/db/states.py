"""The job state machine: states, allowed transitions, and which states are terminal."""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    """Where a study's analysis job stands.

    The happy path is ``received → complete → queued → analyzing → built → exporting →
    exported → verified``. ``failed`` is a retryable stop (the job goes back to ``queued``
    or, after its last attempt, to ``dead``); ``ignored`` marks studies the routing rules
    skipped; ``cancelled`` is an admin's decision.
    """

    RECEIVED = "received"
    COMPLETE = "complete"
    QUEUED = "queued"
    ANALYZING = "analyzing"
    BUILT = "built"
    EXPORTING = "exporting"
    EXPORTED = "exported"
    VERIFIED = "verified"
    FAILED = "failed"
    DEAD = "dead"
    IGNORED = "ignored"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for states no automatic process leaves."""
        return self in TERMINAL_STATES

    @property
    def leased(self) -> bool:
        """True for states in which a worker holds a lease on the job."""
        return self in LEASED_STATES


TERMINAL_STATES = frozenset(
    {JobState.VERIFIED, JobState.DEAD, JobState.IGNORED, JobState.CANCELLED}
)
"""States no automatic process leaves (an admin may still retry)."""

LEASED_STATES = frozenset({JobState.ANALYZING, JobState.EXPORTING})
"""States in which a worker holds a lease; an expired lease sends the job back."""

_S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _S.RECEIVED: frozenset({_S.RECEIVED, _S.COMPLETE, _S.IGNORED, _S.CANCELLED}),
    _S.COMPLETE: frozenset({_S.QUEUED, _S.RECEIVED, _S.IGNORED, _S.CANCELLED}),
    _S.QUEUED: frozenset({_S.ANALYZING, _S.FAILED, _S.CANCELLED, _S.QUEUED}),
    _S.ANALYZING: frozenset({_S.BUILT, _S.FAILED, _S.QUEUED, _S.CANCELLED}),
    _S.BUILT: frozenset({_S.EXPORTING, _S.EXPORTED, _S.FAILED, _S.CANCELLED}),
    _S.EXPORTING: frozenset({_S.EXPORTED, _S.FAILED, _S.BUILT, _S.CANCELLED}),
    # Exported jobs are verified by read-back, or stay exported when no read-back is set.
    _S.EXPORTED: frozenset({_S.VERIFIED, _S.FAILED, _S.QUEUED, _S.BUILT}),
    _S.VERIFIED: frozenset({_S.QUEUED, _S.BUILT}),
    _S.FAILED: frozenset({_S.QUEUED, _S.BUILT, _S.DEAD, _S.CANCELLED}),
    _S.DEAD: frozenset({_S.QUEUED, _S.BUILT}),
    _S.IGNORED: frozenset({_S.QUEUED}),
    _S.CANCELLED: frozenset({_S.QUEUED}),
}
"""Allowed moves. Moves out of terminal states are admin retries: back to ``queued``
(analyse again) or, when the outputs exist, to ``built`` (export again)."""


def can_transition(current: JobState, new: JobState) -> bool:
    """Return whether ``current → new`` is allowed.

    Parameters
    ----------
    current, new : JobState
        The states.

    Returns
    -------
    bool
        True when the state machine allows the move.
    """
    return new in TRANSITIONS[current]


class StudyStatus(enum.StrEnum):
    """Assembly state of a study: instances arriving, or quiet long enough to analyse."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class ExportStatus(enum.StrEnum):
    """Outcome of one export attempt of one object to one destination."""

    PENDING = "pending"
    SUCCESS = "success"
    WARNING = "warning"
    FAILED = "failed"
    DEAD = "dead"


class OutputKind(enum.StrEnum):
    """Kinds of objects the node builds."""

    SR = "sr"
    GSPS = "gsps"
    KOS = "kos"
    SC = "sc"
    REFORMAT = "reformat"


class Priority(enum.IntEnum):
    """Queue priority; higher runs first."""

    ROUTINE = 3
    URGENT = 8
