"""Pisov et al.'s published CT keypoint annotations (MosMedData CTLungCa-500), as training data.

The paper's annotations (``neuro-ml/vertebral-fractures-severity`` on GitHub, CC BY-NC 4.0:
non-commercial use only) cover 100 chest CTs of the public MosMedData CTLungCa-500 set. Each
series has one JSON file::

    {"Folder": "<study folder in the dataset>",
     "SeriesInstanceUID": "<the annotated series>",
     "Annotation": {"expert3": [vertebra, ...], "expert5": [...]}}

where a vertebra is six ``[x, sagittal index, slice index]`` points in the order anterior
top, anterior bottom, middle top, middle bottom, posterior top, posterior bottom (this
project's `genant.KEYPOINT_NAMES`). The indices are voxel indices of the series stacked as the
authors' ``utils.load_image`` stacks it: ``x`` the row of the axial image (anterior →
posterior), the sagittal index its column, the slice index the position in the series
sorted by Instance Number. Levels are not annotated.

`read_annotation` parses a file and checks it; `annotation_to_lps` maps its points to patient
coordinates (LPS mm) through the series' own geometry (`spinexr.pipeline.ct.volume`), never
through slice order assumptions; `consensus` averages the experts vertebra by vertebra;
`annotated_record` makes the `KeypointRecord` on the straightened reformat the detector trains
on (`spinexr.training.ct.keypoints.record_on_reformat`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom

from spinexr.pipeline.ct.volume import CtVolume
from spinexr.training.vertebrae.records import KeypointRecord

FloatArray = npt.NDArray[np.float64]

MATCH_MM = 10.0
"""Two experts' vertebrae are the same vertebra when their centres are closer than this."""


class AnnotationError(ValueError):
    """An annotation file that does not follow the published format."""


@dataclass(frozen=True)
class SeriesAnnotation:
    """One annotated series.

    Attributes
    ----------
    name : str
        The file's stem.
    folder : str
        The study folder in the dataset (``Folder``).
    series_instance_uid : str
        The annotated series.
    experts : dict of str to numpy.ndarray
        Per expert, ``(V, 6, 3)`` points ``[row, column, instance-order index]``, vertebrae
        as annotated (top to bottom).
    """

    name: str
    folder: str
    series_instance_uid: str
    experts: dict[str, FloatArray]


def read_annotation(path: Path) -> SeriesAnnotation:
    """Read and check one annotation file.

    Parameters
    ----------
    path : pathlib.Path
        A JSON file of the published set.

    Returns
    -------
    SeriesAnnotation
        Its content.

    Raises
    ------
    AnnotationError
        If a key is missing or a vertebra does not have six three-coordinate points.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        folder, series, experts = data["Folder"], data["SeriesInstanceUID"], data["Annotation"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnnotationError(f"{path}: not a Pisov et al. annotation file ({exc})") from exc
    if not isinstance(experts, Mapping) or not experts:
        raise AnnotationError(f"{path}: 'Annotation' names no expert")
    out: dict[str, FloatArray] = {}
    for expert, vertebrae in experts.items():
        points = np.asarray(vertebrae, dtype=np.float64)
        if points.ndim != 3 or points.shape[1:] != (6, 3) or not np.isfinite(points).all():
            raise AnnotationError(
                f"{path}: {expert}: expected vertebrae of six [x, sagittal, slice] points, "
                f"got shape {points.shape}"
            )
        out[str(expert)] = points
    return SeriesAnnotation(Path(path).stem, str(folder), str(series), out)


def instance_order(paths: Sequence[Path], series_instance_uid: str) -> list[tuple[str, Path]]:
    """Return the slices of a series sorted by Instance Number (the annotation's slice index).

    Parameters
    ----------
    paths : sequence of pathlib.Path
        Files of the study folder (other series are skipped).
    series_instance_uid : str
        The annotated series.

    Returns
    -------
    list of (str, pathlib.Path)
        SOP Instance UID and file of each slice, Instance Number order.

    Raises
    ------
    AnnotationError
        If no file belongs to the series or an Instance Number is missing.
    """
    found: list[tuple[int, str, Path]] = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if str(ds.get("SeriesInstanceUID", "")) != series_instance_uid:
            continue
        if "InstanceNumber" not in ds:
            raise AnnotationError(f"{ds.SOPInstanceUID}: no Instance Number")
        found.append((int(ds.InstanceNumber), str(ds.SOPInstanceUID), Path(path)))
    if not found:
        raise AnnotationError(f"no file of series {series_instance_uid}")
    return [(uid, path) for _, uid, path in sorted(found)]


def annotation_to_lps(points: npt.ArrayLike, order: Sequence[str], volume: CtVolume) -> FloatArray:
    """Map annotated voxel indices to patient coordinates.

    Parameters
    ----------
    points : array-like
        ``(..., 3)`` ``[row, column, instance-order index]`` (fractional allowed).
    order : sequence of str
        The series' SOP Instance UIDs in Instance Number order (from `instance_order`).
    volume : CtVolume
        The series as loaded by `spinexr.pipeline.ct.volume.load_volume` (its slices in
        geometric order, its affine).

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` LPS mm.

    Raises
    ------
    AnnotationError
        If the volume lacks a slice of ``order``.
    """
    p = np.asarray(points, dtype=np.float64)
    where = {uid: i for i, uid in enumerate(volume.sop_instance_uids)}
    missing = [uid for uid in order if uid not in where]
    if missing:
        raise AnnotationError(f"{len(missing)} annotated slice(s) not in the volume")
    volume_index = np.array([where[uid] for uid in order], dtype=np.float64)
    k = np.interp(p[..., 2], np.arange(len(order), dtype=np.float64), volume_index)
    index = np.stack([k, p[..., 0], p[..., 1], np.ones_like(k)], axis=-1)
    lps = index @ volume.affine.T
    return np.asarray(lps[..., :3], dtype=np.float64)


def consensus(experts: Mapping[str, FloatArray]) -> FloatArray:
    """Average the experts' keypoints vertebra by vertebra.

    The expert with the most vertebrae sets the list; another expert's vertebra joins the
    average of the one whose centre is nearest, when within `MATCH_MM`.

    Parameters
    ----------
    experts : mapping of str to numpy.ndarray
        Per expert ``(V, 6, 3)`` points in mm (LPS).

    Returns
    -------
    numpy.ndarray
        ``(V, 6, 3)``, top to bottom as the reference expert annotated them.
    """
    if not experts:
        raise ValueError("no expert")
    arrays = sorted(experts.values(), key=len, reverse=True)
    reference = arrays[0]
    sums = reference.copy()
    counts = np.ones(len(reference))
    centres = reference.mean(axis=1)
    for other in arrays[1:]:
        for vertebra in other:
            d = np.linalg.norm(centres - vertebra.mean(axis=0), axis=1)
            i = int(np.argmin(d))
            if d[i] < MATCH_MM:
                sums[i] += vertebra
                counts[i] += 1
    return np.asarray(sums / counts[:, None, None], dtype=np.float64)


def annotated_record(
    annotation: SeriesAnnotation,
    files: Sequence[Path],
    *,
    split: str = "train",
    max_bytes: int = 4 << 30,
) -> KeypointRecord:
    """Return the training record of one annotated series (consensus of its experts).

    Parameters
    ----------
    annotation : SeriesAnnotation
        From `read_annotation`.
    files : sequence of pathlib.Path
        The files of its study folder (``<dataset>/Dicom/<Folder>``, any depth).
    split : str
        The record's split.
    max_bytes : int
        Largest volume to load.

    Returns
    -------
    KeypointRecord
        The reformat along the curve through the vertebrae's centres, every annotated
        vertebra on it (no level).

    Raises
    ------
    AnnotationError
        If the series or its slices cannot be matched to the annotation.
    spinexr.pipeline.ct.errors.UnsupportedSeriesError
        If the series cannot be loaded as a volume (gaps, tilt...).
    """
    from spinexr.pipeline.ct.volume import load_volume
    from spinexr.training.ct.keypoints import record_on_reformat

    slices = instance_order(files, annotation.series_instance_uid)
    order = [uid for uid, _ in slices]
    volume = load_volume([path for _, path in slices], max_bytes=max_bytes)
    experts = {
        name: annotation_to_lps(points, order, volume)
        for name, points in annotation.experts.items()
    }
    keypoints = consensus(experts)
    return record_on_reformat(
        volume.array,
        volume.affine,
        keypoints.mean(axis=1),
        [(None, kp) for kp in keypoints],
        uid=annotation.name,
        split=split,
    )
