"""CT volume loading (issue 17): the phantom's HU volume and affine come back whatever the file
order and pixel storage; gapped, tilted, inconsistent, oversized and undecodable series are
refused with their reasons before (or instead of) decoding."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, SecondaryCaptureImageStorage, generate_uid

from spinexr.pipeline.ct import volume as volume_module
from spinexr.pipeline.ct.errors import CtRefusal, UnsupportedSeriesError
from spinexr.pipeline.ct.series import select_series
from spinexr.pipeline.ct.volume import CtVolume, load_volume
from spinexr.training.phantoms.ct import CtAcquisition, CtPhantom, make_ct_phantom
from spinexr.training.phantoms.ct_dicom import (
    series_datasets,
    study_header,
    write_ct_study,
    write_series,
)

GB = 1 << 30


@pytest.fixture(scope="module")
def phantom() -> CtPhantom:
    """Small phantom, T11–L2: 128², about 70 slices."""
    return make_ct_phantom(5, size="small", levels=("T11", "L2"), fractures=[])


def shuffled(paths: Sequence[Path], seed: int = 0) -> list[Path]:
    out = list(paths)
    random.Random(seed).shuffle(out)
    return out


def written(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    return write_series(datasets, folder)


def refusal(paths: Sequence[Path], max_bytes: int = GB) -> UnsupportedSeriesError:
    with pytest.raises(UnsupportedSeriesError) as err:
        load_volume(paths, max_bytes=max_bytes)
    return err.value


def assert_matches(loaded: CtVolume, phantom: CtPhantom) -> None:
    assert loaded.array.shape == phantom.hu.shape
    np.testing.assert_array_equal(loaded.array, phantom.hu)
    np.testing.assert_allclose(loaded.affine, phantom.grid.affine(), atol=1e-4)
    grid = phantom.grid
    np.testing.assert_allclose(loaded.spacing, (grid.slice_spacing, *grid.pixel_spacing), rtol=1e-6)


@pytest.mark.parametrize("signed", [False, True])
def test_volume_equals_the_phantom_whatever_the_file_order(
    phantom: CtPhantom, tmp_path: Path, signed: bool
) -> None:
    files = write_ct_study(
        tmp_path, phantom, header=study_header(phantom, signed=signed), distractors=False
    )
    axial = files.role("axial")
    loaded = load_volume(shuffled(axial.paths), max_bytes=GB)
    assert loaded.array.dtype == np.float32
    assert_matches(loaded, phantom)
    # Slice k is the file of slice k (written in slice order), whatever the order given.
    expected = [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in axial.paths
    ]
    assert list(loaded.sop_instance_uids) == expected
    assert set(loaded.frames) == {None}
    assert loaded.series_instance_uid == axial.series_uid
    assert loaded.volume.frame_of_reference_uid == loaded.frame_of_reference_uid
    # Slice 0 is the most superior (highdicom's right-handed order for an axial series).
    assert loaded.affine[2, 0] < 0


def test_signed_and_unsigned_storage_give_the_same_hu(phantom: CtPhantom, tmp_path: Path) -> None:
    loaded = []
    for signed in (False, True):
        header = study_header(phantom, signed=signed)
        paths = written(series_datasets(phantom, header), tmp_path / str(signed))
        first = pydicom.dcmread(paths[0], stop_before_pixels=True)
        assert first.PixelRepresentation == int(signed)
        loaded.append(load_volume(paths, max_bytes=GB, dtype="int16"))
    assert all(v.array.dtype == np.int16 for v in loaded)
    np.testing.assert_array_equal(loaded[0].array, loaded[1].array)
    np.testing.assert_array_equal(loaded[0].array, phantom.hu)


def test_rescale_slope_is_applied(phantom: CtPhantom, tmp_path: Path) -> None:
    datasets = series_datasets(phantom, study_header(phantom, signed=True))
    for ds in datasets:
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-10"
    loaded = load_volume(written(datasets, tmp_path), max_bytes=GB)
    np.testing.assert_allclose(loaded.array, phantom.hu.astype(np.float32) * 0.5 - 10.0)


def test_compressed_series_decodes_to_the_same_volume(phantom: CtPhantom, tmp_path: Path) -> None:
    datasets = series_datasets(phantom, study_header(phantom, signed=True))
    for ds in datasets:
        ds.compress(RLELossless)
    paths = written(datasets, tmp_path)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == RLELossless
    assert_matches(load_volume(shuffled(paths, 1), max_bytes=GB), phantom)


def test_enhanced_ct_loads_frame_by_frame(phantom: CtPhantom, tmp_path: Path) -> None:
    datasets = series_datasets(phantom, study_header(phantom))
    enhanced = LegacyConvertedEnhancedCTImage(
        datasets,
        series_instance_uid=generate_uid(entropy_srcs=["enhanced-series"]),
        series_number=7,
        sop_instance_uid=generate_uid(entropy_srcs=["enhanced"]),
        instance_number=1,
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert int(header.NumberOfFrames) == phantom.grid.slices
    choice = select_series([header])
    assert choice.series_instance_uid == enhanced.SeriesInstanceUID
    loaded = load_volume([path], max_bytes=GB)
    assert_matches(loaded, phantom)
    assert set(loaded.sop_instance_uids) == {enhanced.SOPInstanceUID}
    assert sorted(f for f in loaded.frames if f is not None) == list(range(phantom.grid.slices))


def test_gapped_series_is_refused(phantom: CtPhantom, tmp_path: Path) -> None:
    files = write_ct_study(tmp_path, phantom, distractors=False, missing=[30, 31])
    err = refusal(shuffled(files.role("axial").paths))
    assert err.refusal is CtRefusal.MISSING_SLICES and err.reason == "missing_slices"
    assert err.message.startswith("2 slice(s) missing in 1 gap(s)")
    assert err.series_instance_uid == files.role("axial").series_uid


def test_tilted_series_is_refused(tmp_path: Path) -> None:
    tilted = make_ct_phantom(4, size="small", levels=("T10", "T12"), tilt_deg=15.0)
    files = write_ct_study(tmp_path, tilted, distractors=False)
    err = refusal(files.role("axial").paths)
    assert err.refusal is CtRefusal.TILTED
    assert "15.00°" in err.message


def test_slightly_tilted_series_is_refused_when_it_drifts_half_a_pixel(tmp_path: Path) -> None:
    acquisition = CtAcquisition(
        matrix=64, pixel_spacing=1.0, slice_spacing=1.0, slice_thickness=1.0
    )
    tilted = make_ct_phantom(
        4, size=acquisition, levels=("T11", "T12"), tilt_deg=0.8, centre_on_spine=True
    )
    grid = tilted.grid
    drift = np.tan(np.radians(0.8)) * (grid.slices - 1) * grid.slice_spacing
    assert drift > 0.5 * grid.pixel_spacing[0]  # under 1° but the last slice moves > ½ pixel
    err = refusal(write_ct_study(tmp_path, tilted, distractors=False).role("axial").paths)
    assert err.refusal is CtRefusal.TILTED


def test_memory_bound_refuses_before_decoding(
    phantom: CtPhantom, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_ct_study(tmp_path, phantom, distractors=False).role("axial").paths
    needed = phantom.hu.size * 4

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded before the memory check")

    monkeypatch.setattr(volume_module, "decode_pixels", no_decoding)
    monkeypatch.setattr(volume_module, "iter_pixels", no_decoding)
    err = refusal(paths, max_bytes=needed - 1)
    assert err.refusal is CtRefusal.TOO_LARGE
    assert str(needed) in err.message
    monkeypatch.undo()
    assert load_volume(paths, max_bytes=needed).array.nbytes == needed
    assert load_volume(paths, max_bytes=needed // 2, dtype="int16").array.dtype == np.int16


def test_decoding_holds_one_slice_besides_the_volume(phantom: CtPhantom, tmp_path: Path) -> None:
    paths = write_ct_study(tmp_path, phantom, distractors=False).role("axial").paths
    tracemalloc.start()
    try:
        loaded = load_volume(paths, max_bytes=GB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The volume, one file and slice in flight and a summary of each header (not the headers
    # themselves, about 45 kB each in pydicom, nor a second copy of the pixels).
    assert peak - loaded.array.nbytes < 1 << 20


def test_inconsistent_pixel_spacing_is_refused(phantom: CtPhantom, tmp_path: Path) -> None:
    datasets = series_datasets(phantom, study_header(phantom))
    ps = [float(v) for v in datasets[5].PixelSpacing]
    datasets[5].PixelSpacing = [ps[0] * 1.1, ps[1] * 1.1]
    err = refusal(written(datasets, tmp_path))
    assert err.refusal is CtRefusal.INCONSISTENT_PIXEL_SPACING


def test_inconsistent_orientation_is_refused(phantom: CtPhantom, tmp_path: Path) -> None:
    datasets = series_datasets(phantom, study_header(phantom))
    c, s = np.cos(np.radians(3.0)), np.sin(np.radians(3.0))
    datasets[7].ImageOrientationPatient = [c, s, 0.0, -s, c, 0.0]
    err = refusal(written(datasets, tmp_path))
    assert err.refusal is CtRefusal.INCONSISTENT_ORIENTATION
    assert "3.00°" in err.message


def test_irregular_spacing_and_duplicates_are_refused(phantom: CtPhantom, tmp_path: Path) -> None:
    datasets = series_datasets(phantom, study_header(phantom))
    z = float(datasets[10].ImagePositionPatient[2])
    datasets[10].ImagePositionPatient = [*datasets[10].ImagePositionPatient[:2], z + 0.4]
    assert refusal(written(datasets, tmp_path / "a")).refusal is CtRefusal.IRREGULAR_SPACING
    datasets[10].ImagePositionPatient = datasets[11].ImagePositionPatient
    assert refusal(written(datasets, tmp_path / "b")).refusal is CtRefusal.DUPLICATE_POSITIONS


def test_truncated_pixel_data_is_undecodable(phantom: CtPhantom, tmp_path: Path) -> None:
    datasets = series_datasets(phantom, study_header(phantom))
    datasets[3].PixelData = datasets[3].PixelData[:1000]
    err = refusal(written(datasets, tmp_path))
    assert err.refusal is CtRefusal.UNDECODABLE
    assert datasets[3].SOPInstanceUID in err.message


def test_files_of_two_series_are_refused(phantom: CtPhantom, tmp_path: Path) -> None:
    files = write_ct_study(tmp_path, phantom)
    err = refusal([*files.role("axial").paths, *files.role("reformat").paths])
    assert err.refusal is CtRefusal.MIXED_SERIES


def test_non_ct_and_unreadable_files_are_refused(phantom: CtPhantom, tmp_path: Path) -> None:
    datasets = series_datasets(phantom, study_header(phantom))
    for ds in datasets:
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    assert refusal(written(datasets, tmp_path / "sc")).refusal is CtRefusal.NOT_CT
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    assert refusal([junk]).refusal is CtRefusal.INVALID_HEADER
    one = written(series_datasets(phantom, study_header(phantom))[:1], tmp_path / "one")
    assert refusal(one).refusal is CtRefusal.TOO_FEW_SLICES
