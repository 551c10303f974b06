"""DenseNet ensemble: single-logit heads, mean of logits, normalisation, weight loading."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spinexr.pipeline.classifier import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassifierEnsemble,
    build_classifier,
    ensemble_probability,
    images_to_batch,
    load_classifier,
)
from spinexr.pipeline.errors import BundleError, WeightsError

BIASES = {"densenet121": -4.0, "densenet169": 2.0, "densenet201": 1.0}


@pytest.fixture(scope="module")
def constant_members() -> dict[str, nn.Module]:
    """The three real architectures with zeroed heads: each outputs its bias as the logit."""
    members = {}
    for arch in ARCHS:
        model = build_classifier(arch)
        head = model.classifier
        assert isinstance(head, nn.Linear) and head.out_features == 1
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(BIASES[arch])
        members[arch] = model
    return members


def test_builders_replace_the_head_with_one_logit(constant_members: dict[str, nn.Module]) -> None:
    features = {"densenet121": 1024, "densenet169": 1664, "densenet201": 1920}
    for arch, model in constant_members.items():
        head = model.classifier
        assert isinstance(head, nn.Linear)
        assert (head.in_features, head.out_features) == (features[arch], 1)


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="densenet121"):
        build_classifier("resnet50")


def test_ensemble_is_sigmoid_of_mean_logit(constant_members: dict[str, nn.Module]) -> None:
    ensemble = ClassifierEnsemble(constant_members)
    out = ensemble.predict(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    for arch, bias in BIASES.items():
        assert out.logits[arch].shape == (2,)
        assert out.logits[arch].tolist() == pytest.approx([bias] * 2)
    mean_logit = sum(BIASES.values()) / 3  # -1/3
    expected = 1 / (1 + math.exp(-mean_logit))
    mean_of_probs = sum(1 / (1 + math.exp(-b)) for b in BIASES.values()) / 3
    assert out.probability.tolist() == pytest.approx([expected] * 2, abs=1e-6)
    assert abs(expected - mean_of_probs) > 0.1  # the two rules really differ here
    assert set(out.seconds) == set(BIASES) and all(s >= 0 for s in out.seconds.values())


@pytest.mark.parametrize("subset", [("densenet121",), ("densenet169", "densenet201")])
def test_any_subset_of_members(constant_members: dict[str, nn.Module], subset: tuple[str]) -> None:
    ensemble = ClassifierEnsemble({a: constant_members[a] for a in subset})
    out = ensemble.predict(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert ensemble.archs == list(subset)
    expected = torch.sigmoid(torch.tensor(sum(BIASES[a] for a in subset) / len(subset)))
    assert float(out.probability[0]) == pytest.approx(float(expected), abs=1e-6)


def test_ensemble_needs_a_member() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ClassifierEnsemble({})


class MeanProbe(nn.Module):
    """Outputs the mean of channel c as the logit, to observe the normalisation."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.channel].mean(dim=(1, 2)).unsqueeze(1)


def test_imagenet_normalisation_is_inside() -> None:
    ensemble = ClassifierEnsemble({f"c{c}": MeanProbe(c) for c in range(3)})
    white = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    out = ensemble.predict(white)
    for c in range(3):
        expected = (1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert float(out.logits[f"c{c}"][0]) == pytest.approx(expected, rel=1e-5)
    # float input in 0..255 gives the same as uint8
    again = ensemble.predict(white.float())
    assert torch.equal(again.probability, out.probability)


def test_ensemble_probability_function() -> None:
    logits = [torch.tensor([0.0, 4.0]), torch.tensor([2.0, -4.0])]
    assert ensemble_probability(logits).tolist() == pytest.approx(
        [1 / (1 + math.exp(-1)), 0.5], abs=1e-6
    )


def test_predict_is_inference_only(constant_members: dict[str, nn.Module]) -> None:
    model = constant_members["densenet121"]
    model.train()  # predict must put it back in eval mode
    ensemble = ClassifierEnsemble({"densenet121": model})
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    out = ensemble.predict(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
    assert torch.equal(bn.running_mean, before)
    assert not model.training
    assert not out.probability.requires_grad and out.probability.device.type == "cpu"


def test_images_to_batch() -> None:
    images = [np.full((224, 224, 3), v, np.uint8) for v in (0, 7)]
    batch = images_to_batch(images)
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == torch.uint8
    assert int(batch[1, 2, 5, 5]) == 7


def test_load_weights_from_file(tmp_path: Path, densenet121_weights: Path) -> None:
    model = load_classifier("densenet121", densenet121_weights)
    reference = torch.load(densenet121_weights, weights_only=True)
    assert torch.equal(model.state_dict()["classifier.bias"], reference["classifier.bias"])
    assert not model.training
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": reference, "meta": {"epoch": 3}}, wrapped)
    ensemble = ClassifierEnsemble.from_files({"densenet121": wrapped})
    assert ensemble.archs == ["densenet121"]


def test_weights_of_another_architecture_are_refused(densenet121_weights: Path) -> None:
    with pytest.raises(WeightsError, match="does not fit densenet169") as info:
        load_classifier("densenet169", densenet121_weights)
    assert isinstance(info.value, BundleError) and info.value.reason == "bad_weights"


def test_corrupt_weights_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"bad\.pt"):
        load_classifier("densenet121", bad)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": object.__new__(nn.Identity)}, pickled)
    with pytest.raises(WeightsError):
        load_classifier("densenet121", pickled)
