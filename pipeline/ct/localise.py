"""Step 1 of Pisov et al. on CT: the vertebral-body centre line, one point per axial slice.

``method.md`` §8: a 3D fully convolutional network on the volume resampled to 3 × 3 × 3 mm
predicts on each axial slice a map whose 2D soft-argmax is the vertebral-body centre on that
slice; the points of all slices form the centre line that `spinexr.pipeline.vertebrae.
straighten.fit_centreline` smooths and `straighten` straightens.

- `resample_to` resamples a volume along its own index axes to a given spacing (the new
  affine keeps the orientation) and maps Hounsfield units through a window onto ``[0, 1]``.
- `LocaliserNet` is a small 3D U-Net (`LocaliserConfig`: channels per level, spacing,
  window) with one logit per voxel.
- `soft_argmax_per_slice` turns the logits into a ``(row, column)`` point per slice and a
  per-slice confidence: the sigmoid of the log of the mean of ``exp(logits)`` over the
  slice, which training pushes up on slices with spine and down on slices without (the
  softmax, and so the point, does not depend on that level), so callers can cut the line's
  ends where the confidence falls.
- `localise` runs the whole step on a volume and returns LPS points and confidences, one per
  slice of the resampled volume.
- `save_localiser` / `load_localiser`: a checkpoint with its config inside, read on the CPU
  with ``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from torch import nn

from spinexr.pipeline.atomic import write_atomically

FloatArray = npt.NDArray[np.float64]

ARCH: Final = "ct-localiser"
"""``arch`` entry of a localiser checkpoint."""

CHECKPOINT_VERSION: Final = 1
"""Version of the checkpoint layout `load_localiser` reads."""


@dataclass(frozen=True)
class LocaliserConfig:
    """Architecture and input of the localiser.

    Attributes
    ----------
    channels : tuple of int
        Feature channels per U-Net level, finest first; ``len(channels) - 1`` poolings by 2
        in every direction.
    spacing_mm : float
        Isotropic voxel size the volume is resampled to (Pisov et al.: 3 mm).
    window : tuple of float
        Hounsfield units mapped to 0 and 1 (clipped outside): a wide bone window.
    logit_scale : float
        Fixed factor on the head's output. A random network's logits are near 0, so each
        slice's softmax is nearly flat and the soft-argmax MAE hardly moves it; a factor of 10
        makes the maps peak within tens of steps (a short CPU run: 80 steps reach about 1 mm
        on the training phantoms with it, about 10 mm after 150 steps without).
    """

    channels: tuple[int, ...] = (8, 16, 32)
    spacing_mm: float = 3.0
    window: tuple[float, float] = (-250.0, 1250.0)
    logit_scale: float = 10.0

    def __post_init__(self) -> None:
        if len(self.channels) < 1 or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"bad channels {self.channels}")
        if (
            not self.spacing_mm > 0
            or not self.window[1] > self.window[0]
            or not self.logit_scale > 0
        ):
            raise ValueError(f"bad spacing or window in {self}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed form for a checkpoint.

        Returns
        -------
        dict
            ``channels`` (list), ``spacing_mm``, ``window`` (list), ``logit_scale``.
        """
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["window"] = list(self.window)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LocaliserConfig:
        """Rebuild a config from `to_dict`'s output.

        Parameters
        ----------
        d : mapping
            The stored config.

        Returns
        -------
        LocaliserConfig
            The config.
        """
        lo, hi = d["window"]
        return cls(
            channels=tuple(int(c) for c in d["channels"]),
            spacing_mm=float(d["spacing_mm"]),
            window=(float(lo), float(hi)),
            logit_scale=float(d["logit_scale"]),
        )


@dataclass(frozen=True)
class Resampled:
    """A volume resampled by `resample_to`.

    Attributes
    ----------
    array : numpy.ndarray
        ``float32`` ``(slices, rows, columns)`` windowed intensities in ``[0, 1]``.
    affine : numpy.ndarray
        4×4 map from the new ``(slice, row, column, 1)`` to LPS mm.
    scale : numpy.ndarray
        ``(3,)`` old index per new index along each axis (new index ``i`` lies at old index
        ``i * scale``).
    """

    array: npt.NDArray[np.float32]
    affine: FloatArray
    scale: FloatArray = field(repr=False)


def voxel_spacing(affine: npt.ArrayLike) -> FloatArray:
    """Spacing (mm) along the index axes of an affine.

    Parameters
    ----------
    affine : array-like
        4×4 map from ``(slice, row, column, 1)`` to LPS mm.

    Returns
    -------
    numpy.ndarray
        ``(3,)`` lengths of the first three columns.
    """
    a = np.asarray(affine, dtype=np.float64)
    return np.asarray(np.linalg.norm(a[:3, :3], axis=0), dtype=np.float64)


def resample_to(
    volume_array: npt.ArrayLike,
    affine: npt.ArrayLike,
    spacing_mm: float = 3.0,
    *,
    window: tuple[float, float] = LocaliserConfig.window,
) -> Resampled:
    """Resample a volume (trilinear) to a spacing along its index axes, windowed onto ``[0, 1]``.

    The new voxel ``i`` lies at old index ``i · spacing_mm / spacing`` on each axis, so the
    new grid starts at the old voxel ``(0, 0, 0)`` and keeps the orientation (its affine is
    the old one with scaled columns). Each axis gets ``floor((n − 1) · spacing /
    spacing_mm) + 1`` voxels.

    Parameters
    ----------
    volume_array : array-like
        ``(slices, rows, columns)`` Hounsfield units.
    affine : array-like
        Its 4×4 affine (LPS mm).
    spacing_mm : float
        The new isotropic spacing.
    window : tuple of float
        HU mapped to 0 and 1; values outside are clipped.

    Returns
    -------
    Resampled
        The new array, its affine and the index scale.

    Raises
    ------
    ValueError
        For an array that is not 3D or a bad affine or spacing.
    """
    vol = np.asarray(volume_array)
    a = np.asarray(affine, dtype=np.float64)
    if vol.ndim != 3 or a.shape != (4, 4) or not spacing_mm > 0:
        raise ValueError("need a 3D array, a 4x4 affine and a positive spacing")
    spacing = voxel_spacing(a)
    if not np.all(spacing > 0):
        raise ValueError(f"degenerate affine with spacing {spacing}")
    scale = spacing_mm / spacing
    shape = tuple(math.floor((n - 1) / s + 1e-9) + 1 for n, s in zip(vol.shape, scale, strict=True))
    lo, hi = window
    norm = np.clip((vol.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    out = norm if np.allclose(scale, 1.0) else _resample_linear(norm, scale, shape)
    new_affine = a.copy()
    new_affine[:3, :3] = a[:3, :3] * scale[None, :]
    return Resampled(np.ascontiguousarray(out, dtype=np.float32), new_affine, scale)


def _resample_linear(
    vol: npt.NDArray[np.float32], scale: FloatArray, shape: Sequence[int]
) -> npt.NDArray[np.float32]:
    """Interpolate linearly one axis at a time, new index ``i`` at old index ``i * scale``.

    In-plane axes first, so that a fine series shrinks early.
    """
    out = vol
    for ax in (1, 2, 0):
        n_old = out.shape[ax]
        pos = np.arange(shape[ax], dtype=np.float64) * float(scale[ax])
        i0 = np.clip(np.floor(pos).astype(np.intp), 0, n_old - 1)
        i1 = np.minimum(i0 + 1, n_old - 1)
        t = (pos - i0).astype(np.float32).reshape([-1 if i == ax else 1 for i in range(3)])
        a, b = np.take(out, i0, axis=ax), np.take(out, i1, axis=ax)
        out = a + (b - a) * t
    return out


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class LocaliserNet(nn.Module):
    """3D U-Net with one logit per voxel (Pisov et al.'s localisation network, small).

    Parameters
    ----------
    config : LocaliserConfig
        Channels per level (the rest of the config is about the input).
    """

    def __init__(self, config: LocaliserConfig) -> None:
        super().__init__()
        self.config = config
        ch = tuple(int(c) for c in config.channels)
        self.encoders = nn.ModuleList()
        c_prev = 1
        for c in ch:
            self.encoders.append(_block(c_prev, c))
            c_prev = c
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose3d(ch[i + 1], ch[i + 1], 2, stride=2) for i in range(len(ch) - 1)
        )
        self.decoders = nn.ModuleList(_block(ch[i + 1] + ch[i], ch[i]) for i in range(len(ch) - 1))
        self.head = nn.Conv3d(ch[0], 1, 1)

    @property
    def stride(self) -> int:
        """Every input dimension must be a multiple of this (`forward` pads to it)."""
        return int(2 ** (len(self.config.channels) - 1))

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        """Predict one logit per voxel.

        Parameters
        ----------
        volumes : torch.Tensor
            ``(N, 1, D, H, W)`` windowed volumes; padded with zeros (air) up to multiples of
            `stride` inside, the output cropped back.

        Returns
        -------
        torch.Tensor
            ``(N, D, H, W)`` logits.
        """
        _, _, d, h, w = volumes.shape
        s = self.stride
        pad = [(-n) % s for n in (d, h, w)]
        x = F.pad(volumes, (0, pad[2], 0, pad[1], 0, pad[0])) if any(pad) else volumes
        skips = []
        for i, enc in enumerate(self.encoders):
            if i:
                x = F.max_pool3d(x, 2)
            x = enc(x)
            skips.append(x)
        for i in range(len(self.decoders) - 1, -1, -1):
            x = self.upsamplers[i](x)
            x = self.decoders[i](torch.cat([x, skips[i]], dim=1))
        out: torch.Tensor = self.head(x)[:, 0, :d, :h, :w] * self.config.logit_scale
        return out


def build_localiser(config: LocaliserConfig | None = None) -> LocaliserNet:
    """Build a randomly initialised localiser (seed torch first for reproducible weights).

    Parameters
    ----------
    config : LocaliserConfig, optional
        Defaults to `LocaliserConfig()`.

    Returns
    -------
    LocaliserNet
        The network.
    """
    return LocaliserNet(config or LocaliserConfig())


def soft_argmax_per_slice(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2D soft-argmax of every slice, and each slice's confidence.

    Parameters
    ----------
    logits : torch.Tensor
        ``(..., D, H, W)`` logits; the softmax runs over each ``H × W`` slice.

    Returns
    -------
    coords : torch.Tensor
        ``(..., D, 2)`` expected ``(row, column)`` index of each slice (differentiable).
    confidence : torch.Tensor
        ``(..., D)`` in ``(0, 1)``: ``sigmoid(log(mean(exp(logits))))`` over the slice, the
        probability that the slice shows spine once trained (`presence_logits`).
    """
    h, w = logits.shape[-2:]
    flat = logits.reshape(*logits.shape[:-2], h * w)
    p = torch.softmax(flat, dim=-1).reshape(logits.shape)
    rows = torch.arange(h, dtype=logits.dtype, device=logits.device)
    cols = torch.arange(w, dtype=logits.dtype, device=logits.device)
    r = (p.sum(dim=-1) * rows).sum(dim=-1)
    c = (p.sum(dim=-2) * cols).sum(dim=-1)
    return torch.stack([r, c], dim=-1), torch.sigmoid(presence_logits(logits))


def presence_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-slice logit that the slice shows spine: ``log(mean(exp(logits)))`` over the slice.

    Parameters
    ----------
    logits : torch.Tensor
        ``(..., D, H, W)`` logits.

    Returns
    -------
    torch.Tensor
        ``(..., D)``; independent of the slice's size for a constant map.
    """
    h, w = logits.shape[-2:]
    flat = logits.reshape(*logits.shape[:-2], h * w)
    return torch.logsumexp(flat, dim=-1) - math.log(h * w)


def index_to_lps(affine: npt.ArrayLike, index: npt.ArrayLike) -> FloatArray:
    """Map continuous ``(slice, row, column)`` indices to LPS mm.

    Parameters
    ----------
    affine : array-like
        4×4 affine.
    index : array-like
        ``(..., 3)`` indices.

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` LPS points.
    """
    a = np.asarray(affine, dtype=np.float64)
    idx = np.asarray(index, dtype=np.float64)
    return np.asarray(idx @ a[:3, :3].T + a[:3, 3], dtype=np.float64)


def lps_to_index(affine: npt.ArrayLike, points: npt.ArrayLike) -> FloatArray:
    """Map LPS points to continuous ``(slice, row, column)`` indices (inverse of `index_to_lps`).

    Parameters
    ----------
    affine : array-like
        4×4 affine.
    points : array-like
        ``(..., 3)`` LPS mm.

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` indices.
    """
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    p = np.asarray(points, dtype=np.float64)
    return np.asarray(p @ inv[:3, :3].T + inv[:3, 3], dtype=np.float64)


def points_from_logits(
    logits: torch.Tensor, affine: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Soft-argmax a ``(D, H, W)`` logit volume and map the points to LPS through its affine.

    Parameters
    ----------
    logits : torch.Tensor
        ``(D, H, W)`` logits on the grid of ``affine``.
    affine : array-like
        4×4 affine of that grid.

    Returns
    -------
    points_lps : numpy.ndarray
        ``(D, 3)`` LPS points, slice ``k``'s point on slice ``k``'s plane.
    confidence : numpy.ndarray
        ``(D,)`` per-slice confidence.
    """
    coords, conf = soft_argmax_per_slice(logits.detach().to(torch.float64))
    rc = coords.cpu().numpy()
    k = np.arange(rc.shape[0], dtype=np.float64)[:, None]
    return index_to_lps(affine, np.concatenate([k, rc], axis=1)), conf.cpu().numpy()


@torch.no_grad()
def localise(
    volume_array: npt.ArrayLike,
    affine: npt.ArrayLike,
    model: LocaliserNet,
    *,
    device: torch.device | str = "cpu",
) -> tuple[FloatArray, FloatArray]:
    """Find the vertebral-body centre on every slice of the volume resampled to the model's grid.

    Parameters
    ----------
    volume_array : array-like
        ``(slices, rows, columns)`` Hounsfield units (e.g. `CtVolume.array`).
    affine : array-like
        Its 4×4 affine (e.g. `CtVolume.affine`).
    model : LocaliserNet
        The network (put in eval mode here).
    device : torch.device or str
        Where to run it.

    Returns
    -------
    points_lps : numpy.ndarray
        ``(N, 3)`` LPS mm, one point per slice of the resampled volume (``N`` slices at
        ``config.spacing_mm``, superior first for a head-first axial series).
    confidence : numpy.ndarray
        ``(N,)`` probability that each slice shows spine: drop the line's ends where it is
        low before `straighten.fit_centreline`.
    """
    cfg = model.config
    res = resample_to(volume_array, affine, cfg.spacing_mm, window=cfg.window)
    model.eval()
    x = torch.from_numpy(res.array)[None, None].to(device)
    logits = model.to(device)(x)[0]
    return points_from_logits(logits, res.affine)


def save_localiser(
    path: Path, model: LocaliserNet, training: Mapping[str, Any] | None = None
) -> Path:
    """Write a checkpoint that `load_localiser` reads (atomically).

    Parameters
    ----------
    path : pathlib.Path
        Destination ``.pt`` file.
    model : LocaliserNet
        The network (weights saved on the CPU) and its config.
    training : mapping, optional
        Plain-typed metadata (recipe, seed, timings, figures).

    Returns
    -------
    pathlib.Path
        `path`.
    """
    obj = {
        "arch": ARCH,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "training": dict(training or {}),
    }
    write_atomically(Path(path), lambda tmp: torch.save(obj, tmp))
    return Path(path)


def load_localiser(path: Path | str) -> tuple[LocaliserNet, dict[str, Any]]:
    """Read a checkpoint written by `save_localiser` (CPU, ``weights_only=True``).

    Parameters
    ----------
    path : pathlib.Path or str
        The ``.pt`` file.

    Returns
    -------
    model : LocaliserNet
        The network in eval mode, on the CPU.
    training : dict
        The metadata stored with it.

    Raises
    ------
    ValueError
        When the file is not a localiser checkpoint of a known version.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("arch") != ARCH:
        raise ValueError(f"{path} is not a CT localiser checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {ckpt.get('version')!r}, expected {CHECKPOINT_VERSION}"
        )
    model = LocaliserNet(LocaliserConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, dict(ckpt.get("training", {}))
