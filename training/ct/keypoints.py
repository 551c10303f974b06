"""The six-keypoint vertebra detector for CT, trained on straightened reformats of CT phantoms.

Pisov et al. (``method.md`` §8, step 2) run the same keypoint detector as on lateral
radiographs on the straightened mid-sagittal image of the CT. This module turns CT phantoms
(`spinexr.training.phantoms.ct`) into `KeypointRecord` objects on that image, exactly as the
pipeline will make it (`spinexr.pipeline.ct.reformat`): the phantom's true vertebral-body
centre line with in-plane noise of `CENTRELINE_JITTER_MM` per slice (the localiser's held-out
error is about 1.3 mm), fitted and straightened, windowed for bone; the six keypoints of
every vertebra whose keypoints lie within the scanned slices projected onto the image (the
rule the pipeline applies to its detections: `gradable`).

The records then go through the radiograph trainers and evaluation unchanged
(`train_keypointrcnn`, `evaluate_keypoints`): the image has anterior on the left and bone
bright, like a lateral radiograph facing left.

``python -m spinexr.training.ct.keypoints`` trains a Keypoint R-CNN (`KRCNNConfig.cpu`) on
``--phantoms`` phantoms (or, with ``--annotations`` and ``--dicom``, on Pisov et al.'s
annotated MosMedData series: `spinexr.training.ct.pisov_annotations`), prints the held-out
2D figures (recall, precision, centre error, Genant grades) and writes the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from spinexr.pipeline.ct.reformat import (
    REFORMAT_SPACING_MM,
    project_xy,
    reformat_display,
    sagittal_reformat,
)
from spinexr.pipeline.ct.vertebrae import within_volume
from spinexr.pipeline.vertebrae.krcnn import KRCNNConfig
from spinexr.pipeline.vertebrae.objects import ObjectKind
from spinexr.training.phantoms.ct import CtPhantom, CtVertebraTruth, make_ct_phantom
from spinexr.training.progress import RateProgress
from spinexr.training.vertebrae.phantoms import FRACTURE_PROBABILITY
from spinexr.training.vertebrae.records import AnnotatedObject, KeypointRecord

CENTRELINE_JITTER_MM: Final = 1.3
"""Standard deviation of the in-plane noise added to each slice's true centre point."""

HELD_OUT_SEED_OFFSET: Final = 1_000_003
"""Seed offset of the held-out phantoms (no overlap with any training seed)."""


def ct_keypoint_record(
    phantom: CtPhantom,
    *,
    split: str = "train",
    rng: np.random.Generator | None = None,
    jitter_mm: float = CENTRELINE_JITTER_MM,
) -> KeypointRecord:
    """Return a CT phantom's straightened reformat and its vertebrae's keypoints.

    Parameters
    ----------
    phantom : CtPhantom
        A chest or abdomen phantom.
    split : str
        ``"train"`` or ``"test"``.
    rng : numpy.random.Generator, optional
        Draws the centre-line noise (none without one).
    jitter_mm : float
        Its standard deviation (left-right and anterior-posterior, per slice).

    Returns
    -------
    KeypointRecord
        ``display`` the windowed reformat, ``spacing_mm`` the reformat's, one object per
        `gradable` vertebra (keypoints ``(x, y)`` with the origin at the top-left corner
        of the top-left pixel).

    Raises
    ------
    ValueError
        For a phantom without vertebrae (a head).
    """
    if not phantom.vertebrae:
        raise ValueError("the phantom has no vertebrae")
    points = np.array(phantom.centreline, dtype=np.float64)
    if rng is not None and jitter_mm > 0:
        points[:, :2] += rng.normal(0.0, jitter_mm, size=(len(points), 2))
    return record_on_reformat(
        phantom.hu,
        phantom.grid.affine(),
        points,
        [(v.level, v.keypoints) for v in gradable(phantom)],
        uid=f"ct-phantom-{phantom.seed}",
        split=split,
    )


def gradable(phantom: CtPhantom) -> list[CtVertebraTruth]:
    """Return the phantom's vertebrae the method is to find.

    Those whose six keypoints lie within the scanned slices
    (`spinexr.pipeline.ct.vertebrae.within_volume`), including end vertebrae whose body is
    in view while another part of them is not.

    Parameters
    ----------
    phantom : CtPhantom
        The phantom.

    Returns
    -------
    list of CtVertebraTruth
        Top to bottom.
    """
    shape, affine = phantom.hu.shape, phantom.grid.affine()
    return [v for v in phantom.vertebrae if within_volume(v.keypoints, shape, affine)]


def record_on_reformat(
    volume_hu: npt.NDArray[np.generic],
    affine: npt.ArrayLike,
    centre_points: npt.ArrayLike,
    vertebrae: Sequence[tuple[str | None, npt.ArrayLike]],
    *,
    uid: str,
    split: str = "train",
) -> KeypointRecord:
    """Return the reformat along given centre points with the vertebrae projected onto it.

    Parameters
    ----------
    volume_hu : numpy.ndarray
        ``(slices, rows, columns)`` HU.
    affine : array-like
        Index → LPS mm.
    centre_points : array-like
        ``(N, 3)`` LPS points of the centre line (per slice or per vertebra; at least five).
    vertebrae : sequence of (str or None, array-like)
        Level (None when not annotated) and ``(6, 3)`` LPS keypoints of each vertebra.
    uid : str
        Study, series and image identifier of the record.
    split : str
        Its split.

    Returns
    -------
    KeypointRecord
        ``display`` the windowed reformat, ``spacing_mm`` its spacing; a vertebra whose
        keypoints do not all fall inside the image is left out.
    """
    image = sagittal_reformat(volume_hu, affine, centre_points)
    rows, columns = image.image.shape
    objects = []
    for level, keypoints in vertebrae:
        xy = project_xy(image, keypoints)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] <= columns) & (xy[:, 1] >= 0) & (xy[:, 1] <= rows)
        if inside.all():
            objects.append(AnnotatedObject(ObjectKind.VERTEBRA, level, xy))
    return KeypointRecord(
        study=uid,
        series=uid,
        image=uid,
        display=reformat_display(image.image),
        spacing_mm=(REFORMAT_SPACING_MM, REFORMAT_SPACING_MM),
        objects=objects,
        split=split,
    )


def generate_ct_keypoint_records(
    n: int,
    seed: int,
    *,
    split: str = "train",
    jitter_mm: float = CENTRELINE_JITTER_MM,
    progress: bool = True,
    fracture_probability: float = FRACTURE_PROBABILITY,
) -> list[KeypointRecord]:
    """Make ``n`` CT phantom records (small acquisitions, random fractures and scoliosis).

    Parameters
    ----------
    n : int
        Number of phantoms.
    seed : int
        Seed of the set (phantom ``i`` and its centre-line noise use child ``i``).
    split : str
        Split of every record.
    jitter_mm : float
        Centre-line noise (`ct_keypoint_record`).
    progress : bool
        Print progress lines (rate, ETA) to stderr.
    fracture_probability : float
        The share of phantoms with one to three fractures (`make_ct_phantom`).

    Returns
    -------
    list of KeypointRecord
        In phantom order.
    """
    bar = RateProgress(n, "CT reformats", prefix="ct-keypoints") if progress else None
    out = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n), start=1):
        phantom_seed, noise_seed = child.spawn(2)
        phantom = make_ct_phantom(
            phantom_seed, size="small", fracture_probability=fracture_probability
        )
        out.append(
            ct_keypoint_record(
                phantom,
                split=split,
                rng=np.random.default_rng(noise_seed),
                jitter_mm=jitter_mm,
            )
        )
        if bar is not None:
            bar.update(i)
    return out


def annotated_records(
    annotations: Path, dicom: Path, test_fraction: float, seed: int
) -> list[KeypointRecord]:
    """Return the records of Pisov et al.'s annotated MosMedData series, split by series.

    Parameters
    ----------
    annotations : pathlib.Path
        The folder of JSON files (`spinexr.training.ct.pisov_annotations`).
    dicom : pathlib.Path
        The dataset's DICOM folder (one subfolder per study, named as the files' ``Folder``).
    test_fraction : float
        Share of series in the ``test`` split (drawn with ``seed``).
    seed : int
        Seed of the split.

    Returns
    -------
    list of KeypointRecord
        One per annotated series, file name order.
    """
    from spinexr.training.ct.pisov_annotations import annotated_record, read_annotation

    paths = sorted(Path(annotations).glob("*.json"))
    rng = np.random.default_rng(seed)
    test = set(rng.choice(len(paths), size=round(len(paths) * test_fraction), replace=False))
    bar = RateProgress(len(paths), "annotated CT series", prefix="ct-keypoints")
    out = []
    for i, path in enumerate(paths):
        annotation = read_annotation(path)
        files = [f for f in (Path(dicom) / annotation.folder).rglob("*") if f.is_file()]
        out.append(annotated_record(annotation, files, split="test" if i in test else "train"))
        bar.update(i + 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Train on CT reformats, print held-out figures, write the checkpoint."""
    from spinexr.pipeline.vertebrae.loader import load_keypoint_model
    from spinexr.training.vertebrae.evaluate import evaluate_keypoints
    from spinexr.training.vertebrae.krcnn_train import train_keypointrcnn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phantoms", type=int, default=300)
    p.add_argument("--test", type=int, default=60, help="held-out phantoms (other seeds)")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--fracture-probability",
        type=float,
        default=0.8,
        help="share of training phantoms with one to three fractures (the demo's 0.8)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("var/ct-keypoints"))
    p.add_argument(
        "--annotations",
        type=Path,
        help="Pisov et al.'s annotation folder (JSON per series) instead of phantoms",
    )
    p.add_argument("--dicom", type=Path, help="with --annotations: the dataset's Dicom folder")
    p.add_argument("--test-fraction", type=float, default=0.2, help="with --annotations")
    args = p.parse_args(argv)
    started = time.monotonic()
    if args.annotations is not None:
        if args.dicom is None:
            p.error("--annotations needs --dicom")
        records = annotated_records(args.annotations, args.dicom, args.test_fraction, args.seed)
        train = [r for r in records if r.split == "train"]
        test = [r for r in records if r.split == "test"]
    else:
        train = generate_ct_keypoint_records(
            args.phantoms, args.seed, fracture_probability=args.fracture_probability
        )
        test = generate_ct_keypoint_records(
            args.test, args.seed + HELD_OUT_SEED_OFFSET, split="test"
        )
    checkpoint = train_keypointrcnn(
        train,
        args.out,
        seed=args.seed,
        iterations=args.iterations,
        batch_size=args.batch,
        lr=args.lr,
        config=KRCNNConfig.cpu(),
        threads=args.threads,
    )
    seconds = time.monotonic() - started
    model = load_keypoint_model("keypointrcnn", checkpoint, "cpu")
    # Prints the report tables (stdout) and writes keypoints-report.json beside the model.
    evaluate_keypoints({"keypoint-rcnn-ct": model}, test, args.out, level_namer=None)
    print(f"[ct-keypoints] trained in {seconds:.0f} s -> {checkpoint}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
