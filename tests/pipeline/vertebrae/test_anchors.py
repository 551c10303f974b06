"""Anchors of the Pisov detector: shapes, encoding, target assignment."""

from __future__ import annotations

import math

import pytest
import torch

from spinexr.pipeline.vertebrae.anchors import (
    ANCHOR_RATIOS,
    ANCHOR_SCALES_MM,
    PAPER_SCALES_MM,
    anchor_ious,
    anchor_shapes,
    assign_targets,
    decode,
    encode,
    keypoint_boxes,
    pixel_centres,
)


def test_shapes_are_the_papers_scales_and_ratios_in_pixels() -> None:
    shapes = anchor_shapes(2.0)
    assert ANCHOR_SCALES_MM[:4] == PAPER_SCALES_MM == (17.0, 23.0, 28.0, 35.0)
    assert ANCHOR_RATIOS == (0.8, 1.1, 1.3, 2.0)
    assert shapes.shape == (24, 2)
    for i, (s, r) in enumerate((s, r) for s in ANCHOR_SCALES_MM for r in ANCHOR_RATIOS):
        w, h = shapes[i].tolist()
        assert w / h == pytest.approx(r, rel=1e-5)  # ratio = width / height
        assert math.sqrt(w * h) * 2.0 == pytest.approx(s, rel=1e-5)
    assert torch.allclose(anchor_shapes(1.0), 2 * shapes)
    with pytest.raises(ValueError):
        anchor_shapes(0.0)


def test_encode_decode_round_trip_and_known_values() -> None:
    gen = torch.Generator().manual_seed(0)
    kp = torch.rand((50, 6, 2), generator=gen) * 100
    centres = torch.rand((50, 2), generator=gen) * 100
    shapes = torch.rand((50, 2), generator=gen) * 20 + 5
    e = encode(kp, centres, shapes)
    assert torch.allclose(decode(e, centres, shapes), kp, atol=1e-4)
    one = encode(
        torch.tensor([[[12.0, 7.0]] * 6]), torch.tensor([[10.0, 10.0]]), torch.tensor([[4.0, 6.0]])
    )
    assert one[0, 0].tolist() == pytest.approx([0.5, -0.5])


def test_keypoint_box_is_axis_aligned_extent() -> None:
    kp = torch.tensor([[3.0, 1.0], [2.0, 9.0], [5.0, 0.5], [6.0, 8.0], [8.0, 2.0], [7.5, 10.0]])
    assert keypoint_boxes(kp).tolist() == [2.0, 0.5, 8.0, 10.0]


def test_iou_of_an_anchor_with_its_own_box_is_one() -> None:
    shapes = anchor_shapes(2.0)
    w, h = shapes[5].tolist()
    box = torch.tensor([20.5 - w / 2, 15.5 - h / 2, 20.5 + w / 2, 15.5 + h / 2])
    iou = anchor_ious(box, shapes, 80, 80)
    assert iou[5, 15, 20] == pytest.approx(1.0, abs=1e-5)
    assert float(iou.max()) == pytest.approx(1.0, abs=1e-5)
    assert float(iou[:, 79, 79].max()) == 0.0


def test_assignment_matches_the_brute_force_iou() -> None:
    shapes = anchor_shapes(2.0)
    boxes = torch.tensor([[10.0, 10.0, 30.0, 24.0], [12.0, 30.0, 34.0, 42.0]])
    t = assign_targets(boxes, shapes, 60, 50)
    full = torch.stack([anchor_ious(b, shapes, 60, 50) for b in boxes])
    best, arg = full.max(dim=0)
    expected = best > 0.5
    assert torch.equal(t.objectness.bool() | expected, t.objectness.bool())  # all IoU > 0.5 in
    extra = t.objectness.bool() & ~expected
    assert int(extra.sum()) <= len(boxes)  # only the forced best anchors may be added
    assert torch.equal(t.matched[expected], arg[expected])
    assert torch.all(t.matched[~t.objectness.bool()] == -1)
    for g in range(len(boxes)):
        assert int((t.matched == g).sum()) >= 5  # plenty of positives per object
    # Anchors between the thresholds are left out of the loss, the rest count.
    band = (best > 0.4) & ~t.objectness.bool()
    assert torch.equal(t.weight == 0, band)
    assert int(band.sum()) > 0
    paper = assign_targets(boxes, shapes, 60, 50, negative_iou=0.5)
    assert torch.all(paper.weight == 1)


def test_every_box_gets_its_best_anchor_even_below_the_threshold() -> None:
    shapes = anchor_shapes(2.0)
    flat = torch.tensor([[10.0, 20.0, 40.0, 22.0]])  # 60 × 4 mm: no anchor reaches 0.5
    assert float(anchor_ious(flat[0], shapes, 40, 50).max()) < 0.5
    t = assign_targets(flat, shapes, 40, 50)
    assert int(t.objectness.sum()) == 1
    a, y, x = torch.nonzero(t.objectness, as_tuple=True)
    assert t.matched[a, y, x].tolist() == [0]
    assert 10 <= float(x[0]) <= 40 and abs(float(y[0]) - 21) <= 3  # IoU ties: anchor covers box


def test_no_objects_no_positives_and_partial_objects_are_ignored() -> None:
    shapes = anchor_shapes(2.0)
    empty = assign_targets(torch.zeros((0, 4)), shapes, 32, 32)
    assert int(empty.objectness.sum()) == 0 and torch.all(empty.matched == -1)
    partial = torch.tensor([[-10.0, 5.0, 8.0, 17.0]])
    t = assign_targets(torch.zeros((0, 4)), shapes, 32, 32, ignore_boxes=partial)
    assert int((t.weight == 0).sum()) > 0
    assert float(t.weight[:, 28:, 28:].min()) == 1.0
    # A positive is never ignored.
    both = assign_targets(partial, shapes, 32, 32, ignore_boxes=partial)
    assert torch.all(both.weight[both.objectness.bool()] == 1)


def test_pixel_centres_have_the_corner_origin() -> None:
    c = pixel_centres(torch.tensor([0, 3]), torch.tensor([2, 5]))
    assert c.tolist() == [[2.5, 0.5], [5.5, 3.5]]


def test_the_sacrum_scale_gives_a_tilted_s1_box_positives() -> None:
    s1 = torch.tensor([[10.0, 10.0, 43.0, 32.5]])  # 66 x 45 mm at 2 mm per pixel
    paper = assign_targets(s1, anchor_shapes(2.0, PAPER_SCALES_MM), 50, 60)
    assert int(paper.objectness.sum()) == 1  # only the forced best anchor
    ours = assign_targets(s1, anchor_shapes(2.0), 50, 60)
    assert int(ours.objectness.sum()) >= 20
