"""The CT stage's stated outcomes that need no trained model, and the result model's rules.

The trained models' path (localise, straighten, grade) runs end to end in
``tests/node/tasking/test_ct_end_to_end.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from spinexr.pipeline.ct.findings import CtAnalysis, CtStatus
from spinexr.pipeline.ct.localise import build_localiser
from spinexr.pipeline.ct.stage import NO_MODEL, CtStage
from spinexr.pipeline.fusion import summarise_study
from spinexr.pipeline.results import Outcome
from spinexr.training.phantoms.ct import make_ct_phantom
from spinexr.training.phantoms.ct_dicom import write_ct_study


class NeverCalled:
    """A keypoint model that must not be reached (the stage refuses before)."""

    name = "never 1"

    def predict(self, image, spacing_mm):  # pragma: no cover - a failure if reached
        raise AssertionError("the keypoint model ran on a refused study")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    phantom = make_ct_phantom(3, levels=("T6", "T10"), fractures=())
    return write_ct_study(tmp_path_factory.mktemp("ct"), phantom)


def _paths(study, *roles: str) -> list[Path]:
    return [p for s in study.series if s.role in roles for p in s.paths]


def test_without_ct_models_the_stage_says_so(study) -> None:
    outcome = CtStage(localiser=None, keypoints=None).analyse(_paths(study, "axial"))
    assert outcome.analysis.status is CtStatus.NO_MODEL
    assert outcome.analysis.reason == NO_MODEL and outcome.reformat is None
    summary = summarise_study([], 0.5, outcome.analysis)
    assert summary.outcome is Outcome.FAILED
    assert "CT not analysed: no_model" in (summary.failure_reason or "")


def test_a_study_of_localizer_and_reformat_only_names_each_series_reason(study) -> None:
    stage = CtStage(localiser=build_localiser(), keypoints=NeverCalled())
    outcome = stage.analyse(_paths(study, "localizer", "reformat"))
    analysis = outcome.analysis
    assert analysis.status is CtStatus.NOT_ANALYSED
    assert analysis.reason == "no_eligible_series"
    assert analysis.series_instance_uid is None and outcome.reformat is None
    reasons = {s.series_instance_uid: " ".join(s.reasons) for s in analysis.series}
    assert "localizer" in reasons[study.role("localizer").series_uid]
    assert "not_original" in reasons[study.role("reformat").series_uid]
    assert not any(s.chosen for s in analysis.series)
    assert set(analysis.timings) == {"headers", "selection"}


def test_a_gapped_series_is_refused_with_the_reason(tmp_path: Path) -> None:
    phantom = make_ct_phantom(4, levels=("T6", "T10"), fractures=())
    files = write_ct_study(tmp_path, phantom, distractors=False, missing=(10, 11))
    stage = CtStage(localiser=build_localiser(), keypoints=NeverCalled())
    analysis = stage.analyse(_paths(files, "axial")).analysis
    assert analysis.status is CtStatus.NOT_ANALYSED
    assert "missing_slices" in " ".join(r for s in analysis.series for r in s.reasons)


def test_the_result_model_keeps_its_rules() -> None:
    with pytest.raises(ValidationError, match="vertebrae"):
        CtAnalysis(status=CtStatus.ANALYSED)
    with pytest.raises(ValidationError, match="reason"):
        CtAnalysis(status=CtStatus.NOT_ANALYSED)
    refused = CtAnalysis(status=CtStatus.NOT_ANALYSED, reason="no_spine", message="m")
    assert CtAnalysis.model_validate_json(refused.model_dump_json()) == refused
    assert refused.on_reformat().status.value == "no_vertebrae"
    assert not refused.fractured and refused.lowest_genant is None
