"""Benign / malignant end to end: the CT method picks the vertebra and its ROI, then Li et al.

Li et al. 2021 drew the ROI by hand. The node finds it: the CT method (localiser, straightened
reformat, keypoints, Genant grades) measures every vertebra, the vertebra with the lowest G at
or above the trigger grade is chosen, and its six detected keypoints give the ROI
(`spinexr.pipeline.ct.stage.characterise_vertebrae`, the code `serve` runs).
`evaluate_end_to_end` runs that on phantom patients (`characterise_train.make_patient`) and
scores the same classifier twice on each patient:

- **ground-truth ROI**: the phantom's true keypoints of the fractured vertebra (the paper's
  setting, a hand-drawn ROI);
- **automatic**: whatever the pipeline did. A patient whose fractured vertebra got no call
  (no vertebra graded at or above the trigger, the wrong vertebra chosen, or the edge of the
  field of view) counts as wrongly called: probability 0 when malignant, 1 when benign. So
  the automatic figures carry every cost of automation, and the difference to the
  ground-truth row is that cost.

``python -m spinexr.training.ct.characterise_e2e --characteriser … --localiser … --keypoints …``
prints both tables and the coverage (patients characterised, at the right vertebra).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from spinexr.pipeline.ct.characterise import MalignancyNet, characterise, roi_stack
from spinexr.pipeline.ct.errors import UnsupportedSeriesError
from spinexr.pipeline.ct.findings import CtVertebraFinding
from spinexr.pipeline.ct.localise import LocaliserNet
from spinexr.pipeline.ct.stage import characterise_vertebrae, ct_findings
from spinexr.pipeline.ct.vertebrae import analyse_ct_volume
from spinexr.pipeline.vertebrae.genant import GenantGrade
from spinexr.pipeline.vertebrae.objects import KeypointModel
from spinexr.training.ct.characterise_train import case_seeds, figures_of, make_patient

MATCH_MM = 10.0
"""A called vertebra is the fractured one when their centres are this close (mm)."""


@dataclass(frozen=True)
class PatientOutcome:
    """What the pipeline did for one patient.

    Attributes
    ----------
    seed : int
        The patient (`make_patient`).
    malignant, hard : bool
        The truth, and whether it is a hard case.
    status : str
        The characterisation status (``characterised``, ``not_applicable``, ...), or the CT
        refusal when the volume was not analysed.
    right_vertebra : bool
        The called vertebra is the fractured one.
    automatic : list of float or None
        Slice probabilities at the fractured vertebra from detected keypoints; None when it
        got no call.
    ground_truth : list of float
        Slice probabilities from the true keypoints.
    """

    seed: int
    malignant: bool
    hard: bool
    status: str
    right_vertebra: bool
    automatic: list[float] | None
    ground_truth: list[float]


def run_patient(
    seed: int,
    malignant: bool,
    characteriser: MalignancyNet,
    localiser: LocaliserNet,
    keypoints: KeypointModel,
    *,
    threshold: float = 0.5,
    score_threshold: float = 0.5,
    from_grade: GenantGrade = GenantGrade.MILD,
) -> PatientOutcome:
    """Run the automatic pipeline and the ground-truth ROI on one phantom patient.

    Parameters
    ----------
    seed, malignant : int, bool
        The patient (`make_patient`).
    characteriser : MalignancyNet
        The classifier.
    localiser, keypoints
        The CT models.
    threshold : float
        Malignant at or above it.
    score_threshold : float
        Lowest vertebra score kept (the bundle's).
    from_grade : GenantGrade
        The trigger grade.

    Returns
    -------
    PatientOutcome
        Both sets of slice probabilities.
    """
    p = make_patient(seed, malignant=malignant)
    vertebrae: list[CtVertebraFinding]
    try:
        found = analyse_ct_volume(
            p.hu, p.affine, localiser, keypoints, score_threshold=score_threshold
        )
    except UnsupportedSeriesError as exc:  # e.g. no column found: no call
        vertebrae, status = [], exc.refusal.value
    else:
        vertebrae, called, _ = characterise_vertebrae(
            p.hu,
            p.affine,
            ct_findings(found),
            characteriser,
            from_grade=from_grade,
            threshold=threshold,
        )
        status = called.value
    centre = p.keypoints.mean(axis=0)
    automatic = None
    right = False
    for v in vertebrae:
        call = v.characterisation
        if call is None:
            continue
        if float(np.linalg.norm(np.mean(v.keypoints_lps, axis=0) - centre)) <= MATCH_MM:
            right = True
            automatic = list(call.slice_probabilities)
    truth = characterise(roi_stack(p.hu, p.affine, p.keypoints), characteriser, threshold)
    return PatientOutcome(
        seed,
        malignant,
        p.hard,
        status,
        right,
        automatic,
        [float(x) for x in truth.slice_probabilities],
    )


def evaluate_end_to_end(
    characteriser: MalignancyNet,
    localiser: LocaliserNet,
    keypoints: KeypointModel,
    patients: Sequence[tuple[int, bool]],
    *,
    threshold: float = 0.5,
    score_threshold: float = 0.5,
    n_bootstrap: int = 1000,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Score the classifier on automatic and on ground-truth ROIs of the same patients.

    Parameters
    ----------
    characteriser : MalignancyNet
        The classifier.
    localiser, keypoints
        The CT models.
    patients : sequence of (int, bool)
        Seeds and truths (`characterise_train.case_seeds`).
    threshold : float
        Malignant at or above it.
    score_threshold : float
        Lowest vertebra score kept.
    n_bootstrap : int
        Resamples for the CIs.
    stream : file-like, optional
        A progress line every ten patients (stderr by default).

    Returns
    -------
    dict
        ``automatic`` and ``ground_truth``: `figures_of`; ``automatic_where_called``: the
        automatic figures on the patients called at their fractured vertebra (what the
        classifier does on automatic ROIs, apart from the trigger; None when there is none);
        ``coverage``: patients
        characterised, and at the right vertebra; ``seconds_per_patient``; ``patients``:
        per patient its status and whether the call was right.
    """
    out = stream if stream is not None else sys.stderr
    started = time.monotonic()
    outcomes = []
    for i, (seed, malignant) in enumerate(patients, 1):
        outcomes.append(
            run_patient(
                seed,
                malignant,
                characteriser,
                localiser,
                keypoints,
                threshold=threshold,
                score_threshold=score_threshold,
            )
        )
        if i % 10 == 0 or i == len(patients):
            rate = i / (time.monotonic() - started)
            print(
                f"[li2021-e2e] {i}/{len(patients)} patients ({rate:.2f}/s, ETA "
                f"{(len(patients) - i) / rate:.0f} s)",
                file=out,
                flush=True,
            )
    truth = [o.malignant for o in outcomes]
    automatic = [
        o.automatic if o.automatic is not None else [0.0 if o.malignant else 1.0] for o in outcomes
    ]
    n = len(outcomes)
    called = [o for o in outcomes if o.automatic is not None]
    return {
        "automatic": figures_of(truth, automatic, threshold, n_bootstrap),
        "automatic_where_called": figures_of(
            [o.malignant for o in called],
            [o.automatic for o in called if o.automatic is not None],
            threshold,
            n_bootstrap,
        )
        if called
        else None,
        "ground_truth": figures_of(
            truth, [o.ground_truth for o in outcomes], threshold, n_bootstrap
        ),
        "coverage": {
            "patients": n,
            "characterised": sum(o.status == "characterised" for o in outcomes) / max(n, 1),
            "right_vertebra": sum(o.right_vertebra for o in outcomes) / max(n, 1),
        },
        "seconds_per_patient": (time.monotonic() - started) / max(n, 1),
        "patients": [
            {
                "seed": o.seed,
                "malignant": o.malignant,
                "hard": o.hard,
                "status": o.status,
                "right_vertebra": o.right_vertebra,
                "automatic_max": max(o.automatic) if o.automatic else None,
                "ground_truth_max": max(o.ground_truth),
            }
            for o in outcomes
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the automatic and ground-truth tables (``python -m ...characterise_e2e``)."""
    import argparse
    import json

    from spinexr.pipeline.ct.characterise import load_characteriser
    from spinexr.pipeline.ct.localise import load_localiser
    from spinexr.pipeline.vertebrae.loader import load_keypoint_model
    from spinexr.training.ct.characterise_train import format_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--characteriser", type=Path, required=True)
    p.add_argument("--localiser", type=Path, required=True)
    p.add_argument("--keypoints", type=Path, required=True)
    p.add_argument("--patients", type=int, default=60)
    p.add_argument("--seed", type=int, default=1_000, help="seed of the held-out patients")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--json", type=Path, help="write the whole report here")
    args = p.parse_args(argv)
    model, _ = load_characteriser(args.characteriser)
    localiser, _ = load_localiser(args.localiser)
    kp = load_keypoint_model("keypointrcnn", args.keypoints, "cpu")
    report = evaluate_end_to_end(
        model,
        localiser,
        kp,
        case_seeds(args.patients, args.seed),
        threshold=args.threshold,
        score_threshold=args.score_threshold,
    )
    cov = report["coverage"]
    print(format_table(report["ground_truth"], "ROI from the ground-truth keypoints"))
    print()
    print(format_table(report["automatic"], "automatic: vertebra and ROI chosen by the node"))
    print()
    if report["automatic_where_called"] is not None:
        print(
            format_table(
                report["automatic_where_called"],
                "automatic, the patients called at their fractured vertebra",
            )
        )
        print()
    print(
        f"characterised {cov['characterised']:.3f} of {cov['patients']} patients, at the "
        f"fractured vertebra {cov['right_vertebra']:.3f}; "
        f"{report['seconds_per_patient']:.1f} s per patient"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
