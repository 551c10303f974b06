"""K-fold cross-validation of the CT keypoint detector, as Pisov et al. evaluated it.

The paper reports five-fold cross-validation on its 100 annotated chest CTs. `cross_validate`
splits the records by patient (``KeypointRecord.study``: every image of a patient falls in one
fold) into ``k`` folds with a seeded permutation, trains one model per fold on the other folds,
predicts the held-out fold with it, and pools the ``k`` held-out predictions into one report
(`spinexr.training.vertebrae.evaluate.keypoint_report`: recall, precision, centre error,
heights, Genant grades, ROC AUC at vertebra and patient level, bootstrap CIs over patients),
so that every patient is judged once, by a model that never saw it.

``python -m spinexr.training.ct.crossval --annotations DIR --dicom DIR --folds 5`` runs it on
Pisov et al.'s MosMedData annotations (`spinexr.training.ct.pisov_annotations`); without
``--annotations`` it runs on ``--phantoms`` CT phantoms (`generate_ct_keypoint_records`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spinexr.pipeline.vertebrae.objects import KeypointModel
from spinexr.training.vertebrae.evaluate import ModelPredictions, keypoint_report, predict_images
from spinexr.training.vertebrae.records import KeypointRecord

Trainer = Callable[[Sequence[KeypointRecord], Path], KeypointModel]
"""Trains a model on records, writing into a folder; returns the trained model."""

CV_SETTINGS = {
    "cross_validation": (
        "k folds by patient; each fold predicted by the model trained on the others; the "
        "held-out predictions pooled into one report (2D, on the records' reformats)"
    )
}


def assign_folds(studies: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """Assign each patient to one of ``k`` folds of (nearly) equal size.

    Parameters
    ----------
    studies : sequence of str
        Patient (study) identifiers, repeats allowed.
    k : int
        Number of folds, at least 2 and at most the number of patients.
    seed : int
        Seeds the permutation.

    Returns
    -------
    dict of str to int
        Patient → fold in ``0 .. k-1``; the same for the same patients, ``k`` and seed.

    Raises
    ------
    ValueError
        If ``k`` is out of range.
    """
    unique = sorted(set(studies))
    if not 2 <= k <= len(unique):
        raise ValueError(f"{k} folds need 2 to {len(unique)} patients per fold split")
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[int(i)]: position % k for position, i in enumerate(order)}


def cross_validate(
    records: Sequence[KeypointRecord],
    k: int,
    train: Trainer,
    work: Path,
    *,
    seed: int = 0,
    n_bootstrap: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``k`` models on ``k - 1`` folds each and evaluate the pooled held-out predictions.

    Parameters
    ----------
    records : sequence of KeypointRecord
        Every annotated image (their ``split`` is ignored).
    k : int
        Number of folds.
    train : callable
        ``train(records, folder) -> model``.
    work : pathlib.Path
        Folder for each fold's model (``fold-1`` ...) and the pooled report.
    seed : int
        Seeds the folds and the bootstrap.
    n_bootstrap : int
        Bootstrap resamples over patients.
    progress : bool
        Progress lines (stderr) and the report tables (stdout).

    Returns
    -------
    dict
        The pooled report (`keypoint_report`), with ``folds``: per fold its patients, images
        and training seconds.
    """
    started = time.monotonic()
    folds = assign_folds([r.study for r in records], k, seed)
    pooled = []
    per_image = []
    facts = []
    for fold in range(k):
        held_out = [r for r in records if folds[r.study] == fold]
        training = [r for r in records if folds[r.study] != fold]
        t = time.monotonic()
        model = train(training, work / f"fold-{fold + 1}")
        seconds = time.monotonic() - t
        images, _, mean_seconds = predict_images(
            model, held_out, level_namer=None, progress=progress, label=f"fold {fold + 1}/{k}"
        )
        pooled += images
        per_image.append(mean_seconds)
        facts.append(
            {
                "fold": fold + 1,
                "patients": len({r.study for r in held_out}),
                "images": len(held_out),
                "training_images": len(training),
                "training_seconds": round(seconds, 1),
            }
        )
        if progress:
            print(
                f"[crossval] fold {fold + 1}/{k}: trained on {len(training)} images in "
                f"{seconds:.0f} s, predicted {len(held_out)}",
                file=sys.stderr,
                flush=True,
            )
    report = keypoint_report(
        {
            f"{k}-fold": ModelPredictions(
                model.name, pooled, Counter(), float(np.nanmean(per_image))
            )
        },
        work,
        splits={f"fold {f['fold']}": int(f["images"]) for f in facts},
        seed=seed,
        n_bootstrap=n_bootstrap,
        progress=progress,
        levels=False,
        started=started,
        settings=CV_SETTINGS,
    )
    report["folds"] = facts
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Cross-validate the CT keypoint detector (``python -m spinexr.training.ct.crossval``)."""
    from spinexr.pipeline.vertebrae.krcnn import KRCNNConfig
    from spinexr.pipeline.vertebrae.loader import load_keypoint_model
    from spinexr.training.ct.keypoints import annotated_records, generate_ct_keypoint_records
    from spinexr.training.vertebrae.krcnn_train import train_keypointrcnn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--phantoms", type=int, default=100)
    p.add_argument("--annotations", type=Path, help="Pisov et al.'s annotation folder")
    p.add_argument("--dicom", type=Path, help="with --annotations: the dataset's Dicom folder")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("var/ct-crossval"))
    args = p.parse_args(argv)
    if args.annotations is not None:
        if args.dicom is None:
            p.error("--annotations needs --dicom")
        records = annotated_records(args.annotations, args.dicom, 0.0, args.seed)
    else:
        records = generate_ct_keypoint_records(args.phantoms, args.seed)

    def train(training: Sequence[KeypointRecord], folder: Path) -> KeypointModel:
        checkpoint = train_keypointrcnn(
            training,
            folder,
            seed=args.seed,
            iterations=args.iterations,
            batch_size=args.batch,
            lr=args.lr,
            config=KRCNNConfig.cpu(),
            threads=args.threads,
        )
        return load_keypoint_model("keypointrcnn", checkpoint, "cpu")

    cross_validate(records, args.folds, train, args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
