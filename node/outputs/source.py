"""What a per-image output takes from its source: the image's result, body part, safe text."""

from __future__ import annotations

import unicodedata

from pydicom.dataset import Dataset

from spinexr.pipeline.results import ImageResult, StudyResult


def ascii_text(text: str) -> str:
    """Return ``text`` with accents stripped and other non-ASCII characters replaced by ``?``.

    Text written into output objects must survive whatever Specific Character Set the
    sources carry (it is copied from them).

    Parameters
    ----------
    text : str
        Any text.

    Returns
    -------
    str
        ASCII text.
    """
    folded = unicodedata.normalize("NFKD", text)
    return "".join(
        ch if ch.isascii() else ("" if unicodedata.combining(ch) else "?") for ch in folded
    )


def analysed_image(source: Dataset, result: StudyResult, what: str) -> ImageResult:
    """Return the analysis of a source image.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image.
    result : StudyResult
        The study's analysis.
    what : str
        The object being built (for the error message).

    Returns
    -------
    ImageResult
        The image's result.

    Raises
    ------
    ValueError
        If the image is not in the result, or was not analysed.
    """
    uid = str(source.SOPInstanceUID)
    for image in result.images:
        if image.sop_instance_uid == uid:
            if image.failed:
                raise ValueError(f"image {uid} was not analysed: no {what}")
            return image
    raise ValueError(f"image {uid} is not part of the result for {result.study_instance_uid}")


def copy_body_part(target: Dataset, source: Dataset) -> None:
    """Copy Body Part Examined and Laterality (General Series) into a per-image object.

    Laterality is type 2C, required for paired body parts: with the source's Body Part
    Examined copied, dciodvfy can tell the spine is not paired; without one, Laterality is
    written (the source's, else empty: unknown).

    Parameters
    ----------
    target : pydicom.dataset.Dataset
        The output object (modified in place).
    source : pydicom.dataset.Dataset
        Its source image.
    """
    if source.get("BodyPartExamined"):
        target.BodyPartExamined = source.BodyPartExamined
    if source.get("Laterality"):
        target.Laterality = source.Laterality
    elif not source.get("BodyPartExamined"):
        target.Laterality = ""
