"""Issue 14 items 1, 2 and 4: truncated data sets, invalid UIDs and deflate bombs at ingest."""

from __future__ import annotations

import io
import tracemalloc
import zlib

import pydicom
import pytest
from ingest_support import AssociationMemory, Stack, build_stack, phantom_bytes
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from spinexr.node.db.models import Instance
from spinexr.node.errors import IngestError
from spinexr.node.ingest.service import Outcome
from spinexr.node.ingest.statuses import status_for
from spinexr.node.outputs.persist import invalid_uids


def count(stack: Stack) -> int:
    with stack.sessions() as s:
        return s.scalar(select(func.count()).select_from(Instance))


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def refused(stack: Stack, data: bytes) -> IngestError:
    before = count(stack)
    with pytest.raises(IngestError) as info:
        stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    assert count(stack) == before, "nothing may be recorded for a refused instance"
    assert list(stack.spool.tmp.iterdir()) == [], "refused bytes must not stay in the spool"
    return info.value


# ---------------------------------------------------------------- 1. truncated data sets


def test_a_truncated_copy_never_replaces_the_good_instance(stack: Stack) -> None:
    data, _ = phantom_bytes(11)
    assert stack.ingest.ingest([data], calling_ae="PACS", source="dimse").outcome is (
        Outcome.STORED
    )
    err = refused(stack, data[: len(data) // 3])
    assert err.reason == "truncated" and status_for(err.reason) == 0xC213
    with stack.sessions() as s:
        versions = s.scalars(select(Instance)).all()
    assert [v.version for v in versions] == [1]
    assert (stack.spool.root / versions[0].path).read_bytes() == data


def test_every_strict_prefix_of_an_image_is_refused(stack: Stack) -> None:
    data, _ = phantom_bytes(12, size=(128, 96))
    reasons = set()
    for cut in range(0, len(data) - 1, 89):
        reasons.add(refused(stack, data[:cut]).reason)
    reasons.add(refused(stack, data[:-1]).reason)
    assert reasons <= {"truncated", "unparseable", "missing_uid"}
    assert stack.ingest.ingest([data], calling_ae="PACS", source="dimse").outcome is (
        Outcome.STORED
    )


def test_pixel_data_shorter_than_the_image_needs_is_refused(stack: Stack) -> None:
    _, ds = phantom_bytes(13)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    err = refused(stack, encode(ds))
    assert err.reason == "truncated" and "needs" in str(err)


def test_encapsulated_pixel_data_cut_short_is_refused(stack: Stack) -> None:
    data, ds = phantom_bytes(14, compressed=True)
    assert ds.file_meta.TransferSyntaxUID.is_encapsulated
    # Cut inside the last fragment: the sequence delimiter is gone.
    assert refused(stack, data[: len(data) - 40]).reason == "truncated"
    # Fewer fragments than frames.
    _, ds = phantom_bytes(15, compressed=True)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.NumberOfFrames = 3
    ds.PixelData = encapsulate([frame])
    assert refused(stack, encode(ds)).reason == "truncated"


def test_a_whole_compressed_image_is_still_accepted(stack: Stack) -> None:
    data, _ = phantom_bytes(16, compressed=True)
    assert stack.ingest.ingest([data], calling_ae="PACS", source="dimse").outcome is (
        Outcome.STORED
    )


def test_an_image_without_pixel_data_is_refused(stack: Stack) -> None:
    _, ds = phantom_bytes(17)
    del ds.PixelData
    assert refused(stack, encode(ds)).reason == "truncated"


# ---------------------------------------------------------------- 2. invalid UIDs


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
@pytest.mark.parametrize(
    "value",
    ["1.2.3/../4", "1.2..3", "1.02.3", "1.2.3.", "1." + "2" * 64, "1.2.3a", ".1.2"],
)
def test_invalid_uids_are_refused(stack: Stack, keyword: str, value: str) -> None:
    _, ds = phantom_bytes(21)
    setattr(ds, keyword, value)
    if keyword == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = value
    err = refused(stack, encode(ds))
    assert err.reason == "invalid_uid" and status_for(err.reason) == 0xC214
    assert value.strip() not in str(err), "the offending value is not echoed into logs"


def test_the_node_never_writes_an_invalid_uid() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3/../4"
    ds.ReferencedImageSequence = [item]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.02"
    assert sorted(invalid_uids(ds)) == ["MediaStorageSOPInstanceUID", "ReferencedSOPInstanceUID"]
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    assert invalid_uids(ds) == []


# ---------------------------------------------------------------- 4. deflate bombs


def deflated_file(pixel_bytes: int, rows: int, cols: int, *, cut: int = 0) -> bytes:
    """A DX header whose Pixel Data is ``pixel_bytes`` zeros, deflated piecewise."""
    _, src = phantom_bytes(31)
    ds = Dataset()
    for elem in src:
        if elem.tag < 0x7FE00010 and elem.tag not in (0x00280010, 0x00280011):
            ds.add(elem)
    ds.Rows, ds.Columns = rows, cols
    meta = FileMetaDataset(src.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [bytes(128), b"DICM", head.getvalue(), deflater.compress(body.getvalue())]
    out.append(deflater.compress(b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")))
    zeros = bytes(2**20)
    left = pixel_bytes
    while left:
        n = min(left, len(zeros))
        out.append(deflater.compress(zeros[:n]))
        left -= n
    out.append(deflater.flush())
    data = b"".join(out)
    return data[: len(data) - cut] if cut else data


def test_a_deflated_instance_is_stored_inflated_and_equal(stack: Stack) -> None:
    _, ds = phantom_bytes(32)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    result = stack.ingest.ingest([encode(ds)], calling_ae="PACS", source="dimse")
    assert result.outcome is Outcome.STORED
    with stack.sessions() as s:
        row = s.scalars(select(Instance)).one()
    stored = pydicom.dcmread(stack.spool.root / row.path)
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert stored.PixelData == ds.PixelData and stored.SOPInstanceUID == ds.SOPInstanceUID
    assert row.transfer_syntax_uid == ExplicitVRLittleEndian


def test_a_deflate_bomb_is_inflated_with_bounded_memory(stack: Stack) -> None:
    rows, cols = 8192, 8192  # 128 MiB of 16-bit pixels from ~130 KB on the wire
    data = deflated_file(rows * cols * 2, rows, cols)
    assert len(data) < 300_000
    tracemalloc.start()
    try:
        result = stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.outcome is Outcome.STORED
    assert peak < 32 * 2**20, f"ingest allocated {peak / 2**20:.0f} MiB for a deflated file"


def test_a_deflate_bomb_over_the_limit_is_refused_while_inflating(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path, dicom={"max_dataset_bytes": 8 * 2**20})
    data = deflated_file(4096 * 4096 * 2, 4096, 4096)
    tracemalloc.start()
    try:
        err = refused(stack, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.reason == "too_large" and status_for(err.reason) == 0xA701
    assert peak < 16 * 2**20


def test_a_cut_deflate_stream_is_refused(stack: Stack) -> None:
    data = deflated_file(512 * 512 * 2, 512, 512, cut=20)
    assert refused(stack, data).reason in {"truncated", "unparseable"}


def test_instances_of_several_studies_keep_their_own_uids(stack: Stack) -> None:
    # A regression guard for the UID check: generated UIDs of every length are accepted.
    for i in range(5):
        data, _ = phantom_bytes(40 + i, study_uid=generate_uid())
        stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    assert count(stack) == 5


# ---------------------------------------------------------------- over a real association


def _send_raw(stack: Stack, paths, syntax: str, monkeypatch) -> list[int]:
    from pynetdicom import AE
    from pynetdicom import _config as pynetdicom_config
    from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

    # Send the files' bytes as they are (pynetdicom would otherwise re-encode the dataset).
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [syntax])
    assoc = ae.associate("127.0.0.1", stack.port, ae_title="SPINEXR")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()


def test_the_scp_answers_c213_for_truncated_and_c214_for_invalid_uids(
    scp_stack: Stack, tmp_path, monkeypatch
) -> None:
    good, ds = phantom_bytes(51)
    (tmp_path / "good.dcm").write_bytes(good)
    (tmp_path / "cut.dcm").write_bytes(good[: len(good) // 3])
    ds.SOPInstanceUID = "1.2.3/../4"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    (tmp_path / "bad-uid.dcm").write_bytes(encode(ds))
    statuses = _send_raw(
        scp_stack,
        [tmp_path / "good.dcm", tmp_path / "cut.dcm", tmp_path / "bad-uid.dcm"],
        str(ds.file_meta.TransferSyntaxUID),
        monkeypatch,
    )
    assert statuses == [0x0000, 0xC213, 0xC214]
    assert count(scp_stack) == 1


def test_concurrent_deflate_bombs_keep_the_receiver_small(
    scp_stack: Stack, tmp_path, monkeypatch
) -> None:
    import threading

    rows = cols = 4096  # 32 MiB each once inflated
    path = tmp_path / "bomb.dcm"
    path.write_bytes(deflated_file(rows * cols * 2, rows, cols))
    associations = scp_stack.settings.dicom.max_associations
    statuses: list[int] = []
    assert scp_stack.scp is not None and scp_stack.scp.pid is not None
    # The receivers are the SCP's association processes: their memory is measured.
    with AssociationMemory(scp_stack.scp.pid) as memory:
        threads = [
            threading.Thread(
                target=lambda: statuses.extend(
                    _send_raw(scp_stack, [path], DeflatedExplicitVRLittleEndian, monkeypatch)
                )
            )
            for _ in range(associations)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    peak = memory.growth()
    assert len(memory.peaks) >= associations // 2, f"{len(memory.peaks)} processes seen"
    assert statuses == [0x0000] * associations
    # Before: each association held the inflated data set twice (pydicom's bytes + buffer).
    assert peak < associations * 8 * 2**20, f"peak {peak / 2**20:.0f} MiB"
