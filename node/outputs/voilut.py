"""The VOI LUT a GSPS carries over from its source, encoded as dciodvfy accepts it.

The source's LUT is chosen and decoded by `spinexr.pipeline.display`.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from spinexr.pipeline.display import lut_entries, lut_words


def voi_lut_item(src: Dataset) -> Dataset:
    """Return a source's VOI LUT as a new VOI LUT Sequence item for its GSPS.

    A LUT encoded as PS3.3 C.11.2.1.1.1 requires (8 or 16 bits per entry; 8-bit entries
    packed two per 16-bit word, the first in the low byte; 16-bit entries one per word) is
    copied unchanged: LUT Descriptor, LUT Explanation and LUT Data, each with its VR (US or
    OW) and value. Any other encoding of the table is rewritten as the nearest one that
    dciodvfy accepts, showing the same picture: entries of 9 to 15 bits (e.g. a
    ``[4096, 0, 12]`` descriptor with 12-bit data, as older editions allowed) are rescaled to
    16 bits (``round(v * 65535 / (2**bits - 1))``), entries of fewer than 8 bits to 8; 8-bit
    entries stored one per word are packed; an odd number of 8-bit entries (whose packed
    data needs a padding byte, which dciodvfy counts as an entry) is carried as 16 bits
    (``v * 257``, the same fractions); OW data read from a big endian file is written little
    endian. The number of entries, the first mapped value (with the descriptor's VR) and
    the explanation are always kept.

    Parameters
    ----------
    src : pydicom.dataset.Dataset
        The source's VOI LUT item (``spinexr.pipeline.display.Lut.item``).

    Returns
    -------
    pydicom.dataset.Dataset
        A new item: LUT Descriptor, LUT Explanation when the source has one, LUT Data.

    References
    ----------
    PS3.3 C.11.2.1.1 VOI LUT, C.11.8 Softcopy VOI LUT Module.
    """
    item = Dataset()
    descriptor = copy.deepcopy(src["LUTDescriptor"])
    if descriptor.VR not in ("US", "SS"):
        descriptor.VR = "SS" if int(descriptor.value[1]) < 0 else "US"
    item.add(descriptor)
    if "LUTExplanation" in src:
        item.add(copy.deepcopy(src["LUTExplanation"]))
    if _standard_layout(src):
        data = copy.deepcopy(src["LUTData"])
        if data.VR not in ("US", "OW"):
            data.VR = "OW" if isinstance(data.value, bytes | bytearray) else "US"
        item.add(data)
        return item
    entries, first, bits = (int(v) for v in src.LUTDescriptor)
    target = 8 if bits <= 8 and (entries or 65536) % 2 == 0 else 16
    values = lut_entries(src).astype(np.float64)
    if bits != target and bits >= 1:
        values = np.rint(values * (2**target - 1) / (2**bits - 1))
    values = np.clip(values, 0, 2**target - 1)
    descriptor.value = [entries, first, target]
    if target == 8:
        packed = values.astype(np.uint8).tobytes()
        item.add_new("LUTData", "OW", packed + b"\x00" * (len(packed) % 2))
    else:
        item.add_new("LUTData", "OW", values.astype("<u2").tobytes())
    return item


def _standard_layout(item: Dataset) -> bool:
    """Whether a LUT item's data is encoded as PS3.3 C.11.2.1.1.1 requires (little endian)."""
    entries, _, bits = (int(v) for v in item.LUTDescriptor)
    if bits not in (8, 16) or (bits == 8 and entries % 2):
        return False
    raw: Any = item.LUTData
    if isinstance(raw, bytes | bytearray) and (item.original_encoding[1] is False or len(raw) % 2):
        return False
    entries = entries or 65536
    return len(lut_words(item)) == (entries if bits == 16 else (entries + 1) // 2)
