"""Vertebral compression fractures of known Genant index on a lateral phantom spine.

A fracture keeps the body's inferior end plate and lowers (or bows) the superior one until
the Genant index *of the body's keypoints* (`keypoints.keypoint_genant_index`, the ground
truth a detector learns) equals the requested value:

- **wedge**: the anterior height falls (the superior end plate tilts about its posterior
  corner);
- **biconcave**: both end plates bow towards the centre (`VertebralBody.concavity`), so the
  middle height falls;
- **crush**: the posterior height falls, optionally after all three heights have lost a
  share of the body's height (``all_reduced``).

The vertebrae above then move down by half the mean loss of the side heights (capped so
that no disc closes by more than half), so the column stays continuous, as
`spinexr.training.phantoms.lesions` does for its vertebral collapse. Fractures go only on
fully visible vertebrae (`Spine.visible_indices`).

`thoracic_wedging` adds the normal mild anterior wedging of thoracic vertebrae just above
the mild cut-off (G 0.805–0.88), the case Pisov et al. name as the hard one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade
from spinexr.training.phantoms.anatomy import Spine
from spinexr.training.phantoms.keypoints import keypoint_genant_index, keypoint_heights
from spinexr.training.phantoms.shapes import VertebralBody

GRADE_BANDS: dict[GenantGrade, tuple[float, float]] = {
    GenantGrade.NORMAL: (0.805, 0.88),
    GenantGrade.MILD: (0.755, 0.795),
    GenantGrade.MODERATE: (0.605, 0.745),
    GenantGrade.SEVERE: (0.35, 0.595),
}
"""Range of G drawn for each grade (kept 0.005 inside the default cut-offs; the normal band
is the mildly wedged near-normal range)."""

FRACTURE_TYPES: tuple[Deformity, ...] = (Deformity.WEDGE, Deformity.BICONCAVE, Deformity.CRUSH)
"""The three fracture types."""

_TYPE_WEIGHTS = (0.45, 0.3, 0.25)
_MAX_CONCAVITY_FLAT = 0.015
"""Wedge and crush keep at most this share of the height as end-plate concavity, so the
middle height never becomes the shortest by accident."""
_SHIFT_SHARE = 0.5
_TOLERANCE = 1e-6
_JUNCTION = ("T11", "T12", "L1", "L2")


class FractureError(ValueError):
    """A fracture that cannot be made (not a lateral view, hidden vertebra, bad index)."""


@dataclass(frozen=True)
class FractureSpec:
    """A fracture to make.

    Attributes
    ----------
    index : int
        Vertebra index in `Spine.vertebrae` (must be fully visible).
    genant : float
        Requested Genant index, in ``(0.1, 0.95)``.
    deformity : Deformity
        Wedge, biconcave or crush.
    all_reduced : float
        Crush only: share of the body's height that all three heights lose before the
        posterior height falls further (0: the posterior height alone falls).
    """

    index: int
    genant: float
    deformity: Deformity
    all_reduced: float = 0.0


@dataclass(frozen=True)
class AppliedFracture:
    """A fracture as made.

    Attributes
    ----------
    index : int
        Vertebra index.
    level : str
        Its level name (``"L1"``...).
    genant : float
        Genant index of the body's keypoints after the fracture.
    deformity : Deformity
        Requested type.
    grade : GenantGrade
        Grade of ``genant`` under the default cut-offs.
    """

    index: int
    level: str
    genant: float
    deformity: Deformity
    grade: GenantGrade


def compress(spine: Spine, spec: FractureSpec) -> AppliedFracture:
    """Make one fracture in place and move the vertebrae above down.

    Parameters
    ----------
    spine : Spine
        A lateral geometry; edited in place.
    spec : FractureSpec
        What to make.

    Returns
    -------
    AppliedFracture
        The fracture, with the Genant index of its keypoints (equal to ``spec.genant``
        within 1e-6).

    Raises
    ------
    FractureError
        On an AP view, an index out of range or of a vertebra that is not fully visible, a
        type that is not a fracture type, or a G outside ``(0.1, 0.95)``.
    """
    if spine.view != "LAT":
        raise FractureError("compression fractures are drawn on lateral views only")
    if not 0 <= spec.index < len(spine.vertebrae):
        raise FractureError(f"no vertebra {spec.index} (the spine has {len(spine.vertebrae)})")
    vertebra = spine.vertebrae[spec.index]
    if not vertebra.visible:
        raise FractureError(f"{vertebra.name} is not fully visible: no fracture there")
    if spec.deformity not in FRACTURE_TYPES:
        raise FractureError(f"unknown fracture type {spec.deformity!r}")
    if not 0.1 < spec.genant < 0.95:
        raise FractureError(f"requested Genant index {spec.genant} is outside (0.1, 0.95)")
    if not 0.0 <= spec.all_reduced <= 0.4:
        raise FractureError(f"all_reduced {spec.all_reduced} is outside [0, 0.4]")
    old = vertebra.body
    family, t_max = _family(_regularised(old), spec)
    new = family(_solve(family, t_max, spec.genant))
    vertebra.body = new
    if genant.grade(spec.genant) is not GenantGrade.NORMAL:
        vertebra.density *= 1.0 + 0.3 * (1.0 - spec.genant)
    _lower_above(spine, spec.index, old, new)
    achieved = keypoint_genant_index(new)
    return AppliedFracture(
        index=spec.index,
        level=vertebra.name,
        genant=achieved,
        deformity=spec.deformity,
        grade=genant.grade(achieved),
    )


def apply_fractures(spine: Spine, specs: Sequence[FractureSpec]) -> list[AppliedFracture]:
    """Make several fractures (in place), in the order given.

    Parameters
    ----------
    spine : Spine
        A lateral geometry; edited in place.
    specs : sequence of FractureSpec
        One per vertebra (a repeated index is an error).

    Returns
    -------
    list of AppliedFracture
        In the order of ``specs``.

    Raises
    ------
    FractureError
        As `compress`, or for a vertebra given twice.
    """
    seen: set[int] = set()
    out: list[AppliedFracture] = []
    for spec in specs:
        if spec.index in seen:
            raise FractureError(f"vertebra {spec.index} is given two fractures")
        seen.add(spec.index)
        out.append(compress(spine, spec))
    return out


def random_fracture_type(rng: np.random.Generator) -> tuple[Deformity, float]:
    """Draw a fracture type (wedge 45 %, biconcave 30 %, crush 25 %) and its ``all_reduced``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the draw.

    Returns
    -------
    tuple of (Deformity, float)
        The type and, for half of the crushes, a share in ``[0.1, 0.25]`` (else 0).
    """
    kind = FRACTURE_TYPES[int(rng.choice(3, p=_TYPE_WEIGHTS))]
    share = 0.0
    if kind is Deformity.CRUSH and rng.random() < 0.5:
        share = float(rng.uniform(0.1, 0.25))
    return kind, share


def plan_fractures(
    spine: Spine,
    rng: np.random.Generator,
    grades: Sequence[GenantGrade],
    *,
    exclude: Sequence[int] = (),
) -> list[FractureSpec]:
    """Choose levels, types and indices for fractures of the given grades.

    Levels are fully visible vertebrae, each used once, with the thoraco-lumbar junction
    (T11–L2), where osteoporotic fractures cluster, twice as likely. G is uniform within the
    grade's `GRADE_BANDS` range.

    Parameters
    ----------
    spine : Spine
        Geometry (not edited).
    rng : numpy.random.Generator
        Source of the choices.
    grades : sequence of GenantGrade
        One per fracture; a normal grade makes a near-normal deformity (G 0.805–0.88).
    exclude : sequence of int
        Vertebra indices not to use.

    Returns
    -------
    list of FractureSpec
        At most one per free visible vertebra (fewer when the spine runs out).
    """
    free = [k for k in spine.visible_indices() if k not in set(exclude)]
    specs: list[FractureSpec] = []
    for grade in grades:
        if not free:
            break
        weights = np.array([2.0 if spine.vertebrae[k].name in _JUNCTION else 1.0 for k in free])
        k = int(rng.choice(free, p=weights / weights.sum()))
        free.remove(k)
        lo, hi = GRADE_BANDS[grade]
        kind, share = random_fracture_type(rng)
        specs.append(FractureSpec(k, float(rng.uniform(lo, hi)), kind, share))
    return specs


def thoracic_wedging(
    spine: Spine,
    rng: np.random.Generator,
    probability: float,
    *,
    exclude: Sequence[int] = (),
) -> list[AppliedFracture]:
    """Wedge visible thoracic vertebrae mildly, as normal thoracic vertebrae are (in place).

    Parameters
    ----------
    spine : Spine
        A lateral geometry; edited in place.
    rng : numpy.random.Generator
        Source of the choices.
    probability : float
        Chance that each visible thoracic vertebra is wedged.
    exclude : sequence of int
        Vertebra indices to leave alone (e.g. the fractured ones).

    Returns
    -------
    list of AppliedFracture
        The wedged vertebrae (grade normal, G uniform in the normal band).
    """
    lo, hi = GRADE_BANDS[GenantGrade.NORMAL]
    out: list[AppliedFracture] = []
    for k in spine.visible_indices():
        draw_wedge, g = rng.random(), float(rng.uniform(lo, hi))
        if k in set(exclude) or not spine.vertebrae[k].thoracic or draw_wedge >= probability:
            continue
        out.append(compress(spine, FractureSpec(k, g, Deformity.WEDGE)))
    return out


# --- geometry -------------------------------------------------------------------------------


def _regularised(body: VertebralBody) -> VertebralBody:
    """Return the body with equal side heights (the shorter side's superior corner raised)."""
    h = max(body.bot_l - body.top_l, body.bot_r - body.top_r)
    return replace(body, top_l=body.bot_l - h, top_r=body.bot_r - h)


def _family(
    base: VertebralBody, spec: FractureSpec
) -> tuple[Callable[[float], VertebralBody], float]:
    """One-parameter deformation of ``base`` (G falls as t grows) and the largest t."""
    h = base.bot_l - base.top_l
    flat = min(base.concavity, _MAX_CONCAVITY_FLAT * h)
    if spec.deformity is Deformity.WEDGE:
        return (lambda t: replace(base, top_l=base.top_l + t, concavity=flat)), 0.92 * h
    if spec.deformity is Deformity.BICONCAVE:
        c0 = base.concavity
        return (lambda t: replace(base, concavity=c0 + t)), 0.48 * h - c0
    drop = spec.all_reduced * h
    return (
        lambda t: replace(
            base, top_l=base.top_l + drop, top_r=base.top_r + drop + t, concavity=flat
        )
    ), 0.92 * (h - drop)


def _solve(family: Callable[[float], VertebralBody], t_max: float, target: float) -> float:
    """Bisection for the t at which the keypoint Genant index of ``family(t)`` is ``target``."""
    lo, hi = 0.0, t_max
    if not keypoint_genant_index(family(hi)) <= target < keypoint_genant_index(family(lo)):
        raise FractureError(f"Genant index {target} is out of reach for this body")
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if keypoint_genant_index(family(mid)) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < _TOLERANCE:
            break
    return hi


def _lower_above(spine: Spine, k: int, old: VertebralBody, new: VertebralBody) -> None:
    """Move vertebrae ``0..k-1`` down by part of the mean height loss of body ``k``."""
    if k == 0:
        return
    loss = 0.5 * ((new.top_l - old.top_l) + (new.top_r - old.top_r))
    above = spine.vertebrae[k - 1].body
    # Keep at least half of each side's original disc height.
    cap = min(
        (new.top_l - above.bot_l) - 0.5 * (old.top_l - above.bot_l),
        (new.top_r - above.bot_r) - 0.5 * (old.top_r - above.bot_r),
    )
    shift = float(np.clip(_SHIFT_SHARE * loss, 0.0, max(cap, 0.0)))
    if shift <= 0.0:
        return
    for j in range(k):
        spine.vertebrae[j].shifted(dy=shift)


def deformity_of(body: VertebralBody) -> Deformity:
    """Deformity type of a body from its keypoint heights (none when normal).

    Parameters
    ----------
    body : VertebralBody
        The body.

    Returns
    -------
    Deformity
        `genant.deformity` of `keypoint_heights`.
    """
    return genant.deformity(keypoint_heights(body))
