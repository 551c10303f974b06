"""Li et al.'s input on a vertebra the CT method found: frame, box, planes, and the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spinexr.pipeline.ct.characterise import (
    MalignancyNet,
    characterise,
    load_characteriser,
    roi_box,
    roi_stack,
    save_characteriser,
    vertebra_frame,
)
from spinexr.pipeline.ct.errors import CtRefusal, UnsupportedSeriesError
from spinexr.training.phantoms.ct import make_ct_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_ct_phantom(9, levels=("T7", "T11"), fractures=(), scoliosis=True, noise_sigma=0)


def test_the_frame_is_the_vertebras_own(phantom) -> None:
    for v in phantom.vertebrae[1:-1]:
        lateral, up, anterior = vertebra_frame(v.keypoints)
        left, ant, sup = v.axes  # the phantom's truth: left, anterior, superior
        assert float(lateral @ left) > 0.99, v.level
        assert float(up @ sup) > 0.99, v.level
        assert float(anterior @ ant) > 0.99, v.level


def test_the_box_holds_the_body_with_its_margin(phantom) -> None:
    v = phantom.vertebra("T9")
    frame = vertebra_frame(v.keypoints)
    centre, side = roi_box(v.keypoints, frame, margin=0.15)
    uv = (v.keypoints - centre) @ frame[1:].T
    assert np.abs(uv).max() <= side / 2 / 1.3 + 1e-6  # the keypoints' square, widened 2 x 15 %
    assert side > max(v.heights)


def test_the_stack_is_li_et_als_input(phantom) -> None:
    v = phantom.vertebra("T9")
    stack = roi_stack(phantom.hu, phantom.grid.affine(), v.keypoints, slices=5)
    assert stack.inputs.shape == (5, 3, 64, 64) and stack.inputs.dtype == np.float32
    assert np.allclose(stack.inputs.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    assert np.allclose(stack.inputs.std(axis=(1, 2, 3)), 1, atol=1e-3)
    assert np.allclose(stack.offsets_mm, [-6, -3, 0, 3, 6])
    # the slice of input k is the right-hand neighbour of input k - 1 (up to the z-score)
    for k in range(1, 5):
        r = np.corrcoef(stack.inputs[k, 1].ravel(), stack.inputs[k - 1, 2].ravel())[0, 1]
        assert r > 0.999
    mid = stack.inputs[2, 1]
    assert mid[28:36, 28:36].mean() > mid[:4, :4].mean()  # bone in the middle, not the corner


def test_a_vertebra_at_the_edge_of_the_field_of_view_is_refused(phantom) -> None:
    v = phantom.vertebra("T9")
    affine = phantom.grid.affine()
    end = affine @ np.array([phantom.hu.shape[0] - 1, 0, 0, 1.0])
    shifted = v.keypoints + np.array([0, 0, end[2] - v.keypoints[:, 2].mean()])
    with pytest.raises(UnsupportedSeriesError) as caught:
        roi_stack(phantom.hu, affine, shifted)
    assert caught.value.refusal is CtRefusal.ROI_OUTSIDE


def test_the_network_scores_slices_and_keeps_the_highest(phantom, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MalignancyNet().eval()
    stack = roi_stack(phantom.hu, phantom.grid.affine(), phantom.vertebra("T9").keypoints)
    call = characterise(stack, model, threshold=0.5)
    assert len(call.slice_probabilities) == 5
    assert call.probability == max(call.slice_probabilities)
    assert call.malignant == (call.probability >= 0.5)
    path = save_characteriser(tmp_path / "li.pt", model, {"seed": 0})
    again, training = load_characteriser(path)
    assert training == {"seed": 0}
    assert np.allclose(again.probabilities(stack.inputs), call.slice_probabilities, atol=1e-6)
    (tmp_path / "other.pt").write_bytes(b"")
    torch.save({"arch": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a benign/malignant"):
        load_characteriser(tmp_path / "other.pt")
