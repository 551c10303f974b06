"""Training and evaluation of the vertebra keypoint models (Pisov et al. 2020, ``method.md`` §8)."""
