"""Output builder test support: phantom studies, hand-made results, validators.

Importable as ``outputs_support`` (``tests/`` is on pytest's path)."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from testsupport import require_tool, tools_required

from spinexr.node.settings import Settings
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.results import (
    Box,
    FusionMode,
    ImageError,
    ImageResult,
    Outcome,
    Provenance,
    StudyResult,
)
from spinexr.pipeline.spacing import read_pixel_spacing
from spinexr.training.phantoms import make_phantom_image

UID_ROOT = "1.2.826.0.1.3680043.10.1404"
PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")

PROVENANCE = Provenance(
    bundle_name="spinexr-demo",
    bundle_version="1.2.0",
    device_uid=f"{UID_ROOT}.7.1",
    weights_digest="0123456789abcdef" * 4,
    demo=True,
    software_version="0.1.0",
    torch_device="cpu",
)


@dataclass(frozen=True)
class Variant:
    """One way of making the phantom study."""

    photometric: str = "MONOCHROME2"
    sop_class: str = "CR"
    voi_lut_sequence: bool = False
    window: bool = True
    compressed: bool = False


def make_study(seed: int, variant: Variant, *, lesions: bool = True) -> list[Dataset]:
    """An AP + lateral phantom study (same patient, study and series)."""
    study_uid = f"1.2.826.0.1.3680043.8.498.{seed}.1"
    series_uid = f"1.2.826.0.1.3680043.8.498.{seed}.2"
    out = []
    for number, view in enumerate(("AP", "LAT"), start=1):
        ds, _ = make_phantom_image(
            seed,
            view=view,  # type: ignore[arg-type]
            photometric=variant.photometric,  # type: ignore[arg-type]
            sop_class=variant.sop_class,  # type: ignore[arg-type]
            compressed=variant.compressed,
            size="small",
            lesions=[LesionClass.OSTEOPHYTES, LesionClass.DISC_SPACE_NARROWING] if lesions else [],
            voi_lut_sequence=variant.voi_lut_sequence,
            window=variant.window,
            region="LSPINE",
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{seed}.3.{number}",
            instance_number=number,
        )
        out.append(ds)
    # Same patient for both views (the factory draws demographics per seed: equal here).
    return out


def image_result(
    ds: Dataset,
    probability: float,
    threshold: float,
    boxes: Sequence[Box] = (),
) -> ImageResult:
    spacing = read_pixel_spacing(ds)
    return ImageResult(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        photometric=str(ds.PhotometricInterpretation),
        pixel_spacing_basis=spacing.basis,
        pixel_spacing_mm=None
        if spacing.row_mm is None or spacing.column_mm is None
        else (spacing.row_mm, spacing.column_mm),
        classifier_probability=probability,
        probability=probability,
        decision=probability >= threshold,
        boxes=list(boxes),
    )


ABNORMAL_BOXES = (
    # AP: two displayed boxes of two classes and one kept but not displayed.
    [
        Box(label=LesionClass.OSTEOPHYTES, score=0.87, xmin=100.5, ymin=120.25, xmax=160, ymax=170),
        Box(
            label=LesionClass.DISC_SPACE_NARROWING,
            score=0.64,
            xmin=150,
            ymin=300,
            xmax=260.75,
            ymax=330,
        ),
        Box(
            label=LesionClass.OSTEOPHYTES,
            score=0.12,
            xmin=200,
            ymin=400,
            xmax=240,
            ymax=440,
            displayed=False,
        ),
    ],
    # LAT: one box touching the image border (clipping not needed, within range).
    [
        Box(label=LesionClass.SURGICAL_IMPLANT, score=0.55, xmin=0, ymin=2, xmax=384, ymax=60),
    ],
)


def abnormal_result(sources: Sequence[Dataset], *, demo: bool = True) -> StudyResult:
    threshold = 0.5
    images = [
        image_result(sources[0], 0.91, threshold, ABNORMAL_BOXES[0]),
        image_result(sources[1], 0.40, threshold, ABNORMAL_BOXES[1]),
    ]
    return StudyResult(
        study_instance_uid=str(sources[0].StudyInstanceUID),
        outcome=Outcome.ABNORMAL,
        probability=0.91,
        decision=True,
        threshold=threshold,
        display_threshold=0.3,
        fusion_mode=FusionMode.PAPER,
        flagged_classes=[
            LesionClass.OSTEOPHYTES,
            LesionClass.SURGICAL_IMPLANT,
            LesionClass.DISC_SPACE_NARROWING,
        ],
        images=images,
        provenance=PROVENANCE.model_copy(update={"demo": demo}),
        analysed_at=dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
    )


def normal_result(sources: Sequence[Dataset]) -> StudyResult:
    threshold = 0.5
    return StudyResult(
        study_instance_uid=str(sources[0].StudyInstanceUID),
        outcome=Outcome.NO_FINDING,
        probability=0.2,
        decision=False,
        threshold=threshold,
        display_threshold=0.3,
        fusion_mode=FusionMode.PAPER,
        images=[image_result(ds, p, threshold) for ds, p in zip(sources, (0.2, 0.1), strict=True)],
        provenance=PROVENANCE,
        analysed_at=dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
    )


def failed_result(sources: Sequence[Dataset]) -> StudyResult:
    images = [
        ImageResult(
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            error=ImageError(reason="undecodable", message="pixel data cannot be decoded"),
        )
        for ds in sources
    ]
    return StudyResult(
        study_instance_uid=str(sources[0].StudyInstanceUID),
        outcome=Outcome.FAILED,
        failure_reason="no image could be analysed (undecodable pixel data)",
        threshold=0.5,
        display_threshold=0.3,
        fusion_mode=FusionMode.PAPER,
        images=images,
        provenance=PROVENANCE,
        analysed_at=dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
    )


def make_settings(**output: bool) -> Settings:
    """Settings with the test UID root and the given ``output`` profile switches."""
    return Settings(node={"uid_root": UID_ROOT}, output=output)


# ----------------------------------------------------------------------------- validators


def dciodvfy_errors(path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy; return (error lines, warning lines)."""
    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return (
        [ln for ln in lines if ln.startswith("Error")],
        [ln for ln in lines if ln.startswith("Warning")],
    )


def require_pixelmed() -> Path:
    if not PIXELMED_JAR.exists():
        msg = f"{PIXELMED_JAR} missing (apt-get install pixelmed-apps)"
        if tools_required():
            pytest.fail(msg)
        pytest.skip(msg)
    require_tool("java")
    return PIXELMED_JAR


_PIXELMED_LIMITS = [
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
]
_MARK = "=== FILE "
# One JVM for many files: DicomSRValidator's main takes one file and spends ~4 s compiling
# its stylesheets before each. Java's single-file source launcher needs a JDK; without one
# the tests fall back to one `java ... DicomSRValidator FILE` per file.
_MANY_SOURCE = """
import com.pixelmed.validate.DicomSRValidator;

public class SRValidateMany {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String name : args) {
            System.out.println("=== FILE " + name);
            System.out.println(validator.validate(name));
        }
    }
}
"""


def pixelmed_sr_report(paths: Sequence[Path], workdir: Path) -> dict[Path, list[str]]:
    """Run com.pixelmed.validate.DicomSRValidator on each file; return its lines per file.

    One JVM for all files (parallel JVMs are slower on two cores).
    """
    jar = require_pixelmed()
    source = workdir / "SRValidateMany.java"
    source.write_text(_MANY_SOURCE)
    proc = subprocess.run(
        ["java", *_PIXELMED_LIMITS, "-cp", str(jar), str(source), *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    out: dict[Path, list[str]] = {}
    if proc.returncode == 0 and _MARK in proc.stdout:
        current: list[str] = []
        for line in proc.stdout.splitlines():
            if line.startswith(_MARK):
                current = out.setdefault(Path(line[len(_MARK) :]), [])
            elif line.strip():
                current.append(line)
        return out
    for path in paths:
        single = subprocess.run(
            [
                "java",
                *_PIXELMED_LIMITS,
                "-cp",
                str(jar),
                "com.pixelmed.validate.DicomSRValidator",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        out[path] = [ln for ln in (single.stdout + single.stderr).splitlines() if ln.strip()]
    return out


def write_object(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path
