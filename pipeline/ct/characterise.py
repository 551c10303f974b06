"""Benign or malignant: Li et al. 2021's input and model, on a vertebra the CT method found.

Li et al. (``method.md`` §9) classify the most abnormal vertebra of a CT with a ResNet-50 on
sagittal slices 3 mm apart: per slice, the smallest square box holding the abnormal area,
resampled to 64 × 64 (linear), z-score normalised, with the slice's two neighbours as the
other two channels; the patient's malignancy probability is the highest slice probability,
malignant at 0.5. Their box was drawn by hand; here it follows from the vertebra's six
keypoints in the patient (`spinexr.pipeline.ct.vertebrae.CtVertebra.keypoints_lps`), which
makes the method automatic:

- the vertebra's **local frame** (`vertebra_frame`): the lateral axis is the normal of the
  plane through its six keypoints (they lie on the mid-sagittal surface), the superior axis
  runs from its bottom to its top keypoints, the anterior axis completes the frame, so that a
  scoliotic or rotated vertebra is cut along its own sagittal planes;
- the **box** (`roi_box`): the smallest square, in that plane, holding the six keypoints,
  widened by ``margin`` of its side on every side (the body and its cortex, and a little of
  what lies around it: a paravertebral mass starts there);
- the **planes** (`roi_stack`): ``slices`` planes ``slice_mm`` apart centred on the
  mid-sagittal one, plus one more on each side for the first and last slice's neighbours;
  each is sampled on a ``size`` × ``size`` grid (trilinear: the volume's voxels are not 3 mm
  apart), rows superior → inferior, columns anterior → posterior, like the reformat.

A plane that leaves the scanned volume is not padded: `roi_stack` refuses with
``CtRefusal.ROI_OUTSIDE`` (a vertebra too close to the edge of the field of view).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage
from torch import nn
from torchvision.models import resnet50

from spinexr.pipeline.atomic import write_atomically
from spinexr.pipeline.ct.errors import CtRefusal, UnsupportedSeriesError

FloatArray = npt.NDArray[np.float64]

ARCH: Final = "li2021-resnet50"
CHECKPOINT_VERSION: Final = 1

INPUT_SIZE: Final = 64
"""Side of the network's input (Li et al.)."""

SLICE_MM: Final = 3.0
"""Distance between sagittal slices (Li et al.'s 3 mm reformats)."""

DEFAULT_SLICES: Final = 5
"""Sagittal slices scored per vertebra (Li et al.: 3 to 5)."""

DEFAULT_MARGIN: Final = 0.15
"""Share of the box's side added on every side of the keypoints' square."""

DEFAULT_THRESHOLD: Final = 0.5
"""Patient malignancy probability at or above which the decision is malignant."""

TOP: Final = (0, 2, 4)
BOTTOM: Final = (1, 3, 5)
ANTERIOR: Final = (0, 1)
POSTERIOR: Final = (4, 5)


@dataclass(frozen=True)
class RoiStack:
    """The network's inputs for one vertebra.

    Attributes
    ----------
    inputs : numpy.ndarray
        ``(slices, 3, size, size)`` float32, each z-score normalised: channel 1 is the slice,
        channels 0 and 2 its neighbours (left and right of it along the lateral axis).
    offsets_mm : numpy.ndarray
        ``(slices,)`` lateral offset of each slice from the mid-sagittal plane.
    side_mm : float
        Side of the square box.
    centre_lps : numpy.ndarray
        ``(3,)`` the box's centre in the patient.
    frame : numpy.ndarray
        ``(3, 3)`` rows: lateral, superior, anterior unit vectors (LPS).
    """

    inputs: npt.NDArray[np.float32]
    offsets_mm: FloatArray
    side_mm: float
    centre_lps: FloatArray
    frame: FloatArray


def vertebra_frame(keypoints_lps: npt.ArrayLike) -> FloatArray:
    """Return a vertebra's lateral, superior and anterior unit vectors.

    Parameters
    ----------
    keypoints_lps : array-like
        ``(6, 3)`` LPS mm, `genant.KEYPOINT_NAMES` order (anterior top, anterior bottom,
        middle top, middle bottom, posterior top, posterior bottom).

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` orthonormal rows: lateral (normal of the keypoints' plane, pointing to the
        patient's left), superior, anterior.
    """
    kp = np.asarray(keypoints_lps, dtype=np.float64).reshape(6, 3)
    centred = kp - kp.mean(axis=0)
    lateral = np.linalg.svd(centred)[2][2]
    if lateral[0] < 0:  # LPS x grows to the patient's left
        lateral = -lateral
    up = kp[list(TOP)].mean(axis=0) - kp[list(BOTTOM)].mean(axis=0)
    up -= lateral * float(up @ lateral)
    up /= np.linalg.norm(up)
    anterior = np.cross(lateral, up)
    if float(anterior @ (kp[list(ANTERIOR)].mean(axis=0) - kp[list(POSTERIOR)].mean(axis=0))) < 0:
        anterior = -anterior
    return np.stack([lateral, up, anterior])


def roi_box(
    keypoints_lps: npt.ArrayLike, frame: npt.ArrayLike, margin: float = DEFAULT_MARGIN
) -> tuple[FloatArray, float]:
    """Return the centre and side of the square box holding the keypoints in the frame's plane.

    Parameters
    ----------
    keypoints_lps : array-like
        ``(6, 3)`` LPS mm.
    frame : array-like
        `vertebra_frame`.
    margin : float
        Share of the keypoints' square added on every side.

    Returns
    -------
    centre : numpy.ndarray
        ``(3,)`` LPS mm, on the keypoints' mean plane.
    side : float
        mm.
    """
    kp = np.asarray(keypoints_lps, dtype=np.float64).reshape(6, 3)
    f = np.asarray(frame, dtype=np.float64)
    mean = kp.mean(axis=0)
    uv = (kp - mean) @ f[1:].T  # superior, anterior coordinates
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    side = float((hi - lo).max()) * (1.0 + 2.0 * margin)
    centre = mean + ((lo + hi) / 2.0) @ f[1:]
    return centre, side


def roi_stack(
    volume_hu: npt.NDArray[Any],
    affine: npt.ArrayLike,
    keypoints_lps: npt.ArrayLike,
    *,
    slices: int = DEFAULT_SLICES,
    slice_mm: float = SLICE_MM,
    margin: float = DEFAULT_MARGIN,
    size: int = INPUT_SIZE,
) -> RoiStack:
    """Sample the network's inputs for one vertebra (see the module docstring).

    Parameters
    ----------
    volume_hu : numpy.ndarray
        ``(slices, rows, columns)`` Hounsfield units.
    affine : array-like
        Index → LPS mm.
    keypoints_lps : array-like
        ``(6, 3)`` the vertebra's keypoints.
    slices : int
        Sagittal slices scored (each with its two neighbours).
    slice_mm : float
        Distance between slices.
    margin : float
        Box margin.
    size : int
        Input side in pixels.

    Returns
    -------
    RoiStack
        The inputs and their geometry.

    Raises
    ------
    UnsupportedSeriesError
        ``roi_outside`` when a sampled plane leaves the scanned volume.
    """
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    frame = vertebra_frame(keypoints_lps)
    centre, side = roi_box(keypoints_lps, frame, margin)
    lateral, up, anterior = frame
    offsets = (np.arange(slices + 2) - (slices + 1) / 2.0) * slice_mm
    # pixel centres: row r (superior first), column c (anterior first)
    t = (np.arange(size) + 0.5) / size - 0.5
    rows = -t * side  # superior at the top
    cols = t * side  # anterior on the left
    grid = (
        centre[None, None, None, :]
        + offsets[:, None, None, None] * lateral
        + rows[None, :, None, None] * up
        + cols[None, None, :, None] * anterior
    )
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    points = grid.reshape(-1, 3)
    index = (np.c_[points, np.ones(len(points))] @ inverse.T)[:, :3]
    shape = np.asarray(volume_hu.shape, dtype=np.float64)
    if (index < -0.5).any() or (index > shape - 0.5).any():
        raise UnsupportedSeriesError(
            CtRefusal.ROI_OUTSIDE,
            f"the {slices + 2} sagittal planes of a {side:.0f} mm box around the vertebra "
            "leave the scanned volume (too close to the edge of the field of view)",
        )
    sampled = ndimage.map_coordinates(
        np.asarray(volume_hu, dtype=np.float32), index.T, order=1, mode="nearest"
    ).reshape(slices + 2, size, size)
    inputs = np.stack([sampled[k : k + 3] for k in range(slices)]).astype(np.float32)
    mean = inputs.mean(axis=(1, 2, 3), keepdims=True)
    std = inputs.std(axis=(1, 2, 3), keepdims=True)
    inputs = (inputs - mean) / np.maximum(std, 1e-6)
    return RoiStack(
        inputs=inputs.astype(np.float32),
        offsets_mm=np.asarray(offsets[1:-1], dtype=np.float64),
        side_mm=side,
        centre_lps=centre,
        frame=frame,
    )


class MalignancyNet(nn.Module):
    """ResNet-50 with one output: the malignancy probability's logit (Li et al.)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = resnet50(weights=None, num_classes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(N,)`` logits of ``(N, 3, 64, 64)`` z-scored inputs."""
        out: torch.Tensor = self.net(x)
        return out[:, 0]

    @torch.inference_mode()
    def probabilities(self, inputs: npt.ArrayLike) -> FloatArray:
        """Return the malignancy probability of each slice.

        Parameters
        ----------
        inputs : array-like
            ``(N, 3, size, size)`` (`RoiStack.inputs`).

        Returns
        -------
        numpy.ndarray
            ``(N,)`` in [0, 1].
        """
        self.eval()
        device = next(self.parameters()).device
        x = torch.as_tensor(np.asarray(inputs, dtype=np.float32), device=device)
        return torch.sigmoid(self(x)).double().cpu().numpy()


@dataclass(frozen=True)
class Characterisation:
    """A vertebra's benign / malignant call.

    Attributes
    ----------
    slice_probabilities : tuple of float
        Per scored slice, lateral offset order.
    probability : float
        The patient's (vertebra's) probability: the highest slice probability.
    threshold : float
        Decision threshold.
    malignant : bool
        ``probability >= threshold``.
    """

    slice_probabilities: tuple[float, ...]
    probability: float
    threshold: float
    malignant: bool


def characterise(
    stack: RoiStack, model: MalignancyNet, threshold: float = DEFAULT_THRESHOLD
) -> Characterisation:
    """Score every slice and take the highest probability (Li et al.'s per-patient rule).

    Parameters
    ----------
    stack : RoiStack
        The vertebra's inputs.
    model : MalignancyNet
        The network.
    threshold : float
        Malignant at or above it.

    Returns
    -------
    Characterisation
        Slice probabilities, the maximum and the decision.
    """
    probs = model.probabilities(stack.inputs)
    best = float(probs.max())
    return Characterisation(
        slice_probabilities=tuple(float(p) for p in probs),
        probability=best,
        threshold=threshold,
        malignant=best >= threshold,
    )


def save_characteriser(path: Path, model: MalignancyNet, training: dict[str, Any]) -> Path:
    """Write a checkpoint `load_characteriser` reads (atomically).

    Parameters
    ----------
    path : pathlib.Path
        Destination ``.pt`` file.
    model : MalignancyNet
        The network (weights saved on the CPU).
    training : dict
        Plain-typed metadata (recipe, seed, figures).

    Returns
    -------
    pathlib.Path
        `path`.
    """
    obj = {
        "arch": ARCH,
        "version": CHECKPOINT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "training": dict(training),
    }
    write_atomically(Path(path), lambda tmp: torch.save(obj, tmp))
    return Path(path)


def load_characteriser(
    path: Path | str, device: torch.device | str = "cpu"
) -> tuple[MalignancyNet, dict[str, Any]]:
    """Read a checkpoint written by `save_characteriser` (``weights_only=True``).

    Parameters
    ----------
    path : pathlib.Path or str
        The ``.pt`` file.
    device : torch.device or str
        Where the model goes.

    Returns
    -------
    model : MalignancyNet
        In eval mode.
    training : dict
        The metadata stored with it.

    Raises
    ------
    ValueError
        When the file is not a characterisation checkpoint of a known version.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("arch") != ARCH:
        raise ValueError(f"{path} is not a benign/malignant characterisation checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')!r}")
    model = MalignancyNet()
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), dict(ckpt.get("training", {}))
