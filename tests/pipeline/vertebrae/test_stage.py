"""The fracture stage: view decision, spacing, grading, levels and every stated outcome."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from pydicom.dataset import Dataset

from spinexr.pipeline.spacing import SpacingBasis
from spinexr.pipeline.vertebrae.findings import LevelRule, VertebralStatus, ViewSource
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade
from spinexr.pipeline.vertebrae.objects import DetectedObject, ObjectKind
from spinexr.pipeline.vertebrae.stage import VertebralStage

IMAGE = np.zeros((400, 300), np.uint8)


def body(
    top: float,
    h_a: float,
    h_m: float,
    h_p: float,
    *,
    kind: ObjectKind = ObjectKind.VERTEBRA,
    score: float = 0.9,
) -> DetectedObject:
    x0, depth = 100.0, 45.0
    bottom = top + max(h_a, h_m, h_p)
    mid = x0 + depth / 2
    kp = np.array(
        [
            (x0, bottom - h_a),
            (x0, bottom),
            (mid, bottom - h_m),
            (mid, bottom),
            (x0 + depth, bottom - h_p),
            (x0 + depth, bottom),
        ]
    )
    return DetectedObject(kind, score, kp)


class Fixed:
    """A keypoint model that returns the same detections for every image."""

    def __init__(self, objects: Sequence[DetectedObject], error: Exception | None = None) -> None:
        self.objects, self.error = list(objects), error
        self.spacings: list[tuple[float, float] | None] = []

    @property
    def name(self) -> str:
        return "fixed 1"

    def predict(
        self, image: np.ndarray, spacing_mm: tuple[float, float] | None
    ) -> list[DetectedObject]:
        self.spacings.append(spacing_mm)
        if self.error is not None:
            raise self.error
        return self.objects


SPINE = [
    body(20, 30, 30, 30),  # normal
    body(60, 20, 28, 30),  # wedge, G 0.667: moderate
    body(100, 30, 17, 30),  # biconcave, G 0.567: severe
    body(140, 30, 30, 30, score=0.4),  # below the score threshold: dropped
]


def lateral(**tags: object) -> Dataset:
    ds = Dataset()
    ds.ViewPosition = "LL"
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def run(
    ds: Dataset,
    model: Fixed | None,
    scores: dict[str, float] | None = None,
    image: np.ndarray = IMAGE,
):
    stage = VertebralStage(model=model)
    return stage.analyse(ds, image, stage.decide_view(ds, scores or {}))


def test_lateral_view_is_graded_in_mm_with_pixel_spacing() -> None:
    model = Fixed(SPINE)
    result = run(lateral(PixelSpacing=[0.5, 0.5]), model)
    assert result.status is VertebralStatus.ANALYSED
    assert model.spacings == [(0.5, 0.5)]
    assert result.spacing_basis is SpacingBasis.PIXEL_SPACING
    assert [v.grade for v in result.vertebrae] == [
        GenantGrade.NORMAL,
        GenantGrade.MODERATE,
        GenantGrade.SEVERE,
    ]
    assert [v.deformity for v in result.vertebrae] == [
        Deformity.NONE,
        Deformity.WEDGE,
        Deformity.BICONCAVE,
    ]
    assert result.vertebrae[1].heights_mm == pytest.approx((10.0, 14.0, 15.0))
    assert result.vertebrae[1].genant_index == pytest.approx(20 / 30)
    assert result.level_rule is LevelRule.FROM_TOP
    assert [v.label for v in result.vertebrae] == ["#1", "#2", "#3"]
    assert result.worst_grade is GenantGrade.SEVERE
    assert result.model == "fixed 1"


def test_imager_spacing_is_corrected_by_the_magnification() -> None:
    ds = lateral(ImagerPixelSpacing=[0.22, 0.22], EstimatedRadiographicMagnificationFactor=1.1)
    result = run(ds, Fixed(SPINE))
    assert result.spacing_basis is SpacingBasis.IMAGER_PIXEL_SPACING
    assert result.magnification_factor == pytest.approx(1.1)
    assert result.spacing_mm == pytest.approx((0.2, 0.2))
    assert result.vertebrae[0].heights_mm == pytest.approx((6.0, 6.0, 6.0))


def test_without_spacing_ratios_and_grades_only() -> None:
    model = Fixed(SPINE)
    result = run(lateral(), model)
    assert model.spacings == [None]
    assert result.status is VertebralStatus.ANALYSED
    assert result.spacing_mm is None and result.spacing_basis is SpacingBasis.NONE
    assert all(v.heights_mm is None for v in result.vertebrae)
    assert result.vertebrae[2].grade is GenantGrade.SEVERE
    assert result.reason is not None and "no pixel spacing" in result.reason


def test_sacrum_in_view_names_the_levels() -> None:
    s1 = body(220, 30, 30, 30, kind=ObjectKind.SACRUM)
    spine = [body(20 + 40 * k, 30, 30, 30) for k in range(5)]
    result = run(lateral(PixelSpacing=[0.5, 0.5]), Fixed([*spine, s1]))
    assert result.level_rule is LevelRule.SACRUM
    assert [v.level for v in result.vertebrae] == ["L1", "L2", "L3", "L4", "L5"]


def test_ap_view_is_not_graded() -> None:
    ds = lateral()
    ds.ViewPosition = "AP"
    model = Fixed(SPINE)
    result = run(ds, model)
    assert result.status is VertebralStatus.NOT_LATERAL
    assert not result.vertebrae and model.spacings == []
    assert result.reason is not None and "ViewPosition AP" in result.reason


def test_image_model_decides_when_the_header_is_silent() -> None:
    ds = Dataset()
    lat = run(ds, Fixed(SPINE), {"spine_ap": 0.05, "spine_lateral": 0.9, "other": 0.05})
    assert lat.status is VertebralStatus.ANALYSED
    assert lat.view_source is ViewSource.IMAGE_MODEL and lat.view_score == pytest.approx(
        0.947, abs=1e-3
    )
    ap = run(ds, Fixed(SPINE), {"spine_ap": 0.9, "spine_lateral": 0.05, "other": 0.05})
    assert ap.status is VertebralStatus.NOT_LATERAL
    unknown = run(ds, Fixed(SPINE))
    assert unknown.status is VertebralStatus.NOT_LATERAL
    assert unknown.reason is not None and "could not be determined" in unknown.reason


@pytest.mark.parametrize(
    ("model", "image", "status"),
    [
        (None, IMAGE, VertebralStatus.NO_MODEL),
        (Fixed(SPINE), np.zeros((200, 300), np.uint8), VertebralStatus.TOO_SMALL),
        (Fixed([]), IMAGE, VertebralStatus.NO_VERTEBRAE),
        (Fixed([body(20, 30, 30, 30, score=0.2)]), IMAGE, VertebralStatus.NO_VERTEBRAE),
        (Fixed(SPINE, RuntimeError("boom")), IMAGE, VertebralStatus.FAILED),
    ],
)
def test_stated_outcomes(model: Fixed | None, image: np.ndarray, status: VertebralStatus) -> None:
    result = run(lateral(PixelSpacing=[0.5, 0.5]), model, image=image)
    assert result.status is status
    assert result.reason and not result.vertebrae


def test_result_round_trips_through_json() -> None:
    from spinexr.pipeline.vertebrae.findings import VertebralAnalysis

    result = run(lateral(PixelSpacing=[0.5, 0.5]), Fixed(SPINE))
    again = VertebralAnalysis.model_validate_json(result.model_dump_json())
    assert again == result


class ImageLeftIsAnterior(Fixed):
    """A model that, like the Keypoint R-CNN baseline, names the image's left side anterior.

    It finds one wedge body whose short side is the darker one: the test image's dark
    column band is where the collapsed front of the body is.
    """

    def __init__(self) -> None:
        super().__init__([])
        self.images: list[np.ndarray] = []

    def predict(
        self, image: np.ndarray, spacing_mm: tuple[float, float] | None
    ) -> list[DetectedObject]:
        self.images.append(image)
        short_left = image[:, :150].mean() < image[:, 150:].mean()
        h_left, h_right = (20.0, 30.0) if short_left else (30.0, 20.0)
        return [body(60, h_left, 28, h_right)]  # x 100 (image left) to 145


@pytest.mark.parametrize(
    ("orientation", "mirrored"),
    [(["P", "F"], False), (["A", "F"], True), (None, False), (["L", "F"], False)],
)
def test_a_right_facing_patient_is_mirrored_for_the_model(
    orientation: list[str] | None, mirrored: bool
) -> None:
    # The collapsed anterior side is dark: on the image's left for a left-facing patient,
    # on its right for a right-facing one (Patient Orientation row direction A).
    image = np.full((400, 300), 200, np.uint8)
    if mirrored:
        image[:, 150:] = 50
    else:
        image[:, :150] = 50
    tags = {"PixelSpacing": [0.5, 0.5]}
    if orientation is not None:
        tags["PatientOrientation"] = orientation
    model = ImageLeftIsAnterior()
    result = run(lateral(**tags), model, image=image)
    assert np.array_equal(model.images[0], image[:, ::-1] if mirrored else image)
    (vertebra,) = result.vertebrae
    assert vertebra.deformity is Deformity.WEDGE  # anterior stays anterior
    anterior_x, posterior_x = vertebra.keypoints[0][0], vertebra.keypoints[4][0]
    assert (anterior_x > posterior_x) is mirrored
    if mirrored:  # mapped back: x -> columns - 1 - x
        assert anterior_x == pytest.approx(299 - 100)
