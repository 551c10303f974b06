"""The "analysis failed" report of a job whose every attempt failed.

A job may never end without the radiologist being told. When the last attempt fails (the
pixels will not decode, the model raises, the bundle cannot be loaded, the outputs cannot be
built), the runner builds an SR whose outcome is ``No algorithms succeeded`` with the reason,
from the study's headers only (no pixels), and the job goes on to export it like any other
result.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from spinexr.node import __version__
from spinexr.node.outputs.provenance import output_uid
from spinexr.pipeline.ct.findings import CtAnalysis, CtSeriesVerdict, CtStatus
from spinexr.pipeline.ct.series import CT_SOP_CLASSES
from spinexr.pipeline.results import (
    FusionMode,
    ImageError,
    ImageResult,
    Outcome,
    Provenance,
    StudyResult,
)

logger = logging.getLogger(__name__)

ANALYSIS_FAILED = "analysis_failed"
"""Image error reason of every image of a study whose analysis failed as a whole."""

__all__ = ["ANALYSIS_FAILED", "failed_study_result", "readable_headers"]


def readable_headers(paths: Sequence[Path]) -> list[Dataset]:
    """Read the headers (no pixels) of the files that can be read; skip the others.

    Parameters
    ----------
    paths : sequence of Path
        Spool files of the study.

    Returns
    -------
    list of pydicom.dataset.Dataset
        Headers with a SOP Instance UID, in the order given.
    """
    out: list[Dataset] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, EOFError):
            continue
        if ds.get("SOPInstanceUID") and ds.get("StudyInstanceUID"):
            out.append(ds)
    return out


def _provenance(pipeline: Callable[[], Any], root: str) -> tuple[Provenance, Any]:
    """Return the pipeline's provenance, or one that says no bundle could be loaded."""
    try:
        engine = pipeline()
        return engine.provenance, engine
    except Exception as exc:  # the bundle itself may be why the analysis failed
        logger.warning("failure report without a loaded bundle: %s", type(exc).__name__)
        return (
            Provenance(
                bundle_name="(model bundle not loaded)",
                bundle_version="-",
                device_uid=output_uid(root, "device", "unloaded-bundle"),
                weights_digest="",
                demo=False,
                software_version=__version__,
                torch_device="none",
            ),
            None,
        )


def failed_study_result(
    headers: Sequence[Dataset],
    *,
    study_instance_uid: str,
    reason: str,
    pipeline: Callable[[], Any],
    uid_root: str,
) -> StudyResult:
    """Describe a study whose analysis failed as a whole.

    Parameters
    ----------
    headers : sequence of pydicom.dataset.Dataset
        The study's images (headers suffice).
    study_instance_uid : str
        The study.
    reason : str
        Why (no PHI: exception types, counts, UIDs).
    pipeline : callable
        Returns this process's pipeline (for the bundle's provenance and thresholds); when
        it cannot be built the result says so.
    uid_root : str
        Root of the device UID used when no bundle could be loaded.

    Returns
    -------
    StudyResult
        Outcome ``FAILED`` with ``reason``, every radiograph marked ``analysis_failed``; CT
        headers give a CT analysis ``failed`` naming their series.
    """
    provenance, engine = _provenance(pipeline, uid_root)
    threshold = float(getattr(engine, "threshold", 0.5))
    display = float(getattr(engine, "display_threshold", threshold))
    fusion = getattr(engine, "fusion_mode", FusionMode.PAPER)
    ct_headers = [ds for ds in headers if str(ds.get("SOPClassUID", "")) in CT_SOP_CLASSES]
    images = [
        ImageResult(
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.get("SeriesInstanceUID") or "") or None,
            error=ImageError(reason=ANALYSIS_FAILED, message=reason),
        )
        for ds in headers
        if str(ds.get("SOPClassUID", "")) not in CT_SOP_CLASSES
    ]
    ct = None
    if ct_headers:
        ct = CtAnalysis(
            status=CtStatus.FAILED,
            reason=ANALYSIS_FAILED,
            message=reason[:300],
            series=[
                CtSeriesVerdict(
                    series_instance_uid=uid,
                    instances=sum(1 for ds in ct_headers if ds.get("SeriesInstanceUID") == uid),
                )
                for uid in dict.fromkeys(str(ds.get("SeriesInstanceUID", "")) for ds in ct_headers)
            ],
        )
    return StudyResult(
        study_instance_uid=study_instance_uid,
        outcome=Outcome.FAILED,
        failure_reason=reason,
        threshold=threshold,
        display_threshold=display,
        fusion_mode=fusion,
        images=images,
        ct=ct,
        provenance=provenance,
        analysed_at=dt.datetime.now(dt.UTC),
    )
