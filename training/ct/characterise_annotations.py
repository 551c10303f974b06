"""A site's own benign / malignant labels: the annotation CSV, its validator and its loader.

One row per characterised vertebra::

    patient_id,study_instance_uid,series_instance_uid,level,keypoints_lps,label,truth_source
    P0001,1.2.3,1.2.3.4,T12,"-5.3 -25.2 -31.5 ... (18 numbers)",malignant,biopsy

- ``patient_id``: a pseudonymous identifier (folds are drawn by it; never a name or an MRN);
- ``study_instance_uid``, ``series_instance_uid``: the axial CT series the vertebra is on;
- ``level``: ``T1``…``L5`` (informative: the CT method numbers vertebrae from the top, so a
  level alone cannot place the ROI yet);
- ``keypoints_lps``: the vertebra's six keypoints in the patient (LPS mm, anterior top,
  anterior bottom, middle top, middle bottom, posterior top, posterior bottom), 18 numbers
  separated by spaces; they place the ROI exactly as the pipeline places it;
- ``label``: ``benign`` or ``malignant``;
- ``truth_source``: ``biopsy``, ``follow_up`` (stable disease on follow-up) or ``clinical``
  (known primary with progressive disease), as Li et al. established theirs.

`validate_annotations` lists every problem with its line; `read_annotations` refuses a file
with problems; `cases_from_annotations` reads each row's series from a DICOM folder
(`spinexr.pipeline.ct.volume.load_volume`) and makes the network's input
(`spinexr.pipeline.ct.characterise.roi_stack`) into `Case` objects for training and
evaluation.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from spinexr.pipeline.ct.characterise import roi_stack
from spinexr.pipeline.ct.volume import load_volume
from spinexr.training.ct.characterise_train import Case

COLUMNS: Final = (
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "level",
    "keypoints_lps",
    "label",
    "truth_source",
)
LABELS: Final = ("benign", "malignant")
TRUTH_SOURCES: Final = ("biopsy", "follow_up", "clinical")
_LEVEL = re.compile(r"^(T([1-9]|1[0-2])|L[1-5])$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class CharacterisationLabel:
    """One validated row."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    level: str | None
    keypoints_lps: np.ndarray | None
    malignant: bool
    truth_source: str
    line: int


def validate_annotations(path: Path) -> list[str]:
    """Return every problem of an annotation file, one line each (empty when valid).

    Parameters
    ----------
    path : pathlib.Path
        The CSV.

    Returns
    -------
    list of str
        ``"line N: <problem>"``; a missing column is reported once, on line 1.
    """
    problems, _ = _parse(path)
    return problems


def read_annotations(path: Path) -> list[CharacterisationLabel]:
    """Read a valid annotation file.

    Parameters
    ----------
    path : pathlib.Path
        The CSV.

    Returns
    -------
    list of CharacterisationLabel
        In file order.

    Raises
    ------
    ValueError
        Listing every problem, when the file is not valid.
    """
    problems, rows = _parse(path)
    if problems:
        raise ValueError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(problems))
    return rows


def cases_from_annotations(
    labels: Sequence[CharacterisationLabel], dicom_root: Path, *, max_bytes: int = 2 * 1024**3
) -> list[Case]:
    """Make training / evaluation cases from validated rows and the site's DICOM files.

    Parameters
    ----------
    labels : sequence of CharacterisationLabel
        From `read_annotations`.
    dicom_root : pathlib.Path
        A folder holding the series (searched recursively; headers only, then the chosen
        series' pixels).
    max_bytes : int
        Memory bound of one volume.

    Returns
    -------
    list of Case
        One per row, in order.

    Raises
    ------
    ValueError
        For a row without keypoints, or whose series is not under ``dicom_root``.
    """
    series: dict[str, list[Path]] = {}
    for path in sorted(p for p in Path(dicom_root).rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (InvalidDicomError, OSError, ValueError):
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(path)
    cases = []
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for row in labels:
        if row.keypoints_lps is None:
            raise ValueError(
                f"line {row.line}: no keypoints_lps; a level alone cannot place the ROI yet "
                "(the CT method numbers vertebrae from the top)"
            )
        if row.series_instance_uid not in series:
            raise ValueError(f"line {row.line}: series {row.series_instance_uid} not found")
        if row.series_instance_uid not in volumes:
            volume = load_volume(series[row.series_instance_uid], max_bytes=max_bytes)
            volumes = {row.series_instance_uid: (volume.array, volume.affine)}  # one at a time
        array, affine = volumes[row.series_instance_uid]
        stack = roi_stack(array, affine, row.keypoints_lps)
        cases.append(
            Case(
                patient=row.patient_id,
                malignant=row.malignant,
                level=row.level or "",
                inputs=stack.inputs,
            )
        )
    return cases


def _parse(path: Path) -> tuple[list[str], list[CharacterisationLabel]]:
    problems: list[str] = []
    rows: list[CharacterisationLabel] = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            return [f"line 1: missing column(s) {', '.join(missing)}"], []
        seen: dict[tuple[str, str, str], int] = {}
        for line, row in enumerate(reader, start=2):
            found = _row(row, line)
            if isinstance(found, list):
                problems += found
                continue
            key = (found.patient_id, found.series_instance_uid, found.level or _kp_key(found))
            if key in seen:
                problems.append(f"line {line}: the same vertebra as line {seen[key]}")
                continue
            seen[key] = line
            rows.append(found)
    return problems, rows


def _row(row: dict[str, str], line: int) -> CharacterisationLabel | list[str]:
    out: list[str] = []
    value = {k: (row.get(k) or "").strip() for k in COLUMNS}
    if not value["patient_id"]:
        out.append(f"line {line}: empty patient_id")
    for key in ("study_instance_uid", "series_instance_uid"):
        if not _UID.match(value[key]) or len(value[key]) > 64:
            out.append(f"line {line}: {key} is not a UID")
    level = value["level"].upper() or None
    if level is not None and not _LEVEL.match(level):
        out.append(f"line {line}: level {value['level']!r} is not T1-T12 or L1-L5")
    keypoints = None
    if value["keypoints_lps"]:
        try:
            numbers = [float(v) for v in value["keypoints_lps"].split()]
        except ValueError:
            numbers = []
        if len(numbers) != 18 or not np.isfinite(numbers).all():
            out.append(f"line {line}: keypoints_lps must be 18 finite numbers (6 points x 3)")
        else:
            keypoints = np.array(numbers, dtype=np.float64).reshape(6, 3)
    if level is None and keypoints is None:
        out.append(f"line {line}: give keypoints_lps (or at least the level)")
    if value["label"].lower() not in LABELS:
        out.append(f"line {line}: label {value['label']!r} is not benign or malignant")
    if value["truth_source"].lower() not in TRUTH_SOURCES:
        out.append(
            f"line {line}: truth_source {value['truth_source']!r} is not "
            + ", ".join(TRUTH_SOURCES)
        )
    if out:
        return out
    return CharacterisationLabel(
        patient_id=value["patient_id"],
        study_instance_uid=value["study_instance_uid"],
        series_instance_uid=value["series_instance_uid"],
        level=level,
        keypoints_lps=keypoints,
        malignant=value["label"].lower() == "malignant",
        truth_source=value["truth_source"].lower(),
        line=line,
    )


def _kp_key(row: CharacterisationLabel) -> str:
    assert row.keypoints_lps is not None
    return " ".join(f"{v:.0f}" for v in row.keypoints_lps.mean(axis=0))
