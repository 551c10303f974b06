"""SOP classes and transfer syntaxes the node accepts (pydicom's constants, grouped).

The CT image classes are the CT pipeline's (`spinexr.pipeline.ct.series.CT_SOP_CLASSES`:
what ingest accepts is what the worker's series selection calls CT).
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    KeyObjectSelectionDocumentStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from spinexr.pipeline.ct.series import CT_SOP_CLASSES

# The classes of the objects the node builds, by the short names its builders use.
COMPREHENSIVE_SR = ComprehensiveSRStorage
GSPS = GrayscaleSoftcopyPresentationStateStorage
KOS = KeyObjectSelectionDocumentStorage
SECONDARY_CAPTURE = SecondaryCaptureImageStorage

RADIOGRAPH_SOP_CLASSES: tuple[UID, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
"""The radiograph classes (CR, DX For Presentation and For Processing)."""

CT_IMAGE_SOP_CLASSES: tuple[UID, ...] = tuple(UID(uid) for uid in sorted(CT_SOP_CLASSES))
"""The CT image classes: CT Image Storage, Enhanced CT Image Storage and Legacy Converted
Enhanced CT Image Storage (the CT pipeline's `CT_SOP_CLASSES`, in UID order)."""

ANALYSABLE_SOP_CLASSES: tuple[UID, ...] = (*RADIOGRAPH_SOP_CLASSES, *CT_IMAGE_SOP_CLASSES)
"""Image classes the methods run on: the radiographs, then CT."""

OUTPUT_LIKE_SOP_CLASSES: tuple[UID, ...] = (
    BasicTextSRStorage,
    EnhancedSRStorage,
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
)
"""Classes of the kinds the node produces: accepted only so that loop prevention can
recognise (and drop) the node's own results; others' are stored, not analysed."""

TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
"""Every transfer syntax the pipeline can decode (pydicom + pylibjpeg + pyjpegls)."""
