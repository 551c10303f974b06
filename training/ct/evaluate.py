"""Pisov et al.'s Tables 1 and 2 for the whole CT method, end to end, on held-out CT phantoms.

Each phantom goes through `spinexr.pipeline.ct.vertebrae.analyse_ct_volume` exactly as the
node will run it: the localiser's centre line (not the truth's), the reformat along it, the
CT keypoint detector, heights in 3D. The phantom's vertebrae whose keypoints lie within the
scanned slices (`gradable`) are projected onto that same reformat for the 2D matching
(Hungarian, keypoint-box IoU > 0.5, as on radiographs: Table 1's detection recall and
precision). The localisation error is the 3D distance between the predicted and true body
centres (mean of the six keypoints, LPS mm). Genant indices on both sides come from heights
in mm measured in 3D (the truth's from the phantom's geometry), so Table 2 is free of the
straightening's distortion. Figures, bootstrap intervals and the paper's values beside
them: `spinexr.training.vertebrae.evaluate.keypoint_report`.

``python -m spinexr.training.ct.evaluate --localiser L.pt --keypoints K.pt`` prints the
tables for ``--phantoms`` held-out phantoms and the mean time per step.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spinexr.pipeline.ct.localise import LocaliserNet, load_localiser
from spinexr.pipeline.ct.reformat import project_xy
from spinexr.pipeline.ct.vertebrae import analyse_ct_volume
from spinexr.pipeline.vertebrae.objects import KeypointModel
from spinexr.training.ct.keypoints import HELD_OUT_SEED_OFFSET, gradable
from spinexr.training.metrics.keypoints import ImageKeypoints
from spinexr.training.phantoms.ct import CtPhantom, make_ct_phantom
from spinexr.training.progress import RateProgress
from spinexr.training.vertebrae.evaluate import ModelPredictions, keypoint_report

CT_SETTINGS = {
    "ct": (
        "end to end: localiser centre line, reformat, detector; truth projected onto the "
        "same reformat for matching; centre error and heights in 3D (LPS mm)"
    )
}


def ct_image_keypoints(
    phantom: CtPhantom, localiser: LocaliserNet, model: KeypointModel
) -> tuple[ImageKeypoints, dict[str, float]]:
    """Run the CT method on one phantom and pair its vertebrae with the truth.

    Parameters
    ----------
    phantom : CtPhantom
        A chest or abdomen phantom.
    localiser : LocaliserNet
        The centre-line network.
    model : KeypointModel
        The CT keypoint detector.

    Returns
    -------
    images : ImageKeypoints
        The phantom's gradable vertebrae (projected onto the reformat; 3D heights and
        centres) and the predicted ones.
    seconds : dict of str to float
        Time per step.
    """
    analysis = analyse_ct_volume(phantom.hu, phantom.grid.affine(), localiser, model)
    reformat = analysis.reformat
    truth = gradable(phantom)
    truth_xy = np.array([project_xy(reformat, v.keypoints) for v in truth])
    found = analysis.vertebrae
    uid = f"ct-phantom-{phantom.seed}"
    image = ImageKeypoints(
        study=uid,
        image=uid,
        spacing_mm=reformat.spacing_mm,
        truth=truth_xy.reshape(-1, 6, 2),
        predicted=np.array([v.keypoints_xy for v in found]).reshape(-1, 6, 2),
        scores=np.array([v.score for v in found]),
        truth_levels=tuple(v.level for v in truth),
        truth_heights_mm=np.array([v.heights for v in truth]).reshape(-1, 3),
        predicted_heights_mm=np.array([v.heights_mm for v in found]).reshape(-1, 3),
        truth_centres_mm=np.array([v.keypoints.mean(axis=0) for v in truth]).reshape(-1, 3),
        predicted_centres_mm=np.array([v.centre_lps for v in found]).reshape(-1, 3),
    )
    return image, analysis.seconds


def evaluate_ct(
    localiser: LocaliserNet,
    model: KeypointModel,
    phantoms: Sequence[CtPhantom],
    out_dir: Path | None,
    *,
    seed: int = 0,
    n_bootstrap: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate the CT method end to end on phantoms (Tables 1 and 2).

    Parameters
    ----------
    localiser : LocaliserNet
        The centre-line network.
    model : KeypointModel
        The CT keypoint detector.
    phantoms : sequence of CtPhantom
        Held-out chest and abdomen phantoms.
    out_dir : pathlib.Path or None
        Where the JSON report and plots go.
    seed, n_bootstrap : int
        Bootstrap over phantoms (patients).
    progress : bool
        Progress lines and the tables.

    Returns
    -------
    dict
        The report, with ``seconds_per_step`` (mean over phantoms).
    """
    started = time.monotonic()
    bar = RateProgress(len(phantoms), "CT phantoms", prefix="ct-evaluate") if progress else None
    images: list[ImageKeypoints] = []
    steps: Counter[str] = Counter()
    for i, phantom in enumerate(phantoms, start=1):
        image, seconds = ct_image_keypoints(phantom, localiser, model)
        images.append(image)
        steps.update(seconds)
        if bar is not None:
            bar.update(i)
    per_step = {k: v / len(phantoms) for k, v in steps.items()}
    report = keypoint_report(
        {"ct": ModelPredictions(model.name, images, Counter(), sum(per_step.values()))},
        out_dir,
        splits={"test": len(phantoms)},
        seed=seed,
        n_bootstrap=n_bootstrap,
        progress=progress,
        levels=False,
        started=started,
        settings=CT_SETTINGS,
    )
    report["seconds_per_step"] = per_step
    if progress:
        print(
            "[ct-evaluate] seconds per phantom: "
            + ", ".join(f"{k} {v:.2f}" for k, v in per_step.items())
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a localiser and a CT keypoint checkpoint on held-out phantoms."""
    from spinexr.pipeline.vertebrae.loader import load_keypoint_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--localiser", type=Path, required=True)
    p.add_argument("--keypoints", type=Path, required=True)
    p.add_argument("--arch", default="keypointrcnn")
    p.add_argument("--phantoms", type=int, default=60)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    localiser, _ = load_localiser(args.localiser)
    model = load_keypoint_model(args.arch, args.keypoints, "cpu")
    children = np.random.SeedSequence(args.seed + HELD_OUT_SEED_OFFSET).spawn(args.phantoms)
    phantoms = [make_ct_phantom(c.spawn(2)[0], size="small") for c in children]
    evaluate_ct(localiser, model, phantoms, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
