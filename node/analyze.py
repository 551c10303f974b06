"""``spinexr-node analyze``: the pipeline on DICOM files or folders, offline, one JSON per study."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from spinexr.node.dimse.scu import expand_paths
from spinexr.node.ingest.spool import safe_component
from spinexr.node.jobs.sources import ct_evidence
from spinexr.node.settings import Settings
from spinexr.pipeline.ct.series import CT_SOP_CLASSES
from spinexr.pipeline.ct.stage import CtReformat
from spinexr.pipeline.results import StudyResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyFiles:
    """The files of one study found under the given paths (CT images apart)."""

    study_instance_uid: str
    files: list[Path]
    ct_files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Skipped:
    """A file that is not a DICOM instance we can group by study."""

    path: Path
    reason: str


def group_by_study(paths: Sequence[Path]) -> tuple[list[StudyFiles], list[Skipped]]:
    """Read headers only and group files by Study Instance UID.

    Parameters
    ----------
    paths : sequence of Path
        Files and folders (folders are searched recursively).

    Returns
    -------
    tuple
        Studies in first-seen order, and the files that were skipped with a reason.
    """
    groups: dict[str, list[Path]] = defaultdict(list)
    ct: dict[str, list[Path]] = defaultdict(list)
    skipped: list[Skipped] = []
    for path in expand_paths(paths):
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SOPClassUID"]
            )
        except (InvalidDicomError, OSError, ValueError) as exc:
            skipped.append(Skipped(path, f"not DICOM ({type(exc).__name__})"))
            continue
        uid = str(ds.get("StudyInstanceUID", "") or "")
        if not uid:
            skipped.append(Skipped(path, "no Study Instance UID"))
            continue
        if str(ds.get("SOPClassUID", "")) in CT_SOP_CLASSES:
            ct[uid].append(path)
            groups.setdefault(uid, [])
        else:
            groups[uid].append(path)
    return [StudyFiles(uid, files, ct[uid]) for uid, files in groups.items()], skipped


def result_path(out_dir: Path, study_uid: str) -> Path:
    """Where the JSON result of a study goes."""
    return out_dir / safe_component(study_uid) / "result.json"


def write_outputs(
    datasets: Sequence[pydicom.Dataset],
    result: StudyResult,
    settings: Settings,
    folder: Path,
    *,
    ct_reformat: CtReformat | None = None,
) -> list[Path]:
    """Build the study's output objects and write them into ``folder``.

    The job key is derived from the study, its instances and the model weights, so running
    ``analyze`` again on the same input gives the same SOP Instance UIDs.

    Returns
    -------
    list of Path
        The files written.
    """
    from spinexr.node.outputs.build import build_outputs

    key = "analyze:" + ":".join(
        [
            result.study_instance_uid,
            result.provenance.weights_digest,
            *sorted(str(ds.SOPInstanceUID) for ds in datasets),
        ]
    )
    paths = []
    for obj in build_outputs(datasets, result, settings, job_key=key, ct_reformat=ct_reformat):
        path = folder / f"{obj.kind}-{safe_component(obj.sop_instance_uid)}.dcm"
        obj.dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def analyze_paths(
    paths: Sequence[Path],
    bundle_dir: Path,
    out_dir: Path,
    *,
    device: str = "auto",
    settings: Settings | None = None,
    on_study: Callable[[StudyResult, int], None] | None = None,
) -> tuple[list[StudyResult], list[Skipped]]:
    """Analyse every study under ``paths`` and write ``<out>/<study>/result.json``.

    With ``settings``, the study's DICOM outputs (SR, GSPS and the site profile's optional
    objects) are written beside the JSON as ``<kind>-<SOP Instance UID>.dcm``.

    Parameters
    ----------
    paths : sequence of Path
        DICOM files or folders.
    bundle_dir : Path
        Model bundle (verified before use).
    out_dir : Path
        Output folder.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    settings : Settings, optional
        Output profile and UID root for the DICOM outputs.
    on_study : callable, optional
        Called after each study with its result and image count (progress).

    Returns
    -------
    tuple
        The study results and the skipped files.
    """
    from spinexr.pipeline.engine import Pipeline

    studies, skipped = group_by_study(paths)
    start = time.perf_counter()
    kwargs: dict[str, Any] = {}
    if settings is not None:
        from spinexr.node.vertebrae import genant_cutoffs
        from spinexr.pipeline.vertebrae.genant import GenantGrade

        kwargs = {
            "vertebrae": settings.vertebrae.enabled,
            "genant_cutoffs": genant_cutoffs(settings),
            "ct": settings.ct.enabled,
            "ct_body_parts": settings.ct.body_parts,
            "characterise_from": GenantGrade(settings.ct.characterise_from),
            "characterise_all": settings.ct.characterise_all,
        }
    pipeline = Pipeline.from_directory(bundle_dir, device=device, **kwargs)
    logger.info("pipeline loaded in %.1f s", time.perf_counter() - start)
    results: list[StudyResult] = []
    for study in studies:
        datasets = [pydicom.dcmread(f) for f in study.files]
        analysis = pipeline.analyze(
            datasets, ct_files=study.ct_files, study_instance_uid=study.study_instance_uid
        )
        result = analysis.result
        target = result_path(out_dir, study.study_instance_uid)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(result.to_json(indent=2), encoding="utf-8")
        if settings is not None:
            headers = [*datasets, *ct_evidence(study.ct_files, result)]
            write_outputs(
                headers, result, settings, target.parent, ct_reformat=analysis.ct_reformat
            )
        results.append(result)
        if on_study is not None:
            on_study(result, len(study.files) + len(study.ct_files))
    return results, skipped
