"""How a box is drawn: its class colour and its corners in the image.

Shared by the SR (SCOORD), the GSPS (graphic layers) and the Secondary Capture and previews
(burned-in rectangles).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.results import Box

CLASS_COLOURS: dict[LesionClass, tuple[int, int, int]] = {
    LesionClass.OSTEOPHYTES: (255, 215, 0),
    LesionClass.SURGICAL_IMPLANT: (0, 200, 255),
    LesionClass.SPONDYLOLISTHESIS: (255, 0, 255),
    LesionClass.FORAMINAL_STENOSIS: (255, 140, 0),
    LesionClass.DISC_SPACE_NARROWING: (0, 230, 0),
    LesionClass.VERTEBRAL_COLLAPSE: (255, 40, 40),
    LesionClass.OTHER_LESIONS: (140, 140, 255),
}
"""sRGB colour of each class (GSPS layers store it as CIELab; the Secondary Capture draws it)."""


def box_corners(box: Box, rows: int, columns: int) -> tuple[float, float, float, float]:
    """Return a box's corners clipped to the image.

    Parameters
    ----------
    box : Box
        Corners in original pixels, origin at the top-left corner of the top-left pixel: the
        convention of SR SCOORD and GSPS PIXEL units (PS3.3 C.18.6.1.2, C.10.5.1.2), so no
        half-pixel shift is needed.
    rows, columns : int
        Image size.

    Returns
    -------
    tuple of float
        ``(xmin, ymin, xmax, ymax)`` within ``[0, columns] × [0, rows]``.
    """
    cols, rws = float(columns), float(rows)
    return (
        min(max(box.xmin, 0.0), cols),
        min(max(box.ymin, 0.0), rws),
        min(max(box.xmax, 0.0), cols),
        min(max(box.ymax, 0.0), rws),
    )


def closed_rectangle(box: Box, rows: int, columns: int) -> npt.NDArray[np.float64]:
    """Return a box as a closed 5-point polyline of (column, row) points.

    Parameters
    ----------
    box : Box
        The box (original pixels).
    rows, columns : int
        Image size (the box is clipped to it).

    Returns
    -------
    numpy.ndarray
        ``(5, 2)`` points clockwise from the top-left corner; the last equals the first.
    """
    x0, y0, x1, y1 = box_corners(box, rows, columns)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)
