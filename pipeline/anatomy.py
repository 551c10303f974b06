"""The image check: is a radiograph a spine AP, a spine lateral, or something else.

A small CNN (`AnatomyNet`, a hundredth of a DenseNet-121's compute) looks at the image
the pipeline's own preprocessing made (`spinexr.pipeline.preprocess.display_image`, bone
bright), resized to `ANATOMY_SIZE` with `spinexr.pipeline.preprocess.resize_image`, and
gives softmax probabilities over `AnatomyClass`: ``spine_ap``, ``spine_lateral``, ``other``.
A bundle may carry one (manifest entry ``anatomy``, see `spinexr.pipeline.bundle`); the
same model answers the AP/lateral question for analyses that need a view.

`spine_gate` is the decision the pipeline takes per image before the lesion models:

- the header says spine (`spinexr.pipeline.bodypart.tag_verdict`): analysed, no image check;
- the header names another part: not analysed, "not a spine image" with the tag as reason;
- the header says nothing: the image check, when the bundle has the model: ``other`` at or
  above the manifest's ``other_threshold`` → not analysed, "not a spine image" with the
  score; otherwise analysed (and with no model, analysed: the provenance says so).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from spinexr.pipeline.bodypart import TagAnatomy, TagVerdict
from spinexr.pipeline.classifier import load_state_dict
from spinexr.pipeline.errors import WeightsError
from spinexr.pipeline.preprocess import resize_image

logger = logging.getLogger(__name__)


class AnatomyClass(enum.StrEnum):
    """Outputs of the anatomy model, in logit order."""

    SPINE_AP = "spine_ap"
    SPINE_LATERAL = "spine_lateral"
    OTHER = "other"


ANATOMY_CLASSES: Final = tuple(c.value for c in AnatomyClass)
"""Class names in logit order (the manifest's ``anatomy.classes`` must equal them)."""

ANATOMY_SIZE: Final = (128, 128)
"""(rows, columns) of the model input (aspect ratio not preserved)."""

ANATOMY_ARCH: Final = "anatomy-cnn-v1"
"""The one architecture `build_anatomy_model` builds (the manifest's ``anatomy.model``)."""

_WIDTHS: Final = (16, 32, 64, 96)


class AnatomyNet(nn.Module):
    """Four stride-2 conv-BN-ReLU stages, a 4×4 average pool (keeps the layout), a linear head.

    Input ``(N, 1, 128, 128)`` in ``0..255`` (uint8 or float); the net scales it itself. The
    first stage (5×5) halves the resolution at once: about 15 M multiply-adds per image, so
    the check costs little beside the DenseNets and trains in about a minute on a CPU.
    Output ``(N, 3)`` logits in `AnatomyClass` order.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for k, width in enumerate(_WIDTHS):
            size = 5 if k == 0 else 3
            layers += [
                nn.Conv2d(channels, width, size, stride=2, padding=size // 2, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(channels * 16, len(AnatomyClass))
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``(N, 1, H, W)`` images in ``0..255`` to ``(N, 3)`` logits."""
        x = images.float() / 255.0
        x = (x - 0.5) / 0.25
        out: torch.Tensor = self.head(self.pool(self.features(x)))
        return out


def build_anatomy_model() -> AnatomyNet:
    """Build a randomly initialised `AnatomyNet`.

    Returns
    -------
    AnatomyNet
        In training mode, on the CPU.
    """
    return AnatomyNet()


def anatomy_input(display: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Resize a display image (bone bright, ``uint8``) to the model input.

    Parameters
    ----------
    display : numpy.ndarray
        ``PreparedImage.display`` or `display_image`'s output.

    Returns
    -------
    numpy.ndarray
        ``uint8`` `ANATOMY_SIZE` image.
    """
    return resize_image(np.asarray(display, dtype=np.uint8), ANATOMY_SIZE)


def anatomy_batch(images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
    """Stack `anatomy_input` images into a ``(N, 1, H, W)`` ``uint8`` tensor.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        Model inputs of the same size.

    Returns
    -------
    torch.Tensor
        The batch.
    """
    stacked = np.stack([np.asarray(im, dtype=np.uint8) for im in images], axis=0)
    return torch.from_numpy(np.ascontiguousarray(stacked[:, None]))


class AnatomyClassifier:
    """A loaded anatomy model with its decision threshold.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(N, 1, 128, 128)`` inputs in ``0..255`` to ``(N, 3)`` logits.
    other_threshold : float
        ``other`` probability at or above which an image is not a spine image.
    device : torch.device or str
        Where to run it.
    """

    def __init__(
        self, model: nn.Module, other_threshold: float, device: torch.device | str = "cpu"
    ) -> None:
        if not 0.0 < other_threshold <= 1.0:
            raise ValueError(f"other_threshold must be in (0, 1], got {other_threshold}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.other_threshold = other_threshold

    @classmethod
    def from_file(
        cls, path: Path, other_threshold: float, device: torch.device | str = "cpu"
    ) -> AnatomyClassifier:
        """Load an `AnatomyNet` state dict (strictly).

        Parameters
        ----------
        path : pathlib.Path
            State dict file.
        other_threshold : float
            From the manifest.
        device : torch.device or str
            Where to run it.

        Returns
        -------
        AnatomyClassifier
            Ready to predict.

        Raises
        ------
        WeightsError
            When the file cannot be read or does not fit the architecture.
        """
        model = build_anatomy_model()
        try:
            model.load_state_dict(load_state_dict(path), strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:400]
            raise WeightsError(f"{path.name} does not fit {ANATOMY_ARCH}: {first}") from exc
        return cls(model, other_threshold, device)

    @torch.inference_mode()
    def predict(self, displays: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float64]:
        """Class probabilities of display images.

        Parameters
        ----------
        displays : sequence of numpy.ndarray
            ``uint8`` display images of any size (resized here).

        Returns
        -------
        numpy.ndarray
            ``(N, 3)`` softmax probabilities in `AnatomyClass` order.
        """
        if not displays:
            return np.zeros((0, len(AnatomyClass)))
        batch = anatomy_batch([anatomy_input(d) for d in displays]).to(self.device)
        logits = self.model(batch)
        return torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class GateDecision:
    """Whether an image goes on to the lesion models, and why.

    Attributes
    ----------
    analyse : bool
        True: analyse the image.
    reason : str
        One line: which tag or score decided (``"Body Part Examined CHEST"``,
        ``"image check: other 0.97 >= 0.50"``).
    scores : dict of str to float
        The anatomy model's probabilities when it ran, else empty.
    """

    analyse: bool
    reason: str
    scores: dict[str, float]


def spine_gate(
    verdict: TagVerdict,
    scores: npt.NDArray[np.float64] | None,
    other_threshold: float | None,
) -> GateDecision:
    """Decide whether an image is analysed, from its tags and (when run) the image check.

    Parameters
    ----------
    verdict : TagVerdict
        What the header says.
    scores : numpy.ndarray or None
        ``(3,)`` anatomy probabilities, or None when the model did not run.
    other_threshold : float or None
        The manifest's threshold (None without a model).

    Returns
    -------
    GateDecision
        Analyse or not, with the reason and the scores.
    """
    if verdict.anatomy is TagAnatomy.SPINE:
        return GateDecision(True, verdict.reason, {})
    if verdict.anatomy is TagAnatomy.OTHER:
        return GateDecision(False, verdict.reason, {})
    if scores is None or other_threshold is None:
        return GateDecision(True, "no anatomy in the header; no image check in the bundle", {})
    named = {c.value: float(p) for c, p in zip(AnatomyClass, scores, strict=True)}
    other = named[AnatomyClass.OTHER]
    if other >= other_threshold:
        return GateDecision(
            False, f"image check: other {other:.2f} >= {other_threshold:.2f}", named
        )
    return GateDecision(True, f"image check: other {other:.2f} < {other_threshold:.2f}", named)
