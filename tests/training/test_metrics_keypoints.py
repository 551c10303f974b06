"""Keypoint metrics on hand-built annotations and predictions with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spinexr.pipeline.vertebrae.genant import GenantCutoffs, genant_index, heights
from spinexr.training.metrics import auroc
from spinexr.training.metrics.keypoints import (
    ImageKeypoints,
    bland_altman,
    bootstrap_statistics,
    grade_confusion,
    keypoint_metrics,
    match_images,
    match_vertebrae,
    ratio_statistic,
    weighted_auroc,
    weighted_kappa,
)


def vertebra(
    cx: float, cy: float, *, g: float = 1.0, w: float = 30.0, h: float = 20.0, dm: float = 0.0
) -> np.ndarray:
    """Six keypoints centred on (cx, cy): anterior height h·g (a wedge when g < 1).

    ``dm`` lengthens the middle height (for height errors); the centre stays at (cx, cy).
    """
    ha, hm, hp = h * g, h + dm, h
    xs = (cx - w / 2, cx, cx + w / 2)
    out = []
    for x, hh in zip(xs, (ha, hm, hp), strict=True):
        out += [(x, cy - hh / 2), (x, cy + hh / 2)]
    return np.array(out, dtype=np.float64)


def column(n: int, *, x: float = 100.0, top: float = 50.0, pitch: float = 30.0) -> list:
    return [vertebra(x, top + i * pitch) for i in range(n)]


def image(
    truth: list,
    predicted: list,
    *,
    study: str = "s1",
    name: str = "i1",
    spacing: tuple[float, float] | None = (0.5, 0.5),
    truth_levels: tuple = (),
    predicted_levels: tuple | None = None,
) -> ImageKeypoints:
    return ImageKeypoints(
        study=study,
        image=name,
        spacing_mm=spacing,
        truth=np.array(truth),
        predicted=np.array(predicted),
        scores=np.full(len(predicted), 0.9),
        truth_levels=truth_levels,
        predicted_levels=predicted_levels,
    )


def test_vertebra_helper_has_the_intended_genant_index() -> None:
    kp = vertebra(0, 0, g=0.7)
    assert genant_index(heights(kp)) == pytest.approx(0.7)
    assert kp.mean(axis=0) == pytest.approx([0.0, 0.0])


def test_matching_is_one_to_one_and_needs_iou_above_half() -> None:
    truth = column(3)
    # two predictions on vertebra 0 (one exact, one slightly off), one on vertebra 2, one
    # shifted half a box down from vertebra 1 (IoU 1/3: not a match)
    pred = [truth[0] + np.array([1.0, 0.0]), truth[0], truth[2], truth[1] + np.array([0.0, 10.0])]
    pairs = match_vertebrae(np.array(truth), np.array(pred))
    assert pairs == [(0, 1), (2, 2)]  # the better IoU wins vertebra 0
    assert match_vertebrae(np.array(truth), np.zeros((0, 6, 2))) == []
    assert match_vertebrae(np.zeros((0, 6, 2)), np.array(pred)) == []


def test_missed_vertebra_lowers_recall_false_positive_lowers_precision() -> None:
    truth = column(4)
    pred = [truth[0], truth[1], truth[2], vertebra(400, 400)]  # vertebra 3 missed, one FP
    m = keypoint_metrics([image(truth, pred)], n_resamples=0)
    assert m.detection["recall"].point == pytest.approx(3 / 4)
    assert m.detection["precision"].point == pytest.approx(3 / 4)
    assert m.counts["matched_vertebrae"] == 3
    assert m.counts["predicted_vertebrae"] == 4
    perfect = keypoint_metrics([image(truth, truth)], n_resamples=0)
    assert perfect.detection["recall"].point == 1.0
    assert perfect.detection["precision"].point == 1.0
    assert perfect.localisation["centre_error_mm"].point == 0.0


def test_known_centre_offsets_give_the_error_in_mm() -> None:
    truth = column(2)
    # offsets (3, 4) px and (0, 2) px; rows 0.5 mm, columns 0.2 mm
    pred = [truth[0] + np.array([3.0, 4.0]), truth[1] + np.array([0.0, 2.0])]
    m = keypoint_metrics([image(truth, pred, spacing=(0.5, 0.2))], n_resamples=0)
    e1 = math.hypot(3 * 0.2, 4 * 0.5)
    e2 = 2 * 0.5
    assert m.localisation["centre_error_mm"].point == pytest.approx((e1 + e2) / 2)
    assert m.centre_error_median_mm == pytest.approx((e1 + e2) / 2)
    assert m.centre_error_sd_mm == pytest.approx(np.std([e1, e2], ddof=1))


def test_heights_and_centres_measured_elsewhere_replace_the_2d_ones() -> None:
    """On CT, heights and centres come from 3D: they override the 2D keypoints' figures."""
    truth, pred = column(2), column(2)  # identical in 2D
    base = image(truth, pred)
    three_d = ImageKeypoints(
        study="s1",
        image="i1",
        spacing_mm=(0.5, 0.5),
        truth=base.truth,
        predicted=base.predicted,
        scores=base.scores,
        truth_heights_mm=np.array([[10.0, 10.0, 10.0], [7.0, 10.0, 10.0]]),
        predicted_heights_mm=np.array([[10.0, 10.0, 10.0], [10.0, 10.0, 10.0]]),
        truth_centres_mm=np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 30.0]]),
        predicted_centres_mm=np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 30.0]]),
    )
    m = keypoint_metrics([three_d], n_resamples=0)
    assert m.localisation["centre_error_mm"].point == pytest.approx((3.0 + 0.0) / 2)
    assert m.height_mae_mm["overall"].point == pytest.approx(0.5)  # 1 of 6 heights off by 3 mm
    table = match_images([three_d])
    assert table.truth_g.tolist() == pytest.approx([1.0, 0.7])
    with pytest.raises(ValueError, match="three heights"):
        ImageKeypoints(
            study="s",
            image="i",
            spacing_mm=None,
            truth=base.truth,
            predicted=base.predicted,
            scores=base.scores,
            truth_heights_mm=np.zeros((2, 2)),
        )


def test_images_without_spacing_count_for_detection_not_for_mm() -> None:
    truth = column(3)
    with_mm = image(truth, [t + np.array([2.0, 0.0]) for t in truth], name="a", spacing=(0.5, 0.5))
    no_mm = image(truth, [truth[0] + np.array([5.0, 0.0])], name="b", spacing=None)  # misses two
    m = keypoint_metrics([with_mm, no_mm], n_resamples=0)
    assert m.counts["images_without_spacing"] == 1
    assert m.counts["matched_vertebrae"] == 4
    assert m.counts["matched_with_spacing"] == 3
    assert m.detection["recall"].point == pytest.approx(4 / 6)
    assert m.localisation["centre_error_mm"].point == pytest.approx(1.0)  # 2 px × 0.5 mm only
    assert m.bland_altman["overall"].n == 9
    assert m.height_mae_mm["overall"].point == pytest.approx(0.0)


def test_height_errors_and_bland_altman() -> None:
    truth = column(2)
    pred = [vertebra(100, 50, dm=2.0), vertebra(100, 80, dm=-2.0)]  # middle ±2 px
    m = keypoint_metrics([image(truth, pred, spacing=(0.5, 0.5))], n_resamples=0)
    assert m.height_mae_mm["middle"].point == pytest.approx(1.0)
    assert m.height_mae_mm["anterior"].point == pytest.approx(0.0)
    assert m.height_mae_mm["overall"].point == pytest.approx(1 / 3)
    ba = m.bland_altman["middle"]
    assert ba.bias == pytest.approx(0.0)
    assert ba.sd == pytest.approx(math.sqrt(2.0))
    assert (ba.lower, ba.upper) == pytest.approx((-1.96 * math.sqrt(2), 1.96 * math.sqrt(2)))
    one = bland_altman([3.0, 5.0, 7.0, math.nan], [2.0, 4.0, 7.0, 1.0])
    assert one.n == 3
    assert one.bias == pytest.approx(2 / 3)
    assert one.sd == pytest.approx(np.std([1, 1, 0], ddof=1))


def _fracture_set(pred_g: dict[int, float] | None = None) -> list[ImageKeypoints]:
    """Four studies of four vertebrae; study 0 has G 0.65 and study 1 G 0.78 at vertebra 1."""
    truth_g = {0: {1: 0.65}, 1: {1: 0.78}, 2: {}, 3: {}}
    out = []
    for s in range(4):
        gs = [truth_g[s].get(i, 1.0) for i in range(4)]
        truth = [vertebra(100, 50 + 30 * i, g=g) for i, g in enumerate(gs)]
        p = gs if pred_g is None else [pred_g.get(s * 4 + i, 1.0) for i in range(4)]
        predicted = [vertebra(100, 50 + 30 * i, g=g) for i, g in enumerate(p)]
        out.append(image(truth, predicted, study=f"s{s}", name=f"i{s}"))
    return out


def test_fracture_predicted_at_the_right_g_gives_auc_one() -> None:
    m = keypoint_metrics(_fracture_set(), n_resamples=200, seed=1)
    for task in ("at_least_mild", "at_least_moderate"):
        for level in ("vertebra", "patient"):
            b = m.fractures[task][level]
            assert b.auroc.point == pytest.approx(1.0), (task, level)
            assert b.sensitivity.point == 1.0
            assert b.specificity.point == 1.0
    mild_v = m.fractures["at_least_mild"]["vertebra"]
    assert (mild_v.positives, mild_v.negatives) == (2, 14)
    mod_p = m.fractures["at_least_moderate"]["patient"]
    assert (mod_p.positives, mod_p.negatives, mod_p.tp, mod_p.tn) == (1, 3, 1, 3)
    assert m.counts["patients"] == 4
    assert m.counts["annotated_fractured_vertebrae"] == 1
    # grades with the project's cut-offs: 0.65 moderate, 0.78 mild, all right
    assert m.grade_accuracy == 1.0
    assert m.grade_confusion[2, 2] == 1 and m.grade_confusion[1, 1] == 1
    assert m.kappa_quadratic == pytest.approx(1.0)


def test_a_missed_fracture_lowers_sensitivity_and_auc() -> None:
    # study 0's fracture predicted normal (G 1), and a normal vertebra of study 2 at G 0.70
    m = keypoint_metrics(_fracture_set({1: 1.0, 9: 0.70}), n_resamples=0)
    b = m.fractures["at_least_moderate"]["vertebra"]
    assert (b.tp, b.fn, b.fp) == (0, 1, 1)
    assert b.sensitivity.point == 0.0
    assert b.specificity.point == pytest.approx(14 / 15)
    assert b.auroc.point < 0.5
    p = m.fractures["at_least_moderate"]["patient"]
    assert (p.tp, p.fn, p.fp, p.tn) == (0, 1, 1, 2)


def test_patient_level_uses_the_lowest_g_of_all_images_of_a_study() -> None:
    a = image([vertebra(100, 50, g=0.9)], [vertebra(100, 50, g=0.9)], study="s", name="a")
    b = image([vertebra(100, 50, g=0.7)], [], study="s", name="b")  # missed fracture
    c = image([vertebra(100, 50)], [vertebra(100, 50, g=0.72)], study="t", name="c")
    t = match_images([a, b, c])
    assert t.studies == ("s", "t")
    m = keypoint_metrics([a, b, c], n_resamples=0)
    p = m.fractures["at_least_moderate"]["patient"]
    # s: truth 0.70 (fractured), predicted 0.90 (normal); t: truth 1.0, predicted 0.72
    assert (p.tp, p.fn, p.fp, p.tn) == (0, 1, 1, 0)
    assert p.auroc.point == 0.0


def test_bootstrap_intervals_contain_the_point_and_are_reproducible() -> None:
    rng = np.random.default_rng(3)
    images = []
    for s in range(12):
        truth = column(5)
        keep = [
            t + rng.normal(0, 1.5, size=2)
            for t, k in zip(truth, rng.random(5), strict=True)
            if k > 0.15
        ]
        images.append(image(truth, keep, study=f"s{s}", name=f"i{s}"))
    m1 = keypoint_metrics(images, n_resamples=300, seed=7)
    m2 = keypoint_metrics(images, n_resamples=300, seed=7)
    for key in ("recall", "precision"):
        iv = m1.detection[key]
        assert iv.low <= iv.point <= iv.high, key
        assert iv == m2.detection[key]
    iv = m1.localisation["centre_error_mm"]
    assert iv.low < iv.point < iv.high
    assert iv.n_resamples_used == 300
    assert m1.height_mae_mm["overall"].low <= m1.height_mae_mm["overall"].point


def test_study_bootstrap_matches_a_loop_over_resampled_studies() -> None:
    study = np.array([0, 0, 1, 2, 2, 2, 3])
    hit = np.array([1, 0, 1, 1, 1, 0, 0], dtype=float)
    n_studies, n_res, seed = 4, 200, 5
    got = bootstrap_statistics(
        {"recall": ratio_statistic(study, hit, np.ones(7), n_studies)},
        n_studies,
        n_resamples=n_res,
        seed=seed,
    )["recall"]
    draws = np.random.default_rng(seed).integers(0, n_studies, size=(n_res, n_studies))
    values = []
    for row in draws:
        idx = np.concatenate([np.flatnonzero(study == s) for s in row])
        values.append(hit[idx].mean())
    low, high = np.quantile(values, [0.025, 0.975])
    assert got.point == pytest.approx(hit.mean())
    assert got.low == pytest.approx(low)
    assert got.high == pytest.approx(high)


def test_weighted_auroc_with_unit_weights_is_the_auroc() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(40) < 0.4
    s = np.round(rng.normal(y * 1.0, 1.0), 1)  # ties
    assert weighted_auroc(y, s, np.ones((1, 40)))[0] == pytest.approx(auroc(y, s))
    w = rng.integers(0, 3, size=(1, 40)).astype(float)
    rep = np.repeat(np.arange(40), w[0].astype(int))
    assert weighted_auroc(y, s, w)[0] == pytest.approx(auroc(y[rep], s[rep]))
    assert math.isnan(weighted_auroc(np.ones(3, bool), np.arange(3.0), np.ones((1, 3)))[0])


def test_kappa_and_grade_confusion() -> None:
    assert weighted_kappa([[20, 5], [10, 15]], "none") == pytest.approx(0.4)
    assert weighted_kappa([[20, 5], [10, 15]], "quadratic") == pytest.approx(0.4)
    assert weighted_kappa(np.eye(4) * 3) == pytest.approx(1.0)
    assert math.isnan(weighted_kappa([[5, 0], [0, 0]]))
    c = grade_confusion([0.9, 0.78, 0.7, 0.5], [0.9, 0.7, 0.7, 0.62], GenantCutoffs())
    assert c.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    # off by one grade costs less with quadratic than with no weights
    assert weighted_kappa(c, "quadratic") > weighted_kappa(c, "none")


def test_level_accuracy_counts_unestablished_levels_as_wrong() -> None:
    truth = column(3)
    named = image(
        truth,
        truth,
        name="a",
        truth_levels=("L3", "L4", "L5"),
        predicted_levels=("L3", "L4", "L4"),
    )
    unnamed = image(
        truth, truth, name="b", truth_levels=("L3", None, "L5"), predicted_levels=(None,) * 3
    )
    lv = keypoint_metrics([named, unnamed], n_resamples=0).levels
    assert lv is not None
    assert lv["matched_with_annotated_level"] == 5
    assert lv["level_established"] == 3
    assert lv["correct"] == 2
    assert lv["accuracy"] == pytest.approx(2 / 5)
    assert lv["accuracy_where_established"] == pytest.approx(2 / 3)
    assert lv["images_with_levels"] == 1
    assert keypoint_metrics([image(truth, truth)], n_resamples=0).levels is None


def test_image_keypoints_are_validated() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 6, 2\)"):
        image([np.zeros((5, 2))], [])
    with pytest.raises(ValueError, match="2 predictions but 1 scores"):
        ImageKeypoints("s", "i", None, np.zeros((0, 6, 2)), np.zeros((2, 6, 2)), [0.5])
    with pytest.raises(ValueError, match="spacing"):
        image([], [], spacing=(0.0, 1.0))
    with pytest.raises(ValueError, match="levels"):
        image(column(2), [], truth_levels=("L1",))
    with pytest.raises(ValueError, match="appears twice"):
        match_images([image([], []), image([], [])])
    empty = keypoint_metrics([image([], [])], n_resamples=10)
    assert math.isnan(empty.detection["recall"].point)
    assert empty.detection["recall"].n_resamples_used == 0
