"""The SR reads back: highdicom recovers the findings, dcmtk's dsr2html renders it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from outputs_support import (
    UID_ROOT,
    Variant,
    abnormal_result,
    failed_result,
    make_settings,
    make_study,
    normal_result,
    write_object,
)
from pydicom.dataset import Dataset
from testsupport import require_tool

from spinexr.node.outputs import codes
from spinexr.node.outputs.boxes import box_corners
from spinexr.node.outputs.build import build_outputs
from spinexr.node.outputs.provenance import DEMO_WARNING, box_trackings
from spinexr.node.outputs.readback import (
    Finding,
    lesion_class,
    read_findings,
    read_report,
)
from spinexr.node.outputs.sr import outcome_text
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.results import Box, ImageError, ImageResult, Outcome, StudyResult

Builder = Callable[[Sequence[Dataset]], StudyResult]


def _random_boxes_result(sources: Sequence[Dataset]) -> StudyResult:
    """Every class, arbitrary float corners and scores, some below the display threshold."""
    rng = np.random.default_rng(7)
    result = abnormal_result(sources)
    images = []
    for image in result.images:
        boxes = []
        for label in LesionClass:
            x0, y0 = rng.uniform(0, 300), rng.uniform(0, 400)
            boxes.append(
                Box(
                    label=label,
                    score=float(rng.uniform(0.05, 1.0)),
                    xmin=x0,
                    ymin=y0,
                    xmax=x0 + rng.uniform(1, 80),
                    ymax=y0 + rng.uniform(1, 100),
                    displayed=bool(rng.random() < 0.7),
                )
            )
        boxes.sort(key=lambda b: -b.score)
        images.append(image.model_copy(update={"boxes": boxes}))
    return result.model_copy(update={"images": images})


def _partial_result(sources: Sequence[Dataset]) -> StudyResult:
    """First image abnormal with boxes, second one failed."""
    result = abnormal_result(sources)
    failed = ImageResult(
        sop_instance_uid=result.images[1].sop_instance_uid,
        series_instance_uid=result.images[1].series_instance_uid,
        error=ImageError(reason="too_small", message="the image is 10x10 pixels"),
    )
    return result.model_copy(update={"images": [result.images[0], failed]})


RESULTS: dict[str, Builder] = {
    "normal": normal_result,
    "abnormal": abnormal_result,
    "failed": failed_result,
    "partial": _partial_result,
    "random-boxes": _random_boxes_result,
}


def _sr_file(sources: Sequence[Dataset], result: StudyResult, path: Path) -> Dataset:
    """Build the SR the node sends for ``result``, write it and read it back."""
    settings = make_settings(sr=True, gsps=False)
    (built,) = build_outputs(sources, result, settings, job_key=f"readback-{path.stem}")
    assert built.kind == "sr"
    write_object(built.dataset, path)
    return pydicom.dcmread(path)


def _expected(result: StudyResult, sources: Sequence[Dataset]) -> list[Finding]:
    sizes = {str(ds.SOPInstanceUID): (int(ds.Rows), int(ds.Columns)) for ds in sources}
    out = []
    for tracking in box_trackings(result, UID_ROOT):
        rows, cols = sizes[tracking.sop_instance_uid]
        x0, y0, x1, y1 = box_corners(tracking.box, rows, cols)
        out.append(
            Finding(
                label=tracking.box.label,
                xmin=x0,
                ymin=y0,
                xmax=x1,
                ymax=y1,
                score=tracking.box.score,
                sop_instance_uid=tracking.sop_instance_uid,
                tracking_id=tracking.identifier,
                tracking_uid=tracking.uid,
            )
        )
    return out


@pytest.mark.parametrize("name", RESULTS)
def test_highdicom_recovers_the_findings(name: str, tmp_path: Path) -> None:
    sources = make_study(70, Variant(photometric="MONOCHROME1", sop_class="DX"))
    result = RESULTS[name](sources)
    sr = _sr_file(sources, result, tmp_path / f"{name}.dcm")
    found = read_findings(sr)
    expected = _expected(result, sources)
    assert len(found) == len(expected) == sum(len(im.displayed_boxes) for im in result.images)
    for got, want in zip(found, expected, strict=True):
        assert got.label is want.label
        assert got.corners == pytest.approx(want.corners, abs=1e-3)
        assert got.score == pytest.approx(want.score, rel=1e-6, abs=1e-7)  # float32 or better
        assert got.sop_instance_uid == want.sop_instance_uid
        assert (got.tracking_id, got.tracking_uid) == (want.tracking_id, want.tracking_uid)
        box = got.to_box()
        assert box.label is want.label and box.displayed
    assert type(sr) is pydicom.FileDataset  # the caller's dataset is left alone


def test_outcome_and_probabilities_read_back(tmp_path: Path) -> None:
    sources = make_study(71, Variant())

    normal = read_report(_sr_file(sources, normal_result(sources), tmp_path / "n.dcm"))
    assert normal.outcome is Outcome.NO_FINDING
    assert normal.outcome_code == codes.NO_ABNORMAL_FINDING
    assert normal.summary.startswith(f"{DEMO_WARNING}. No abnormal finding")
    assert normal.findings == () and normal.failures == ()
    assert normal.probability == pytest.approx(0.2) and normal.decision is False
    assert normal.study is not None and normal.study.threshold == pytest.approx(0.5)
    assert [(im.sop_instance_uid, im.probability, im.decision) for im in normal.images] == [
        (str(sources[0].SOPInstanceUID), pytest.approx(0.2), False),
        (str(sources[1].SOPInstanceUID), pytest.approx(0.1), False),
    ]

    result = abnormal_result(sources)
    abnormal = read_report(_sr_file(sources, result, tmp_path / "a.dcm"))
    assert abnormal.outcome is Outcome.ABNORMAL
    assert abnormal.outcome_code == codes.OUTCOME_WITH_FINDINGS
    assert abnormal.summary == outcome_text(result)
    assert abnormal.probability == pytest.approx(0.91) and abnormal.decision is True
    assert [im.decision for im in abnormal.images] == [True, False]
    assert [f.label for f in abnormal.findings] == [
        LesionClass.OSTEOPHYTES,
        LesionClass.DISC_SPACE_NARROWING,
        LesionClass.SURGICAL_IMPLANT,
    ]

    failed = read_report(_sr_file(sources, failed_result(sources), tmp_path / "f.dcm"))
    assert failed.outcome is Outcome.FAILED and failed.outcome_code == codes.OUTCOME_FAILED
    assert "Analysis failed" in failed.summary
    assert failed.probability is None and failed.decision is None and failed.images == ()
    assert failed.findings == () and len(failed.failures) == 2
    assert all("pixel data cannot be decoded" in text for text in failed.failures)

    partial = read_report(_sr_file(sources, _partial_result(sources), tmp_path / "p.dcm"))
    assert partial.outcome is Outcome.ABNORMAL
    assert partial.outcome_code == codes.PARTIAL_WITH_FINDINGS
    assert len(partial.images) == 1 and len(partial.failures) == 1
    assert len(partial.findings) == 2


def test_foreign_codes_are_refused(tmp_path: Path) -> None:
    sources = make_study(72, Variant())
    sr = _sr_file(sources, abnormal_result(sources), tmp_path / "x.dcm")
    for item in _walk(sr):
        if (
            item.get("ValueType") == "CODE"
            and item.ConceptCodeSequence[0].CodeValue == "OSTEOPHYTE"
        ):
            item.ConceptCodeSequence[0].CodeValue = "NOT_A_CLASS"
    with pytest.raises(ValueError, match="not one of the node's classes"):
        read_findings(sr)
    with pytest.raises(ValueError):
        read_findings(sources[0])  # not an SR at all
    assert lesion_class("40388003", "SCT") is LesionClass.SURGICAL_IMPLANT


@pytest.mark.integration
def test_dsr2html_renders_every_sr(tmp_path: Path) -> None:
    exe = require_tool("dsr2html")
    sources = make_study(73, Variant(photometric="MONOCHROME1"))
    expectations = {
        "normal": ["No abnormal finding", "All algorithms succeeded; without findings"],
        "abnormal": [
            "All algorithms succeeded; with findings",
            "Osteophyte",
            "Intervertebral disc space narrowing",
            "Implant",
            "box 1 Osteophytes",
            "0.87",
        ],
        "failed": ["Analysis failed", "No algorithms succeeded; without findings"],
        "partial": ["Not all algorithms succeeded; with findings", "not analysed"],
    }
    for name, needles in expectations.items():
        path = tmp_path / f"{name}.dcm"
        _sr_file(sources, RESULTS[name](sources), path)
        out = tmp_path / f"{name}.html"
        proc = subprocess.run(
            [exe, str(path), str(out)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "F:"))] == []
        html = out.read_text(errors="replace")
        assert "Imaging Measurement Report" in html
        for needle in needles:
            assert needle in html, (name, needle)


def _walk(ds: Dataset) -> list[Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_walk(item))
    return out
