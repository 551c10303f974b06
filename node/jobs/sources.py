"""Which CT headers a job's outputs reference.

A CT study has hundreds of instances. The SR's evidence lists the series the CT analysis
read (every slice of it: the SCOORD3D lie in its frame of reference); a series not analysed
is represented by one instance, so the report still names what the node looked at without
listing every slice of every localizer and reformat.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from spinexr.node.jobs.failure import readable_headers
from spinexr.pipeline.ct.series import CT_SOP_CLASSES
from spinexr.pipeline.results import StudyResult


def is_ct(ds: Dataset) -> bool:
    """Return whether a header is a CT image (CT, Enhanced CT, Legacy Converted Enhanced CT).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A header.

    Returns
    -------
    bool
        True for the CT image SOP classes.
    """
    return str(ds.get("SOPClassUID", "")) in CT_SOP_CLASSES


def one_per_ct_series(headers: Sequence[Dataset]) -> list[Dataset]:
    """Keep every non-CT header and the first header of each CT series.

    Parameters
    ----------
    headers : sequence of pydicom.dataset.Dataset
        A study's headers.

    Returns
    -------
    list of pydicom.dataset.Dataset
        In the order given.
    """
    seen: set[str] = set()
    out = []
    for ds in headers:
        if is_ct(ds):
            series = str(ds.get("SeriesInstanceUID", ""))
            if series in seen:
                continue
            seen.add(series)
        out.append(ds)
    return out


def ct_evidence(files: Sequence[Path], result: StudyResult) -> list[Dataset]:
    """Return the CT headers (no pixels) the study's outputs reference.

    Parameters
    ----------
    files : sequence of pathlib.Path
        The study's CT files.
    result : StudyResult
        The analysis (``ct`` names the series analysed, if any).

    Returns
    -------
    list of pydicom.dataset.Dataset
        Every instance of the series the CT analysis chose, and one instance of each other
        CT series; empty without CT files.
    """
    if not files:
        return []
    chosen = None if result.ct is None else result.ct.series_instance_uid
    headers = readable_headers(files)
    if chosen is None:
        return one_per_ct_series(headers)
    kept = [ds for ds in headers if str(ds.get("SeriesInstanceUID", "")) == chosen]
    others = [ds for ds in headers if str(ds.get("SeriesInstanceUID", "")) != chosen]
    return kept + one_per_ct_series(others)


__all__ = ["ct_evidence", "is_ct", "one_per_ct_series"]
