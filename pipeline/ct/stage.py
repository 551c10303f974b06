"""The CT stage of the pipeline: a study's CT files → `CtOutcome` (analysis + reformat).

`CtStage.analyse` runs, on the CT instances of one study:

1. **headers**: every file read without its pixels;
2. **selection** (`spinexr.pipeline.ct.series.select_series`): the series to analyse by the
   stated rules, every other series with its reasons;
3. **volume** (`spinexr.pipeline.ct.volume.load_volume`): the chosen series as a HU volume
   from positions and orientations, within `DEFAULT_MAX_VOLUME_BYTES`;
4. **the method** (`spinexr.pipeline.ct.vertebrae.analyse_ct_volume`): localisation,
   straightening, keypoints, heights in 3D, Genant grades.

Every refusal (no eligible series, a gapped or tilted series, no vertebral column, no
vertebra found) ends in a `CtAnalysis` with status ``not_analysed``, its `CtRefusal` code and
a one-line message without PHI; other exceptions (out of memory, a broken model) propagate, so
that the job is retried. Levels: the field of view of a chest or abdomen CT seldom fixes the
count, so vertebrae are numbered from the top (`LevelRule.FROM_TOP`) and no level is named.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pydicom
import torch

from spinexr.pipeline.ct.characterise import MalignancyNet, characterise, roi_stack
from spinexr.pipeline.ct.errors import UnsupportedSeriesError
from spinexr.pipeline.ct.findings import (
    CharacterisationStatus,
    CtAnalysis,
    CtSeriesVerdict,
    CtStatus,
    CtVertebraFinding,
    VertebraCharacterisation,
)
from spinexr.pipeline.ct.localise import LocaliserNet
from spinexr.pipeline.ct.series import ALLOWED_BODY_PARTS, SeriesChoice, select_series
from spinexr.pipeline.ct.vertebrae import CtVertebralAnalysis, analyse_ct_volume
from spinexr.pipeline.ct.volume import load_volume
from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.findings import LevelRule, VertebraFinding
from spinexr.pipeline.vertebrae.genant import GenantGrade
from spinexr.pipeline.vertebrae.objects import KeypointModel

logger = logging.getLogger(__name__)

DEFAULT_MAX_VOLUME_BYTES: Final = 2 * 1024**3
"""Largest float32 volume decoded (a 1,000-slice 512 × 512 series needs 1 GiB)."""

NO_VERTEBRAE: Final = "no_vertebrae"
"""Reason code: the column was found, but no vertebral body could be measured."""

NO_MODEL: Final = "no_model"
"""Reason code: the bundle has no CT models (or the site turned CT analysis off)."""


@dataclass(frozen=True)
class CtReformat:
    """The straightened mid-sagittal image a CT analysis was made on.

    Attributes
    ----------
    display : numpy.ndarray
        ``uint8`` ``(rows, columns)``, bone window, anterior to the left, superior at the top.
    spacing_mm : tuple of float
        ``(row, column)`` pixel spacing.
    series_instance_uid : str
        The CT series.
    sop_instance_uids : tuple of str
        The series' slices in volume order (the derived image's sources).
    """

    display: npt.NDArray[np.uint8]
    spacing_mm: tuple[float, float]
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class CtOutcome:
    """A study's CT analysis and, when a series was analysed, its reformat."""

    analysis: CtAnalysis
    reformat: CtReformat | None = None


@dataclass(frozen=True)
class CtStage:
    """The CT models and the rules around them.

    Parameters
    ----------
    localiser : LocaliserNet or None
        The centre-line network; None (or no ``keypoints``): CT says "no model".
    keypoints : KeypointModel or None
        The keypoint model trained on CT reformats.
    model_name : str
        Names and versions of both models (algorithm identification).
    cutoffs : genant.GenantCutoffs
        Grade bounds.
    score_threshold : float
        Lowest vertebra score reported.
    allowed_body_parts : collection of str
        Body Part Examined values a series may have (compacted upper case).
    max_volume_bytes : int
        Memory bound of the decoded volume.
    device : torch.device or str
        Where the localiser runs.
    characteriser : MalignancyNet, optional
        Li et al.'s benign / malignant classifier (`spinexr.pipeline.ct.characterise`);
        None: no characterisation.
    characterise_from : GenantGrade
        The lowest grade that triggers the characterisation.
    characterise_all : bool
        Characterise every vertebra at or above that grade, not only the one with the
        lowest Genant index.
    malignancy_threshold : float
        Malignant at or above this probability.
    characteriser_trained_on : str or None
        What the classifier was trained on (the bundle's words; stated in the result).
    """

    localiser: LocaliserNet | None
    keypoints: KeypointModel | None
    model_name: str = ""
    cutoffs: genant.GenantCutoffs = genant.DEFAULT_CUTOFFS
    score_threshold: float = 0.5
    allowed_body_parts: Collection[str] = ALLOWED_BODY_PARTS
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES
    device: torch.device | str = "cpu"
    characteriser: MalignancyNet | None = None
    characterise_from: GenantGrade = GenantGrade.MILD
    characterise_all: bool = False
    malignancy_threshold: float = 0.5
    characteriser_trained_on: str | None = None

    def _common(self) -> dict[str, object]:
        c = self.cutoffs
        return {"model": self.model_name, "cutoffs": (c.mild, c.moderate, c.severe)}

    def analyse(self, paths: Sequence[Path]) -> CtOutcome:
        """Analyse the CT instances of one study.

        Parameters
        ----------
        paths : sequence of pathlib.Path
            Every CT file of the study (any series, any order).

        Returns
        -------
        CtOutcome
            The analysis (analysed, or the stated reason why not) and the reformat.
        """
        timings: dict[str, float] = {}
        started = time.perf_counter()
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        paths_by_series: dict[str, list[Path]] = {}
        for path, ds in zip(paths, headers, strict=True):
            paths_by_series.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append(
                Path(path)
            )
        timings["headers"] = time.perf_counter() - started
        started = time.perf_counter()
        choice = select_series(
            headers, allowed_body_parts=self.allowed_body_parts, allow_absent_body_part=True
        )
        del headers
        timings["selection"] = time.perf_counter() - started
        verdicts = _verdicts(choice)
        base = {
            "series": verdicts,
            "decided_by": list(choice.decided_by),
            "series_instance_uid": choice.series_instance_uid,
            **self._common(),
        }
        if self.localiser is None or self.keypoints is None:
            return CtOutcome(
                CtAnalysis(
                    status=CtStatus.NO_MODEL,
                    reason=NO_MODEL,
                    message="the model bundle has no CT models",
                    timings=timings,
                    **base,
                )
            )
        try:
            uid = choice.require()
            started = time.perf_counter()
            volume = load_volume(paths_by_series[uid], max_bytes=self.max_volume_bytes)
            timings["volume"] = time.perf_counter() - started
            found = analyse_ct_volume(
                volume.array,
                volume.affine,
                self.localiser,
                self.keypoints,
                cutoffs=self.cutoffs,
                series_instance_uid=uid,
                score_threshold=self.score_threshold,
                device=self.device,
            )
        except UnsupportedSeriesError as exc:
            logger.warning("CT not analysed: %s: %s", exc.refusal.value, exc.message)
            return CtOutcome(
                CtAnalysis(
                    status=CtStatus.NOT_ANALYSED,
                    reason=exc.refusal.value,
                    message=exc.message[:300],
                    timings=timings,
                    **base,
                )
            )
        timings |= found.seconds
        geometry = {
            "frame_of_reference_uid": volume.frame_of_reference_uid,
            "slices": int(volume.array.shape[0]),
            "reformat_size": (int(found.display.shape[0]), int(found.display.shape[1])),
            "reformat_spacing_mm": found.reformat.spacing_mm,
        }
        if not found.vertebrae:
            return CtOutcome(
                CtAnalysis(
                    status=CtStatus.NOT_ANALYSED,
                    reason=NO_VERTEBRAE,
                    message=(
                        f"the vertebral column was found in series {uid}, but no vertebral "
                        "body could be measured inside the scanned slices"
                    ),
                    timings=timings,
                    **geometry,
                    **base,
                )
            )
        vertebrae = ct_findings(found)
        characterisation: dict[str, object] = {}
        if self.characteriser is not None:
            started = time.perf_counter()
            vertebrae, status, note = characterise_vertebrae(
                volume.array,
                volume.affine,
                vertebrae,
                self.characteriser,
                from_grade=self.characterise_from,
                every=self.characterise_all,
                threshold=self.malignancy_threshold,
            )
            timings["characterisation"] = time.perf_counter() - started
            characterisation = {
                "characterisation_status": status,
                "characterisation_note": note,
                "characteriser_trained_on": self.characteriser_trained_on,
            }
        analysis = CtAnalysis(
            status=CtStatus.ANALYSED,
            level_rule=LevelRule.FROM_TOP,
            vertebrae=vertebrae,
            timings=timings,
            **characterisation,
            **geometry,
            **base,
        )
        reformat = CtReformat(
            display=found.display,
            spacing_mm=found.reformat.spacing_mm,
            series_instance_uid=uid,
            sop_instance_uids=volume.sop_instance_uids,
        )
        logger.info(
            "CT series %s: %d vertebrae, worst grade %s, in %.1f s",
            uid,
            len(analysis.vertebrae),
            analysis.worst_grade.value,
            sum(timings.values()),
        )
        return CtOutcome(analysis, reformat)


def characterise_vertebrae(
    array: npt.NDArray[np.generic],
    affine: npt.ArrayLike,
    vertebrae: list[CtVertebraFinding],
    model: MalignancyNet,
    *,
    from_grade: GenantGrade = GenantGrade.MILD,
    every: bool = False,
    threshold: float = 0.5,
) -> tuple[list[CtVertebraFinding], CharacterisationStatus, str | None]:
    """Call benign or malignant on a study's fractured vertebrae (Li et al., automatic ROI).

    Parameters
    ----------
    array : numpy.ndarray
        ``(slices, rows, columns)`` HU.
    affine : array-like
        Index → LPS mm.
    vertebrae : list of CtVertebraFinding
        The vertebrae the CT method measured.
    model : MalignancyNet
        The classifier.
    from_grade : GenantGrade
        The lowest grade that triggers it.
    every : bool
        Every vertebra at or above that grade; else only the one with the lowest G.
    threshold : float
        Malignant at or above this probability.

    Returns
    -------
    vertebrae : list of CtVertebraFinding
        The same vertebrae, the characterised ones with their call.
    status : CharacterisationStatus
        Characterised, not applicable (no vertebra at or above the trigger grade) or not
        possible (every target too close to the edge of the field of view).
    note : str or None
        Why not, or which targets could not be characterised.
    """
    targets = [v for v in vertebrae if v.finding.grade.number >= from_grade.number]
    if not targets:
        return (
            vertebrae,
            CharacterisationStatus.NOT_APPLICABLE,
            f"not applicable: no vertebra at or above the trigger grade ({from_grade.value})",
        )
    if not every:
        targets = [min(targets, key=lambda v: v.finding.genant_index)]
    out = {v.finding.number: v for v in vertebrae}
    refused = []
    for v in targets:
        try:
            stack = roi_stack(np.asarray(array), affine, v.keypoints_lps)
        except UnsupportedSeriesError:
            refused.append(v.finding.label)
            continue
        call = characterise(stack, model, threshold)
        out[v.finding.number] = v.model_copy(
            update={
                "characterisation": VertebraCharacterisation(
                    probability=float(np.clip(call.probability, 0.0, 1.0)),
                    threshold=call.threshold,
                    malignant=call.malignant,
                    slice_probabilities=[
                        float(np.clip(p, 0.0, 1.0)) for p in call.slice_probabilities
                    ],
                    slice_offsets_mm=[float(o) for o in stack.offsets_mm],
                )
            }
        )
    result = [out[v.finding.number] for v in vertebrae]
    edge = (
        f"vertebra {', '.join(refused)} too close to the edge of the field of view for its "
        "sagittal slices"
        if refused
        else None
    )
    if len(refused) == len(targets):
        return result, CharacterisationStatus.NOT_POSSIBLE, f"not possible: {edge}"
    return result, CharacterisationStatus.CHARACTERISED, edge


def _verdicts(choice: SeriesChoice) -> list[CtSeriesVerdict]:
    return [
        CtSeriesVerdict(
            series_instance_uid=s.series_instance_uid,
            series_number=s.series_number,
            instances=s.instances,
            chosen=s.series_instance_uid == choice.series_instance_uid,
            reasons=[f"{r.code}: {r.detail}"[:200] for r in s.reasons],
        )
        for s in choice.series
    ]


def ct_findings(found: CtVertebralAnalysis) -> list[CtVertebraFinding]:
    """Return the CT method's vertebrae as the result's findings (on the reformat, and in LPS)."""
    out = []
    for v in found.vertebrae:
        finding = VertebraFinding(
            number=v.number,
            score=float(np.clip(v.score, 0.0, 1.0)),
            keypoints=[(float(x), float(y)) for x, y in v.keypoints_xy],
            heights_px=genant.heights(v.keypoints_xy),
            heights_mm=v.heights_mm,
            genant_index=float(np.clip(v.genant_index, 0.0, 1.0)),
            grade=v.grade,
            deformity=v.deformity,
        )
        lps = [(float(a), float(b), float(c)) for a, b, c in v.keypoints_lps]
        out.append(CtVertebraFinding(finding=finding, keypoints_lps=lps))
    return out
