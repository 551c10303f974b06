"""Measurement groups a viewer can place: a region and the figures read from it, as two groups.

Every measurement group the node writes under ``Imaging Measurements`` is located on an
image, so that viewers which draw TID 1500 reports (OHIF; ``docs/viewers.md``) can show and
list each of them. A located result is written as a pair of groups sharing one Tracking
Identifier and Tracking Unique Identifier (PS3.16: groups of different templates about one
object are correlated by a shared tracking UID, as in PS3.17 RRR.5):

1. a TID 1410 planar ROI group: the region (Image Region, SCOORD) on its source image, the
   finding, the optional finding sites, geometric purpose and qualitative evaluations of the
   region, and no measurement;
2. a TID 1501 group right after it: the same finding and algorithm, every measurement
   ``INFERRED FROM`` a copy of the region (or from its own coordinates, such as a height's
   line) and the qualitative evaluations of the result.

Why two groups: TID 1410's measurements (TID 1419) have no SCOORD row and highdicom refuses
referenced coordinates in a planar ROI group, while OHIF's tracking adapter takes a planar
ROI group's region from its first measurement when it has one. A result about a whole image
(an image's or the study's abnormality, an image's vertebral summary) uses the whole image as
its region (`whole_image`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from highdicom.sr import (
    AlgorithmIdentification,
    CoordinatesForMeasurement,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

Group = MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations


@dataclass(frozen=True)
class Figure:
    """One number of a located result, to be written ``INFERRED FROM`` its region.

    Attributes
    ----------
    name : pydicom.sr.coding.Code
        Concept name.
    value : float
        The value.
    unit : pydicom.sr.coding.Code
        UCUM unit.
    derivation : pydicom.sr.coding.Code or None
        E.g. ``Maximum`` (CID 7464).
    """

    name: Code
    value: float
    unit: Code
    derivation: Code | None = None


def whole_image(source: Dataset) -> npt.NDArray[np.float64]:
    """Return the outline of a whole image as a closed 5-point polyline.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image's header (Rows, Columns).

    Returns
    -------
    numpy.ndarray
        ``(5, 2)`` (column, row) points clockwise from ``(0, 0)``, the top-left corner of the
        top-left pixel (PS3.3 C.18.6.1.2), to ``(Columns, Rows)``; the last equals the first.
    """
    cols, rows = float(source.Columns), float(source.Rows)
    return np.array(
        [[0.0, 0.0], [cols, 0.0], [cols, rows], [0.0, rows], [0.0, 0.0]], dtype=np.float64
    )


def inferred_from(
    figures: Sequence[Figure], region: npt.NDArray[np.float64], source: Dataset
) -> list[Measurement]:
    """Return measurements each ``INFERRED FROM`` a copy of one region.

    Parameters
    ----------
    figures : sequence of Figure
        The numbers.
    region : numpy.ndarray
        ``(n, 2)`` (column, row) points of a POLYLINE on ``source``.
    source : pydicom.dataset.Dataset
        The image the region is drawn on.

    Returns
    -------
    list of highdicom.sr.Measurement
        One per figure, in order.
    """
    return [
        Measurement(
            name=figure.name,
            value=figure.value,
            unit=figure.unit,
            derivation=figure.derivation,
            referenced_coordinates=[
                CoordinatesForMeasurement(
                    graphic_type=GraphicTypeValues.POLYLINE,
                    graphic_data=region,
                    source_image=SourceImageForRegion.from_source_image(source),
                )
            ],
        )
        for figure in figures
    ]


def located_groups(
    *,
    tracking_uid: str,
    tracking_id: str,
    region: npt.NDArray[np.float64],
    source: Dataset,
    finding: Code,
    algorithm: AlgorithmIdentification | None,
    figures: Sequence[Figure] = (),
    measurements: Sequence[Measurement] = (),
    evaluations: Sequence[QualitativeEvaluation] = (),
    region_evaluations: Sequence[QualitativeEvaluation] = (),
    finding_sites: Sequence[FindingSite] | None = None,
    geometric_purpose: Code | None = None,
    image_group: bool = True,
) -> list[Group]:
    """Return the planar ROI group of a region and the TID 1501 group of what it shows.

    Parameters
    ----------
    tracking_uid, tracking_id : str
        Tracking Unique Identifier and Tracking Identifier of both groups.
    region : numpy.ndarray
        ``(n, 2)`` (column, row) points of a closed POLYLINE on ``source``.
    source : pydicom.dataset.Dataset
        The image the region is drawn on.
    finding : pydicom.sr.coding.Code
        Finding type of both groups.
    algorithm : highdicom.sr.AlgorithmIdentification or None
        TID 4019 of both groups.
    figures : sequence of Figure
        Numbers written ``INFERRED FROM`` a copy of the region.
    measurements : sequence of highdicom.sr.Measurement
        Measurements built by the caller with their own coordinates; written first.
    evaluations : sequence of highdicom.sr.QualitativeEvaluation
        Qualitative evaluations of the TID 1501 group.
    region_evaluations : sequence of highdicom.sr.QualitativeEvaluation
        Qualitative evaluations of the planar ROI group.
    finding_sites : sequence of highdicom.sr.FindingSite, optional
        Finding sites of both groups.
    geometric_purpose : pydicom.sr.coding.Code, optional
        Geometric purpose of the region (TID 1410 row 7).
    image_group : bool
        Whether the TID 1501 group references ``source`` as its source image (False for a
        study-level result, which the region only locates).

    Returns
    -------
    list
        ``[planar ROI group, TID 1501 group]``, or only the planar ROI group when there is
        no measurement and no evaluation to write (a failed study's summary: its finding).
    """
    roi = PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=tracking_id),
        referenced_region=ImageRegion(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=region,
            source_image=SourceImageForRegion.from_source_image(source),
        ),
        finding_type=finding,
        finding_sites=finding_sites,
        geometric_purpose=geometric_purpose,
        algorithm_id=algorithm,
        qualitative_evaluations=list(region_evaluations) or None,
    )
    if not (figures or measurements or evaluations):
        return [roi]
    inferred = inferred_from(figures, region, source)
    numbers = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier=tracking_id),
        finding_type=finding,
        finding_sites=finding_sites,
        algorithm_id=algorithm,
        measurements=[*measurements, *inferred] or None,
        qualitative_evaluations=list(evaluations) or None,
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)]
        if image_group
        else None,
    )
    return [roi, numbers]
