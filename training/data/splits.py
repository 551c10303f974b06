"""Validation split: a fixed, seeded share of the training studies, stratified by abnormality.

Each study gets a rank key ``sha256(seed, study_id)``; within each stratum (studies with at
least one abnormal image, and normal studies) the studies with the smallest keys go to
validation. The result depends only on the set of studies, their abnormality and the seed:
not on CSV row order, numpy versions or the order studies were added.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping


def validation_studies(
    abnormal_by_study: Mapping[str, bool], val_fraction: float, seed: int
) -> set[str]:
    """Choose the validation studies.

    Parameters
    ----------
    abnormal_by_study : mapping of str to bool
        Every training study → whether any of its images is abnormal.
    val_fraction : float
        Share of studies for validation, in ``[0, 1)``. With at least two studies and a
        positive fraction, at least one study goes to validation and at least one stays in
        training.
    seed : int
        Seed of the split.

    Returns
    -------
    set of str
        Study ids for validation.

    Raises
    ------
    ValueError
        If `val_fraction` is outside ``[0, 1)``.
    """
    if not 0.0 <= val_fraction < 1.0 or math.isnan(val_fraction):
        raise ValueError(f"val_fraction must be within [0, 1), got {val_fraction}")
    studies = sorted(abnormal_by_study)
    n = len(studies)
    n_val = round(n * val_fraction)
    if n >= 2 and val_fraction > 0.0:
        n_val = min(max(n_val, 1), n - 1)
    if n_val == 0:
        return set()

    strata = {
        flag: sorted((s for s in studies if abnormal_by_study[s] is flag), key=_key(seed))
        for flag in (True, False)
    }
    # Largest-remainder allocation of n_val over the strata, ties to the abnormal stratum.
    exact = {flag: n_val * len(members) / n for flag, members in strata.items()}
    take = {flag: math.floor(v) for flag, v in exact.items()}
    for flag in sorted(strata, key=lambda f: (-(exact[f] - take[f]), not f)):
        if sum(take.values()) >= n_val:
            break
        if take[flag] < len(strata[flag]):
            take[flag] += 1
    return {s for flag, members in strata.items() for s in members[: take[flag]]}


def _key(seed: int) -> _RankKey:
    return _RankKey(seed)


class _RankKey:
    """``sha256(seed, study_id)`` as the sort key of a study."""

    def __init__(self, seed: int) -> None:
        self.prefix = f"spinexr-val-split\x1f{int(seed)}\x1f".encode()

    def __call__(self, study_id: str) -> tuple[bytes, str]:
        return (hashlib.sha256(self.prefix + study_id.encode()).digest(), study_id)
