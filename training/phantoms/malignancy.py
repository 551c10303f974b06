"""Benign and malignant fracture patterns painted into a CT phantom's vertebra (Li et al. 2021).

Li et al.'s radiologist scored six imaging features; those that told the two apart were bone
destruction, cortical interruption and a paravertebral soft-tissue mass (malignant), several
levels involved (malignant), and a transverse fracture line (benign). `draw_features` picks a
mix of them for a case (each with its own probability, so that no single feature decides;
``hard`` cases carry one subtle feature, or a benign mimic such as a Schmorl's node), and
`apply_pattern` paints them into a phantom made with ``labels=True``, after its blur and noise:

- **lytic destruction**: blobs of tumour density (`HU_TUMOUR`) in the vertebral body;
- **cortical interruption**: a blob centred on the body's surface, through its cortex;
- **soft-tissue mass**: an ellipsoid beside the body, painted where there is no bone;
- **another level**: a lytic blob in a neighbouring vertebra;
- **transverse fracture line**: a thin sclerotic band across the body (`HU_SCLEROSIS` added);
- **osteopenia**: the cancellous bone of the body less dense;
- **intravertebral vacuum cleft**: a thin band of gas under the upper endplate of a collapsed
  body (Kümmell's sign), a CT finding of benign osteoporotic collapse that Li et al.'s
  references list; drawn for most benign fractures without a fracture line;
- **Schmorl's node**: a small lucency at an endplate (a benign mimic of destruction).

A hard malignant case's single small lytic focus lies within `CENTRAL_MM` of the body's
mid-sagittal plane: subtle, but inside the sagittal slices the method scores (a focus outside
them would be invisible to any classifier of those slices, and measure nothing of it).

Edges are soft (a 1.5 mm ramp) and the painted tissue gets the phantom's noise level, so
that a feature is not given away by a sharp edge or a flat value. The body is the vertebra's
bone label in front of its posterior wall (the posterior keypoints).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from spinexr.training.phantoms.ct import CtPhantom, CtVertebraTruth

HU_TUMOUR: Final = 45.0
"""Mean HU of tumour tissue replacing bone, and of a paravertebral mass."""

HU_SCLEROSIS: Final = 380.0
"""HU added along a sclerotic fracture line."""

HU_OSTEOPENIA: Final = -70.0
"""HU added to the cancellous bone of an osteopenic body."""

NOISE_HU: Final = 18.0
"""Noise of painted tissue (HU, standard deviation)."""

RAMP_MM: Final = 1.5
"""Width of a painted feature's soft edge."""

HARD_SHARE: Final = 0.2
"""Share of cases drawn as hard (one subtle feature, or a mimic)."""

HU_GAS: Final = -700.0
"""Mean HU of the gas in a vacuum cleft (partial volume with the collapsed bone)."""

CENTRAL_MM: Final = 6.0
"""A hard case's lytic focus lies within this distance of the mid-sagittal plane."""


class Pattern(enum.StrEnum):
    """What a fracture is."""

    MALIGNANT = "malignant"
    BENIGN = "benign"


@dataclass(frozen=True)
class PatternFeatures:
    """The imaging features painted for one case.

    Attributes
    ----------
    pattern : Pattern
        The truth.
    lytic : int
        Lytic blobs in the body.
    lytic_radius_mm : tuple of float
        Their radius range.
    cortical_break : bool
        A blob through the cortex.
    soft_tissue_mass : bool
        A paravertebral mass.
    other_level : bool
        A lytic blob in a neighbouring vertebra.
    fracture_line : bool
        A transverse sclerotic band.
    osteopenia : bool
        Less dense cancellous bone.
    schmorl : bool
        A small lucency at an endplate.
    vacuum : bool
        An intravertebral vacuum cleft.
    hard : bool
        Drawn as a hard case.
    """

    pattern: Pattern
    lytic: int = 0
    lytic_radius_mm: tuple[float, float] = (3.0, 7.0)
    cortical_break: bool = False
    soft_tissue_mass: bool = False
    other_level: bool = False
    fracture_line: bool = False
    osteopenia: bool = False
    schmorl: bool = False
    vacuum: bool = False
    hard: bool = False


def draw_features(
    pattern: Pattern, rng: np.random.Generator, *, hard: bool | None = None
) -> PatternFeatures:
    """Draw a mix of features for a case of ``pattern``.

    Parameters
    ----------
    pattern : Pattern
        Malignant or benign.
    rng : numpy.random.Generator
        Randomness.
    hard : bool, optional
        Force a hard (or an ordinary) case; drawn with `HARD_SHARE` when omitted.

    Returns
    -------
    PatternFeatures
        Malignant: at least one of lytic destruction, cortical interruption and a mass (a
        hard one: a single small lytic blob near the mid-sagittal plane). Benign: a fracture
        line (80 %) or else, mostly, a vacuum cleft; osteopenia (always without a line);
        sometimes a Schmorl's node (a hard one: a faint line and a Schmorl's node).
    """
    if hard is None:
        hard = bool(rng.random() < HARD_SHARE)
    if pattern is Pattern.MALIGNANT:
        if hard:
            return PatternFeatures(pattern, lytic=1, lytic_radius_mm=(2.5, 3.5), hard=True)
        while True:
            f = PatternFeatures(
                pattern,
                lytic=int(rng.integers(1, 4)) if rng.random() < 0.8 else 0,
                cortical_break=bool(rng.random() < 0.6),
                soft_tissue_mass=bool(rng.random() < 0.5),
                other_level=bool(rng.random() < 0.3),
                osteopenia=bool(rng.random() < 0.3),
            )
            if f.lytic or f.cortical_break or f.soft_tissue_mass:
                return f
    if hard:
        return PatternFeatures(pattern, fracture_line=True, schmorl=True, hard=True)
    line = bool(rng.random() < 0.8)
    return PatternFeatures(
        pattern,
        fracture_line=line,
        osteopenia=bool(rng.random() < 0.6) or not line,
        schmorl=bool(rng.random() < 0.3),
        vacuum=bool(rng.random() < (0.1 if line else 0.75)),
    )


def apply_pattern(
    phantom: CtPhantom, level: str, features: PatternFeatures, rng: np.random.Generator
) -> npt.NDArray[np.int16]:
    """Paint a case's features into the vertebra at ``level``; return the new HU volume.

    Parameters
    ----------
    phantom : CtPhantom
        Made with ``labels=True``.
    level : str
        The vertebra (e.g. the fractured one).
    features : PatternFeatures
        From `draw_features`.
    rng : numpy.random.Generator
        Randomness (positions, sizes, noise).

    Returns
    -------
    numpy.ndarray
        ``int16`` HU, the phantom's shape; the phantom itself is not changed.

    Raises
    ------
    ValueError
        When the phantom has no labels or no such vertebra.
    """
    if phantom.labels is None:
        raise ValueError("the phantom has no bone labels: make it with labels=True")
    index = next(i for i, v in enumerate(phantom.vertebrae) if v.level == level)
    hu = phantom.hu.astype(np.float32)
    affine = phantom.grid.affine()
    painter = _Painter(hu, affine, rng)
    vertebra = phantom.vertebrae[index]
    body = painter.body(phantom.labels, index + 1, vertebra)
    if features.osteopenia:
        painter.add(body & (hu < 500), np.full(int(body.sum()), HU_OSTEOPENIA, dtype=np.float32))
    where = painter.central(body, vertebra) if features.hard else body
    for _ in range(features.lytic):
        painter.blob(body, painter.random_point(where), rng.uniform(*features.lytic_radius_mm))
    if features.cortical_break:
        painter.blob(
            painter.grow(body), painter.random_point(painter.surface(body)), rng.uniform(3, 5)
        )
    if features.soft_tissue_mass:
        painter.mass(vertebra, rng)
    if features.other_level:
        neighbour = index + (1 if index + 1 < len(phantom.vertebrae) else -1)
        other = painter.body(phantom.labels, neighbour + 1, phantom.vertebrae[neighbour])
        if other.any():
            painter.blob(other, painter.random_point(other), rng.uniform(3, 6))
    if features.fracture_line:
        painter.line(body, vertebra, rng, faint=features.hard)
    if features.schmorl:
        painter.schmorl(body, vertebra, rng)
    if features.vacuum:
        painter.vacuum(body, vertebra, rng)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


class _Painter:
    """Paints soft-edged features into a HU volume (in place)."""

    def __init__(
        self, hu: npt.NDArray[np.float32], affine: npt.NDArray[np.float64], rng: np.random.Generator
    ) -> None:
        self.hu, self.affine, self.rng = hu, affine, rng
        idx = np.indices(hu.shape, dtype=np.float32).reshape(3, -1)
        self.lps = (affine[:3, :3] @ idx + affine[:3, 3:4]).T.reshape(*hu.shape, 3)

    def body(
        self, labels: npt.NDArray[np.uint8], label: int, v: CtVertebraTruth
    ) -> npt.NDArray[np.bool_]:
        """Return the vertebra's bone in front of its posterior wall."""
        anterior = v.axes[1]
        wall = float(v.keypoints[[4, 5]].mean(axis=0) @ anterior)
        mask = labels == label
        return mask & ((self.lps @ anterior) >= wall - 1.0)

    def random_point(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        """Return a random voxel centre of ``mask`` (LPS)."""
        where = np.argwhere(mask)
        k = where[int(self.rng.integers(len(where)))]
        return self.lps[tuple(k)].astype(np.float64)

    def central(self, mask: npt.NDArray[np.bool_], v: CtVertebraTruth) -> npt.NDArray[np.bool_]:
        """Return the voxels of ``mask`` within `CENTRAL_MM` of the mid-sagittal plane."""
        lateral = (self.lps - v.centre.astype(np.float32)) @ v.axes[0].astype(np.float32)
        inside = mask & (np.abs(lateral) <= CENTRAL_MM)
        return inside if inside.any() else mask

    def surface(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Return the voxels of ``mask`` with a neighbour outside it (the cortex)."""
        from scipy import ndimage

        return mask & ~ndimage.binary_erosion(mask)

    def grow(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Return ``mask`` and its neighbours (a break reaches through the cortex)."""
        from scipy import ndimage

        return ndimage.binary_dilation(mask, iterations=2)

    def _weight(self, distance: npt.NDArray[np.float32], radius: float) -> npt.NDArray[np.float32]:
        return np.clip((radius - distance) / RAMP_MM + 0.5, 0.0, 1.0).astype(np.float32)

    def _blend(
        self, where: npt.NDArray[np.bool_], weight: npt.NDArray[np.float32], target: float
    ) -> None:
        noisy = target + self.rng.normal(0.0, NOISE_HU, size=int(where.sum())).astype(np.float32)
        w = weight[where]
        self.hu[where] = self.hu[where] * (1.0 - w) + noisy * w

    def add(self, where: npt.NDArray[np.bool_], values: npt.NDArray[np.float32]) -> None:
        """Add ``values`` (one per voxel of ``where``, or broadcast) to the HU."""
        self.hu[where] += values[: int(where.sum())]

    def blob(
        self, inside: npt.NDArray[np.bool_], centre: npt.NDArray[np.float64], radius: float
    ) -> None:
        """Paint tumour density in a sphere, within ``inside``."""
        distance = np.linalg.norm(self.lps - centre.astype(np.float32), axis=-1)
        weight = self._weight(distance, radius)
        self._blend(inside & (weight > 0), weight, HU_TUMOUR)

    def mass(self, v: CtVertebraTruth, rng: np.random.Generator) -> None:
        """Paint a paravertebral soft-tissue mass beside the body, where there is no bone."""
        left, anterior, superior = v.axes
        side = 1.0 if rng.random() < 0.5 else -1.0
        depth = float(np.linalg.norm(v.keypoints[0] - v.keypoints[4]))
        centre = (
            v.centre
            + side * left * rng.uniform(0.7, 1.0) * depth
            + anterior * rng.uniform(-0.2, 0.3) * depth
        )
        radii = np.array([rng.uniform(8, 14), rng.uniform(10, 18), rng.uniform(12, 22)])
        local = (self.lps - centre.astype(np.float32)) @ np.stack(
            [left, anterior, superior]
        ).T.astype(np.float32)
        distance = np.linalg.norm(local / radii.astype(np.float32), axis=-1) * float(radii.min())
        weight = self._weight(distance, float(radii.min()))
        self._blend((weight > 0) & (self.hu < 150), weight, HU_TUMOUR)

    def line(
        self,
        body: npt.NDArray[np.bool_],
        v: CtVertebraTruth,
        rng: np.random.Generator,
        *,
        faint: bool,
    ) -> None:
        """Paint a transverse sclerotic band across the body."""
        superior = v.axes[2]
        top = float(v.keypoints[[0, 2, 4]].mean(axis=0) @ superior)
        bottom = float(v.keypoints[[1, 3, 5]].mean(axis=0) @ superior)
        level = top - rng.uniform(0.2, 0.5) * (top - bottom)
        thickness = rng.uniform(1.5, 3.0)
        tilt = v.axes[1] * rng.uniform(-0.1, 0.1)
        s = self.lps @ (superior + tilt).astype(np.float32) - level
        weight = np.clip((thickness / 2 - np.abs(s)) / RAMP_MM + 0.5, 0.0, 1.0).astype(np.float32)
        where = body & (weight > 0)
        gain = HU_SCLEROSIS * (0.4 if faint else 1.0)
        self.hu[where] += weight[where] * gain

    def vacuum(
        self, body: npt.NDArray[np.bool_], v: CtVertebraTruth, rng: np.random.Generator
    ) -> None:
        """Paint a vacuum cleft: a thin gas band under the upper endplate, not to the cortex."""
        left, anterior, superior = (a.astype(np.float32) for a in v.axes)
        top = float(v.keypoints[[0, 2, 4]].mean(axis=0) @ superior)
        bottom = float(v.keypoints[[1, 3, 5]].mean(axis=0) @ superior)
        level = top - rng.uniform(0.15, 0.35) * (top - bottom)
        thickness = rng.uniform(2.0, 4.0)
        offset = self.lps - v.centre.astype(np.float32)
        across = np.maximum(
            np.abs(offset @ left) / rng.uniform(7.0, 11.0),
            np.abs(offset @ anterior - rng.uniform(-2.0, 4.0)) / rng.uniform(6.0, 9.0),
        )
        s = self.lps @ superior - level
        weight = np.clip((thickness / 2 - np.abs(s)) / RAMP_MM + 0.5, 0.0, 1.0)
        weight = (weight * np.clip((1.0 - across) * 4.0, 0.0, 1.0)).astype(np.float32)
        self._blend(body & (weight > 0), weight, HU_GAS)

    def schmorl(
        self, body: npt.NDArray[np.bool_], v: CtVertebraTruth, rng: np.random.Generator
    ) -> None:
        """Paint a small lucency at the upper or lower endplate."""
        pick = [2, 3][int(rng.integers(2))]  # middle top or middle bottom keypoint
        inward = v.axes[2] * (-1.0 if pick == 2 else 1.0)
        centre = v.keypoints[pick] + inward * 2.0
        self.blob(body, centre, rng.uniform(2.0, 3.0))
