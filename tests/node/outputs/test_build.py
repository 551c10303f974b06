from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from outputs_support import (
    UID_ROOT,
    Variant,
    abnormal_result,
    dciodvfy_errors,
    failed_result,
    make_settings,
    make_study,
    normal_result,
    write_object,
)
from pydicom.dataset import Dataset
from vertebrae_outputs_support import lateral_analysis, with_vertebrae

from spinexr.node import MANUFACTURER
from spinexr.node.ingest.header import read_header
from spinexr.node.ingest.rules import is_own_object
from spinexr.node.outputs import BuiltObject, SupersededReport, build_outputs
from spinexr.node.outputs.boxes import CLASS_COLOURS
from spinexr.node.outputs.provenance import DEMO_WARNING
from spinexr.node.outputs.sc import grayscale_8bit
from spinexr.node.outputs.vertebrae_gsps import GRADE_COLOURS, label_box
from spinexr.node.outputs.vertebrae_tracking import height_lines
from spinexr.node.sopclasses import COMPREHENSIVE_SR, GSPS, KOS, SECONDARY_CAPTURE
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.results import StudyResult

ALL = make_settings(sr=True, gsps=True, kos=True, secondary_capture=True)

VARIANTS = {
    "cr-mono2-window": Variant(),
    "dx-mono1-window-j2k": Variant(photometric="MONOCHROME1", sop_class="DX", compressed=True),
    "cr-mono1-lut": Variant(photometric="MONOCHROME1", voi_lut_sequence=True, window=False),
    "dx-mono2-window+lut": Variant(sop_class="DX", voi_lut_sequence=True),
}
SOP_CLASSES = {"sr": COMPREHENSIVE_SR, "gsps": GSPS, "kos": KOS, "sc": SECONDARY_CAPTURE}


def _kinds(objects: list[BuiltObject]) -> list[str]:
    return [o.kind for o in objects]


@pytest.mark.parametrize("name", VARIANTS)
def test_every_object_is_valid_ours_and_recognised_as_ours(name: str, tmp_path: Path) -> None:
    sources = make_study(40, VARIANTS[name])
    for label, result in (
        ("abnormal", abnormal_result(sources)),
        ("normal", normal_result(sources)),
        ("failed", failed_result(sources)),
    ):
        objects = build_outputs(sources, result, ALL, job_key=f"{name}-{label}")
        for obj in objects:
            path = write_object(obj.dataset, tmp_path / f"{label}-{obj.sop_instance_uid}.dcm")
            errors, warnings = dciodvfy_errors(path)
            assert errors == [], (name, label, obj.kind, errors)
            unexpected = [w for w in warnings if "<99SPINEXR>" not in w]
            assert unexpected == [], (name, label, obj.kind, unexpected)

            header = read_header(
                path,
                max_sequence_depth=ALL.dicom.max_sequence_depth,
                max_decompressed_bytes=ALL.dicom.max_decompressed_bytes,
            )
            assert is_own_object(header, ALL), (obj.kind, header)
            assert header.sop_class_uid == SOP_CLASSES[obj.kind]
            assert header.manufacturer == MANUFACTURER
            assert header.sop_instance_uid.startswith(UID_ROOT + ".")
            assert header.series_instance_uid.startswith(UID_ROOT + ".")
            assert header.study_instance_uid == result.study_instance_uid

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.DeviceUID == result.provenance.device_uid
            assert ds.ManufacturerModelName == result.provenance.bundle_name
            assert ds.SeriesDescription.startswith("AI spinexr")
            assert ds.SeriesDescription.endswith(DEMO_WARNING)
            ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == MANUFACTURER]
            assert [e.PurposeOfReferenceCodeSequence[0].CodeValue for e in ours] == ["109102"]


def test_profile_chooses_the_objects() -> None:
    sources = make_study(41, Variant())
    abnormal, normal, failed = (
        abnormal_result(sources),
        normal_result(sources),
        failed_result(sources),
    )
    default = make_settings()
    assert _kinds(build_outputs(sources, abnormal, default, job_key="a")) == ["sr", "gsps", "gsps"]
    assert _kinds(build_outputs(sources, abnormal, ALL, job_key="a")) == [
        "sr",
        "gsps",
        "gsps",
        "kos",
        "sc",
        "sc",
    ]
    # nothing flagged: no KOS; failed: only the SR that says so
    assert _kinds(build_outputs(sources, normal, ALL, job_key="n")) == [
        "sr",
        "gsps",
        "gsps",
        "sc",
        "sc",
    ]
    assert _kinds(build_outputs(sources, failed, ALL, job_key="f")) == ["sr"]
    nothing = make_settings(sr=False, gsps=False)
    assert build_outputs(sources, abnormal, nothing, job_key="a") == []
    per_image = [o for o in build_outputs(sources, abnormal, ALL, job_key="a") if o.kind == "gsps"]
    assert [o.source_sop_instance_uid for o in per_image] == [s.SOPInstanceUID for s in sources]


def test_rebuilding_gives_the_same_uids_and_another_job_new_ones() -> None:
    sources = make_study(42, Variant())
    result = abnormal_result(sources)

    def uids(job: str) -> list[tuple[str, str]]:
        return [
            (o.sop_instance_uid, o.series_instance_uid)
            for o in build_outputs(sources, result, ALL, job_key=job)
        ]

    first = uids("job-1")
    assert first == uids("job-1")
    assert len({sop for sop, _ in first}) == len(first)
    assert len({series for _, series in first}) == 4  # one series per kind
    again = StudyResult.from_json(result.to_json())
    rebuilt = [
        (o.sop_instance_uid, o.series_instance_uid)
        for o in build_outputs(sources, again, ALL, job_key="job-1")
    ]
    assert rebuilt == first
    assert not {sop for sop, _ in uids("job-2")} & {sop for sop, _ in first}


def test_superseding_sr_lists_its_predecessor() -> None:
    sources = make_study(43, Variant())
    result = abnormal_result(sources)
    (old,) = [o for o in build_outputs(sources, result, make_settings(gsps=False), job_key="v1")]
    predecessor = SupersededReport(
        result.study_instance_uid, old.series_instance_uid, old.sop_instance_uid
    )
    (new,) = build_outputs(
        sources, result, make_settings(gsps=False), job_key="v2", predecessor=predecessor
    )
    assert new.sop_instance_uid != old.sop_instance_uid
    (study,) = new.dataset.PredecessorDocumentsSequence
    ref = study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == old.sop_instance_uid
    assert ref.ReferencedSOPClassUID == COMPREHENSIVE_SR


def test_kos_selects_the_flagged_images() -> None:
    sources = make_study(44, Variant())
    result = abnormal_result(sources)
    (kos,) = [o for o in build_outputs(sources, result, ALL, job_key="k") if o.kind == "kos"]
    ds = kos.dataset
    assert ds.ConceptNameCodeSequence[0].CodeValue == "113000"
    selected = [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in ds.ContentSequence
        if item.ValueType == "IMAGE"
    ]
    # AP is positive; the lateral is negative (p=0.40) but has a displayed box
    assert selected == [s.SOPInstanceUID for s in sources]
    (text,) = [
        i
        for i in ds.ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "113012"
    ]
    assert text.TextValue.startswith(DEMO_WARNING)


def _sc(sources: list[Dataset], result: StudyResult) -> list[Dataset]:
    objects = build_outputs(sources, result, ALL, job_key="sc")
    return [o.dataset for o in objects if o.kind == "sc"]


def test_secondary_capture_burns_in_boxes_and_banner() -> None:
    sources = make_study(45, Variant())
    result = abnormal_result(sources)
    ap, _lateral = _sc(sources, result)
    assert ap.BurnedInAnnotation == "YES" and ap.ConversionType == "WSD"
    assert ap.PhotometricInterpretation == "RGB" and ap.BitsAllocated == 8
    assert (ap.Rows, ap.Columns) == (sources[0].Rows, sources[0].Columns)
    assert ap.SourceImageSequence[0].ReferencedSOPInstanceUID == sources[0].SOPInstanceUID
    pixels = ap.pixel_array
    box = result.images[0].boxes[0]  # Osteophytes, displayed
    edge = pixels[int(box.ymin) + 1, int((box.xmin + box.xmax) / 2)]
    assert tuple(int(v) for v in edge) == CLASS_COLOURS[LesionClass.OSTEOPHYTES]
    hidden = result.images[0].boxes[2]  # kept but not displayed: not drawn
    assert not hidden.displayed
    region = pixels[int(hidden.ymin) : int(hidden.ymax), int(hidden.xmin) : int(hidden.xmax)]
    assert (region[..., 0] == region[..., 1]).all() and (region[..., 1] == region[..., 2]).all()
    banner = pixels[:8, :]
    assert (banner == 0).mean() > 0.5  # black banner with text


def test_secondary_capture_burns_in_vertebral_heights_and_labels() -> None:
    sources = make_study(48, Variant())
    lateral = sources[1]
    result = with_vertebrae(abnormal_result(sources), [None, lateral_analysis(lateral)])
    _, capture = _sc(sources, result)
    pixels = capture.pixel_array.astype(int)
    rows, cols = int(lateral.Rows), int(lateral.Columns)
    for vertebra in result.images[1].vertebrae.vertebrae:
        colour = GRADE_COLOURS[vertebra.grade]
        for (x0, y0), (x1, y1) in height_lines(vertebra, rows, cols):
            x, y = round((x0 + x1) / 2), round((y0 + y1) / 2)  # the middle of the line
            window = pixels[y - 1 : y + 2, x - 1 : x + 2]
            assert (np.abs(window - colour).sum(axis=-1) == 0).any(), (vertebra.label, colour)
        left, top, right, bottom = label_box(vertebra, rows, cols)
        label = pixels[round(top) : round(bottom), round(left) : round(right)]
        # Anti-aliased text: pixels near the grade's colour.
        assert (np.abs(label - colour).sum(axis=-1) < 90).sum() > 5, vertebra.label
    assert "vertebral heights" in capture.DerivationDescription


def test_rendering_handles_monochrome1_and_each_voi() -> None:
    mono2 = make_study(46, Variant())[0]
    mono1 = make_study(46, Variant(photometric="MONOCHROME1"))[0]
    a, b = grayscale_8bit(mono2), grayscale_8bit(mono1)
    # the phantom stores MONOCHROME1 inverted with an inverted window: same display
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0
    lut = grayscale_8bit(make_study(46, Variant(voi_lut_sequence=True, window=False))[0])
    assert np.corrcoef(a.ravel(), lut.ravel())[0, 1] > 0.9
    assert a.min() < 30 and a.max() > 220


def test_sources_without_body_part_still_give_valid_objects(tmp_path: Path) -> None:
    sources = make_study(47, Variant(sop_class="DX"))
    for ds in sources:
        del ds.BodyPartExamined
    for obj in build_outputs(sources, abnormal_result(sources), ALL, job_key="nobody"):
        path = write_object(obj.dataset, tmp_path / f"{obj.sop_instance_uid}.dcm")
        errors, _ = dciodvfy_errors(path)
        assert errors == [], (obj.kind, errors)
        if obj.kind in ("gsps", "sc"):
            assert obj.dataset.Laterality == ""  # unknown: type 2C written empty
