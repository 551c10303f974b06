"""The study views of the CLI, the admin API and the admin pages: search and one study.

UIDs, states and results; the identifying header values (`study_header`) only for the
admin pages, never logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pydicom
from pydantic import ValidationError
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.admin.errors import NotFoundError
from spinexr.node.admin.jobs import show_job
from spinexr.node.db.models import Instance, Job, OutputObject, Result, Study
from spinexr.node.db.states import JobState, StudyStatus
from spinexr.pipeline.results import StudyResult

logger = logging.getLogger(__name__)


def find_studies(
    sessions: sessionmaker[Session],
    *,
    accession: str | None = None,
    study_uid: str | None = None,
    status: StudyStatus | None = None,
    job_state: JobState | None = None,
    page: int = 1,
    per_page: int = 50,
) -> tuple[list[dict[str, Any]], int]:
    """Search studies, newest first, with their instance count and latest job.

    Instances are counted for the page's studies only (through the index on their study),
    so that a page costs the same whatever the database holds: a CT study has thousands of
    instances, and a grouped count over every instance row would grow with them all.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    accession : str, optional
        Accession Number, exact.
    study_uid : str, optional
        Study Instance UID or its beginning.
    status : StudyStatus, optional
        Assembly status.
    job_state : JobState, optional
        State of the study's latest job.
    page, per_page : int
        1-based page and its size.

    Returns
    -------
    tuple of (list of dict, int)
        The page's rows and the number of matching studies.
    """
    latest = (
        select(Job.study_id, func.max(Job.id).label("job_id")).group_by(Job.study_id).subquery()
    )
    stmt = (
        select(Study, Job)
        .outerjoin(latest, latest.c.study_id == Study.id)
        .outerjoin(Job, Job.id == latest.c.job_id)
    )
    if accession:
        stmt = stmt.where(Study.accession_number == accession)
    if study_uid:
        stmt = stmt.where(Study.study_instance_uid.startswith(study_uid, autoescape=True))
    if status is not None:
        stmt = stmt.where(Study.status == status)
    if job_state is not None:
        stmt = stmt.where(Job.state == job_state)
    with sessions() as session:
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        found = session.execute(
            stmt.order_by(Study.last_received_at.desc(), Study.id.desc())
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
        ids = [st.id for st, _ in found]
        counts: dict[int, int] = {}
        if ids:
            counts = {
                int(study_id): int(n)
                for study_id, n in session.execute(
                    select(Instance.study_id, func.count(Instance.id))
                    .where(Instance.study_id.in_(ids))
                    .group_by(Instance.study_id)
                )
            }
        rows = [
            {
                "study_instance_uid": st.study_instance_uid,
                "accession_number": st.accession_number,
                "modality": st.modality,
                "calling_ae": st.calling_ae,
                "instances": counts.get(st.id, 0),
                "status": st.status.value,
                "decision": st.decision,
                "job_id": job.id if job is not None else None,
                "job_state": job.state.value if job is not None else None,
                "first_received_at": st.first_received_at,
                "last_received_at": st.last_received_at,
            }
            for st, job in found
        ]
    return rows, int(total)


def _summarise(row: Result) -> dict[str, Any]:
    """Summarise a result row with the findings read from its payload."""
    out: dict[str, Any] = {
        "outcome": row.outcome,
        "probability": row.probability,
        "threshold": row.threshold,
        "abnormal": row.abnormal,
        "bundle_name": row.bundle_name,
        "bundle_version": row.bundle_version,
        "device_uid": row.device_uid,
        "demo": None,
        "failure_reason": None,
        "flagged_classes": [],
        "boxes_displayed": 0,
        "images": [],
    }
    try:
        result = StudyResult.model_validate(row.payload)
    except ValidationError:
        logger.warning("job %s: result payload does not match the result schema", row.job_id)
        return out
    out["demo"] = result.provenance.demo
    out["failure_reason"] = result.failure_reason
    out["flagged_classes"] = [c.display_name for c in result.flagged_classes]
    for image in result.images:
        boxes = [
            {
                "label": b.label.display_name,
                "class_id": int(b.label),
                "score": b.score,
                "xmin": b.xmin,
                "ymin": b.ymin,
                "xmax": b.xmax,
                "ymax": b.ymax,
            }
            for b in image.displayed_boxes
        ]
        out["boxes_displayed"] += len(boxes)
        out["images"].append(
            {
                "sop_instance_uid": image.sop_instance_uid,
                "probability": image.probability,
                "decision": image.decision,
                "error": None if image.error is None else image.error.message,
                "boxes": boxes,
            }
        )
    return out


def study_detail(sessions: sessionmaker[Session], uid: str) -> dict[str, Any]:
    """Return a study with its instances, jobs (results, outputs, exports) and timeline.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    uid : str
        Study Instance UID.

    Returns
    -------
    dict
        Its identifying columns, instances and audit timeline, and each job as
        `spinexr.node.admin.jobs.show_job` shows it, its result summarised
        with the findings, whether it is the ``current`` job and which job it was
        ``superseded_by``. ``result`` is the current job's result only (`current_job`).

    Raises
    ------
    NotFoundError
        If the study is unknown.
    """
    with sessions() as session:
        st = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        if st is None:
            raise NotFoundError(f"no study {uid}")
        data: dict[str, Any] = {
            "study_instance_uid": st.study_instance_uid,
            "accession_number": st.accession_number,
            "modality": st.modality,
            "source": st.source,
            "calling_ae": st.calling_ae,
            "status": st.status.value,
            "decision": st.decision,
            "priority": st.priority,
            "first_received_at": st.first_received_at,
            "last_received_at": st.last_received_at,
            "completed_at": st.completed_at,
            # Columns, not ORM objects: a CT study has thousands of instances.
            "instances": [
                {
                    "sop_instance_uid": i.sop_instance_uid,
                    "series_instance_uid": i.series_instance_uid,
                    "sop_class_uid": i.sop_class_uid,
                    "transfer_syntax_uid": i.transfer_syntax_uid,
                    "version": i.version,
                    "size_bytes": i.size_bytes,
                    "decision": i.decision,
                    "received_at": i.received_at.isoformat(),
                }
                for i in session.execute(
                    select(
                        Instance.sop_instance_uid,
                        Instance.series_instance_uid,
                        Instance.sop_class_uid,
                        Instance.transfer_syntax_uid,
                        Instance.version,
                        Instance.size_bytes,
                        Instance.decision,
                        Instance.received_at,
                    )
                    .where(Instance.study_id == st.id)
                    .order_by(Instance.id)
                )
            ],
            "jobs": [
                {"id": j.id, "state": j.state.value, "superseded_job_id": j.superseded_job_id}
                for j in st.jobs
            ],
            "timeline": [
                {
                    "at": e.at.isoformat(),
                    "event": e.event,
                    "job_id": e.job_id,
                    "from_state": e.from_state,
                    "to_state": e.to_state,
                    "detail": e.detail,
                }
                for e in st.events
            ],
        }
        results = {
            r.job_id: _summarise(r)
            for r in session.scalars(
                select(Result).join(Job, Job.id == Result.job_id).where(Job.study_id == st.id)
            )
        }
        sources = dict(
            session.execute(
                select(OutputObject.sop_instance_uid, OutputObject.source_sop_instance_uid)
                .join(Job, Job.id == OutputObject.job_id)
                .where(Job.study_id == st.id)
            ).all()
        )
    current = current_job(data["jobs"])
    successors = superseding_jobs(data["jobs"], current)
    jobs = []
    for brief in data["jobs"]:
        job = show_job(sessions, brief["id"])
        job["superseded_job_id"] = brief["superseded_job_id"]
        job["superseded_by"] = successors.get(brief["id"])
        job["current"] = brief["id"] == current
        job["result"] = results.get(brief["id"])
        for output in job["outputs"]:
            output["source_sop_instance_uid"] = sources.get(output["sop_instance_uid"])
        jobs.append(job)
    data["jobs"] = jobs
    data["current_job_id"] = current
    # One current result: the current job's (none yet while it runs); earlier jobs' results
    # stay in their job rows, marked superseded.
    data["result"] = results.get(current) if current is not None else None
    return data


def current_job(jobs: list[dict[str, Any]]) -> int | None:
    """Return the id of a study's current job: its newest one not cancelled.

    Parameters
    ----------
    jobs : list of dict
        The study's jobs, oldest first, each with ``id`` and ``state``.

    Returns
    -------
    int or None
        The newest job that is not ``cancelled`` (an older job is superseded by it); the
        newest job when all are cancelled; None for a study without jobs.
    """
    live = [j["id"] for j in jobs if j["state"] != JobState.CANCELLED.value]
    if live:
        return int(live[-1])
    return int(jobs[-1]["id"]) if jobs else None


def superseding_jobs(jobs: list[dict[str, Any]], current: int | None) -> dict[int, int]:
    """Return, for each job older than the current one, the job that superseded it.

    Parameters
    ----------
    jobs : list of dict
        The study's jobs, oldest first, each with ``id`` and ``superseded_job_id``.
    current : int or None
        From `current_job`.

    Returns
    -------
    dict of int to int
        Superseded job id → the id of the job created to replace it (the next job of the
        study when none names it).
    """
    if current is None:
        return {}
    named = {j["superseded_job_id"]: j["id"] for j in jobs if j["superseded_job_id"]}
    ids = [j["id"] for j in jobs]
    out: dict[int, int] = {}
    for i, job_id in enumerate(ids):
        if job_id >= current:
            break
        out[job_id] = named.get(job_id, ids[i + 1])
    return out


def study_header(spool_dir: Path, sessions: sessionmaker[Session], uid: str) -> dict[str, str]:
    """Return identifying header values of a study for the admin pages (never logged).

    Read from the first stored instance: Patient's Name and ID, Study Date and
    Description. Empty when no instance can be read.

    Parameters
    ----------
    spool_dir : Path
        ``storage.spool_dir``.
    sessions : sessionmaker
        Database sessions.
    uid : str
        Study Instance UID.

    Returns
    -------
    dict of str to str
        ``patient_name``, ``patient_id``, ``study_date``, ``study_description``.
    """
    with sessions() as session:
        path = session.scalar(
            select(Instance.path)
            .join(Study, Study.id == Instance.study_id)
            .where(Study.study_instance_uid == uid)
            .order_by(Instance.id)
            .limit(1)
        )
    keys = {
        "patient_name": "PatientName",
        "patient_id": "PatientID",
        "study_date": "StudyDate",
        "study_description": "StudyDescription",
    }
    if path is None:
        return dict.fromkeys(keys, "")
    try:
        ds = pydicom.dcmread(spool_dir / path, stop_before_pixels=True)
    except (OSError, InvalidDicomError):
        return dict.fromkeys(keys, "")
    return {k: str(ds.get(keyword, "") or "") for k, keyword in keys.items()}
