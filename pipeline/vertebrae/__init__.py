"""Vertebral fracture analysis on lateral spine radiographs (Pisov et al. 2020, ``method.md`` §8).

Modules, one concept each:

- `findings`: the typed, serialisable result of one image's vertebral analysis.
- `genant`: heights, Genant index, grade, deformity type (pure functions).
- `levels`: the rule that names vertebrae (T1…L5) only where the sacrum fixes the count.
- `anchors`, `net`, `detector`: the single-stage keypoint detector (anchors in mm, U-Net-like
  backbone, decoding and non-maximum suppression).
- `view`: which images are lateral views (ViewPosition, else the bundle's image model).
"""
