"""JPEG 2000 through Pillow's threaded OpenJPEG gives the default plugin's values, bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pytest
from openjpeg import encode
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from spinexr.pipeline import decoding
from spinexr.pipeline.decoding import decode_first_frame, use_decoding_threads


def j2k_image(
    bits: int, signed: bool, *, label_signed: bool | None = None
) -> tuple[Dataset, np.ndarray]:
    rng = np.random.default_rng(bits + 100 * signed)
    y, x = np.mgrid[0:300, 0:260]
    top = 2**bits - 1
    values = top * (0.5 + 0.3 * np.sin(x / 30.0) * np.cos(y / 40.0)) + rng.normal(
        0, top * 0.02, x.shape
    )
    values = values.clip(0, top)
    if signed:
        values = values - 2 ** (bits - 1)
    dtype = {(8, False): np.uint8, (8, True): np.int8}.get(
        (bits, signed), np.int16 if signed else np.uint16
    )
    arr = values.astype(dtype)
    stream = encode(arr, bits_stored=bits, photometric_interpretation=2, use_mct=False)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed if label_signed is None else label_signed)
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    return ds, arr


def default_plugin(ds: Dataset) -> np.ndarray:
    arr, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=0, raw=True)
    return arr


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_pillow_gives_the_default_plugins_values(bits: int, signed: bool, monkeypatch) -> None:
    monkeypatch.setenv("OPJ_NUM_THREADS", "2")
    ds, truth = j2k_image(bits, signed)
    assert decoding._pillow_matches(ds)
    ours = decode_first_frame(ds, JPEG2000Lossless)
    reference = default_plugin(ds)
    assert ours.dtype == reference.dtype and np.array_equal(ours, reference)
    assert np.array_equal(ours, truth)


def test_a_stream_that_disagrees_with_its_header_goes_to_the_default_plugin(monkeypatch) -> None:
    ds, _ = j2k_image(12, True, label_signed=False)  # a signed stream in an unsigned image
    assert not decoding._pillow_matches(ds)
    used = []
    real = get_decoder(JPEG2000Lossless).as_array

    def spy(*args, **kwargs):
        used.append(kwargs.get("decoding_plugin", "default"))
        return real(*args, **kwargs)

    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "as_array", spy)
    ours = decode_first_frame(ds, JPEG2000Lossless)
    assert used == ["default"]
    assert np.array_equal(ours, default_plugin(ds))


def test_the_thread_count_is_set_once_and_a_sites_value_wins(monkeypatch) -> None:
    monkeypatch.delenv("OPJ_NUM_THREADS", raising=False)
    use_decoding_threads(3)
    assert os.environ["OPJ_NUM_THREADS"] == "3"
    use_decoding_threads(1)
    assert os.environ["OPJ_NUM_THREADS"] == "3"
    monkeypatch.setenv("OPJ_NUM_THREADS", "ALL_CPUS")
    use_decoding_threads(2)
    assert os.environ["OPJ_NUM_THREADS"] == "ALL_CPUS"
