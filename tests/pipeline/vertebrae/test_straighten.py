"""CT spine straightening (issue 17): the fitted centre line, the frame, the mid-sagittal
image of straight, kyphotic, lordotic and scoliotic phantoms, and the image ↔ patient map."""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from spinexr.pipeline.vertebrae.genant import Deformity
from spinexr.pipeline.vertebrae.straighten import (
    Centreline,
    Straightened,
    curve_frame,
    fit_centreline,
    straighten,
)
from spinexr.training.phantoms.ct import CtAcquisition, CtPhantom, make_ct_phantom
from spinexr.training.phantoms.ct_anatomy import LevelFracture

FloatArray = npt.NDArray[np.float64]

CASES = {
    # Round the thoracolumbar junction, where the sagittal curve changes sign: nearly straight.
    "straight": dict(
        levels=("T11", "L1"),
        scoliosis=False,
        fractures=[LevelFracture("T12", 0.7, Deformity.WEDGE)],
    ),
    "kyphotic": dict(
        levels=("T4", "T10"),
        scoliosis=False,
        fractures=[LevelFracture("T7", 0.72, Deformity.CRUSH)],
    ),
    "lordotic": dict(
        levels=("L1", "L4"),
        scoliosis=False,
        fractures=[LevelFracture("L2", 0.65, Deformity.BICONCAVE)],
    ),
    "scoliotic": dict(
        levels=("T5", "L1"), scoliosis=True, fractures=[LevelFracture("T9", 0.7, Deformity.WEDGE)]
    ),
}
SHORTEST = {Deformity.WEDGE: 0, Deformity.BICONCAVE: 1, Deformity.CRUSH: 2}
BONE_HU = 150.0
WIDTH_MM = 120.0
EXTEND_MM = 30.0
FILL = -2000.0


@dataclass(frozen=True)
class Case:
    name: str
    phantom: CtPhantom
    result: Straightened
    labels: Straightened

    @property
    def scoliotic(self) -> bool:
        return self.name == "scoliotic"

    @property
    def spacing(self) -> float:
        return self.result.spacing_mm[0]


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    """A labelled small phantom (128², 2.4–3.4 mm pixels), its image and its label image."""
    phantom = make_ct_phantom(3, size="small", labels=True, **CASES[request.param])
    assert phantom.labels is not None
    spacing = min(phantom.grid.pixel_spacing)
    curve = fit_centreline(phantom.centreline, step_mm=spacing, extend_mm=EXTEND_MM)
    result = straighten(
        phantom.hu, phantom.grid, curve, width_mm=WIDTH_MM, spacing_mm=spacing, fill=FILL
    )
    labels = straighten(
        phantom.labels, phantom.grid, curve, width_mm=WIDTH_MM, spacing_mm=spacing, order=0, fill=0
    )
    return Case(request.param, phantom, result, labels)


def complete(case: Case) -> list[tuple[int, FloatArray, FloatArray]]:
    """``(label, keypoints LPS, keypoints in the image)`` of the fully visible vertebrae."""
    out = []
    for i, v in enumerate(case.phantom.vertebrae):
        if v.complete:
            out.append((i + 1, v.keypoints, case.result.from_patient(v.keypoints)))
    return out


def curvature(case: Case, rows: FloatArray) -> float:
    """Largest curvature of the centre line (1/mm) between two rows."""
    s = np.linspace(rows.min(), rows.max(), 20) * case.spacing
    return float(np.linalg.norm(case.result.map.curve.evaluate(s, 2), axis=1).max())


# --- the image --------------------------------------------------------------------------------


def test_image_shows_bone_along_the_centre_column(case: Case) -> None:
    image = case.result.image
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert image.shape[1] == 2 * round(0.5 * WIDTH_MM / case.spacing) + 1
    # Fill only beyond the slices: where the curve runs on past its points, and at the
    # ends of the planes tilted with the curve.
    margin = int(np.ceil(EXTEND_MM / case.spacing))
    assert not (image[margin:-margin, image.shape[1] // 2] == FILL).any()
    assert np.mean(image == FILL) < 0.5
    centre = image[:, image.shape[1] // 2]
    # Bodies and discs alternate down the centre column; the bodies are cancellous bone.
    assert np.percentile(centre, 75) > BONE_HU
    for _, _, rc in complete(case):
        middle = rc[2:4].mean(axis=0)
        assert abs(middle[1] - case.result.map.centre_column) < 1.0
        assert ndimage.map_coordinates(image, middle[:, None], order=1)[0] > 100.0


def test_rows_run_down_the_spine_and_anterior_is_on_the_left(case: Case) -> None:
    rows = []
    for _, _, rc in complete(case):
        # Anterior keypoints (0, 1) lie left of the middle (2, 3) and posterior (4, 5) ones.
        assert (rc[[0, 1], 1] + 5.0 / case.spacing < rc[[2, 3], 1]).all()
        assert (rc[[2, 3], 1] + 5.0 / case.spacing < rc[[4, 5], 1]).all()
        # Top keypoints above bottom ones.
        assert (rc[0::2, 0] < rc[1::2, 0]).all()
        rows.append(rc[:, 0].mean())
    assert np.all(np.diff(rows) > 0)  # vertebrae top to bottom


def test_keypoints_land_on_the_bone_of_their_vertebra(case: Case) -> None:
    image, labels = case.result.image, case.labels.image
    near = ndimage.maximum_filter(image, size=3)
    for label, _, rc in complete(case):
        for j in range(6):
            # A quarter of the height down (or up), a third of the way to the middle height.
            other = rc[j + 1] if j % 2 == 0 else rc[j - 1]
            inside = rc[j] + 0.25 * (other - rc[j]) + 0.33 * (rc[2 + j % 2] - rc[j])
            assert ndimage.map_coordinates(labels, inside[:, None], order=0)[0] == label
            r, c = np.round(rc[j]).astype(int)
            assert label in labels[r - 1 : r + 2, c - 1 : c + 2]
            assert near[r, c] > BONE_HU, (case.name, label, j)


# --- the map ----------------------------------------------------------------------------------


def test_keypoints_round_trip(case: Case) -> None:
    mapping = case.result.map
    errors = []
    for _, kp, _ in complete(case):
        projected = mapping.project(kp)
        back = mapping.to_patient(projected[:, :2])
        errors.append(np.linalg.norm(back - kp, axis=1).max())
        # What the image drops is the distance off its plane, along the left axis.
        exact = mapping.to_patient(projected[:, :2], projected[:, 2])
        np.testing.assert_allclose(exact, kp, atol=1e-6)
        if case.scoliotic:
            # The bodies turn about their axis with the lateral curve (0.5° per mm): their
            # anterior and posterior keypoints leave the image plane by a few mm.
            assert np.abs(projected[:, 2]).max() < 4.0
    if not case.scoliotic:
        assert max(errors) < 0.5 * case.spacing


def test_image_points_round_trip(case: Case) -> None:
    rng = np.random.default_rng(0)
    shape = np.array(case.result.image.shape, dtype=np.float64)
    rc = rng.uniform(0.0, 1.0, size=(200, 2)) * (shape - 1)
    # Beyond the ends too: the curve runs on straight.
    rc = np.vstack([rc, [[-5.0, 10.0], [shape[0] + 4.5, 30.0]]])
    back = case.result.from_patient(case.result.to_patient(rc))
    np.testing.assert_allclose(back, rc, atol=1e-6)


def test_heights(case: Case) -> None:
    """3D heights from the mapped keypoints match the truth; heights in image pixels differ by
    the straightening's stretch only (``κ x`` of the height, zero for the middle height)."""
    spacing = np.array(case.result.spacing_mm)
    for label, _, rc in complete(case):
        truth = np.array(case.phantom.vertebrae[label - 1].heights)
        in_3d = case.result.map.distance_mm(rc[0::2], rc[1::2])
        in_image = np.linalg.norm((rc[0::2] - rc[1::2]) * spacing, axis=1)
        np.testing.assert_allclose(in_3d, truth, atol=0.6 if case.scoliotic else 0.1)
        assert abs(in_image[1] - truth[1]) < 0.3
        offset = np.abs(rc[0::2, 1] - case.result.map.centre_column) * spacing[1]
        stretch = curvature(case, rc[:, 0]) * offset * truth
        assert (np.abs(in_image - truth) <= 1.25 * stretch + 0.3).all(), case.name
        if case.name == "kyphotic":  # bent round an anterior centre: anterior stretched
            assert in_image[0] > truth[0] and in_image[2] < truth[2]
        if case.name == "straight":
            assert (np.abs(in_image - truth) < 1.0).all()
        elif case.scoliotic:
            assert (np.abs(in_image - truth) < 1.5).all()


def test_genant_of_the_fracture_survives(case: Case) -> None:
    (fracture,) = CASES[case.name]["fractures"]
    i = next(i for i, v in enumerate(case.phantom.vertebrae) if v.level == fracture.level)
    rc = case.result.from_patient(case.phantom.vertebrae[i].keypoints)
    h = case.result.map.distance_mm(rc[0::2], rc[1::2])
    assert h.min() / h.max() == pytest.approx(fracture.genant, abs=0.02)
    assert int(np.argmin(h)) == SHORTEST[fracture.deformity]


# --- the curve and the frame --------------------------------------------------------------------


def test_fit_smooths_noisy_centre_points() -> None:
    phantom = make_ct_phantom(
        8, size=CtAcquisition(128, 1.5, 1.0, 1.0), levels=("T6", "L2"), fractures=[], scoliosis=True
    )
    truth = phantom.centreline
    noisy = truth + np.random.default_rng(1).normal(0.0, 1.0, size=truth.shape)
    noisy[:3] = np.nan  # NaN rows are dropped
    curve = fit_centreline(noisy, step_mm=0.8)
    steps = np.linalg.norm(np.diff(curve.points, axis=0), axis=1)
    np.testing.assert_allclose(steps, 0.8, rtol=1e-3)
    assert curve.points[0, 2] > curve.points[-1, 2]  # superior end first
    valid = truth[~np.isnan(truth[:, 0])][5:-5]
    dense = curve.evaluate(np.arange(0.0, curve.length_mm, 0.1))
    error = np.min(np.linalg.norm(valid[:, None] - dense[None], axis=2), axis=1)
    assert np.median(error) < 0.4 and error.max() < 1.2
    # Generalised cross-validation also follows the curve.
    gcv = fit_centreline(noisy, step_mm=0.8, smoothing_mm=None)
    dense = gcv.evaluate(np.arange(0.0, gcv.length_mm, 0.1))
    error = np.min(np.linalg.norm(valid[:, None] - dense[None], axis=2), axis=1)
    assert np.median(error) < 0.6
    with pytest.raises(ValueError, match="five"):
        fit_centreline(noisy[:7])


def cylinder_volume() -> tuple[npt.NDArray[np.int16], FloatArray, FloatArray]:
    """A 400 HU rod of radius 8 mm along z in air, 1 mm voxels; its axis per slice."""
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]  # (k, r, c) → LPS
    affine[:3, 3] = [-32.0, -20.0, 40.0]
    _, r, c = np.indices((60, 64, 64), dtype=np.float64)
    x, y = -32.0 + c, -20.0 + r
    rod = (x - 1.0) ** 2 + (y - 10.0) ** 2 < 8.0**2
    volume = np.where(rod, 400, -1000).astype(np.int16)
    axis = np.column_stack([np.full(60, 1.0), np.full(60, 10.0), 40.0 - np.arange(60.0)])
    return volume, affine, axis


def test_straight_curve_has_a_frame_and_an_image() -> None:
    volume, affine, axis = cylinder_volume()
    tangents = np.tile([0.0, 0.0, -1.0], (10, 1))
    a, left = curve_frame(tangents)
    np.testing.assert_allclose(a, np.tile([0.0, -1.0, 0.0], (10, 1)))
    np.testing.assert_allclose(left, np.tile([1.0, 0.0, 0.0], (10, 1)))
    result = straighten(volume, affine, axis, width_mm=40.0, spacing_mm=1.0)  # raw points
    assert np.isfinite(result.image).all()
    assert result.image.shape == (60, 41)
    profile = result.image[30]
    assert (profile[13:28] == 400).all() and (profile[:11] == -1000).all()
    assert (profile[30:] == -1000).all()
    # An explicit two-point centre line gives the same image.
    line = Centreline(points=axis[[0, -1]], step_mm=59.0)
    again = straighten(volume, affine, line, width_mm=40.0, spacing_mm=1.0)
    np.testing.assert_allclose(again.image, result.image, atol=1e-3)


def test_curve_along_the_anterior_axis_is_refused() -> None:
    with pytest.raises(ValueError, match="anterior axis"):
        curve_frame([[0.0, -1.0, 0.05]])
    with pytest.raises(ValueError, match="anterior axis"):
        curve_frame([[np.nan, np.nan, np.nan]])


def test_slab_affine_and_order_options() -> None:
    phantom = make_ct_phantom(3, size="small", **CASES["scoliotic"])
    spacing = min(phantom.grid.pixel_spacing)
    curve = fit_centreline(phantom.centreline, step_mm=spacing)
    plane = straighten(phantom.hu, phantom.grid, curve, spacing_mm=spacing)
    # A plain 4×4 affine works as the grid does.
    same = straighten(phantom.hu, phantom.grid.affine(), curve, spacing_mm=spacing)
    np.testing.assert_array_equal(same.image, plane.image)
    mip = straighten(
        phantom.hu, phantom.grid, curve, spacing_mm=spacing, thickness_mm=10.0, slab="max"
    )
    assert mip.slab is None
    assert (mip.image >= plane.image - 1e-3).all()
    mean = straighten(
        phantom.hu, phantom.grid, curve, spacing_mm=spacing, thickness_mm=10.0, keep_slab=True
    )
    assert mean.slab is not None and mean.slab.shape == (*plane.image.shape, 5)
    np.testing.assert_allclose(mean.slab[:, :, 2], plane.image, atol=1e-3)
    np.testing.assert_allclose(mean.image, mean.slab.mean(axis=2), atol=1e-3)
    cubic = straighten(phantom.hu, phantom.grid, curve, spacing_mm=spacing, order=3)
    inside = plane.image > -1000
    assert np.median(np.abs(cubic.image - plane.image)[inside]) < 30.0
    with pytest.raises(ValueError, match="4×4"):
        straighten(phantom.hu, np.eye(3), curve)
    with pytest.raises(ValueError, match="slab"):
        straighten(phantom.hu, phantom.grid, curve, slab="median")  # type: ignore[arg-type]


@pytest.mark.slow
def test_full_size_volume_straightens_fast_in_little_memory() -> None:
    acq = CtAcquisition(matrix=512, pixel_spacing=0.7, slice_spacing=1.0, slice_thickness=1.0)
    phantom = make_ct_phantom(
        11, size=acq, levels=("T8", "L3"), fractures=[], noise_sigma=0.0, blur=False
    )
    assert phantom.hu.shape[1:] == (512, 512) and phantom.hu.shape[0] >= 250
    for options in ({}, {"order": 3}, {"thickness_mm": 10.0, "slab": "max"}):
        tracemalloc.start()
        start = time.process_time()  # CPU time: the machine is shared with benchmarks
        result = straighten(phantom.hu, phantom.grid, phantom.centreline, width_mm=160.0, **options)
        elapsed = time.process_time() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert result.spacing_mm == (0.7, 0.7)
        assert result.image.shape[0] > 300
        assert elapsed < 3.0, options
        assert peak < 0.25 * phantom.hu.nbytes, options  # no copy of the volume
