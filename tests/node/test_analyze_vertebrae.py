"""The per-vertebra table ``spinexr-node analyze`` prints, from hand-built results."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from spinexr.node import analyze as analyze_module
from spinexr.node.analyze import Skipped
from spinexr.node.analyze_table import HEADER, image_table, vertebrae_table
from spinexr.node.cli import cli
from spinexr.pipeline.results import FusionMode, ImageResult, Outcome, Provenance, StudyResult
from spinexr.pipeline.spacing import SpacingBasis
from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.findings import (
    LevelRule,
    VertebraFinding,
    VertebralAnalysis,
    VertebralStatus,
    ViewSource,
)


def vertebra(
    number: int,
    h: tuple[float, float, float],
    *,
    level: str | None = None,
    top: float = 100.0,
    spacing: tuple[float, float] | None = None,
    score: float = 0.97,
) -> VertebraFinding:
    """A body 80 px deep whose heights in pixels are ``h``, graded by `genant`."""
    kp = []
    centre = top + max(h) / 2
    for x, height in zip((200.0, 240.0, 280.0), h, strict=True):
        kp += [(x, centre - height / 2), (x, centre + height / 2)]
    g = genant.genant_index(genant.heights(kp))
    return VertebraFinding(
        number=number,
        level=level,
        score=score,
        keypoints=kp,
        heights_px=genant.heights(kp),
        heights_mm=None if spacing is None else genant.heights(kp, spacing),
        genant_index=g,
        grade=genant.grade(g),
        deformity=genant.deformity(genant.heights(kp)),
    )


def study(*images: ImageResult) -> StudyResult:
    return StudyResult(
        study_instance_uid="1.2.3",
        outcome=Outcome.NO_FINDING,
        probability=0.1,
        decision=False,
        threshold=0.5,
        display_threshold=0.3,
        fusion_mode=FusionMode.PAPER,
        images=list(images),
        provenance=Provenance(
            bundle_name="b",
            bundle_version="1",
            device_uid="1.2.3.9",
            weights_digest="0" * 64,
            demo=True,
            software_version="0",
            torch_device="cpu",
        ),
        analysed_at=dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
    )


def image(uid: str, analysis: VertebralAnalysis | None) -> ImageResult:
    return ImageResult(sop_instance_uid=uid, probability=0.1, decision=False, vertebrae=analysis)


SPACING = (0.5, 0.5)
WITH_SACRUM = VertebralAnalysis(
    status=VertebralStatus.ANALYSED,
    view="lateral",
    view_source=ViewSource.VIEW_POSITION,
    spacing_basis=SpacingBasis.PIXEL_SPACING,
    spacing_mm=SPACING,
    level_rule=LevelRule.SACRUM,
    vertebrae=[
        vertebra(1, (60, 58, 62), level="L4", spacing=SPACING),
        vertebra(2, (40, 52, 60), level="L5", top=170, spacing=SPACING),
    ],
    model="keypoints 1.0",
)
NO_SPACING = VertebralAnalysis(
    status=VertebralStatus.ANALYSED,
    view="lateral",
    view_source=ViewSource.IMAGE_MODEL,
    view_score=0.97,
    vertebrae=[vertebra(1, (50, 30, 52)), vertebra(2, (51, 50, 52), top=170)],
)
AP = VertebralAnalysis(
    status=VertebralStatus.NOT_LATERAL,
    reason="an AP view (ViewPosition AP)",
    view="ap",
    view_source=ViewSource.VIEW_POSITION,
)


def test_established_levels_with_spacing_give_heights_in_mm() -> None:
    assert image_table("1.2.3.2", WITH_SACRUM) == [
        "  image 1.2.3.2 lateral (ViewPosition)  spacing PixelSpacing  levels: sacrum",
        "  level  h_a mm  h_m mm  h_p mm     G  grade     type",
        "  L4       30.0    29.0    31.0  0.94  normal    none",
        "  L5       20.0    26.0    30.0  0.67  moderate  wedge",
        "  worst: moderate (normal 1, mild 0, moderate 1, severe 0)",
    ]
    assert HEADER == "level  h_a mm  h_m mm  h_p mm     G  grade     type"


def test_without_spacing_heights_are_dashes_and_vertebrae_are_numbered() -> None:
    assert image_table("1.2.3.4", NO_SPACING) == [
        "  image 1.2.3.4 lateral (image model 0.97)  spacing none (ratios and grades only)"
        "  levels: from top (not established)",
        "  level  h_a mm  h_m mm  h_p mm     G  grade     type",
        "  #1          -       -       -  0.58  severe    biconcave",
        "  #2          -       -       -  0.96  normal    none",
        "  worst: severe (normal 1, mild 0, moderate 0, severe 1)",
    ]


def test_magnification_and_uncorrected_imager_spacing_are_named() -> None:
    corrected = WITH_SACRUM.model_copy(
        update={
            "spacing_basis": SpacingBasis.IMAGER_PIXEL_SPACING,
            "magnification_factor": 1.1,
        }
    )
    assert (
        "spacing ImagerPixelSpacing / magnification 1.10  levels" in image_table("9", corrected)[0]
    )
    raw = WITH_SACRUM.model_copy(update={"spacing_basis": SpacingBasis.IMAGER_PIXEL_SPACING})
    assert (
        "spacing ImagerPixelSpacing (not corrected for magnification)" in image_table("9", raw)[0]
    )


def test_study_table_gives_reasons_and_skips_images_without_an_analysis() -> None:
    result = study(
        image("1.2.3.1", AP),
        image("1.2.3.2", WITH_SACRUM),
        image("1.2.3.3", None),
        image(
            "1.2.3.5",
            VertebralAnalysis(
                status=VertebralStatus.TOO_SMALL,
                reason="the image is 200 px high: too small to place keypoints",
                view="lateral",
                view_source=ViewSource.VIEW_CODE,
            ),
        ),
    )
    lines = vertebrae_table(result)
    assert lines[0] == (
        "  image 1.2.3.1 ap (ViewPosition)  not analysed for vertebral fractures: "
        "an AP view (ViewPosition AP)"
    )
    assert lines[1:6] == image_table("1.2.3.2", WITH_SACRUM)
    assert lines[6:] == [
        "  image 1.2.3.5 lateral (ViewCodeSequence)  not analysed for vertebral fractures: "
        "the image is 200 px high: too small to place keypoints"
    ]
    assert not any("1.2.3.3" in line for line in lines)
    assert vertebrae_table(study(image("1.2.3.3", None))) == []


def test_analyze_prints_the_table_under_its_study_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's output, with a stand-in for the models (the pipeline needs weights)."""
    monkeypatch.chdir(tmp_path)
    result = study(image("1.2.3.1", AP), image("1.2.3.2", WITH_SACRUM))

    def hand_made(
        paths: Sequence[Path], bundle_dir: Path, out_dir: Path, **kwargs: Any
    ) -> tuple[list[StudyResult], list[Skipped]]:
        kwargs["on_study"](result, len(result.images))
        return [result], []

    monkeypatch.setattr(analyze_module, "analyze_paths", hand_made)
    args = ["analyze", str(tmp_path), "--bundle", str(tmp_path / "b"), "--out", str(tmp_path)]
    shown = CliRunner().invoke(cli, args)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    study_line = next(i for i, line in enumerate(lines) if line.startswith("1.2.3 "))
    assert lines[study_line + 1 : study_line + 7] == vertebrae_table(result)
    assert lines[-1].startswith("1 study written")

    hidden = CliRunner().invoke(cli, [*args, "--no-vertebrae-table"])
    assert hidden.exit_code == 0, hidden.output
    assert "1.2.3 " in hidden.output and "h_a mm" not in hidden.output
    assert "not analysed for vertebral fractures" not in hidden.output
