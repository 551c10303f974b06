"""Which of pydicom's decoding plugins decodes an image, and with how many threads.

Most images go to pydicom's default plugin for their transfer syntax. JPEG 2000 is the
exception: decoding it is most of what the pipeline costs beyond the models' forward passes
(about 0.4 s for a 2500 × 2048 lateral view with one thread), and of the two plugins
installed only Pillow's OpenJPEG is built with threads. OpenJPEG takes its thread count from
the documented ``OPJ_NUM_THREADS`` environment variable when the caller does not set one;
`use_decoding_threads` sets it for this process (unless the site already did). Pillow is used
only where its output is the default plugin's, bit for bit (``tests/pipeline/
test_decoding.py``: 8, 12 and 16 bits stored, signed and unsigned): when the codestream's
precision and signedness are the data set's Bits Stored and Pixel Representation. A
codestream that disagrees with its header (a signed stream in an unsigned image, which the
plugins correct differently) and anything Pillow cannot decode go to the default plugin, as
before.
"""

from __future__ import annotations

import os
from typing import Final

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import get_j2k_parameters
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless

THREADS_VARIABLE: Final = "OPJ_NUM_THREADS"
"""OpenJPEG's environment variable for its decoding threads."""

JPEG_2000: Final = frozenset({JPEG2000, JPEG2000Lossless})
"""Transfer syntaxes decoded with Pillow where it gives the same values."""


def use_decoding_threads(threads: int) -> None:
    """Let OpenJPEG decode with ``threads`` threads in this process (a site's value wins).

    Parameters
    ----------
    threads : int
        Threads per decoded image (e.g. the inference threads).
    """
    os.environ.setdefault(THREADS_VARIABLE, str(max(1, int(threads))))


def decode_first_frame(ds: Dataset, ts: UID) -> npt.NDArray[np.generic]:
    """Return the first frame's stored values, decoded by the plugin this module chooses.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image.
    ts : pydicom.uid.UID
        Its transfer syntax.

    Returns
    -------
    numpy.ndarray
        The stored values (``raw``: no colour conversion).

    Raises
    ------
    Exception
        Whatever the default plugin raises for pixel data it cannot decode.
    """
    decoder = get_decoder(ts)
    if ts in JPEG_2000 and _pillow_matches(ds):
        try:
            arr, _ = decoder.as_array(ds, index=0, raw=True, decoding_plugin="pillow")
            return arr
        except Exception:  # e.g. a stream Pillow refuses: the default plugin has its say
            pass
    arr, _ = decoder.as_array(ds, index=0, raw=True)
    return arr


def _pillow_matches(ds: Dataset) -> bool:
    """Whether the first frame's codestream agrees with Bits Stored and Pixel Representation."""
    try:
        first = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:
        return False
    params = get_j2k_parameters(first[:256])
    return (
        bool(params)
        and params.get("precision") == int(ds.BitsStored)
        and params.get("is_signed") == bool(ds.PixelRepresentation)
    )
