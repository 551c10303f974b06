"""Synthetic CT phantoms (issue 17): anatomy in HU, fractures at the requested Genant grade
and type, keypoints on the bone, centre line, DICOM series and study, refusal cases."""

from __future__ import annotations

import time
from pathlib import Path

import highdicom
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from scipy import ndimage

from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade
from spinexr.training.phantoms.ct import (
    CtAcquisition,
    CtPhantom,
    body_corners,
    make_ct_phantom,
    make_head_phantom,
    random_acquisition,
)
from spinexr.training.phantoms.ct_anatomy import (
    LevelFracture,
    build_column,
    level_range,
    plan_level_fractures,
)
from spinexr.training.phantoms.ct_dicom import (
    AXIAL,
    LOCALIZER,
    REFORMATTED,
    series_datasets,
    study_header,
    write_ct_study,
)
from spinexr.training.phantoms.fractures import GRADE_BANDS, FractureError

FINE = CtAcquisition(matrix=128, pixel_spacing=1.0, slice_spacing=1.0, slice_thickness=1.0)
FRACTURES = (
    LevelFracture("T9", 0.78, Deformity.WEDGE),
    LevelFracture("T10", 0.68, Deformity.BICONCAVE),
    LevelFracture("T11", 0.45, Deformity.CRUSH, all_reduced=0.15),
)
SHORTEST = {Deformity.WEDGE: 0, Deformity.BICONCAVE: 1, Deformity.CRUSH: 2}
CORTEX_MIN = 450.0
"""Peak HU across a 1.1–1.8 mm cortical shell (700–1000 HU) at 1 mm voxels, after blur."""


@pytest.fixture(scope="module")
def fine() -> CtPhantom:
    """128×128×~130 at 1 mm round T9–T12 (fractures of every grade and type), labels."""
    return make_ct_phantom(
        21, size=FINE, levels=("T9", "T12"), fractures=FRACTURES, labels=True, centre_on_spine=True
    )


@pytest.fixture(scope="module")
def chest() -> CtPhantom:
    """The small test size (128², 2.4–3.4 mm pixels) over T4–T12, no fracture."""
    return make_ct_phantom(5, size="small", levels=("T4", "T12"), fractures=[])


def sample(phantom: CtPhantom, points: npt.ArrayLike, order: int = 1) -> npt.NDArray[np.float64]:
    idx = phantom.grid.to_index(np.atleast_2d(np.asarray(points, dtype=np.float64)))
    return ndimage.map_coordinates(phantom.hu.astype(np.float64), idx.T, order=order)


# --- generation ------------------------------------------------------------------------------


def test_same_seed_same_volume_and_truth() -> None:
    a = make_ct_phantom(7, size="small", levels=("T11", "L2"))
    b = make_ct_phantom(7, size="small", levels=("T11", "L2"))
    c = make_ct_phantom(8, size="small", levels=("T11", "L2"))
    assert np.array_equal(a.hu, b.hu)
    assert a.grid == b.grid
    assert [v.level for v in a.vertebrae] == [v.level for v in b.vertebrae]
    for va, vb in zip(a.vertebrae, b.vertebrae, strict=True):
        assert np.array_equal(va.keypoints, vb.keypoints)
        assert va.fracture == vb.fracture
    np.testing.assert_array_equal(a.centreline, b.centreline)
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


def test_small_volume_is_fast_and_int16(chest: CtPhantom) -> None:
    start = time.process_time()  # CPU time: the machine is shared with benchmarks
    phantom = make_ct_phantom(6, size="small", levels=("T4", "L3"))
    elapsed = time.process_time() - start
    assert phantom.hu.dtype == np.int16
    assert phantom.hu.shape[1:] == (128, 128)
    assert 100 <= phantom.hu.shape[0] <= 220
    assert elapsed < 5.0
    assert chest.hu.min() >= -1024 and chest.hu.max() <= 3071


def test_acquisition_geometry_is_axial_lps(chest: CtPhantom) -> None:
    grid = chest.grid
    assert 2.4 <= grid.pixel_spacing[0] == grid.pixel_spacing[1] <= 3.4
    assert 2.0 <= grid.slice_spacing <= 3.0 and grid.slice_thickness >= grid.slice_spacing
    assert grid.orientation == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    steps = np.diff(grid.positions(), axis=0)
    np.testing.assert_allclose(steps, [[0.0, 0.0, -grid.slice_spacing]] * len(steps))
    assert chest.column is not None
    for vertebra in chest.column.vertebrae:
        idx = grid.to_index(body_corners(vertebra))
        inside = ((idx >= 0) & (idx <= np.array(grid.shape) - 1)).all(axis=1)
        # The requested levels are wholly in view, the neighbours above and below partly.
        assert inside.all() if vertebra.complete else 0 < inside.sum() < 8, vertebra.level
    for seed in range(20):
        full = random_acquisition(np.random.default_rng(seed), "full")
        assert full.matrix == 512 and 0.5 <= full.pixel_spacing <= 1.0
        assert 0.8 <= full.slice_spacing <= full.slice_thickness <= 3.0


def test_tissue_hu_at_known_points(chest: CtPhantom, fine: CtPhantom) -> None:
    # Air: the anterior corners of the field of view, outside the body.
    assert np.abs(chest.hu[:, :2, :2].astype(float).mean() + 1000.0) < 30.0
    # Lungs: the centre of each lung's cross-section, 40 mm above its dome.
    torso = chest.torso
    assert torso is not None
    for side in (-1.0, 1.0):
        dx, dy, _, _, dome = torso.lung(side)
        z = dome + 40.0
        point = (torso.centre_x + dx, float(torso.body_y(z)) + dy, z)
        assert -900.0 < sample(chest, point)[0] < -780.0
    # Bone and disc, on the 1 mm phantom.
    for i, v in enumerate(fine.vertebrae):
        if not v.complete:
            continue
        shape = fine.column.vertebrae[i].shape  # type: ignore[union-attr]
        canc = sample(fine, v.centre)[0]
        assert 90.0 < canc < 420.0, v.level
        # Across the anterior wall at mid-height: the cortical shell peaks.
        depth = np.arange(shape.half_depth - 4.0, shape.half_depth + 1.5, 0.25)
        profile = sample(fine, v.centre + depth[:, None] * v.axes[1])
        assert profile.max() > CORTEX_MIN, v.level
        assert profile.max() > canc + 150.0
    for upper, lower in zip(fine.vertebrae[:-1], fine.vertebrae[1:], strict=True):
        middle = 0.5 * (upper.keypoints[3] + lower.keypoints[2])
        assert 20.0 < sample(fine, middle)[0] < 180.0, (upper.level, lower.level)


def test_fractures_have_the_requested_index_grade_and_type(fine: CtPhantom) -> None:
    requested = {f.level: f for f in FRACTURES}
    for v in fine.vertebrae:
        if v.level in requested:
            spec = requested[v.level]
            assert v.fracture == spec
            assert v.genant_index == pytest.approx(spec.genant, abs=1e-5)
            assert v.grade is genant.grade(spec.genant)
            assert v.deformity is spec.deformity
            assert int(np.argmin(v.heights)) == SHORTEST[spec.deformity]
            assert min(v.heights) / max(v.heights) == pytest.approx(v.genant_index)
        else:
            assert v.fracture is None
            assert v.grade is GenantGrade.NORMAL and v.deformity is Deformity.NONE
            assert 0.8 < v.genant_index < 1.0
    grades = {v.grade for v in fine.vertebrae}
    assert {GenantGrade.MILD, GenantGrade.MODERATE, GenantGrade.SEVERE} <= grades


def test_heights_follow_from_the_keypoints(fine: CtPhantom) -> None:
    for v in fine.vertebrae:
        kp = v.keypoints
        np.testing.assert_allclose(np.linalg.norm(kp[0::2] - kp[1::2], axis=1), v.heights)
        assert v.genant_index == genant.genant_index(v.heights)
        assert v.deformity is genant.deformity(v.heights)
        # Each height runs along the body's superior axis, on its mid-sagittal plane.
        for top, bottom in zip(kp[0::2], kp[1::2], strict=True):
            along = (top - bottom) / np.linalg.norm(top - bottom)
            assert along @ v.axes[2] == pytest.approx(1.0, abs=1e-9)
            assert (top - v.centre) @ v.axes[0] == pytest.approx(0.0, abs=1e-9)
        # Anterior keypoints lie in front of the posterior ones.
        assert (kp[0] - kp[4]) @ v.axes[1] > 10.0


def test_keypoints_lie_on_the_bone_of_their_vertebra(fine: CtPhantom) -> None:
    labels = fine.labels
    assert labels is not None
    for i, v in enumerate(fine.vertebrae):
        if not v.complete:
            continue
        kp = v.keypoints
        for j in range(6):
            inward = kp[j + 1] - kp[j] if j % 2 == 0 else kp[j - 1] - kp[j]
            inward /= np.linalg.norm(inward)
            idx = fine.grid.to_index(kp[j] + 0.75 * inward)
            assert ndimage.map_coordinates(labels, idx[:, None], order=0)[0] == i + 1
            # The end plate under the keypoint is cortical bone.
            segment = kp[j] + np.arange(0.0, 2.01, 0.25)[:, None] * inward
            assert sample(fine, segment).max() > CORTEX_MIN, (v.level, j)


def test_measured_heights_match_the_truth(fine: CtPhantom) -> None:
    """The bone along each height line (labels, 0.1 mm steps) is as long as the height."""
    labels = fine.labels
    assert labels is not None
    for i, v in enumerate(fine.vertebrae):
        if not v.complete:
            continue
        for h, top, bottom in zip(v.heights, v.keypoints[0::2], v.keypoints[1::2], strict=True):
            axis = (top - bottom) / h
            t = np.arange(-4.0, h + 4.0, 0.1)
            idx = fine.grid.to_index(bottom + t[:, None] * axis)
            inside = ndimage.map_coordinates(labels, idx.T, order=0) == i + 1
            assert inside.sum() * 0.1 == pytest.approx(h, abs=1.2), v.level


def test_centre_line_crosses_every_slice_inside_the_column(fine: CtPhantom) -> None:
    line = fine.centreline
    valid = ~np.isnan(line[:, 0])
    assert valid.sum() > 0.8 * fine.grid.slices
    first, last = np.nonzero(valid)[0][[0, -1]]
    assert valid[first : last + 1].all()  # one contiguous run
    # Each point lies on its slice plane.
    offsets = (line[valid] - fine.grid.positions()[valid]) @ fine.grid.normal
    np.testing.assert_allclose(offsets, 0.0, atol=1e-6)
    # It runs through bone or disc, and through every vertebral centre (within 0.3 mm).
    assert np.median(sample(fine, line[valid])) > 60.0
    curve = fine.column.curve  # type: ignore[union-attr]
    for v in fine.vertebrae:
        assert np.linalg.norm(curve - v.centre, axis=1).min() < 0.3


def test_column_curves_and_orients_the_bodies() -> None:
    rng = np.random.default_rng(3)
    column = build_column(rng, level_range("T2", "L4"), [], origin=(0.0, 0.0, 0.0), scoliosis=True)
    y = {v.level: v.centre[1] for v in column.vertebrae}
    # Kyphosis bulges posteriorly (+y), lordosis anteriorly (−y).
    assert y["T7"] > 0.5 * (y["T2"] + y["T12"]) + 5.0
    assert y["L3"] < 0.5 * (y["L1"] + y["L5"]) - 2.0
    assert abs(column.scoliosis_mm) >= 8.0
    curve = column.curve
    tangent = -np.gradient(curve, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    for v in column.vertebrae:
        j = int(np.argmin(np.linalg.norm(curve - v.centre, axis=1)))
        # End plates perpendicular to the curve: the body's superior axis is its tangent.
        assert v.axes[2] @ tangent[j] > 0.999
        np.testing.assert_allclose(v.axes @ v.axes.T, np.eye(3), atol=1e-9)


def test_random_fractures_hit_their_bands() -> None:
    for seed in range(12):
        rng = np.random.default_rng(seed)
        levels = level_range("T4", "L3")
        grades = [GenantGrade.MILD, GenantGrade.MODERATE, GenantGrade.SEVERE, GenantGrade.NORMAL]
        specs = plan_level_fractures(rng, levels, grades)
        column = build_column(rng, levels, specs, origin=(0.0, 0.0, 0.0), scoliosis=False)
        for spec, grade in zip(specs, grades, strict=True):
            lo, hi = GRADE_BANDS[grade]
            g = column.level(spec.level).shape.genant_index()
            assert lo <= g <= hi and g == pytest.approx(spec.genant, abs=1e-5)
            assert genant.grade(g) is grade


def test_bad_requests_are_refused() -> None:
    with pytest.raises(FractureError):  # T8 is the partly visible neighbour
        make_ct_phantom(
            1, levels=("T9", "T10"), fractures=[LevelFracture("T8", 0.7, Deformity.WEDGE)]
        )
    with pytest.raises(FractureError):
        make_ct_phantom(
            1, levels=("T9", "T10"), fractures=[LevelFracture("T9", 0.99, Deformity.WEDGE)]
        )
    with pytest.raises(ValueError, match="T2–L4"):
        make_ct_phantom(1, levels=("T1", "T4"))
    with pytest.raises(ValueError, match="upwards"):
        level_range("L2", "T12")


# --- DICOM -----------------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True])
def test_series_reads_back_to_the_same_volume_and_affine(
    fine: CtPhantom, tmp_path: Path, signed: bool
) -> None:
    header = study_header(fine, signed=signed)
    files = write_ct_study(tmp_path, fine, header=header, distractors=False)
    datasets = [pydicom.dcmread(p) for p in files.role("axial").paths]
    assert len(datasets) == fine.grid.slices
    first = datasets[0]
    assert first.SOPClassUID == pydicom.uid.CTImageStorage
    assert list(first.ImageType) == list(AXIAL)
    assert first.PixelRepresentation == int(signed)
    assert float(first.RescaleIntercept) == (0.0 if signed else -1024.0)
    assert first.BodyPartExamined == "CHEST" and first.ConvolutionKernel == fine.kernel
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({str(ds.get(keyword)) for ds in datasets}) == 1
    # By hand: sort by position along the normal, apply the rescale.
    normal = np.cross(*np.reshape(np.asarray(first.ImageOrientationPatient, float), (2, 3)))
    order = sorted(
        datasets, key=lambda ds: -float(np.asarray(ds.ImagePositionPatient, float) @ normal)
    )
    by_hand = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in order])
    np.testing.assert_array_equal(by_hand, fine.hu)
    # highdicom builds the same array and affine (it raises on tilted or irregular series).
    volume = highdicom.get_volume_from_series(datasets, dtype=np.float64)
    np.testing.assert_array_equal(volume.array, fine.hu)
    np.testing.assert_allclose(volume.affine, fine.grid.affine(), atol=1e-4)


def test_study_holds_the_distractors(fine: CtPhantom, tmp_path: Path) -> None:
    files = write_ct_study(tmp_path, fine)
    assert [s.role for s in files.series] == ["localizer", "axial", "reformat"]
    read = {s.role: [pydicom.dcmread(p) for p in s.paths] for s in files.series}
    assert len(read["localizer"]) == 1
    assert list(read["localizer"][0].ImageType) == list(LOCALIZER)
    assert [float(v) for v in read["localizer"][0].ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    assert all(list(ds.ImageType) == list(REFORMATTED) for ds in read["reformat"])
    assert float(read["reformat"][0].SliceThickness) > 2 * float(read["axial"][0].SliceThickness)
    assert len({s.series_uid for s in files.series}) == 3
    for datasets in read.values():
        for ds in datasets:
            assert ds.StudyInstanceUID == files.study_uid
            assert ds.FrameOfReferenceUID == read["axial"][0].FrameOfReferenceUID


def test_study_files_are_deterministic(tmp_path: Path) -> None:
    phantom = make_ct_phantom(9, size="small", levels=("T12", "L1"))
    a = write_ct_study(tmp_path / "a", phantom)
    b = write_ct_study(tmp_path / "b", make_ct_phantom(9, size="small", levels=("T12", "L1")))
    for sa, sb in zip(a.series, b.series, strict=True):
        assert [p.read_bytes() for p in sa.paths] == [p.read_bytes() for p in sb.paths]


def test_tilted_series_is_not_axial() -> None:
    phantom = make_ct_phantom(4, size="small", levels=("T10", "T12"), tilt_deg=15.0)
    datasets = series_datasets(phantom, study_header(phantom))
    first = datasets[0]
    orientation = np.asarray(first.ImageOrientationPatient, float)
    assert orientation[5] == pytest.approx(np.sin(np.radians(15.0)))
    assert float(first.GantryDetectorTilt) == 15.0
    # Positions step along the table (z) while the planes are tilted: not perpendicular.
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for ds in datasets])
    steps = np.diff(positions, axis=0)
    np.testing.assert_allclose(steps[:, :2], 0.0, atol=1e-6)
    normal = np.cross(orientation[:3], orientation[3:])
    assert abs(steps[0] @ normal) / np.linalg.norm(steps[0]) < 0.99
    # The anatomy is sampled on the tilted planes: the truth is still on the bone.
    v = next(v for v in phantom.vertebrae if v.complete)
    assert sample(phantom, v.centre)[0] > 90.0
    with pytest.raises(ValueError):
        highdicom.get_volume_from_series(datasets)


def test_gapped_series_misses_positions(chest: CtPhantom) -> None:
    datasets = series_datasets(chest, study_header(chest), missing=[30, 31])
    assert len(datasets) == chest.grid.slices - 2
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
    steps = -np.diff(z)
    assert steps.max() == pytest.approx(3 * chest.grid.slice_spacing, abs=1e-4)
    assert np.sum(np.abs(steps - chest.grid.slice_spacing) > 1e-4) == 1
    with pytest.raises(ValueError):
        highdicom.get_volume_from_series(datasets)


def test_head_ct_has_no_spine(tmp_path: Path) -> None:
    phantom = make_head_phantom(2)
    assert phantom.body_part == "HEAD" and phantom.vertebrae == ()
    assert np.isnan(phantom.centreline).all()
    assert phantom.hu.max() > 700  # skull
    files = write_ct_study(tmp_path, phantom, distractors=False)
    ds = pydicom.dcmread(files.role("axial").paths[0])
    assert ds.BodyPartExamined == "HEAD" and ds.StudyDescription == "CT HEAD"
