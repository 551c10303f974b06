"""Benign and malignant fracture patterns in CT phantoms (issue 18's training data)."""

from __future__ import annotations

import numpy as np
import pytest

from spinexr.training.phantoms.ct import make_ct_phantom
from spinexr.training.phantoms.malignancy import (
    HARD_SHARE,
    Pattern,
    PatternFeatures,
    apply_pattern,
    draw_features,
)


@pytest.fixture(scope="module")
def phantom():
    return make_ct_phantom(4, levels=("T7", "T11"), fractures=(), labels=True, noise_sigma=10)


def _body(phantom, level: str) -> np.ndarray:
    i = next(k for k, v in enumerate(phantom.vertebrae) if v.level == level)
    return phantom.labels == i + 1


def test_features_mix_and_no_single_one_decides() -> None:
    rng = np.random.default_rng(0)
    malignant = [draw_features(Pattern.MALIGNANT, rng) for _ in range(400)]
    benign = [draw_features(Pattern.BENIGN, rng) for _ in range(400)]
    assert all(f.lytic or f.cortical_break or f.soft_tissue_mass for f in malignant)
    assert all(f.fracture_line or f.osteopenia for f in benign)
    # each malignant feature is missing in some malignant cases; osteopenia is in both kinds
    assert any(not f.lytic for f in malignant) and any(not f.soft_tissue_mass for f in malignant)
    assert any(f.osteopenia for f in malignant) and any(f.osteopenia for f in benign)
    hard = sum(f.hard for f in malignant + benign) / 800
    assert abs(hard - HARD_SHARE) < 0.05
    again = np.random.default_rng(0)
    assert [draw_features(Pattern.MALIGNANT, again) for _ in range(400)] == malignant


def test_malignant_features_destroy_bone_and_add_a_mass(phantom) -> None:
    features = PatternFeatures(
        Pattern.MALIGNANT, lytic=2, cortical_break=True, soft_tissue_mass=True, other_level=True
    )
    before = phantom.hu.copy()
    hu = apply_pattern(phantom, "T9", features, np.random.default_rng(1))
    assert np.array_equal(phantom.hu, before)  # the phantom is not changed
    body = _body(phantom, "T9")
    lucent_before = int((before[body] < 120).sum())
    lucent_after = int((hu[body] < 120).sum())
    assert lucent_after > lucent_before + 50
    neighbours = _body(phantom, "T8") | _body(phantom, "T10")
    assert int((hu[neighbours] < 120).sum()) > int((before[neighbours] < 120).sum())
    changed_soft = (np.abs(hu.astype(int) - before) > 20) & (phantom.labels == 0)
    assert changed_soft.sum() > 200  # the mass lies outside the bone


def test_a_benign_fracture_line_is_sclerotic_and_leaves_the_cortex_whole(phantom) -> None:
    features = PatternFeatures(Pattern.BENIGN, fracture_line=True)
    before = phantom.hu.copy()
    hu = apply_pattern(phantom, "T9", features, np.random.default_rng(2))
    body = _body(phantom, "T9")
    gained = (hu.astype(int) - before)[body]
    assert (gained > 150).sum() > 30 and (gained < -50).sum() == 0
    assert int((hu[body] < 120).sum()) <= int((before[body] < 120).sum())
    assert np.array_equal(hu[~body], before[~body])


def test_a_phantom_without_labels_is_refused() -> None:
    bare = make_ct_phantom(4, levels=("T7", "T9"), fractures=())
    with pytest.raises(ValueError, match="labels"):
        apply_pattern(bare, "T8", PatternFeatures(Pattern.BENIGN), np.random.default_rng(0))


def test_a_vacuum_cleft_is_gas_under_the_upper_endplate_inside_the_body(phantom) -> None:
    before = phantom.hu.copy()
    hu = apply_pattern(
        phantom, "T9", PatternFeatures(Pattern.BENIGN, vacuum=True), np.random.default_rng(2)
    )
    body = _body(phantom, "T9")
    gas = (hu.astype(int) < -300) & (before > -300)
    assert gas.sum() >= 5 and not (gas & ~body).any()  # only inside the body
    v = phantom.vertebra("T9")
    superior = v.axes[2]
    idx = np.argwhere(gas)
    lps = (phantom.grid.affine()[:3, :3] @ idx.T + phantom.grid.affine()[:3, 3:4]).T
    top = float(v.keypoints[[0, 2, 4]].mean(axis=0) @ superior)
    bottom = float(v.keypoints[[1, 3, 5]].mean(axis=0) @ superior)
    height = (lps @ superior - bottom) / (top - bottom)
    assert height.min() > 0.4  # the upper part of the body


def test_benign_fractures_without_a_line_mostly_have_a_vacuum_cleft() -> None:
    rng = np.random.default_rng(3)
    benign = [draw_features(Pattern.BENIGN, rng, hard=False) for _ in range(600)]
    without = [f for f in benign if not f.fracture_line]
    assert 0.6 < sum(f.vacuum for f in without) / len(without) < 0.9
    assert sum(f.vacuum for f in benign if f.fracture_line) / (len(benign) - len(without)) < 0.2


def test_a_hard_malignant_focus_lies_near_the_mid_sagittal_plane(phantom) -> None:
    from spinexr.training.phantoms.malignancy import CENTRAL_MM

    v = phantom.vertebra("T9")
    for seed in range(4):
        hu = apply_pattern(
            phantom,
            "T9",
            PatternFeatures(Pattern.MALIGNANT, lytic=1, lytic_radius_mm=(3.0, 3.0), hard=True),
            np.random.default_rng(seed),
        )
        changed = np.argwhere(np.abs(hu.astype(int) - phantom.hu) > 40)
        lps = (phantom.grid.affine()[:3, :3] @ changed.T + phantom.grid.affine()[:3, 3:4]).T
        centre = lps.mean(axis=0)
        assert abs(float((centre - v.centre) @ v.axes[0])) <= CENTRAL_MM + 1.5, seed
