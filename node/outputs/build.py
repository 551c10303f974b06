"""Choose and build a study's output objects for the site profile.

``settings.output`` says which kinds a site wants: the SR (one per study), GSPS (one per
analysed image), KOS (one per study, only when an image is flagged) and Secondary Capture
(one per analysed image). Every Series and SOP Instance UID is derived from the job key
(`spinexr.node.outputs.provenance.output_uid`), so building the same job again gives the same
UIDs and a re-send never duplicates objects in the PACS.

A re-analysis of a study (``revision`` 2, 3, ...) gets new series, as a new job does, and says
what it is where viewers show it: every Series Description ends with ``rev N`` (before the
demo warning), each GSPS's Content Description says ``AI results rev N, replaces rev N-1``
and its Presentation Creation Date/Time is when it was built, later than the one it
replaces. The Content Label stays the same across revisions (``AI_SPINEXR``): viewers list
presentation states by label and creation date/time, and site rules that pick the node's
presentation state by label keep working (``docs/superseded-results.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from spinexr.node.outputs.ct_reformat import build_reformat_gsps, build_reformat_sc
from spinexr.node.outputs.gsps import build_gsps
from spinexr.node.outputs.kos import build_kos, flagged_images
from spinexr.node.outputs.provenance import (
    DEMO_WARNING,
    OUTPUT_FORMAT_VERSION,
    OutputKind,
    output_uid,
)
from spinexr.node.outputs.sc import build_sc
from spinexr.node.outputs.sr import SupersededReport, build_sr
from spinexr.node.settings import Settings
from spinexr.pipeline.ct.stage import CtReformat
from spinexr.pipeline.results import StudyResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltObject:
    """One built output object.

    Attributes
    ----------
    kind : {"sr", "gsps", "kos", "sc"}
        What it is (the names `Destination.objects` uses).
    dataset : pydicom.dataset.Dataset
        The object (a highdicom SOP class instance), with file meta; write it with
        ``dataset.save_as(path, enforce_file_format=True)``.
    sop_instance_uid, series_instance_uid : str
        Its UIDs.
    source_sop_instance_uid : str or None
        The source image of a per-image object (GSPS, SC); None for SR and KOS.
    """

    kind: OutputKind
    dataset: Dataset
    sop_instance_uid: str
    series_instance_uid: str
    source_sop_instance_uid: str | None


def series_uid_for(root: str, job_key: str, kind: OutputKind) -> str:
    """Return the Series Instance UID of a job's output series of one kind.

    Parameters
    ----------
    root : str
        UID root.
    job_key : str
        The job's idempotency key.
    kind : {"sr", "gsps", "kos", "sc"}
        The object kind.

    Returns
    -------
    str
        The UID (the same for the same job key, kind and `OUTPUT_FORMAT_VERSION`).
    """
    return output_uid(root, "series", OUTPUT_FORMAT_VERSION, job_key, kind)


def instance_uid_for(root: str, job_key: str, kind: OutputKind, source_uid: str = "") -> str:
    """Return the SOP Instance UID of one output object of a job.

    Parameters
    ----------
    root : str
        UID root.
    job_key : str
        The job's idempotency key.
    kind : {"sr", "gsps", "kos", "sc"}
        The object kind.
    source_uid : str
        The source image's SOP Instance UID for per-image objects, empty otherwise.

    Returns
    -------
    str
        The UID.
    """
    return output_uid(root, "instance", OUTPUT_FORMAT_VERSION, job_key, kind, source_uid)


def build_outputs(
    sources: Sequence[Dataset],
    result: StudyResult,
    settings: Settings,
    *,
    job_key: str,
    predecessor: SupersededReport | None = None,
    revision: int = 1,
    ct_reformat: CtReformat | None = None,
) -> list[BuiltObject]:
    """Build every object the site profile asks for.

    Parameters
    ----------
    sources : sequence of pydicom.dataset.Dataset
        The study's source images; the Secondary Capture needs their pixel data, the other
        objects only their headers.
    result : StudyResult
        The analysis. A FAILED study gets only its SR (the "analysis failed" report); GSPS
        and SC are built for analysed images only; the KOS only when an image is flagged.
    settings : Settings
        ``output.sr/gsps/kos/secondary_capture`` choose the kinds; ``node.uid_root`` roots
        every UID.
    job_key : str
        The job's idempotency key: every UID is derived from it.
    predecessor : SupersededReport, optional
        An SR this job's SR supersedes.
    revision : int
        Which result set of the study this is at the PACS (1 = the first); from 2 on, the
        objects say that they replace the previous one (`mark_revision`).
    ct_reformat : CtReformat, optional
        The straightened reformat of the CT series analysed: with an analysed CT, its
        Secondary Capture and the GSPS drawing the grades on it are built (kind
        ``reformat``; `spinexr.node.outputs.ct_reformat`), whatever the site profile (a
        destination's ``objects`` decide whether they are sent).

    Returns
    -------
    list of BuiltObject
        SR first, then per-image GSPS, KOS, per-image SC, then the CT reformat and its GSPS.
    """
    profile = settings.output
    root = settings.node.uid_root
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    analysed = [im for im in result.images if not im.failed and im.sop_instance_uid in by_uid]
    out: list[BuiltObject] = []

    def add(kind: OutputKind, ds: Dataset, source_uid: str | None) -> None:
        mark_revision(ds, revision, demo=result.provenance.demo)
        out.append(
            BuiltObject(
                kind=kind,
                dataset=ds,
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                source_sop_instance_uid=source_uid,
            )
        )

    if profile.sr:
        sr = build_sr(
            sources,
            result,
            settings,
            series_uid=series_uid_for(root, job_key, "sr"),
            sop_uid=instance_uid_for(root, job_key, "sr"),
            predecessor=predecessor,
        )
        add("sr", sr, None)
    if profile.gsps:
        for number, image in enumerate(analysed, start=1):
            gsps = build_gsps(
                by_uid[image.sop_instance_uid],
                result,
                settings,
                series_uid=series_uid_for(root, job_key, "gsps"),
                sop_uid=instance_uid_for(root, job_key, "gsps", image.sop_instance_uid),
                instance_number=number,
            )
            add("gsps", gsps, image.sop_instance_uid)
    if profile.kos and flagged_images(result):
        kos = build_kos(
            sources,
            result,
            settings,
            series_uid=series_uid_for(root, job_key, "kos"),
            sop_uid=instance_uid_for(root, job_key, "kos"),
        )
        add("kos", kos, None)
    if profile.secondary_capture:
        for number, image in enumerate(analysed, start=1):
            sc = build_sc(
                by_uid[image.sop_instance_uid],
                result,
                settings,
                series_uid=series_uid_for(root, job_key, "sc"),
                sop_uid=instance_uid_for(root, job_key, "sc", image.sop_instance_uid),
                instance_number=number,
            )
            add("sc", sc, image.sop_instance_uid)
    if ct_reformat is not None and result.ct is not None and result.ct.analysed:
        sc = build_reformat_sc(
            sources,
            ct_reformat,
            result,
            settings,
            series_uid=series_uid_for(root, job_key, "reformat"),
            sop_uid=instance_uid_for(root, job_key, "reformat"),
        )
        add("reformat", sc, None)
        gsps = build_reformat_gsps(
            sc,
            result,
            settings,
            series_uid=output_uid(root, "series", OUTPUT_FORMAT_VERSION, job_key, "reformat-pr"),
            sop_uid=instance_uid_for(root, job_key, "reformat", "presentation state"),
        )
        add("reformat", gsps, str(sc.SOPInstanceUID))
    logger.info(
        "built %d output objects for study %s (job %s)",
        len(out),
        result.study_instance_uid,
        job_key,
    )
    return out


def mark_revision(ds: Dataset, revision: int, *, demo: bool) -> None:
    """Say in an output object that it is re-analysis ``revision`` of its study.

    Nothing changes for the first revision. From the second on, the Series Description gets
    ``rev N`` (before the demo warning, which is kept whole) and a presentation state's
    Content Description becomes ``AI results rev N, replaces rev N-1`` followed by what it
    ended with (``- not for diagnosis`` or the demo warning). Both are LO (64 characters).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A built object (modified in place).
    revision : int
        1 for a study's first result set at the PACS, 2 for the one replacing it, ...
    demo : bool
        Whether the result comes from a demo bundle (its descriptions end with
        `DEMO_WARNING`).
    """
    if revision < 2:
        return
    tag = f" rev {revision}"
    if "SeriesDescription" in ds:
        ds.SeriesDescription = _insert_before_tail(str(ds.SeriesDescription), tag, demo)
    if "ContentDescription" in ds:
        tail = f" {DEMO_WARNING}" if demo else " - not for diagnosis"
        head = f"AI results rev {revision}, replaces rev {revision - 1}"
        ds.ContentDescription = head[: 64 - len(tail)] + tail


def _insert_before_tail(text: str, tag: str, demo: bool, limit: int = 64) -> str:
    tail = f" {DEMO_WARNING}" if demo and text.endswith(DEMO_WARNING) else ""
    head = text[: len(text) - len(tail)].rstrip()
    return head[: limit - len(tag) - len(tail)] + tag + tail
