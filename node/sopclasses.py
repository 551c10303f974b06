"""SOP classes and transfer syntaxes the node accepts (pydicom's constants, grouped)."""

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

# The classes of the objects the node builds, by the short names its builders use.
COMPREHENSIVE_SR = ComprehensiveSRStorage
GSPS = GrayscaleSoftcopyPresentationStateStorage
KOS = KeyObjectSelectionDocumentStorage
SECONDARY_CAPTURE = SecondaryCaptureImageStorage

ANALYSABLE_SOP_CLASSES: tuple[UID, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
"""Image classes the method runs on."""

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
