"""Lateral keypoint phantoms: keypoints on the drawn end plates, fractures at the requested
Genant index, spacing variants, serving's display, determinism."""

from __future__ import annotations

import io
import time

import numpy as np
import pydicom
import pytest

from spinexr.pipeline.preprocess import prepare_image
from spinexr.pipeline.spacing import SpacingBasis, measurement_spacing
from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade
from spinexr.pipeline.vertebrae.objects import ObjectKind
from spinexr.training.phantoms.anatomy import REGIONS, Region, Spine, build_spine
from spinexr.training.phantoms.dicom import write
from spinexr.training.phantoms.fractures import (
    FRACTURE_TYPES,
    GRADE_BANDS,
    FractureError,
    FractureSpec,
    apply_fractures,
    compress,
    thoracic_wedging,
)
from spinexr.training.phantoms.keypoints import (
    body_keypoints,
    keypoint_genant_index,
    sacrum_keypoints,
)
from spinexr.training.phantoms.lesions import genant_index as side_genant_index
from spinexr.training.phantoms.shapes import ConvexPolygon
from spinexr.training.vertebrae.phantoms import (
    FIELD_OF_VIEW_MM,
    SPACING_VARIANTS,
    SpacingVariant,
    generate_keypoint_records,
    keypoint_phantom,
    spacing_variant_of,
)
from spinexr.training.vertebrae.records import KeypointRecord


def _spine(seed: int, region: Region = "LSPINE", size: tuple[int, int] = (512, 384)) -> Spine:
    return build_spine(np.random.default_rng(seed), "LAT", region, *size)


def _g(points: np.ndarray) -> float:
    return genant.genant_index(genant.heights(points))


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    write(ds, buf)
    buf.seek(0)
    return pydicom.dcmread(buf)


# --- keypoints ------------------------------------------------------------------------------


def test_keypoints_lie_on_the_drawn_outline() -> None:
    for seed in range(5):
        for region in REGIONS:
            spine = _spine(seed, region)
            for v in spine.vertebrae:
                kp = body_keypoints(v.body)
                y, x = kp[:, 1:2].astype(np.float32), kp[:, 0][None, :].astype(np.float32)
                # The signed distance of the body at each keypoint is zero: on the outline.
                d = np.diag(v.body.sdf(y, x))
                assert np.abs(d).max() < 1e-3, (v.name, d)
                # Anterior (smaller x) left of middle left of posterior; tops above bottoms.
                assert kp[0, 0] < kp[2, 0] < kp[4, 0]
                assert all(kp[2 * i, 1] < kp[2 * i + 1, 1] for i in range(3))


def test_sacrum_keypoints_follow_the_drawn_sacrum() -> None:
    from spinexr.training.phantoms.anatomy import sacrum_shapes

    spine = _spine(3, "LSPINE")
    kp = sacrum_keypoints(spine)
    assert kp is not None
    polygon = sacrum_shapes(spine)[0][0]
    assert isinstance(polygon, ConvexPolygon)
    # Plateau corners are the polygon's first two vertices; the bottoms lie on its sides one
    # vertebral height down.
    np.testing.assert_allclose(kp[0], polygon.points[0])
    np.testing.assert_allclose(kp[4], polygon.points[1])
    y, x = kp[:, 1:2].astype(np.float32), kp[:, 0][None, :].astype(np.float32)
    assert np.abs(np.diag(polygon.sdf(y, x))[[0, 1, 4, 5]]).max() < 1e-3
    h = spine.vertebrae[-1].height
    np.testing.assert_allclose(genant.heights(kp)[::2], (h, h), rtol=1e-6)
    np.testing.assert_allclose(kp[2], 0.5 * (kp[0] + kp[4]))
    assert sacrum_keypoints(_spine(3, "TSPINE")) is None


def test_keypoints_land_on_the_rendered_end_plate_edges() -> None:
    errors = []
    for seed in range(3):
        _, rec = keypoint_phantom(seed, size=(768, 576), spacing_variant="pixel")
        img = rec.display.astype(np.float64)
        for obj in rec.vertebrae:
            kp = obj.keypoints
            window = int(max(3, 0.2 * min(genant.heights(kp))))
            for i, (x, y) in enumerate(kp):
                c, r = int(np.floor(x)), int(np.floor(y))
                profile = img[r - window : r + window + 1, c - 1 : c + 2].mean(axis=1)
                step = np.diff(profile)  # step[j] is the edge between rows r-w+j and r-w+j+1
                j = int(np.argmax(step) if i % 2 == 0 else np.argmin(step))
                errors.append((r - window + j + 1) - y)
    signed = np.array(errors)
    assert len(signed) > 100
    # The brightness edge of every end plate is within a pixel and a half of its keypoint,
    # with no bias (image coordinates put the first pixel's centre at 0.5).
    assert np.abs(signed).max() < 1.5, np.abs(signed).max()
    assert abs(signed.mean()) < 0.2, signed.mean()


def test_keypoint_genant_matches_side_heights_on_normal_bodies() -> None:
    diffs = [
        keypoint_genant_index(v.body) - side_genant_index(v.body)
        for seed in range(40)
        for region in REGIONS
        for v in _spine(seed, region).vertebrae
    ]
    # Normal bodies: the two agree on average within 0.01 (the corner columns sit a corner
    # radius inside the sides, where the slight end-plate concavity has begun).
    assert abs(float(np.mean(diffs))) < 0.01
    assert float(np.percentile(np.abs(diffs), 95)) < 0.015


# --- fractures ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FRACTURE_TYPES)
@pytest.mark.parametrize("grade", list(GenantGrade))
def test_fracture_reaches_the_requested_genant_index_and_grade(
    kind: Deformity, grade: GenantGrade
) -> None:
    lo, hi = GRADE_BANDS[grade]
    for seed, g in enumerate(np.linspace(lo, hi, 4)):
        spine = _spine(seed, "SPINE")
        k = spine.visible_indices()[seed % len(spine.visible_indices())]
        before = spine.vertebrae[k].body
        above_before = [v.body for v in spine.vertebrae[:k]]
        below_before = [v.body for v in spine.vertebrae[k + 1 :]]
        share = 0.2 if (kind is Deformity.CRUSH and seed % 2) else 0.0
        made = compress(spine, FractureSpec(k, float(g), kind, share))
        body = spine.vertebrae[k].body
        kp = body_keypoints(body)
        assert abs(_g(kp) - g) < 0.01
        assert abs(made.genant - g) < 1e-4
        assert genant.grade(_g(kp)) is grade is made.grade
        expected = Deformity.NONE if grade is GenantGrade.NORMAL else kind
        assert genant.deformity(genant.heights(kp)) is expected
        # The inferior end plate stays; vertebrae below stay; those above move down only.
        assert (body.bot_l, body.bot_r, body.x0, body.x1) == (
            before.bot_l,
            before.bot_r,
            before.x0,
            before.x1,
        )
        assert [v.body for v in spine.vertebrae[k + 1 :]] == below_before
        moved = zip(spine.vertebrae[:k], above_before, strict=True)
        shifts = {round(v.body.top_l - b.top_l, 9) for v, b in moved}
        assert len(shifts) <= 1 and all(s >= 0 for s in shifts)
        # The column stays continuous: every disc keeps a positive height.
        for up, low in zip(spine.vertebrae, spine.vertebrae[1:], strict=False):
            assert low.body.top_l - up.body.bot_l > 0 and low.body.top_r - up.body.bot_r > 0


def test_fractures_only_on_fully_visible_vertebrae_of_lateral_views() -> None:
    spine = _spine(0)
    assert not spine.vertebrae[0].visible
    with pytest.raises(FractureError, match="not fully visible"):
        compress(spine, FractureSpec(0, 0.6, Deformity.WEDGE))
    ap = build_spine(np.random.default_rng(0), "AP", "LSPINE", 512, 384)
    with pytest.raises(FractureError, match="lateral"):
        compress(ap, FractureSpec(2, 0.6, Deformity.WEDGE))
    k = spine.visible_indices()[0]
    with pytest.raises(FractureError, match="two fractures"):
        apply_fractures(
            spine, [FractureSpec(k, 0.6, Deformity.WEDGE), FractureSpec(k, 0.7, Deformity.CRUSH)]
        )


def test_thoracic_wedging_stays_normal_near_the_mild_cut_off() -> None:
    spine = _spine(2, "TSPINE")
    wedged = thoracic_wedging(spine, np.random.default_rng(0), 1.0)
    assert len(wedged) >= 6
    for w in wedged:
        g = keypoint_genant_index(spine.vertebrae[w.index].body)
        assert 0.80 < g <= 0.88 and w.grade is GenantGrade.NORMAL
        assert spine.vertebrae[w.index].thoracic


# --- phantoms -------------------------------------------------------------------------------


def test_phantom_record_lists_visible_vertebrae_with_levels_and_requested_fractures() -> None:
    spine = _spine(11, "LSPINE")
    names = [v.name for v in spine.vertebrae]
    k = names.index("L1")
    _, rec = keypoint_phantom(
        11,
        region="LSPINE",
        fractures=[FractureSpec(k, 0.62, Deformity.BICONCAVE)],
        spacing_variant="pixel",
    )
    levels = [o.level for o in rec.vertebrae]
    assert levels == ["T12", "L1", "L2", "L3", "L4", "L5"]  # T11 is cut by the top border
    assert rec.sacrum is not None and rec.sacrum.kind is ObjectKind.SACRUM
    assert rec.sacrum.level == "S1"
    by_level = {o.level: o for o in rec.objects}
    assert abs(_g(by_level["L1"].keypoints) - 0.62) < 0.01
    assert all(_g(by_level[n].keypoints) > 0.9 for n in ("T12", "L2", "L3", "L4", "L5"))
    rows, cols = rec.display.shape
    for o in rec.objects:
        assert np.all((o.keypoints >= 0) & (o.keypoints <= [cols, rows]))
    # A thoracic view has no sacrum; its levels run on without gaps down to L1.
    _, thoracic = keypoint_phantom(11, region="TSPINE", fractures=[])
    assert thoracic.sacrum is None
    levels = [o.level for o in thoracic.vertebrae]
    assert levels[-1] == "L1" and levels[-2] == "T12" and len(levels) >= 10
    assert [int(n[1:]) for n in levels[:-1]] == list(range(int(levels[0][1:]), 13))


def test_display_is_what_serving_computes() -> None:
    for seed in range(4):
        ds, rec = keypoint_phantom(seed)
        prepared = prepare_image(_roundtrip(ds))
        assert rec.display.dtype == np.uint8
        np.testing.assert_array_equal(prepared.display, rec.display)
        assert rec.image == prepared.sop_instance_uid


@pytest.mark.parametrize("variant", SPACING_VARIANTS)
def test_spacing_variants_read_back_from_the_dicom(variant: SpacingVariant) -> None:
    for seed in range(3):
        ds, rec = keypoint_phantom(seed, spacing_variant=variant)
        back = _roundtrip(ds)
        assert spacing_variant_of(back) == variant
        read = measurement_spacing(back)
        if variant == "none":
            assert rec.spacing_mm is None and read.basis is SpacingBasis.NONE
            continue
        assert rec.spacing_mm is not None
        np.testing.assert_allclose(read.pair, rec.spacing_mm, rtol=1e-5)
        row_mm = rec.spacing_mm[0]
        assert (
            FIELD_OF_VIEW_MM[0] - 0.5 <= row_mm * rec.display.shape[0] <= FIELD_OF_VIEW_MM[1] + 0.5
        )
        if variant in ("imager", "both"):
            factor = float(back.EstimatedRadiographicMagnificationFactor)
            assert 1.05 <= factor <= 1.25
            imager = [float(v) for v in back.ImagerPixelSpacing]
            np.testing.assert_allclose(np.array(imager) / factor, rec.spacing_mm, rtol=1e-5)
        if variant == "imager":
            assert "PixelSpacing" not in back and read.basis is SpacingBasis.IMAGER_PIXEL_SPACING
        else:
            assert [float(v) for v in back.PixelSpacing] == list(rec.spacing_mm)


def _same(a: KeypointRecord, b: KeypointRecord) -> bool:
    return (
        np.array_equal(a.display, b.display)
        and (a.study, a.series, a.image, a.spacing_mm, a.split)
        == (b.study, b.series, b.image, b.spacing_mm, b.split)
        and len(a.objects) == len(b.objects)
        and all(
            x.level == y.level and np.array_equal(x.keypoints, y.keypoints)
            for x, y in zip(a.objects, b.objects, strict=True)
        )
    )


def test_generation_is_deterministic_by_seed() -> None:
    first = generate_keypoint_records(6, 5, size=(256, 192), test_fraction=0.5)
    again = generate_keypoint_records(6, 5, size=(256, 192), test_fraction=0.5)
    other = generate_keypoint_records(6, 6, size=(256, 192), test_fraction=0.5)
    assert all(_same(a, b) for a, b in zip(first, again, strict=True))
    assert not any(_same(a, b) for a, b in zip(first, other, strict=True))
    assert [r.split for r in first].count("test") == 3
    assert len({r.study for r in first}) == 6
    # The same seed draws the same anatomy and noise whatever the fractures.
    _, plain = keypoint_phantom(9, region="LSPINE", fractures=[])
    spine = _spine(0)
    k = [v.name for v in spine.vertebrae].index("L3")
    _, broken = keypoint_phantom(
        9, region="LSPINE", fractures=[FractureSpec(k, 0.5, Deformity.WEDGE)]
    )
    below = {o.level: o.keypoints for o in plain.objects if o.level in ("L4", "L5", "S1")}
    for o in broken.objects:
        if o.level in below:
            np.testing.assert_array_equal(o.keypoints, below[o.level])


def test_random_mix_has_fractures_of_every_grade_and_type() -> None:
    records = generate_keypoint_records(60, 1, size=(256, 192))
    grades: dict[GenantGrade, int] = dict.fromkeys(GenantGrade, 0)
    kinds: set[Deformity] = set()
    fractured_images = 0
    for rec in records:
        gs = [_g(o.keypoints) for o in rec.vertebrae]
        for o, g in zip(rec.vertebrae, gs, strict=True):
            grades[genant.grade(g)] += 1
            kinds.add(genant.deformity(genant.heights(o.keypoints)))
        fractured_images += any(g <= 0.80 for g in gs)
    assert 0.2 <= fractured_images / len(records) <= 0.6
    assert all(n > 0 for n in grades.values())
    assert kinds == {Deformity.NONE, *FRACTURE_TYPES}
    assert any(r.spacing_mm is None for r in records)
    assert len({r.spacing_mm for r in records if r.spacing_mm}) > 10


def test_a_small_phantom_is_fast() -> None:
    keypoint_phantom(0)
    start = time.perf_counter()
    for seed in range(5):
        keypoint_phantom(seed, size=(512, 384))
    per_image = (time.perf_counter() - start) / 5
    # About 0.05 s on one core; generous for a shared CI machine.
    assert per_image < 0.5, per_image
