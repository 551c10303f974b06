"""The vertebral fracture stage of the pipeline: one lateral image → `VertebralAnalysis`.

For each image the lesion analysis kept, the stage decides the view (`view`), runs the
bundle's keypoint model on lateral views (on the mirrored image where Patient Orientation
says the patient faces the image's right, `facing`), names the levels (`levels`), measures
heights in the patient plane (`spinexr.pipeline.spacing.measurement_spacing`) and grades
each vertebra (`genant`). Every other case ends in a stated status with its reason, never a grade.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from spinexr.pipeline.spacing import SpacingBasis, measurement_spacing
from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.facing import Facing, facing_from_header, mirror_objects
from spinexr.pipeline.vertebrae.findings import (
    LevelRule,
    VertebraFinding,
    VertebralAnalysis,
    VertebralStatus,
)
from spinexr.pipeline.vertebrae.levels import assign_levels
from spinexr.pipeline.vertebrae.objects import KeypointModel, ObjectKind
from spinexr.pipeline.vertebrae.view import View, ViewDecision, view_from_header, view_from_scores

logger = logging.getLogger(__name__)

MIN_VERTEBRAL_SIZE = 256
"""Smallest number of rows and of columns of an image analysed for fractures."""


@dataclass(frozen=True)
class VertebralStage:
    """The keypoint model and the rules around it.

    Parameters
    ----------
    model : KeypointModel or None
        The bundle's keypoint model; None: lateral views say "no model".
    score_threshold : float
        Lowest vertebra score reported.
    sacrum_threshold : float
        Lowest S1 score accepted as the level anchor.
    cutoffs : genant.GenantCutoffs
        Grade bounds.
    min_size : int
        Smallest rows and columns.
    """

    model: KeypointModel | None
    score_threshold: float = 0.5
    sacrum_threshold: float = 0.5
    cutoffs: genant.GenantCutoffs = genant.DEFAULT_CUTOFFS
    min_size: int = MIN_VERTEBRAL_SIZE

    @property
    def model_name(self) -> str:
        """Name and version of the keypoint model (empty without one)."""
        return "" if self.model is None else self.model.name

    def decide_view(self, ds: Dataset, scores: Mapping[str, float]) -> ViewDecision:
        """Decide the view: the header's, else the image model's.

        Parameters
        ----------
        ds : pydicom.dataset.Dataset
            The image header.
        scores : mapping of str to float
            The anatomy model's probabilities for this image (empty when it did not run).

        Returns
        -------
        ViewDecision
            The decision.
        """
        decision = view_from_header(ds)
        if decision.view is View.UNKNOWN and scores:
            return view_from_scores(scores)
        return decision

    def analyse(
        self, ds: Dataset, display: npt.NDArray[np.uint8], view: ViewDecision
    ) -> VertebralAnalysis:
        """Analyse one image for vertebral fractures.

        Parameters
        ----------
        ds : pydicom.dataset.Dataset
            The image header (spacing).
        display : numpy.ndarray
            ``uint8`` display image (bone bright).
        view : ViewDecision
            From `decide_view`.

        Returns
        -------
        VertebralAnalysis
            Analysed, or the status and reason why not.
        """
        common = {
            "view": view.view.value,
            "view_source": view.source,
            "view_score": view.score,
            "model": self.model_name,
            "cutoffs": (self.cutoffs.mild, self.cutoffs.moderate, self.cutoffs.severe),
        }
        if view.view is not View.LATERAL:
            what = {
                View.AP: "a frontal (AP/PA) view",
                View.OBLIQUE: "an oblique view",
                View.UNKNOWN: "a view that could not be determined",
            }[view.view]
            return VertebralAnalysis(
                status=VertebralStatus.NOT_LATERAL,
                reason=f"not a lateral view: {what} ({view.detail}); "
                "vertebral fractures are graded on lateral views",
                **common,
            )
        if self.model is None:
            return VertebralAnalysis(
                status=VertebralStatus.NO_MODEL,
                reason="the model bundle has no vertebral keypoint model",
                **common,
            )
        rows, columns = display.shape[:2]
        if min(rows, columns) < self.min_size:
            return VertebralAnalysis(
                status=VertebralStatus.TOO_SMALL,
                reason=f"image {rows}×{columns} is smaller than {self.min_size} pixels a side",
                **common,
            )
        spacing = measurement_spacing(ds)
        pair = spacing.pair
        facing = facing_from_header(ds)
        try:
            if facing is Facing.RIGHT:
                mirrored = np.ascontiguousarray(display[:, ::-1])
                objects = mirror_objects(self.model.predict(mirrored, pair), columns)
            else:
                objects = self.model.predict(display, pair)
        except (RuntimeError, ValueError) as exc:
            logger.warning("vertebral analysis failed: %s", type(exc).__name__)
            return VertebralAnalysis(
                status=VertebralStatus.FAILED,
                reason=f"the keypoint model failed: {type(exc).__name__}",
                **common,
            )
        kept = [
            o
            for o in objects
            if o.score
            >= (self.score_threshold if o.kind is ObjectKind.VERTEBRA else self.sacrum_threshold)
        ]
        rule, named = assign_levels(kept, sacrum_threshold=self.sacrum_threshold)
        if not named:
            return VertebralAnalysis(
                status=VertebralStatus.NO_VERTEBRAE,
                reason="no vertebral body found on this lateral view",
                **common,
            )
        findings = []
        for number, (obj, level) in enumerate(named, start=1):
            h_px = genant.heights(obj.keypoints)
            h_mm = None if pair is None else genant.heights(obj.keypoints, pair)
            # G from mm when the spacing is anisotropic; identical to the pixel ratio otherwise.
            g = genant.genant_index(h_mm if h_mm is not None else h_px)
            findings.append(
                VertebraFinding(
                    number=number,
                    level=level,
                    score=float(np.clip(obj.score, 0.0, 1.0)),
                    keypoints=[(float(x), float(y)) for x, y in obj.keypoints],
                    heights_px=h_px,
                    heights_mm=h_mm,
                    genant_index=g,
                    grade=genant.grade(g, self.cutoffs),
                    deformity=genant.deformity(h_mm if h_mm is not None else h_px, self.cutoffs),
                )
            )
        reason = None
        if spacing.basis is SpacingBasis.NONE:
            reason = "no pixel spacing in the header: ratios and grades only, no heights in mm"
        elif rule is LevelRule.FROM_TOP:
            reason = (
                "the sacrum is not in view: vertebrae numbered from the top, level not established"
            )
        return VertebralAnalysis(
            status=VertebralStatus.ANALYSED,
            reason=reason,
            spacing_basis=spacing.basis,
            spacing_mm=pair,
            magnification_factor=spacing.magnification,
            level_rule=rule,
            vertebrae=findings,
            **common,
        )
