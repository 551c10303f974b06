"""U-Net-like network of Pisov et al.'s keypoint detector, predicting at full resolution.

An encoder of ``len(channels)`` levels (two 3 × 3 convolutions with batch normalisation and
ReLU each, 2 × 2 max-pooling between levels), a decoder that upsamples (2 × 2 transposed
convolution, deterministic on GPUs too), concatenates the encoder's features of the same level
and applies two convolutions, and a head at the input's resolution: a 3 × 3 convolution to
``head_channels`` features per pixel, then per pixel and per anchor shape a linear map
(a 1 × 1 convolution) to

- the **scores**, computed at every pixel (`PisovOutput.scores`): objectness logit (some
  object — vertebra or sacrum — matches this anchor) and sacrum logit (the matched object is
  the first sacral segment rather than a vertebral body; trained on positive anchors only);
- the **keypoints**, computed only where needed (`PisovNet.keypoints`: the positive anchors
  in training, the anchors above the score threshold at inference — the same 1 × 1
  convolution, evaluated at those pixels only): the six keypoints encoded relative to the
  anchor, ``(e_x, e_y)`` of each keypoint in **image order**: `genant.KEYPOINT_NAMES` order
  for a patient facing left (anterior = image left), that order permuted by
  `genant.FLIP_HORIZONTAL` for a patient facing right — the first height is always the one
  on the image's left;

and, per image, a **facing** logit (the patient faces right), from the deepest features
averaged over the image. Which side is anterior is one decision per image from the whole
view (posterior elements, canal, soft tissue in front), so the per-anchor regression only has
to find the corners near it; the detector turns image order into anatomical order with it.

The input's height and width must be multiples of `PisovNet.stride`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from torch import nn

SCORES = 2
"""Score logits per anchor and pixel: objectness, sacrum."""

KEYPOINT_OUTPUTS = 12
"""Encoded keypoint coordinates per anchor: ``(e_x, e_y)`` of six keypoints."""

OBJECT_PRIOR = 1e-3
"""Initial objectness probability (the head's bias), roughly the share of positive anchors."""


class PisovOutput(NamedTuple):
    """What `PisovNet` predicts for a batch.

    Attributes
    ----------
    scores : torch.Tensor
        ``(N, num_anchors, SCORES, H, W)`` objectness and sacrum logits.
    features : torch.Tensor
        ``(N, head_channels, H, W)`` head features, for `PisovNet.keypoints`.
    facing : torch.Tensor
        ``(N,)`` logit that the patient faces right (anterior = image right).
    """

    scores: torch.Tensor
    features: torch.Tensor
    facing: torch.Tensor


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class PisovNet(nn.Module):
    """U-Net with a per-pixel, per-anchor head.

    Parameters
    ----------
    channels : sequence of int
        Feature channels per level, finest first (e.g. ``(16, 32, 64, 128)``).
    num_anchors : int
        Anchor shapes per pixel.
    head_channels : int
        Width of the head's hidden layer (it must carry the twelve keypoint offsets, the
        objectness and the kind at every pixel: at least about 16).
    """

    def __init__(self, channels: Sequence[int], num_anchors: int, head_channels: int = 32) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError("the U-Net needs at least two levels")
        self.channels = tuple(int(c) for c in channels)
        self.num_anchors = int(num_anchors)
        self.head_channels = int(head_channels)
        self.encoders = nn.ModuleList()
        c_prev = 1
        for c in self.channels:
            self.encoders.append(_block(c_prev, c))
            c_prev = c
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(self.channels[i + 1], self.channels[i + 1], 2, stride=2)
            for i in range(len(self.channels) - 1)
        )
        self.decoders = nn.ModuleList(
            _block(self.channels[i + 1] + self.channels[i], self.channels[i])
            for i in range(len(self.channels) - 1)
        )
        self.head = nn.Sequential(
            nn.Conv2d(self.channels[0], self.head_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.score_layer = nn.Conv2d(self.head_channels, self.num_anchors * SCORES, 1)
        self.keypoint_layer = nn.Linear(self.head_channels, self.num_anchors * KEYPOINT_OUTPUTS)
        self.facing = nn.Linear(self.channels[-1], 1)
        with torch.no_grad():
            assert self.score_layer.bias is not None
            bias = self.score_layer.bias.view(self.num_anchors, SCORES)
            bias.zero_()
            bias[:, 0] = -math.log((1 - OBJECT_PRIOR) / OBJECT_PRIOR)
            self.keypoint_layer.weight *= 0.1
            self.keypoint_layer.bias.zero_()

    @property
    def stride(self) -> int:
        """The input's height and width must be multiples of this."""
        return int(2 ** (len(self.channels) - 1))

    def forward(self, images: torch.Tensor) -> PisovOutput:
        """Predict every anchor's scores, the head features and the facing.

        Parameters
        ----------
        images : torch.Tensor
            ``(N, 1, H, W)`` z-scored images, ``H`` and ``W`` multiples of `stride`.

        Returns
        -------
        PisovOutput
            Scores, features and the facing logit.
        """
        n, _, h, w = images.shape
        if h % self.stride or w % self.stride:
            raise ValueError(f"input {h}×{w} is not a multiple of {self.stride}")
        skips = []
        x = images
        for i, enc in enumerate(self.encoders):
            if i:
                x = F.max_pool2d(x, 2)
            x = enc(x)
            skips.append(x)
        facing = self.facing(x.mean(dim=(2, 3)))[:, 0]
        for i in range(len(self.decoders) - 1, -1, -1):
            x = self.upsamplers[i](x)
            x = self.decoders[i](torch.cat([x, skips[i]], dim=1))
        features = self.head(x)
        scores = self.score_layer(features).view(n, self.num_anchors, SCORES, h, w)
        return PisovOutput(scores, features, facing)

    def keypoints(
        self,
        features: torch.Tensor,
        image: torch.Tensor,
        anchor: torch.Tensor,
        row: torch.Tensor,
        column: torch.Tensor,
    ) -> torch.Tensor:
        """Compute the encoded keypoints of chosen anchors (the 1 × 1 map at their pixels only).

        Parameters
        ----------
        features : torch.Tensor
            `PisovOutput.features`.
        image, anchor, row, column : torch.Tensor
            ``(K,)`` indices of the anchors.

        Returns
        -------
        torch.Tensor
            ``(K, KEYPOINT_OUTPUTS)`` encoded coordinates.
        """
        f = features[image, :, row, column]  # (K, C)
        weight = self.keypoint_layer.weight.view(self.num_anchors, KEYPOINT_OUTPUTS, -1)[anchor]
        bias = self.keypoint_layer.bias.view(self.num_anchors, KEYPOINT_OUTPUTS)[anchor]
        return torch.bmm(weight, f[:, :, None])[:, :, 0] + bias
