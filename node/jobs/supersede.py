"""Superseding: a study's newer job replaces the older ones that have not finished.

When a study is analysed again (a late image, a new version of an instance), the job the
study assembler creates for it cancels the study's older jobs that are still on their way:
their analysis would describe an outdated set of images, and what they have not yet sent
would only pile up at the PACS next to the newer result. Each cancelled job gets the
timeline entry ``superseded by job N``; a worker analysing one discards its result
(`spinexr.node.jobs.runner.JobRunner.run`) and its export stops before the next send
(`spinexr.node.export.exporter.Exporter`). What already reached a destination stays there:
DIMSE C-STORE cannot take an object back (see ``docs/superseded-results.md``).

``output.superseded`` chooses what happens to an older job whose outputs are already built:
``latest_only`` (default) cancels its export too, so only the newest set is sent; ``keep``
lets it finish, so every set that was built reaches the PACS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from spinexr.node.db.models import ExportAttempt, Job, OutputObject
from spinexr.node.db.states import ExportStatus, JobState, OutputKind
from spinexr.node.db.timeline import transition

logger = logging.getLogger(__name__)

SupersededPolicy = Literal["latest_only", "keep"]
"""The values of ``output.superseded``."""

ANALYSIS_STATES = frozenset(
    {JobState.RECEIVED, JobState.COMPLETE, JobState.QUEUED, JobState.ANALYZING}
)
"""States of a job whose result does not exist yet: always cancelled when superseded."""

EXPORT_STATES = frozenset({JobState.BUILT, JobState.EXPORTING, JobState.FAILED})
"""States of a job whose outputs may still be (re)sent; cancelled under ``latest_only``."""

_SENT = (ExportStatus.SUCCESS, ExportStatus.WARNING)


def cancel_superseded(
    session: Session, new_job: Job, policy: SupersededPolicy = "latest_only"
) -> list[int]:
    """Cancel the older jobs of ``new_job``'s study that have not finished.

    Runs in the caller's transaction (no commit), with each move in the study's timeline.

    Parameters
    ----------
    session : Session
        Open session; ``new_job`` must have its id (flushed).
    new_job : Job
        The study's newest job.
    policy : {"latest_only", "keep"}
        ``output.superseded``. Jobs still before or in analysis are cancelled either way;
        jobs with built outputs that are waiting for, in, or retrying their export are
        cancelled only under ``latest_only``. Exported, verified, dead, ignored and
        cancelled jobs are left as they are.

    Returns
    -------
    list of int
        The ids of the jobs cancelled.
    """
    older = session.scalars(
        select(Job)
        .where(
            Job.study_id == new_job.study_id,
            Job.id < new_job.id,
            Job.state.in_(ANALYSIS_STATES | EXPORT_STATES),
        )
        .order_by(Job.id)
        .with_for_update()
    ).all()
    cancelled: list[int] = []
    for job in older:
        exporting = job.state in EXPORT_STATES and bool(job.outputs)
        if exporting and policy == "keep":
            continue
        transition(session, job, JobState.CANCELLED, detail=f"superseded by job {new_job.id}")
        cancelled.append(job.id)
    if cancelled:
        logger.info("job %s supersedes job(s) %s: cancelled", new_job.id, cancelled)
    return cancelled


@dataclass(frozen=True)
class Lineage:
    """What a job's outputs replace at the destinations.

    Attributes
    ----------
    predecessor : OutputObject or None
        The SR of the latest earlier job of the study whose SR reached a destination (or,
        under ``keep``, is still being sent); None when no earlier SR got out.
    revision : int
        1 for a study's first result that reaches a PACS, then 2, 3, ...: one more than the
        earlier jobs whose outputs reached (or are still being sent to) a destination.
    """

    predecessor: OutputObject | None
    revision: int


def lineage(session: Session, job: Job) -> Lineage:
    """Return the earlier results a job's outputs replace, as the PACS has them.

    A cancelled job whose objects never got out is skipped, so the new SR's Predecessor
    Documents Sequence names an SR the PACS really has.

    Parameters
    ----------
    session : Session
        Open session.
    job : Job
        The job being built.

    Returns
    -------
    Lineage
        Its predecessor SR and revision number.
    """
    earlier = session.scalars(
        select(Job).where(Job.study_id == job.study_id, Job.id < job.id).order_by(Job.id.desc())
    ).all()
    predecessor: OutputObject | None = None
    revision = 1
    for other in earlier:
        sent = set(
            session.scalars(
                select(ExportAttempt.output_id).where(
                    ExportAttempt.job_id == other.id, ExportAttempt.status.in_(_SENT)
                )
            )
        )
        on_its_way = other.state in EXPORT_STATES and bool(other.outputs)
        if not sent and not on_its_way:
            continue
        revision += 1
        if predecessor is None:
            predecessor = next(
                (
                    o
                    for o in other.outputs
                    if o.kind is OutputKind.SR and (on_its_way or o.id in sent)
                ),
                None,
            )
    return Lineage(predecessor, revision)
