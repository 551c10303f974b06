"""How the SR and the GSPS name and draw one analysed vertebra.

Naming: every analysed vertebra of a study gets a Tracking Identifier (``"vertebra L1
(#3 from top)"`` when its level is established, ``"vertebra #3 from top"`` when it is not)
and a Tracking UID derived from the result like the box UIDs
(`spinexr.node.outputs.provenance.output_uid`: same result, same UID), so the SR groups and
the GSPS lines of a vertebra can be matched (`vertebra_trackings`).

Geometry, in the source image's pixels (origin at the top-left corner of the top-left pixel,
the convention of SR SCOORD and GSPS PIXEL units, so no half-pixel shift) and clipped to the
image: the body's outline is the closed polyline through the six keypoints anterior top,
middle top, posterior top, posterior bottom, middle bottom, anterior bottom, anterior top
(`outline`); each height is the two-point line from its top to its bottom keypoint
(`height_lines`, in `spinexr.pipeline.vertebrae.genant.HEIGHT_NAMES` order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from spinexr.node.outputs.provenance import OUTPUT_FORMAT_VERSION, output_uid
from spinexr.pipeline.results import StudyResult
from spinexr.pipeline.vertebrae.findings import VertebraFinding

OUTLINE_ORDER: tuple[int, ...] = (0, 2, 4, 5, 3, 1, 0)
"""Keypoint indices of the closed outline (at, mt, pt, pb, mb, ab, at)."""

HEIGHT_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5))
"""Keypoint indices (top, bottom) of the anterior, middle and posterior heights."""

_NUMBER = re.compile(r"#(\d+) from top")


@dataclass(frozen=True)
class VertebraTracking:
    """How the SR and the GSPS name one analysed vertebra.

    Attributes
    ----------
    image_number : int
        1-based position of its image in the result.
    sop_instance_uid : str
        The source image.
    vertebra : VertebraFinding
        The vertebra.
    identifier : str
        Tracking Identifier, e.g. ``"vertebra L1 (#3 from top)"``.
    uid : str
        Tracking UID, derived from the result.
    """

    image_number: int
    sop_instance_uid: str
    vertebra: VertebraFinding
    identifier: str
    uid: str


def vertebra_identifier(vertebra: VertebraFinding) -> str:
    """Return a vertebra's Tracking Identifier.

    Parameters
    ----------
    vertebra : VertebraFinding
        The vertebra.

    Returns
    -------
    str
        ``"vertebra L1 (#3 from top)"`` with an established level, else
        ``"vertebra #3 from top"``.
    """
    position = f"#{vertebra.number} from top"
    if vertebra.level is None:
        return f"vertebra {position}"
    return f"vertebra {vertebra.level} ({position})"


def identifier_number(identifier: str) -> int | None:
    """Return the number from the top that a Tracking Identifier carries (None if none).

    Parameters
    ----------
    identifier : str
        A `vertebra_identifier`.

    Returns
    -------
    int or None
        The vertebra's number from the top.
    """
    match = _NUMBER.search(identifier)
    return None if match is None else int(match.group(1))


def vertebra_trackings(result: StudyResult, root: str) -> list[VertebraTracking]:
    """Return the tracking identifier and UID of every analysed vertebra of a study.

    Parameters
    ----------
    result : StudyResult
        The analysis.
    root : str
        UID root.

    Returns
    -------
    list of VertebraTracking
        In image order, then top to bottom.
    """
    out: list[VertebraTracking] = []
    prov = result.provenance
    for image_number, image in enumerate(result.images, start=1):
        analysis = image.vertebrae
        if analysis is None or not analysis.analysed:
            continue
        for vertebra in analysis.vertebrae:
            points = ";".join(f"{x:.3f},{y:.3f}" for x, y in vertebra.keypoints)
            uid = output_uid(
                root,
                "tracking",
                OUTPUT_FORMAT_VERSION,
                result.study_instance_uid,
                image.sop_instance_uid,
                "vertebra",
                vertebra.number,
                vertebra.level or "",
                points,
                prov.bundle_name,
                prov.bundle_version,
                prov.weights_digest,
            )
            out.append(
                VertebraTracking(
                    image_number=image_number,
                    sop_instance_uid=image.sop_instance_uid,
                    vertebra=vertebra,
                    identifier=vertebra_identifier(vertebra),
                    uid=uid,
                )
            )
    return out


def keypoints_in_image(
    vertebra: VertebraFinding, rows: int, columns: int
) -> npt.NDArray[np.float64]:
    """Return a vertebra's six keypoints clipped to the image.

    Parameters
    ----------
    vertebra : VertebraFinding
        The vertebra.
    rows, columns : int
        Image size.

    Returns
    -------
    numpy.ndarray
        ``(6, 2)`` ``(x, y)`` points within ``[0, columns] × [0, rows]``.
    """
    points = np.asarray(vertebra.keypoints, dtype=np.float64).reshape(6, 2)
    points[:, 0] = np.clip(points[:, 0], 0.0, float(columns))
    points[:, 1] = np.clip(points[:, 1], 0.0, float(rows))
    return points


def outline(vertebra: VertebraFinding, rows: int, columns: int) -> npt.NDArray[np.float64]:
    """Return the vertebral body's outline as a closed polyline.

    Parameters
    ----------
    vertebra : VertebraFinding
        The vertebra.
    rows, columns : int
        Image size (points are clipped to it).

    Returns
    -------
    numpy.ndarray
        ``(7, 2)`` points in `OUTLINE_ORDER`; the last equals the first.
    """
    return keypoints_in_image(vertebra, rows, columns)[list(OUTLINE_ORDER)]


def height_lines(
    vertebra: VertebraFinding, rows: int, columns: int
) -> list[npt.NDArray[np.float64]]:
    """Return the anterior, middle and posterior height lines.

    Parameters
    ----------
    vertebra : VertebraFinding
        The vertebra.
    rows, columns : int
        Image size (points are clipped to it).

    Returns
    -------
    list of numpy.ndarray
        Three ``(2, 2)`` arrays: top point, bottom point.
    """
    points = keypoints_in_image(vertebra, rows, columns)
    return [points[[top, bottom]] for top, bottom in HEIGHT_PAIRS]


def ct_vertebra_identifier(vertebra: VertebraFinding) -> str:
    """Return a CT vertebra's Tracking Identifier, e.g. ``"CT vertebra #3 from top"``.

    Parameters
    ----------
    vertebra : VertebraFinding
        The vertebra (on the reformat).

    Returns
    -------
    str
        `vertebra_identifier` prefixed by ``CT``.
    """
    return f"CT {vertebra_identifier(vertebra)}"


def ct_vertebra_trackings(
    result: StudyResult, root: str, reformat_uid: str = ""
) -> list[VertebraTracking]:
    """Return the tracking identifier and UID of every vertebra of the study's CT.

    The UID depends on the study, the series, the vertebra and its patient coordinates (not
    on the reformat's UID), so the SR's SCOORD3D groups and the reformat's GSPS lines of one
    vertebra carry the same tracking UID.

    Parameters
    ----------
    result : StudyResult
        The analysis (``ct`` analysed; else the list is empty).
    root : str
        UID root.
    reformat_uid : str
        SOP Instance UID of the reformat the GSPS draws on (`VertebraTracking.sop_instance_uid`).

    Returns
    -------
    list of VertebraTracking
        Top to bottom; ``image_number`` 0 (the reformat is not one of the study's images).
    """
    ct = result.ct
    if ct is None or not ct.analysed:
        return []
    prov = result.provenance
    out = []
    for v in ct.vertebrae:
        points = ";".join(f"{x:.3f},{y:.3f},{z:.3f}" for x, y, z in v.keypoints_lps)
        uid = output_uid(
            root,
            "tracking",
            OUTPUT_FORMAT_VERSION,
            result.study_instance_uid,
            ct.series_instance_uid or "",
            "ct-vertebra",
            v.finding.number,
            points,
            prov.bundle_name,
            prov.bundle_version,
            prov.weights_digest,
        )
        out.append(
            VertebraTracking(
                image_number=0,
                sop_instance_uid=reformat_uid,
                vertebra=v.finding,
                identifier=ct_vertebra_identifier(v.finding),
                uid=uid,
            )
        )
    return out
