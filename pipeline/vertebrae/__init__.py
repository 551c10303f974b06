"""Vertebral fracture analysis on lateral spine radiographs (Pisov et al. 2020, ``method.md`` §8).

Modules, one concept each:

- `findings`: the typed, serialisable result of one image's vertebral analysis.
- `genant`: heights, Genant index, grade, deformity type (pure functions).
- `objects`: what a keypoint model returns, and the `KeypointModel` protocol.
- `anchors`, `net`, `detector`: Pisov et al.'s single-stage keypoint detector (anchors in
  mm, U-Net-like backbone, decoding, non-maximum suppression, scale search).
- `krcnn`: torchvision's Keypoint R-CNN, the baseline the detector is compared with.
- `loader`: the model a bundle names, from its checkpoint.
- `levels`: the rule that names vertebrae (T1…L5) only where the sacrum fixes the count.
- `view`: which images are lateral views (ViewPosition, else the bundle's image model).
- `stage`: the pipeline stage tying these together for one image.
"""
