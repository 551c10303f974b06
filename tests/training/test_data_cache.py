"""DisplayCache: the serving pipeline's pixels, decoded once, safe for concurrent workers."""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest

import spinexr.training.data.cache as cache_module
from spinexr.pipeline.errors import ImageRefusal, UnsupportedImageError
from spinexr.pipeline.preprocess import prepare_image, resize_image
from spinexr.training.data import DisplayCache, ImageRecord, load_dataset, scaled_size
from spinexr.training.phantoms import generate_dataset


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[ImageRecord]:
    root = tmp_path_factory.mktemp("cache-ds")
    generate_dataset(root, 4, 2, size=(256, 192))
    ds = load_dataset(root, val_fraction=0.0)
    return ds.split("train") + ds.split("test")


def test_records_cover_the_header_variants(records: list[ImageRecord]) -> None:
    headers = [pydicom.dcmread(r.path, stop_before_pixels=True) for r in records]
    assert {str(h.PhotometricInterpretation) for h in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert len({str(h.file_meta.TransferSyntaxUID) for h in headers}) == 2
    assert any("VOILUTSequence" in h for h in headers)


def test_same_pixels_as_the_pipeline(records: list[ImageRecord], tmp_path: Path) -> None:
    full = DisplayCache(tmp_path / "full")
    small = DisplayCache(tmp_path / "small", max_side=100)
    for record in records:
        prepared = prepare_image(pydicom.dcmread(record.path))
        image, scale = full.get(record)
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, prepared.display)
        assert scale == 1.0
        np.testing.assert_array_equal(
            full.get_resized(record, (224, 224)), prepared.classifier_input[:, :, 0]
        )
        shrunk, scale = small.get(record)
        assert shrunk.shape == (100, 75)  # 256×192 → longer side 100
        assert scale == pytest.approx(100 / 256)
        np.testing.assert_array_equal(shrunk, resize_image(prepared.display, (100, 75)))
        entry = small.get_entry(record)
        assert entry.original_size == (256, 192)
        assert entry.transform.to_original([[0, 0, 75, 100]]).tolist() == [[0, 0, 192, 256]]
        # growing uses the pipeline's bilinear branch
        np.testing.assert_array_equal(
            small.get_resized(record, (300, 300)), resize_image(prepared.display, (300, 300))
        )


def test_hit_does_not_decode_again(
    records: list[ImageRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = cache_module.decode_pixels

    def counting(ds: pydicom.Dataset) -> np.ndarray:
        calls.append(str(ds.SOPInstanceUID))
        return real(ds)

    monkeypatch.setattr(cache_module, "decode_pixels", counting)
    record = records[0]
    first = DisplayCache(tmp_path, max_side=128)
    image, _ = first.get(record)
    assert (first.hits, first.misses, len(calls)) == (0, 1, 1)
    second = DisplayCache(tmp_path, max_side=128)  # a new process would see the same files
    again, _ = second.get(record)
    np.testing.assert_array_equal(again, image)
    assert (second.hits, second.misses, len(calls)) == (1, 0, 1)

    DisplayCache(tmp_path, max_side=64).get(record)  # another size is another entry
    assert len(calls) == 2
    stat = record.path.stat()
    os.utime(record.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second.get(record)  # the file changed: decoded again, not a stale hit
    assert len(calls) == 3 and second.misses == 1

    entries = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(entries) == 3 and all(name.endswith(".npz") for name in entries)


def test_corrupt_entry_is_rewritten(records: list[ImageRecord], tmp_path: Path) -> None:
    cache = DisplayCache(tmp_path, max_side=128)
    image, _ = cache.get(records[1])
    [entry] = list(tmp_path.rglob("*.npz"))
    entry.write_bytes(b"truncated")
    again, _ = DisplayCache(tmp_path, max_side=128).get(records[1])
    np.testing.assert_array_equal(again, image)


def test_concurrent_readers_and_pickling(records: list[ImageRecord], tmp_path: Path) -> None:
    cache = DisplayCache(tmp_path, max_side=96)
    clone = pickle.loads(pickle.dumps(cache))  # what DataLoader workers receive
    assert clone.directory == cache.directory and clone.max_side == 96
    jobs = [records[i % 3] for i in range(12)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(lambda r: cache.get(r)[0], jobs))
    for record, image in zip(jobs, images, strict=True):
        np.testing.assert_array_equal(image, clone.get(record)[0])
    assert cache.hits + cache.misses == 12
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith(".tmp")]


def test_decoding_errors_are_typed_and_name_the_image(
    records: list[ImageRecord], tmp_path: Path
) -> None:
    bad = tmp_path / "broken.dicom"
    bad.write_bytes(b"this is not a DICOM file at all" * 10)
    record = ImageRecord("broken", "st", "se", bad, "train", False, ())
    with pytest.raises(UnsupportedImageError) as info:
        DisplayCache(tmp_path / "c").get(record)
    assert info.value.refusal is ImageRefusal.INVALID_HEADER
    assert info.value.sop_instance_uid == "broken"
    assert "image broken" in str(info.value)

    ds = pydicom.dcmread(records[0].path)
    ds.Rows = 32  # the pipeline refuses images below 64 rows before decoding
    small = tmp_path / "small.dicom"
    ds.save_as(small)
    record = ImageRecord("small", "st", "se", small, "train", False, ())
    with pytest.raises(UnsupportedImageError, match=r"image small: .*at least 64") as info:
        DisplayCache(tmp_path / "c").get(record)
    assert info.value.refusal is ImageRefusal.TOO_SMALL


def test_scaled_size() -> None:
    assert scaled_size((2500, 1600), None) == (2500, 1600)
    assert scaled_size((2500, 1600), 512) == (512, 328)
    assert scaled_size((1600, 2500), 512) == (328, 512)
    assert scaled_size((300, 200), 512) == (300, 200)
    with pytest.raises(ValueError, match="max_side"):
        DisplayCache(Path("."), max_side=0)
