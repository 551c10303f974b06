"""Datasets in the VinDr-SpineXR layout: annotations, splits and a decode-once image cache.

`load_dataset` reads ``annotations/{train,test}.csv`` and the image folders of the real
release or of the phantom generator (same layout) into `ImageRecord` s; `DisplayCache`
turns a record into the serving pipeline's display image, decoded once and kept on disk.
"""

from spinexr.training.data.cache import CachedImage, DisplayCache, decode_display, scaled_size
from spinexr.training.data.records import (
    SPLIT_NAMES,
    BoxAnnotation,
    DatasetError,
    ImageRecord,
    SpineDataset,
)
from spinexr.training.data.splits import validation_studies
from spinexr.training.data.vindr import CSV_COLUMNS, IMAGE_SUFFIX, load_dataset

__all__ = [
    "CSV_COLUMNS",
    "IMAGE_SUFFIX",
    "SPLIT_NAMES",
    "BoxAnnotation",
    "CachedImage",
    "DatasetError",
    "DisplayCache",
    "ImageRecord",
    "SpineDataset",
    "decode_display",
    "load_dataset",
    "scaled_size",
    "validation_studies",
]
