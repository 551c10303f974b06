"""Training and evaluation of the CT models of issue 17 (Pisov et al. 2020, ``method.md`` §8)."""
