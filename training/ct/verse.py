"""VerSe'19 / '20 (public spine CT: vertebra centroids, fracture grades) for the CT method.

VerSe (Sekuboyina et al. 2021; Löffler et al. 2020; CC BY-SA 4.0; download on a connected
machine, nothing is fetched here) gives, per subject, a CT volume as NIfTI
(``sub-verse004_ct.nii.gz``), a centroid file (``sub-verse004_seg-subreg_ctd.json``: a list
whose first item is ``{"direction": ["P", "I", "R"]}``, the axis codes of the voxel
coordinates, then one ``{"label": 20, "X": ..., "Y": ..., "Z": ...}`` per vertebra, in voxel
units of the image) and, in the VerSe'19 data paper's table, a Genant grade per vertebra. It
has no keypoints: it serves the two things the method can learn or be judged on without them,

- the **localiser** (`centreline_points`: the thoracolumbar centroids in the patient, the
  curve the localiser's target is drawn through), and
- **fracture grading** (`evaluate_verse`): the CT method run on each volume, each measured
  vertebra matched to the nearest reference centroid (within `MATCH_MM`), its Genant index
  judged against the reference grade at vertebra and patient level (ROC AUC for ≥ mild and
  ≥ moderate, with bootstrap CIs).

`load_case` reads a volume with nibabel, reorients it to the axes the CT pipeline reads
(``I``, ``P``, ``L``: axial slices from head to foot, rows anterior → posterior, columns right
→ left, as a DICOM axial series) and returns its index → LPS affine, the centroids in LPS mm
by level name (labels 1–7 C1–C7, 8–19 T1–T12, 20–25 L1–L6, 28 T13, 26 sacrum) and the grades.
`read_grades` takes a CSV in the long layout (``subject,level,grade``) or the data paper's
wide one (a ``verse_ID`` or ``subject`` column and one ``<level>_fx-g`` column per level).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

FloatArray = npt.NDArray[np.float64]

LEVEL_NAMES: Final[dict[int, str]] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 7)},
    26: "S1",
    28: "T13",
}
"""VerSe label → level name."""

THORACOLUMBAR: Final = frozenset({f"T{i}" for i in range(1, 14)} | {f"L{i}" for i in range(1, 7)})
"""Levels the CT method grades (chest and abdomen CT)."""

PIPELINE_AXES: Final = ("I", "P", "L")
"""nibabel axis codes of the CT pipeline's ``(slices, rows, columns)``."""

MATCH_MM: Final = 20.0
"""Largest distance between a measured vertebra's centre and a reference centroid (the
reference is the centroid of the whole vertebra, posterior elements included)."""

_RAS_TO_LPS: Final = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class VerseCase:
    """One VerSe subject, in the CT pipeline's conventions.

    Attributes
    ----------
    subject : str
        E.g. ``verse004`` (the ``sub-`` prefix of the file names dropped).
    hu : numpy.ndarray
        ``(slices, rows, columns)`` Hounsfield units, axes `PIPELINE_AXES`.
    affine : numpy.ndarray
        4×4, index → LPS mm.
    centroids : dict of str to numpy.ndarray
        Level → ``(3,)`` LPS mm.
    grades : dict of str to int
        Level → Genant grade 0–3 (levels without a grade are absent).
    """

    subject: str
    hu: npt.NDArray[np.int16]
    affine: FloatArray
    centroids: dict[str, FloatArray]
    grades: dict[str, int] = field(default_factory=dict)


def read_centroids(path: Path) -> tuple[tuple[str, str, str], list[tuple[int, FloatArray]]]:
    """Read a VerSe centroid JSON.

    Parameters
    ----------
    path : pathlib.Path
        The ``*_ctd.json`` file.

    Returns
    -------
    axcodes : tuple of str
        The voxel coordinates' axis codes (``direction``).
    centroids : list of (int, numpy.ndarray)
        Label and ``(X, Y, Z)`` voxel coordinates.

    Raises
    ------
    ValueError
        When the file has no ``direction`` item or an item lacks its coordinates.
    """
    items = json.loads(Path(path).read_text())
    if not items or "direction" not in items[0]:
        raise ValueError(f"{path}: no 'direction' item first")
    a, b, c = (str(v).upper() for v in items[0]["direction"])
    out = []
    for item in items[1:]:
        try:
            out.append((int(item["label"]), np.array([item["X"], item["Y"], item["Z"]], float)))
        except KeyError as exc:
            raise ValueError(f"{path}: centroid item without {exc}") from None
    return (a, b, c), out


def load_case(ct_path: Path, ctd_path: Path, grades: Mapping[str, int] | None = None) -> VerseCase:
    """Read one subject's volume and centroids into the CT pipeline's conventions.

    Parameters
    ----------
    ct_path : pathlib.Path
        ``*_ct.nii.gz``.
    ctd_path : pathlib.Path
        ``*_ctd.json``, coordinates in voxels of the image as oriented by its ``direction``.
    grades : mapping of str to int, optional
        Level → Genant grade.

    Returns
    -------
    VerseCase
        The volume reoriented to `PIPELINE_AXES`, its LPS affine and the centroids in LPS.
    """
    loaded = nib.load(str(ct_path))
    if not isinstance(loaded, nib.spatialimages.SpatialImage):
        raise ValueError(f"{ct_path} is not a spatial image")
    image = loaded
    codes, items = read_centroids(ctd_path)
    # Centroid voxels → RAS: through the image reoriented to the file's axis codes.
    native = nib.io_orientation(image.affine)
    to_codes = ornt_transform(native, axcodes2ornt(codes))
    coded_affine = image.affine @ inv_ornt_aff(to_codes, image.shape[:3])
    centroids = {}
    for label, xyz in items:
        name = LEVEL_NAMES.get(label)
        if name is None:
            continue
        ras = coded_affine @ np.append(xyz, 1.0)
        centroids[name] = (_RAS_TO_LPS @ ras)[:3]
    pipeline = image.as_reoriented(ornt_transform(native, axcodes2ornt(PIPELINE_AXES)))
    data = np.asarray(pipeline.dataobj, dtype=np.float32)
    hu = np.clip(np.rint(data), -32768, 32767).astype(np.int16)
    return VerseCase(
        subject=_subject(ct_path),
        hu=hu,
        affine=_RAS_TO_LPS @ np.asarray(pipeline.affine, dtype=np.float64),
        centroids=centroids,
        grades=dict(grades or {}),
    )


def find_cases(root: Path) -> list[tuple[str, Path, Path]]:
    """Find every subject with a CT volume and a centroid file under ``root``.

    Parameters
    ----------
    root : pathlib.Path
        A VerSe release (``rawdata/`` and ``derivatives/``, or flat).

    Returns
    -------
    list of (str, pathlib.Path, pathlib.Path)
        Subject, volume and centroid file, by subject.
    """
    centroids = {_subject(p): p for p in Path(root).rglob("*_ctd.json")}
    out = []
    for ct in sorted(Path(root).rglob("*_ct.nii.gz")):
        subject = _subject(ct)
        if subject in centroids:
            out.append((subject, ct, centroids[subject]))
    return out


def read_grades(path: Path) -> dict[str, dict[str, int]]:
    """Read per-vertebra Genant grades.

    Parameters
    ----------
    path : pathlib.Path
        CSV: ``subject,level,grade`` rows, or one row per subject with a ``verse_ID`` (or
        ``subject``) column and ``<level>_fx-g`` columns (empty cells: not graded).

    Returns
    -------
    dict
        Subject → level → grade (0–3).
    """
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        if {"subject", "level", "grade"} <= set(row):
            out.setdefault(_subject(row["subject"]), {})[row["level"].upper()] = int(row["grade"])
            continue
        subject = _subject(row.get("verse_ID") or row.get("subject") or "")
        for key, value in row.items():
            match = re.fullmatch(r"([CTLS]\d+)_fx-g", key or "")
            if match and value not in (None, "", "NA", "nan"):
                out.setdefault(subject, {})[match.group(1)] = int(float(value))
    return out


def centreline_points(case: VerseCase) -> FloatArray:
    """Return the thoracolumbar centroids from head to foot (LPS mm): the localiser's curve.

    Parameters
    ----------
    case : VerseCase
        The subject.

    Returns
    -------
    numpy.ndarray
        ``(N, 3)``.
    """
    points = [p for level, p in case.centroids.items() if level in THORACOLUMBAR]
    if not points:
        return np.zeros((0, 3))
    arr = np.array(points)
    return arr[np.argsort(-arr[:, 2])]  # LPS z is superior


def match_to_reference(
    centres: Sequence[npt.ArrayLike], case: VerseCase, max_mm: float = MATCH_MM
) -> list[str | None]:
    """Match measured vertebra centres to the reference centroids (one to one, nearest first).

    Parameters
    ----------
    centres : sequence of array-like
        ``(3,)`` LPS centres of the measured vertebrae.
    case : VerseCase
        The reference.
    max_mm : float
        Largest accepted distance.

    Returns
    -------
    list of str or None
        The matched level of each centre.
    """
    levels = list(case.centroids)
    pairs = sorted(
        (float(np.linalg.norm(np.asarray(c, float) - case.centroids[lvl])), i, lvl)
        for i, c in enumerate(centres)
        for lvl in levels
    )
    out: list[str | None] = [None] * len(centres)
    used: set[str] = set()
    for distance, i, level in pairs:
        if distance > max_mm:
            break
        if out[i] is None and level not in used:
            out[i] = level
            used.add(level)
    return out


def evaluate_verse(
    cases: Sequence[VerseCase],
    localiser: Any,
    keypoints: Any,
    *,
    seed: int = 0,
    n_bootstrap: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the CT method on VerSe subjects and judge its Genant indices against the grades.

    Parameters
    ----------
    cases : sequence of VerseCase
        Subjects with grades.
    localiser : LocaliserNet
        The centre-line network.
    keypoints : KeypointModel
        The CT keypoint model.
    seed, n_bootstrap : int
        Bootstrap of the AUROCs.
    progress : bool
        A line per subject on stderr.

    Returns
    -------
    dict
        Per level of the ground truth (``at_least_mild``, ``at_least_moderate``), vertebra-
        and patient-level AUROC with its 95 % CI (None where one class is absent), counts of
        matched and missed graded vertebrae, and the seconds per subject.
    """
    from spinexr.pipeline.ct.errors import UnsupportedSeriesError
    from spinexr.pipeline.ct.vertebrae import analyse_ct_volume
    from spinexr.training.metrics.bootstrap import bootstrap_ci
    from spinexr.training.metrics.classification import auroc

    vertebra_g: list[float] = []
    vertebra_grade: list[int] = []
    patient_g: list[float] = []
    patient_grade: list[int] = []
    graded = matched = refused = 0
    started = time.monotonic()
    for n, case in enumerate(cases, start=1):
        graded_levels = {lvl: g for lvl, g in case.grades.items() if lvl in THORACOLUMBAR}
        graded += len(graded_levels)
        try:
            found = analyse_ct_volume(
                case.hu, case.affine, localiser, keypoints, score_threshold=0.5
            )
        except UnsupportedSeriesError:
            refused += 1
            continue
        levels = match_to_reference([v.centre_lps for v in found.vertebrae], case)
        lowest = []
        for vertebra, level in zip(found.vertebrae, levels, strict=True):
            if level is None or level not in graded_levels:
                continue
            matched += 1
            vertebra_g.append(vertebra.genant_index)
            vertebra_grade.append(graded_levels[level])
            lowest.append(vertebra.genant_index)
        if lowest and graded_levels:
            patient_g.append(min(lowest))
            patient_grade.append(max(graded_levels.values()))
        if progress:
            print(
                f"[verse] {n}/{len(cases)} {case.subject}: {len(found.vertebrae)} measured, "
                f"{sum(1 for lvl in levels if lvl)} matched",
                file=sys.stderr,
                flush=True,
            )

    def judged(g: list[float], grades: list[int], at_least: int) -> dict[str, Any]:
        y = np.array(grades) >= at_least
        scores = -np.array(g)  # lower G: more fractured
        if y.all() or not y.any():
            return {"auroc": None, "ci95": None, "positives": int(y.sum()), "n": len(y)}
        ci = bootstrap_ci(y, scores, float(np.median(scores)), n_resamples=n_bootstrap, seed=seed)
        interval = ci["auroc"]
        return {
            "auroc": auroc(y, scores),
            "ci95": [interval.low, interval.high],
            "positives": int(y.sum()),
            "n": len(y),
        }

    return {
        "subjects": len(cases),
        "refused": refused,
        "graded_vertebrae": graded,
        "matched_vertebrae": matched,
        "at_least_mild": {
            "vertebra": judged(vertebra_g, vertebra_grade, 1),
            "patient": judged(patient_g, patient_grade, 1),
        },
        "at_least_moderate": {
            "vertebra": judged(vertebra_g, vertebra_grade, 2),
            "patient": judged(patient_g, patient_grade, 2),
        },
        "seconds_per_subject": (time.monotonic() - started) / max(len(cases), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the CT models on VerSe (``python -m spinexr.training.ct.verse``)."""
    from spinexr.pipeline.ct.localise import load_localiser
    from spinexr.pipeline.vertebrae.loader import load_keypoint_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="a VerSe release folder")
    p.add_argument("--grades", type=Path, required=True, help="per-vertebra Genant grades CSV")
    p.add_argument("--localiser", type=Path, required=True)
    p.add_argument("--keypoints", type=Path, required=True)
    p.add_argument("--arch", default="keypointrcnn")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    args = p.parse_args(argv)
    grades = read_grades(args.grades)
    cases = [
        load_case(ct, ctd, grades.get(subject))
        for subject, ct, ctd in find_cases(args.root)
        if subject in grades
    ]
    localiser, _ = load_localiser(args.localiser)
    model = load_keypoint_model(args.arch, args.keypoints, "cpu")
    report = evaluate_verse(cases, localiser, model)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


def _subject(path_or_name: Path | str) -> str:
    """``sub-verse004_ct.nii.gz``, ``sub-verse004``, ``verse004`` → ``verse004``."""
    name = Path(str(path_or_name)).name
    return name.split("_")[0].removeprefix("sub-")


if __name__ == "__main__":
    raise SystemExit(main())
