from __future__ import annotations

import io

import pydicom
import pytest
from ingest_support import Stack, build_stack, phantom_bytes
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import func, select

from spinexr.node import MANUFACTURER
from spinexr.node.db.models import AuditEvent, Instance, Study
from spinexr.node.db.states import StudyStatus
from spinexr.node.errors import IngestError
from spinexr.node.ingest.service import Outcome
from spinexr.node.ingest.spool import safe_component


def count(stack: Stack, model=Instance) -> int:
    with stack.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def incoming(stack: Stack) -> list:
    return list(stack.spool.tmp.iterdir())


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_stored_instance_is_on_disk_and_in_the_database(stack: Stack) -> None:
    data, ds = phantom_bytes(1)
    result = stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    assert result.outcome is Outcome.STORED and result.decision == "analyse"
    with stack.sessions() as s:
        inst = s.scalars(select(Instance)).one()
        study = s.scalars(select(Study)).one()
        assert inst.sop_instance_uid == ds.SOPInstanceUID
        assert inst.transfer_syntax_uid == str(ds.file_meta.TransferSyntaxUID)
        assert (stack.spool.root / inst.path).read_bytes() == data
        assert inst.size_bytes == len(data)
        assert study.study_instance_uid == ds.StudyInstanceUID
        assert study.status is StudyStatus.RECEIVING and study.calling_ae == "PACS"
        events = s.scalars(select(AuditEvent)).all()
        assert [e.to_state for e in events] == ["received"]
    assert incoming(stack) == []


def test_identical_duplicate_adds_nothing_and_different_bytes_make_a_version(stack: Stack) -> None:
    data, ds = phantom_bytes(2)
    stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    again = stack.ingest.ingest([data[:1000], data[1000:]], calling_ae="PACS", source="dimse")
    assert again.outcome is Outcome.DUPLICATE
    assert count(stack) == 1
    ds.InstitutionName = "changed"
    changed = stack.ingest.ingest([encode(ds)], calling_ae="PACS", source="dimse")
    assert changed.outcome is Outcome.NEW_VERSION
    with stack.sessions() as s:
        versions = s.scalars(select(Instance).order_by(Instance.version)).all()
        assert [v.version for v in versions] == [1, 2]
        assert versions[0].path != versions[1].path
        assert all((stack.spool.root / v.path).exists() for v in versions)
    assert incoming(stack) == []


@pytest.mark.parametrize("how", ["manufacturer", "uid_root"])
def test_own_objects_are_dropped(stack: Stack, how: str) -> None:
    _, ds = phantom_bytes(3)
    if how == "manufacturer":
        ds.Manufacturer = MANUFACTURER
    else:
        ds.SOPInstanceUID = stack.settings.node.uid_root + ".99.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    result = stack.ingest.ingest([encode(ds)], calling_ae="PACS", source="dimse")
    assert result.outcome is Outcome.DROPPED_OWN
    assert count(stack) == 0 and count(stack, Study) == 0 and incoming(stack) == []


def refused(stack: Stack, data: bytes) -> IngestError:
    with pytest.raises(IngestError) as info:
        stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    assert count(stack) == 0, "nothing may be recorded for a refused instance"
    assert incoming(stack) == [], "refused bytes must not stay in the spool"
    return info.value


def test_unparseable_dataset_is_refused(stack: Stack) -> None:
    data, _ = phantom_bytes(4)
    garbage = data[:132] + b"\x02\x00\x00\x00UL\x04\x00" + b"\xff" * 300
    # Garbage after the meta group reads as an element running past the end of the file.
    assert refused(stack, garbage).reason in {"unparseable", "truncated"}
    assert refused(stack, b"not dicom at all").reason == "unparseable"


def test_decompression_bomb_is_refused_from_the_header(stack: Stack) -> None:
    _, ds = phantom_bytes(5, compressed=True)
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 200
    err = refused(stack, encode(ds))
    assert err.reason == "too_large" and "decode to" in str(err)


def test_deep_sequence_nesting_is_refused(stack: Stack) -> None:
    _, ds = phantom_bytes(6)
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(40):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = Sequence([inner])
    assert refused(stack, encode(ds)).reason == "too_deep"


def test_unsupported_sop_class_and_missing_uid(stack: Stack) -> None:
    _, ds = phantom_bytes(7)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    assert refused(stack, encode(ds)).reason == "unsupported_sop_class"
    _, ds = phantom_bytes(8)
    del ds.StudyInstanceUID
    assert refused(stack, encode(ds)).reason == "missing_uid"


def test_oversized_dataset_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    small = build_stack(tmp_path, dicom={"max_dataset_bytes": 65536})
    data, _ = phantom_bytes(9)
    assert len(data) > 65536
    assert refused(small, data).reason == "too_large"


def test_low_disk_space_is_out_of_resources(stack: Stack, monkeypatch) -> None:
    monkeypatch.setattr(stack.spool, "free_bytes", lambda: 10 * 2**20)
    stack.settings.storage.min_free_mb = 100
    data, _ = phantom_bytes(10)
    assert refused(stack, data).reason == "out_of_resources"


def test_rules_mark_what_is_not_for_analysis(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    st = build_stack(
        tmp_path, study={"body_part_regex": "^CSPINE$", "analyse_calling_aets": ["PACS"]}
    )
    data, _ = phantom_bytes(11)
    result = st.ingest.ingest([data], calling_ae="PACS", source="dimse")
    assert result.decision == "not for analysis: body part"
    st2 = build_stack(tmp_path / "b", study={"analyse_calling_aets": ["PACS"]})
    data, _ = phantom_bytes(12)
    assert (
        st2.ingest.ingest([data], calling_ae="OTHER", source="dimse").decision
        == "not for analysis: calling AE OTHER"
    )
    with st2.sessions() as s:
        assert s.scalars(select(Study)).one().decision == "not for analysis: calling AE OTHER"


@pytest.mark.parametrize("uid", ["..", "../../etc/passwd", "a/b", "1.2/../../x", "", "9" * 80])
def test_hostile_uids_never_escape_the_spool(uid: str) -> None:
    part = safe_component(uid)
    assert "/" not in part and part not in (".", "..") and part.startswith("x")
    assert len(part) <= 64


def test_hostile_study_uid_is_refused_and_nothing_escapes_the_spool(stack: Stack) -> None:
    # Stored under a hashed name before issue 14; an invalid UID is now refused outright
    # (it would be copied into the results otherwise).
    _, ds = phantom_bytes(13)
    ds.StudyInstanceUID = "../../../escape"
    assert refused(stack, encode(ds)).reason == "invalid_uid"
    outside = [p for p in stack.spool.root.parent.rglob("*escape*")]
    assert outside == []


def test_clean_incomplete_removes_half_written_files(stack: Stack) -> None:
    (stack.spool.tmp / "abc.part").write_bytes(b"half")
    assert stack.spool.clean_incomplete() == 1
    assert incoming(stack) == []


def test_file_on_disk_parses_completely(stack: Stack) -> None:
    data, ds = phantom_bytes(14, compressed=True)
    stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    with stack.sessions() as s:
        inst = s.scalars(select(Instance)).one()
    back = pydicom.dcmread(stack.spool.root / inst.path)
    assert (back.pixel_array == ds.pixel_array).all()


def test_unrecorded_spool_files_are_set_aside_not_deleted(stack: Stack) -> None:
    from spinexr.node.ingest.spool import ORPHAN_DIR, quarantine_orphans

    data, _ = phantom_bytes(15)
    stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    with stack.sessions() as s:
        inst = s.scalars(select(Instance)).one()
    orphan = (stack.spool.root / inst.path).parent / "1.2.3.4.5.dcm"
    orphan.write_bytes(b"moved into place, row never committed")
    assert quarantine_orphans(stack.spool, {inst.path}) == 1
    assert not orphan.exists() and (stack.spool.root / inst.path).exists()
    kept = list((stack.spool.root / ORPHAN_DIR).iterdir())
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"moved into place")
    assert quarantine_orphans(stack.spool, {inst.path}) == 0


def test_a_quarantined_file_goes_once_received_again_or_expired(stack: Stack) -> None:
    import time

    from spinexr.node.ingest.spool import ORPHAN_DIR, ORPHAN_KEEP_SECONDS, quarantine_orphans

    data, _ = phantom_bytes(16)
    stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    with stack.sessions() as s:
        inst = s.scalars(select(Instance)).one()
    folder = (stack.spool.root / inst.path).parent
    (folder / "1.2.3.4.6.dcm").write_bytes(b"sent again later")
    (folder / "1.2.3.4.7.dcm").write_bytes(b"never sent again")
    assert quarantine_orphans(stack.spool, {inst.path}) == 2
    again = f"{folder.name}/1.2.3.4.6.dcm"  # the sender sent it again: recorded now
    assert quarantine_orphans(stack.spool, {inst.path, again}) == 0
    left = sorted(p.name for p in (stack.spool.root / ORPHAN_DIR).iterdir())
    assert left == [f"{folder.name}-1.2.3.4.7.dcm"]
    quarantine_orphans(stack.spool, {inst.path, again}, now=time.time() + ORPHAN_KEEP_SECONDS + 1)
    assert list((stack.spool.root / ORPHAN_DIR).iterdir()) == []
