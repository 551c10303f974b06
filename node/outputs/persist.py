"""Built output objects on disk and in the database (one row per object, atomic files)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from spinexr.node.db.models import Job, OutputObject
from spinexr.node.db.states import OutputKind
from spinexr.node.ingest.header import is_valid_uid
from spinexr.node.ingest.spool import safe_component
from spinexr.node.outputs.build import BuiltObject
from spinexr.pipeline.atomic import remove_leftovers, write_atomically


def invalid_uids(ds: Dataset) -> list[str]:
    """Return the keywords of UI elements (anywhere in ``ds`` and its file meta) not valid.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A built object.

    Returns
    -------
    list of str
        Keywords (or tags) whose value is not a valid UID (PS3.5 9.1); empty when all are.
    """
    bad: list[str] = []

    def visit(dataset: Dataset, elem: DataElement) -> None:
        if elem.VR != "UI" or elem.value in (None, ""):
            return
        values = elem.value if elem.VM > 1 else [elem.value]
        if not all(is_valid_uid(str(v)) for v in values):
            bad.append(elem.keyword or str(elem.tag))

    ds.walk(visit)
    if hasattr(ds, "file_meta"):
        ds.file_meta.walk(visit)
    return bad


def save_outputs(
    session: Session, job: Job, built: Sequence[BuiltObject], output_dir: Path
) -> list[OutputObject]:
    """Write each object under ``output_dir/<job>/`` and record it (no commit).

    Rebuilding a job replaces files and keeps one row per SOP Instance UID (the UIDs are
    deterministic, so the rows are the same).

    Parameters
    ----------
    session : Session
        Open session.
    job : Job
        The job the objects belong to.
    built : sequence of BuiltObject
        From :func:`spinexr.node.outputs.build.build_outputs`.
    output_dir : Path
        ``storage.output_dir``.

    Returns
    -------
    list of OutputObject
        The rows, in the order given.

    Raises
    ------
    ValueError
        If an object carries an invalid UID (nothing is written then).
    """
    for obj in built:
        bad = invalid_uids(obj.dataset)
        if bad:  # nothing the node writes may carry an invalid UID (PACS parsers choke)
            raise ValueError(f"{obj.kind} {obj.sop_instance_uid}: invalid UID in {bad[:5]}")
    rows: list[OutputObject] = []
    # A worker killed while it wrote this job's files left temporary files; this worker holds
    # the job's lease, so nothing else writes here.
    remove_leftovers(output_dir / f"job-{job.id}")
    for obj in built:
        relative = Path(f"job-{job.id}") / f"{obj.kind}-{safe_component(obj.sop_instance_uid)}.dcm"
        write_atomically(
            output_dir / relative, partial(obj.dataset.save_as, enforce_file_format=True)
        )
        row = session.scalar(
            select(OutputObject).where(OutputObject.sop_instance_uid == obj.sop_instance_uid)
        )
        if row is None:
            row = OutputObject(job=job, sop_instance_uid=obj.sop_instance_uid)
            session.add(row)
        row.job = job
        row.kind = OutputKind(obj.kind)
        row.sop_class_uid = str(obj.dataset.SOPClassUID)
        row.series_instance_uid = obj.series_instance_uid
        row.source_sop_instance_uid = obj.source_sop_instance_uid
        row.path = str(relative)
        rows.append(row)
    return rows
