"""Read-only views of studies for the CLI and the admin API (UIDs and states, no PHI)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.db.models import Instance, Job, Study
from spinexr.node.errors import SpinexrError


def _latest_job(study: Study) -> Job | None:
    return study.jobs[-1] if study.jobs else None


def list_studies(sessions: sessionmaker[Session], limit: int = 50) -> list[dict[str, Any]]:
    """Return the newest studies with counts, status, latest job state and decision.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    limit : int
        Most rows returned.

    Returns
    -------
    list of dict
        One row per study.
    """
    with sessions() as session:
        counts = dict(
            session.execute(
                select(Instance.study_id, func.count(Instance.id)).group_by(Instance.study_id)
            ).all()
        )
        studies = session.scalars(
            select(Study).order_by(Study.last_received_at.desc()).limit(limit)
        ).all()
        rows = []
        for st in studies:
            job = _latest_job(st)
            rows.append(
                {
                    "study_instance_uid": st.study_instance_uid,
                    "instances": counts.get(st.id, 0),
                    "status": st.status.value,
                    "job_id": job.id if job else None,
                    "job_state": job.state.value if job else None,
                    "decision": st.decision,
                    "last_received_at": st.last_received_at.isoformat(),
                }
            )
        return rows


def show_study(sessions: sessionmaker[Session], uid: str) -> dict[str, Any]:
    """Return one study with its instances, jobs and audit timeline.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    uid : str
        Study Instance UID.

    Returns
    -------
    dict
        The study.

    Raises
    ------
    SpinexrError
        If the study is unknown.
    """
    with sessions() as session:
        st = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        if st is None:
            raise SpinexrError(f"no study {uid}")
        return {
            "study_instance_uid": st.study_instance_uid,
            "status": st.status.value,
            "decision": st.decision,
            "priority": st.priority,
            "calling_ae": st.calling_ae,
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
                for i in st.instances
            ],
            "jobs": [
                {
                    "id": j.id,
                    "state": j.state.value,
                    "attempts": j.attempts,
                    "last_error": j.last_error,
                    "superseded_job_id": j.superseded_job_id,
                    "created_at": j.created_at.isoformat(),
                }
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
