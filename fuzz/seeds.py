"""The seed corpus: valid phantom radiographs in every transfer syntax the node decodes.

Each seed is a complete DICOM Part 10 file made by the project's phantom factory
(`spinexr.training.phantoms.make_phantom_image`), deterministic for a seed number: DX and
CR, MONOCHROME1 and MONOCHROME2, explicit and implicit VR little endian, RLE Lossless
(pydicom's encoder), JPEG-LS Lossless (pyjpegls) and JPEG 2000 Lossless (openjpeg).
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from typing import Literal

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from spinexr.training.phantoms import make_phantom_image, write

SIZE = (128, 96)
"""(rows, columns) of the seed images: above the pipeline's 64-pixel minimum, small enough
to keep tens of thousands of inputs cheap."""


@dataclass(frozen=True)
class Seed:
    """One valid file.

    Attributes
    ----------
    name : str
        Its kind (``dx-explicit``, ``cr-rle``, ...): mutations are grouped by it.
    data : bytes
        The Part 10 file.
    """

    name: str
    data: bytes


def _file(ds: Dataset, *, implicit: bool = False) -> bytes:
    buf = io.BytesIO()
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    else:
        write(ds, buf)
    return buf.getvalue()


def make_seeds(seed: int = 0) -> list[Seed]:
    """Build the seed corpus.

    Parameters
    ----------
    seed : int
        Phantom seed: the same number gives the same files, byte for byte.

    Returns
    -------
    list of Seed
        Nine files: DX and CR, explicit and implicit VR, RLE, JPEG-LS and JPEG 2000, one
        MONOCHROME1.
    """
    seeds: list[Seed] = []
    kinds: tuple[Literal["DX", "CR"], ...] = ("DX", "CR")
    for i, sop in enumerate(kinds):
        ds, _ = make_phantom_image(seed + i, view="AP", sop_class=sop, size=SIZE)
        key = sop.lower()
        seeds.append(Seed(f"{key}-explicit", _file(copy.deepcopy(ds))))
        seeds.append(Seed(f"{key}-implicit", _file(copy.deepcopy(ds), implicit=True)))
        for syntax, label in ((RLELossless, "rle"), (JPEGLSLossless, "jpegls")):
            encoded = copy.deepcopy(ds)
            encoded.compress(syntax, generate_instance_uid=False)
            seeds.append(Seed(f"{key}-{label}", _file(encoded)))
    j2k, _ = make_phantom_image(seed + 2, view="LAT", sop_class="CR", compressed=True, size=SIZE)
    seeds.append(Seed("cr-j2k", _file(j2k)))
    mono1, _ = make_phantom_image(
        seed + 3, view="LAT", sop_class="DX", photometric="MONOCHROME1", size=SIZE
    )
    seeds.append(Seed("dx-mono1", _file(mono1)))
    return seeds
