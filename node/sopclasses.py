"""SOP classes and transfer syntaxes the node accepts."""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")

ANALYSABLE_SOP_CLASSES: tuple[UID, ...] = (CR_IMAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING)
"""Image classes the method runs on."""

BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
ENHANCED_SR = UID("1.2.840.10008.5.1.4.1.1.88.22")
COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
COMPREHENSIVE_3D_SR = UID("1.2.840.10008.5.1.4.1.1.88.34")
GSPS = UID("1.2.840.10008.5.1.4.1.1.11.1")
KOS = UID("1.2.840.10008.5.1.4.1.1.88.59")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")

OUTPUT_LIKE_SOP_CLASSES: tuple[UID, ...] = (
    BASIC_TEXT_SR,
    ENHANCED_SR,
    COMPREHENSIVE_SR,
    COMPREHENSIVE_3D_SR,
    GSPS,
    KOS,
    SECONDARY_CAPTURE,
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
