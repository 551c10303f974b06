"""MMDetection components for VinDr-SpineXR training: dataset, image loading, metric.

Registered in mmdet's registries by :func:`register`, so that a training config names them
(``type="SpineXRDetDataset"``, ``"LoadSpineDisplayImage"``, ``"SpineXRMetric"``) as it would
name mmdet's own. Images go through the serving pipeline's preprocessing (decode, modality
LUT, VOI, MONOCHROME1 inversion, min-max to uint8, grey in three channels) via
`spinexr.training.data.DisplayCache`, so the detector trains on what it sees when it serves.

Coordinates: a dataset entry's boxes are in original DICOM pixels; `LoadSpineDisplayImage`
loads the (possibly downscaled) cached display image and scales the entry's boxes by the same
factor, so every later transform and the metric work in the loaded image's pixels.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from spinexr.pipeline.classes import CLASS_NAMES
from spinexr.training.data import DisplayCache, ImageRecord, load_dataset

logger = logging.getLogger(__name__)


def records_to_data_list(records: Sequence[ImageRecord]) -> list[dict[str, Any]]:
    """Convert dataset records to mmdet's data-list entries.

    Parameters
    ----------
    records : sequence of ImageRecord
        Images of one split.

    Returns
    -------
    list of dict
        ``img_path`` (the DICOM file), ``img_id``, ``image_id``, ``record``, ``width``/``height``
        (original columns/rows, used for aspect-ratio grouping only) and ``instances`` with
        ``bbox`` (original pixels, xyxy), ``bbox_label`` and ``ignore_flag``.
    """
    import pydicom

    out = []
    for index, record in enumerate(records):
        header = pydicom.dcmread(
            record.path, stop_before_pixels=True, specific_tags=["Rows", "Columns"]
        )
        out.append(
            {
                "img_path": str(record.path),
                "img_id": index,
                "image_id": record.image_id,
                "height": int(header.Rows),
                "width": int(header.Columns),
                "record": record,
                "instances": [
                    {"bbox": list(box.as_tuple()), "bbox_label": box.label, "ignore_flag": 0}
                    for box in record.boxes
                ],
            }
        )
    return out


@functools.cache
def register() -> None:
    """Register mmdet's modules and ours (idempotent)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources", category=UserWarning)
        from mmcv.transforms import BaseTransform
        from mmdet.datasets import BaseDetDataset
        from mmdet.registry import DATASETS, METRICS, TRANSFORMS
        from mmdet.utils import register_all_modules
        from mmengine.evaluator import BaseMetric

    register_all_modules(init_default_scope=False)

    @DATASETS.register_module(force=True)
    class SpineXRDetDataset(BaseDetDataset):
        """One split of a VinDr-SpineXR-layout folder (`spinexr.training.data.load_dataset`).

        Parameters
        ----------
        data_root : str
            Dataset root.
        split : {"train", "val", "test"}
            Which split.
        val_fraction, seed : float, int
            Validation split parameters (must match the classifier's for a common split).
        **kwargs
            `mmdet.datasets.BaseDetDataset` arguments (``pipeline``, ``filter_cfg``...).
        """

        METAINFO: ClassVar[dict[str, Any]] = {"classes": tuple(CLASS_NAMES)}

        def __init__(
            self, *, split: str, val_fraction: float = 0.2, seed: int = 0, **kwargs: Any
        ) -> None:
            self.split = split
            self.val_fraction = val_fraction
            self.split_seed = seed
            super().__init__(**kwargs)

        def load_data_list(self) -> list[dict[str, Any]]:
            dataset = load_dataset(
                Path(self.data_root), val_fraction=self.val_fraction, seed=self.split_seed
            )
            return records_to_data_list(dataset.split(self.split))

        def filter_data(self) -> list[dict[str, Any]]:
            # Normal images stay: the detector must learn not to fire on them.
            return list(self.data_list)

    @TRANSFORMS.register_module(force=True)
    class LoadSpineDisplayImage(BaseTransform):
        """Load the display image of ``img_path`` from the cache; scale the boxes to it.

        Parameters
        ----------
        cache_dir : str
            `DisplayCache` folder.
        max_side : int or None
            Longer side of the cached image (None: original size).
        """

        def __init__(self, cache_dir: str, max_side: int | None = None) -> None:
            self.cache_dir = cache_dir
            self.max_side = max_side
            self._cache: DisplayCache | None = None

        def transform(self, results: dict[str, Any]) -> dict[str, Any]:
            if self._cache is None:  # built lazily: one per dataloader worker
                self._cache = DisplayCache(Path(self.cache_dir), max_side=self.max_side)
            entry = self._cache.get_entry(results["record"])
            image = entry.image
            results["img"] = np.repeat(image[:, :, None], 3, axis=2)
            results["img_shape"] = image.shape[:2]
            results["ori_shape"] = image.shape[:2]
            instances = results.get("instances", [])
            if instances:
                boxes = entry.transform.to_resized([i["bbox"] for i in instances])
                for instance, box in zip(instances, boxes, strict=True):
                    instance["bbox"] = [float(v) for v in box]
            return results

    @METRICS.register_module(force=True)
    class SpineXRMetric(BaseMetric):
        """mAP@0.5 (101-point, all images) with `spinexr.training.metrics.average_precision`."""

        default_prefix = "spinexr"

        def process(self, data_batch: Any, data_samples: Sequence[dict[str, Any]]) -> None:
            for sample in data_samples:
                pred, gt = sample["pred_instances"], sample["gt_instances"]
                self.results.append(
                    (
                        np.asarray(gt["bboxes"].cpu(), dtype=np.float64).reshape(-1, 4),
                        np.asarray(gt["labels"].cpu(), dtype=np.int64),
                        np.asarray(pred["bboxes"].cpu(), dtype=np.float64).reshape(-1, 4),
                        np.asarray(pred["scores"].cpu(), dtype=np.float64),
                        np.asarray(pred["labels"].cpu(), dtype=np.int64),
                    )
                )

        def compute_metrics(self, results: list[Any]) -> dict[str, float]:
            from spinexr.training.metrics import ImageBoxes, ImageDetections, average_precision

            gts, dets = [], []
            for i, (gb, gl, pb, ps, pl) in enumerate(results):
                gts.append(ImageBoxes(image_id=str(i), boxes=gb, labels=gl))
                dets.append(ImageDetections(image_id=str(i), boxes=pb, scores=ps, labels=pl))
            result = average_precision(gts, dets, num_classes=len(CLASS_NAMES))
            metrics = {"mAP50": float(result.mean)}
            for name, ap in zip(CLASS_NAMES, result.per_class, strict=True):
                metrics[f"AP50_{name.replace(' ', '_')}"] = float(ap)
            return metrics
