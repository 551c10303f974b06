"""Synthetic spine radiograph phantoms in the VinDr-SpineXR layout.

`generate_dataset` writes a whole dataset (CSV annotations and DICOM files);
`make_phantom_image` is a synthetic DICOM factory for tests.
"""

from spinexr.training.phantoms.anatomy import REGIONS, VIEWS, Region, Spine, Vertebra, View
from spinexr.training.phantoms.dataset import CSV_HEADER, PhantomSummary, generate_dataset
from spinexr.training.phantoms.dicom import (
    MANUFACTURER,
    UID_PREFIX,
    PatientInfo,
    Photometric,
    SopKind,
    write,
)
from spinexr.training.phantoms.image import (
    SMALL_SIZE,
    RenderedPhantom,
    Size,
    make_phantom_image,
    render_phantom,
)
from spinexr.training.phantoms.lesions import Box, genant_index

__all__ = [
    "CSV_HEADER",
    "MANUFACTURER",
    "REGIONS",
    "SMALL_SIZE",
    "UID_PREFIX",
    "VIEWS",
    "Box",
    "PatientInfo",
    "PhantomSummary",
    "Photometric",
    "Region",
    "RenderedPhantom",
    "Size",
    "SopKind",
    "Spine",
    "Vertebra",
    "View",
    "genant_index",
    "generate_dataset",
    "make_phantom_image",
    "render_phantom",
    "write",
]
