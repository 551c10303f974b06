"""Detection AP@0.5 (101-point): hand-computed cases and agreement with pycocotools."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spinexr.training.metrics import (
    ImageBoxes,
    ImageDetections,
    average_precision,
    coco_iou,
)
from spinexr.training.metrics.cocoref import pycocotools_ap

EMPTY = np.zeros((0, 4))
NONE = np.zeros(0, dtype=int)


def gt(image_id: str, boxes: list[list[float]], labels: list[int]) -> ImageBoxes:
    return ImageBoxes(image_id, np.array(boxes, dtype=float).reshape(-1, 4), np.array(labels))


def det(
    image_id: str, boxes: list[list[float]], scores: list[float], labels: list[int]
) -> ImageDetections:
    return ImageDetections(
        image_id, np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores), np.array(labels)
    )


def both(g: list[ImageBoxes], d: list[ImageDetections], **kw: int) -> tuple[np.ndarray, np.ndarray]:
    ours = average_precision(g, d, **kw).per_class
    ref = pycocotools_ap(g, d, **kw)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours, ref, atol=1e-6, equal_nan=True)
    return ours, ref


# --- IoU ---------------------------------------------------------------------------------------


def test_coco_iou_hand_values() -> None:
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    others = np.array(
        [
            [5.0, 0.0, 15.0, 10.0],  # overlap 5×10 = 50, union 150 → 1/3
            [0.0, 0.0, 10.0, 5.0],  # inside: 50 / 100 → 0.5
            [10.0, 0.0, 20.0, 10.0],  # touching edge (no +1) → 0
            [0.0, 0.0, 10.0, 10.0],  # identical → 1
        ]
    )
    np.testing.assert_allclose(coco_iou(a, others)[0], [1 / 3, 0.5, 0.0, 1.0], atol=1e-15)
    assert coco_iou(a, EMPTY).shape == (1, 0)


# --- hand-computed AP ---------------------------------------------------------------------------


def test_ap_two_gt_three_detections_by_hand() -> None:
    # Image "a": 2 GT boxes of class 0. Detections in score order:
    #   0.9 on GT1 (TP), 0.8 on the normal image "n" (FP), 0.7 on GT2 (TP).
    # cum TP 1,1,2; cum FP 0,1,1 → recall .5,.5,1; precision 1, 1/2, 2/3; envelope 1, 2/3, 2/3.
    # Recall thresholds 0.00..0.50 (51 of them) → first index with recall >= r is 0 → 1.
    # Thresholds 0.51..1.00 (50) → index 2 → 2/3.  AP = (51·1 + 50·2/3) / 101 = 0.834983...
    g = [gt("a", [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0]), gt("n", [], [])]
    d = [
        det("a", [[0, 0, 10, 10], [21, 21, 30, 30]], [0.9, 0.7], [0, 0]),
        det("n", [[5, 5, 15, 15]], [0.8], [0]),
    ]
    r = average_precision(g, d)
    expected = (51 + 50 * 2 / 3) / 101
    assert r.per_class[0] == pytest.approx(expected, abs=1e-12)
    assert np.isnan(r.per_class[1:]).all()
    assert r.mean == pytest.approx(expected, abs=1e-12)
    assert r.num_gt.tolist() == [2, 0, 0, 0, 0, 0, 0]
    assert r.num_det.tolist() == [3, 0, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(r.curves[0].recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(r.curves[0].precision, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(r.curves[0].scores, [0.9, 0.8, 0.7])
    assert r.precision[0, 50] == pytest.approx(1.0) and r.precision[0, 51] == pytest.approx(2 / 3)
    both(g, d)
    # Without the false positive on the normal image every threshold reads precision 1.
    assert average_precision(g, d[:1]).per_class[0] == pytest.approx(1.0, abs=1e-12)


def test_iou_of_exactly_half_matches_and_duplicates_are_false_positives() -> None:
    # Detection 1 covers half of GT (IoU 0.5 → TP); detection 2 hits the same GT again (FP).
    # precision 1, 1/2 with recall 1, 1 → AP = 1.
    g = [gt("a", [[0, 0, 10, 10]], [3])]
    d = [det("a", [[0, 0, 10, 5], [0, 0, 10, 10]], [0.9, 0.8], [3, 3])]
    r = average_precision(g, d)
    assert r.per_class[3] == pytest.approx(1.0, abs=1e-12)
    # Swap the scores: the exact box now comes first, the half box is a duplicate (FP) → still 1.
    d2 = [det("a", [[0, 0, 10, 5], [0, 0, 10, 10]], [0.8, 0.9], [3, 3])]
    assert average_precision(g, d2).per_class[3] == pytest.approx(1.0, abs=1e-12)
    # Just under half is a miss: AP 0.
    d3 = [det("a", [[0, 0, 10, 4.999]], [0.9], [3])]
    assert average_precision(g, d3).per_class[3] == 0.0
    both(g, d)
    both(g, d3)


def test_wrong_class_is_not_a_match_and_class_without_detections_scores_zero() -> None:
    g = [gt("a", [[0, 0, 10, 10]], [1]), gt("b", [[0, 0, 10, 10]], [2])]
    d = [det("a", [[0, 0, 10, 10]], [0.9], [2])]  # class 2 box on image a; nothing for class 1
    r = average_precision(g, d)
    assert r.per_class[1] == 0.0
    assert r.per_class[2] == 0.0
    assert r.mean == 0.0
    both(g, d)


def test_equal_iou_goes_to_the_later_ground_truth_box() -> None:
    # GT A = [0,0,10,10], B = [2,0,12,10]. Detection 1 = [1,0,11,10] has IoU 90/110 with both;
    # COCOeval keeps the later one on ties, so it takes B. Detection 2 = [4,0,14,10] overlaps B
    # (80/120) but A only 60/140 < 0.5 → FP. TP, FP: recall .5, .5 → AP = 51/101.
    g = [gt("a", [[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])]
    d = [det("a", [[1, 0, 11, 10], [4, 0, 14, 10]], [0.9, 0.8], [0, 0])]
    r = average_precision(g, d)
    assert r.per_class[0] == pytest.approx(51 / 101, abs=1e-12)
    both(g, d)


@pytest.mark.parametrize(("first", "expected"), [("x", 0.5), ("y", 1.0)])
def test_tied_scores_on_different_images_follow_ground_truth_order(
    first: str, expected: float
) -> None:
    # Image x: an FP at 0.5. Image y: a TP at 0.5 (the only GT). With x first: FP, TP →
    # precision 0, 1/2, recall 0, 1; envelope 1/2, 1/2 → AP 0.5. With y first: TP, FP → AP 1.
    images = {
        "x": (gt("x", [], []), det("x", [[0, 0, 5, 5]], [0.5], [0])),
        "y": (gt("y", [[0, 0, 5, 5]], [0]), det("y", [[0, 0, 5, 5]], [0.5], [0])),
    }
    order = [first, "y" if first == "x" else "x"]
    g = [images[k][0] for k in order]
    d = [images[k][1] for k in order]
    assert average_precision(g, d).per_class[0] == pytest.approx(expected, abs=1e-12)
    both(g, d)


def test_max_detections_applies_per_image_and_class() -> None:
    # 100 high-scoring misses and, ranked 101st, the only hit; plus 5 class-1 hits on the same
    # image, which do not count against class 0's cap.
    boxes = [[50 + i, 50, 60 + i, 60] for i in range(100)] + [[0, 0, 10, 10]]
    scores = [0.9 - i * 0.001 for i in range(100)] + [0.1]
    g = [
        gt(
            "a",
            [[0, 0, 10, 10]] + [[200 + 20 * k, 0, 210 + 20 * k, 10] for k in range(5)],
            [0] + [1] * 5,
        )
    ]
    hits1 = [[200 + 20 * k, 0, 210 + 20 * k, 10] for k in range(5)]
    d = [det("a", boxes + hits1, scores + [0.95] * 5, [0] * 101 + [1] * 5)]
    r = average_precision(g, d)
    assert r.per_class[0] == 0.0
    assert r.num_det[0] == 100
    assert r.per_class[1] == pytest.approx(1.0, abs=1e-12)
    # Allowing 101: the hit is TP number 1 after 100 FPs → precision 1/101 at recall 1.
    r101 = average_precision(g, d, max_detections=101)
    assert r101.per_class[0] == pytest.approx(1 / 101, abs=1e-12)
    both(g, d)
    both(g, d, max_detections=101)


def test_no_detections_at_all() -> None:
    g = [gt("a", [[0, 0, 10, 10]], [4]), gt("b", [], [])]
    r = average_precision(g, [])
    assert r.per_class[4] == 0.0
    assert np.isnan(np.delete(r.per_class, 4)).all()
    assert r.mean == 0.0
    both(g, [])


def test_no_ground_truth_at_all_gives_nan_mean() -> None:
    r = average_precision([gt("n", [], [])], [det("n", [[0, 0, 1, 1]], [0.3], [2])])
    assert np.isnan(r.per_class).all()
    assert math.isnan(r.mean)
    assert r.num_det[2] == 1


# --- random cross-check with pycocotools --------------------------------------------------------


def random_case(
    seed: int, n_images: int = 30, num_classes: int = 7
) -> tuple[list[ImageBoxes], list[ImageDetections]]:
    """GT classes 0..4 only (5 and 6 get detections but no GT: NaN); class 4 gets no
    detections (AP 0). ~40% normal images with FPs, one image with 130 class-0 detections,
    jittered duplicates of GT boxes (overlaps), scores rounded to 0.1 (many ties)."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for i in range(n_images):
        ng = 0 if rng.random() < 0.4 else int(rng.integers(1, 6))
        xy = rng.uniform(0, 80, (ng, 2))
        gb = np.hstack([xy, xy + rng.uniform(5, 30, (ng, 2))])
        gl = rng.integers(0, 5, ng)
        gts.append(ImageBoxes(f"img{i:03d}", gb, gl))
        nd = 130 if i == 2 else int(rng.integers(0, 15))
        db, dl = [], []
        for _ in range(nd):
            if ng and rng.random() < 0.6:
                k = int(rng.integers(ng))
                b = gb[k] + rng.normal(0, 3, 4)
                lab = int(gl[k]) if rng.random() < 0.8 else int(rng.integers(num_classes))
            else:
                xy0 = rng.uniform(0, 80, 2)
                b = np.r_[xy0, xy0 + rng.uniform(5, 30, 2)]
                lab = int(rng.integers(num_classes))
            if i == 2:
                lab = 0
            lab = 3 if lab == 4 else lab
            db.append(np.r_[np.minimum(b[:2], b[2:]), np.maximum(b[:2], b[2:])])
            dl.append(lab)
        dets.append(
            ImageDetections(
                f"img{i:03d}",
                np.array(db).reshape(-1, 4),
                np.round(rng.random(nd), 1),
                np.array(dl, dtype=int),
            )
        )
    return gts, dets


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_pycocotools_on_random_detections(seed: int) -> None:
    g, d = random_case(seed)
    ours, _ = both(g, d)
    assert np.isnan(ours[5:]).all()
    assert ours[4] == 0.0
    assert np.isfinite(ours[:4]).all() and (ours[:4] > 0).any()
    r = average_precision(g, d)
    assert r.num_det[0] >= 100  # the crowded image hit the cap
    assert r.mean == pytest.approx(np.nanmean(r.per_class), abs=1e-15)


# --- input errors ---------------------------------------------------------------------------------


def test_input_errors() -> None:
    g = [gt("a", [[0, 0, 10, 10]], [0])]
    with pytest.raises(ValueError, match="image z, which is not in the ground truth"):
        average_precision(g, [det("z", [], [], [])])
    with pytest.raises(ValueError, match="appears twice in the ground truth"):
        average_precision(g + g, [])
    with pytest.raises(ValueError, match="appears twice in the detections"):
        average_precision(g, [det("a", [], [], []), det("a", [], [], [])])
    with pytest.raises(ValueError, match=r"label 7 is not a class id 0\.\.6"):
        average_precision(g, [det("a", [[0, 0, 1, 1]], [0.5], [7])])
    with pytest.raises(ValueError, match="is not xyxy"):
        gt("a", [[10, 0, 0, 10]], [0])
    with pytest.raises(ValueError, match="1 boxes but 2 scores"):
        det("a", [[0, 0, 1, 1]], [0.5, 0.4], [0])
    with pytest.raises(ValueError, match="scores must be finite"):
        det("a", [[0, 0, 1, 1]], [float("nan")], [0])
    with pytest.raises(ValueError, match="labels must be integers"):
        ImageBoxes("a", np.zeros((1, 4)), np.array([0.5]))
    with pytest.raises(ValueError, match="shape"):
        ImageBoxes("a", np.zeros((2, 3)), np.array([0, 0]))
