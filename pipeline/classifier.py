"""Image-level classifier: an ensemble of torchvision DenseNets (``method.md`` section 4).

Each member is a DenseNet-121, -169 or -201 whose ImageNet head is replaced by one linear
unit (the "abnormal" logit). The ensemble probability is ``sigmoid(mean of member logits)``,
as in the reference code, not the mean of the member probabilities.

Inputs are ``uint8`` (or float) images in ``0..255``; `ClassifierEnsemble` divides by 255 and
applies the ImageNet mean/std itself, so callers never normalise. Weights are only ever read
from local files; torchvision is never asked to download anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, cast, get_args

import numpy as np
import numpy.typing as npt
import torch
import torchvision
from torch import nn

from spinexr.pipeline.errors import WeightsError

logger = logging.getLogger(__name__)

Arch = Literal["densenet121", "densenet169", "densenet201"]
"""Supported member architectures (torchvision builder names)."""

ARCHS: Final[tuple[Arch, ...]] = get_args(Arch)
"""All supported architectures, in the paper's order."""

IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)

_BUILDERS: Final[Mapping[str, Callable[..., nn.Module]]] = {
    "densenet121": torchvision.models.densenet121,
    "densenet169": torchvision.models.densenet169,
    "densenet201": torchvision.models.densenet201,
}


def build_classifier(arch: str) -> nn.Module:
    """Build a randomly initialised DenseNet with a single-logit head.

    Parameters
    ----------
    arch : {"densenet121", "densenet169", "densenet201"}
        Architecture.

    Returns
    -------
    torch.nn.Module
        Maps ``(N, 3, H, W)`` normalised images to ``(N, 1)`` logits.

    Raises
    ------
    ValueError
        For an unknown architecture.
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown classifier architecture {arch!r}; expected one of {ARCHS}")
    model = _BUILDERS[arch](weights=None)
    head = cast(nn.Linear, model.classifier)
    model.classifier = nn.Linear(head.in_features, 1)
    return model


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict saved with `torch.save` (no pickled code is executed).

    A checkpoint that wraps it as ``{"state_dict": ...}`` is unwrapped.

    Parameters
    ----------
    path : pathlib.Path
        The file.

    Returns
    -------
    dict
        Parameter name → tensor.

    Raises
    ------
    WeightsError
        When the file cannot be read as a state dict.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle / runtime / zip errors
        raise WeightsError(f"cannot read weights {path.name}: {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path.name} is not a state dict of tensors")
    return obj


def load_classifier(arch: str, path: Path) -> nn.Module:
    """Build a member and load its weights (strictly: every key must match).

    Parameters
    ----------
    arch : {"densenet121", "densenet169", "densenet201"}
        Architecture.
    path : pathlib.Path
        State dict file.

    Returns
    -------
    torch.nn.Module
        The member, in eval mode, on the CPU.

    Raises
    ------
    WeightsError
        When the weights do not fit the architecture or cannot be read.
    """
    model = build_classifier(arch)
    try:
        model.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:400]
        raise WeightsError(f"{path.name} does not fit {arch}: {first}") from exc
    return model.eval()


@dataclass(frozen=True)
class EnsembleOutput:
    """Classifier results for a batch.

    Attributes
    ----------
    logits : dict of str to torch.Tensor
        Member architecture → ``(N,)`` logits, in member order.
    probability : torch.Tensor
        ``(N,)`` ensemble probability, ``sigmoid(mean of logits)``.
    seconds : dict of str to float
        Member architecture → wall time of its forward pass.
    """

    logits: dict[str, torch.Tensor]
    probability: torch.Tensor
    seconds: dict[str, float]


class ClassifierEnsemble(nn.Module):
    """Mean-of-logits ensemble of single-logit classifiers, with ImageNet normalisation inside.

    Parameters
    ----------
    members : mapping of str to torch.nn.Module
        Architecture name → model mapping normalised ``(N, 3, H, W)`` to ``(N, 1)`` logits.
        Any non-empty subset of the supported architectures.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, members: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a classifier ensemble needs at least one member")
        self.members = nn.ModuleDict(dict(members))
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.eval()

    @classmethod
    def from_files(
        cls, weights: Mapping[str, Path], device: str | torch.device = "cpu"
    ) -> ClassifierEnsemble:
        """Build the ensemble from local state-dict files.

        Parameters
        ----------
        weights : mapping of str to pathlib.Path
            Architecture → state dict file.
        device : str or torch.device
            Where to put the models.

        Returns
        -------
        ClassifierEnsemble
            In eval mode on `device`.

        Raises
        ------
        WeightsError
            When a file cannot be loaded into its architecture.
        """
        members = {arch: load_classifier(arch, path) for arch, path in weights.items()}
        return cls(members).to(device).eval()

    @property
    def archs(self) -> list[str]:
        """Member architectures, in order."""
        return list(self.members.keys())

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.mean.device

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``0..255`` images to ImageNet-normalised float tensors on the model's device.

        Parameters
        ----------
        images : torch.Tensor
            ``(N, 3, H, W)``, ``uint8`` or float in ``0..255``.

        Returns
        -------
        torch.Tensor
            Float32 ``(N, 3, H, W)``.
        """
        x = images.to(self.device, dtype=torch.float32)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> EnsembleOutput:
        """Run every member on a batch.

        Parameters
        ----------
        images : torch.Tensor
            ``(N, 3, H, W)``, ``uint8`` or float in ``0..255`` (not normalised).

        Returns
        -------
        EnsembleOutput
            Per-member logits, ensemble probability and per-member timings.
        """
        x = self.normalise(images)
        logits: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        for arch, member in self.members.items():
            start = time.perf_counter()
            logits[arch] = member(x).reshape(-1).float()
            _synchronize(x.device)
            seconds[arch] = time.perf_counter() - start
        return EnsembleOutput(logits, ensemble_probability(list(logits.values())), seconds)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> EnsembleOutput:
        """`forward` in eval mode without autograd, results on the CPU.

        Parameters
        ----------
        images : torch.Tensor
            ``(N, 3, H, W)``, ``uint8`` or float in ``0..255``.

        Returns
        -------
        EnsembleOutput
            With CPU tensors.
        """
        self.eval()
        out = self(images)
        return EnsembleOutput(
            {k: v.cpu() for k, v in out.logits.items()}, out.probability.cpu(), out.seconds
        )


def ensemble_probability(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return ``sigmoid(mean(logits))`` over members.

    Parameters
    ----------
    logits : sequence of torch.Tensor
        One ``(N,)`` tensor per member.

    Returns
    -------
    torch.Tensor
        ``(N,)`` probabilities.
    """
    return torch.sigmoid(torch.stack(list(logits), dim=0).mean(dim=0))


def images_to_batch(images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
    """Stack HxWx3 ``uint8`` images (same size) into a ``(N, 3, H, W)`` ``uint8`` tensor.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        Classifier inputs from `spinexr.pipeline.preprocess.prepare_image`.

    Returns
    -------
    torch.Tensor
        The batch (still ``0..255``; the ensemble normalises).
    """
    stacked = np.stack([np.asarray(im, dtype=np.uint8) for im in images], axis=0)
    return torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
