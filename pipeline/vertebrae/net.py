"""U-Net-like network of Pisov et al.'s keypoint detector, predicting at full resolution.

An encoder of ``len(channels)`` levels (two 3 × 3 convolutions with batch normalisation and
ReLU each, 2 × 2 max-pooling between levels), a decoder that upsamples (2 × 2 transposed
convolution, deterministic on GPUs too), concatenates the encoder's features of the same level
and applies two convolutions, and a head at the input's resolution that gives, for every
pixel and every anchor shape, `OUTPUTS` numbers:

- channel 0: objectness logit (some object — vertebra or sacrum — matches this anchor);
- channel 1: sacrum logit (the matched object is the first sacral segment rather than a
  vertebral body; trained on positive anchors only);
- channels 2–13: the six keypoints encoded relative to the anchor,
  ``(e_x, e_y)`` of each keypoint in `genant.KEYPOINT_NAMES` order.

The input's height and width must be multiples of `PisovNet.stride`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from torch import nn

OUTPUTS = 14
"""Numbers per anchor and pixel: objectness, sacrum, twelve keypoint coordinates."""

OBJECT_PRIOR = 1e-3
"""Initial objectness probability (the head's bias), roughly the share of positive anchors."""


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
    """

    def __init__(self, channels: Sequence[int], num_anchors: int) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError("the U-Net needs at least two levels")
        self.channels = tuple(int(c) for c in channels)
        self.num_anchors = int(num_anchors)
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
        c0 = self.channels[0]
        self.head = nn.Sequential(
            nn.Conv2d(c0, c0, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c0, self.num_anchors * OUTPUTS, 1),
        )
        last = self.head[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        with torch.no_grad():
            bias = last.bias.view(self.num_anchors, OUTPUTS)
            bias.zero_()
            bias[:, 0] = -math.log((1 - OBJECT_PRIOR) / OBJECT_PRIOR)
            last.weight.view(self.num_anchors, OUTPUTS, -1)[:, 2:] *= 0.1

    @property
    def stride(self) -> int:
        """The input's height and width must be multiples of this."""
        return int(2 ** (len(self.channels) - 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Predict every anchor's outputs.

        Parameters
        ----------
        images : torch.Tensor
            ``(N, 1, H, W)`` z-scored images, ``H`` and ``W`` multiples of `stride`.

        Returns
        -------
        torch.Tensor
            ``(N, num_anchors, OUTPUTS, H, W)``.
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
        for i in range(len(self.decoders) - 1, -1, -1):
            x = self.upsamplers[i](x)
            x = self.decoders[i](torch.cat([x, skips[i]], dim=1))
        return self.head(x).view(n, self.num_anchors, OUTPUTS, h, w)
