"""Issue 14 item 7: by default only spine radiographs are analysed.

A chest PA in a spine study is recorded "not for analysis: not a spine image" at ingest (its
Body Part Examined says CHEST) while the spine images of the study are analysed; a chest
whose header says nothing is kept out by the worker's image check and the SR says so;
``study.body_parts = "any"`` widens it; an old configuration with only a body part regex
keeps its meaning.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
import torch
from ingest_support import Stack, build_stack, phantom_bytes
from pipelinesupport import Brightness, NoBoxes, bundle_fields
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from torch import nn

from spinexr.node.db.models import Instance, Job, OutputObject, Result
from spinexr.node.db.states import JobState, OutputKind
from spinexr.node.db.timeline import transition
from spinexr.node.ingest.assembler import StudyAssembler
from spinexr.node.jobs.runner import JobRunner
from spinexr.node.outputs.sr import outcome_text
from spinexr.node.settings import BodyParts, Settings, load_settings
from spinexr.pipeline.anatomy import AnatomyClassifier
from spinexr.pipeline.bundle import write_bundle
from spinexr.pipeline.classifier import ClassifierEnsemble
from spinexr.pipeline.engine import Pipeline
from spinexr.pipeline.results import SpineCheck, StudyResult
from spinexr.training.phantoms import write
from spinexr.training.phantoms.others import OtherKind, make_other_image

NOT_SPINE_CHEST = "not for analysis: not a spine image (Body Part Examined CHEST)"


def other_bytes(seed: int, study_uid: str, *, tags: bool = True) -> bytes:
    ds = make_other_image(
        seed,
        kind=OtherKind.CHEST_PA,
        size=(256, 256),
        sop_class="DX",
        tags=tags,
        study_uid=study_uid,
    )
    buf = io.BytesIO()
    write(ds, buf)
    return buf.getvalue()


def send(stack: Stack, data: bytes) -> str:
    return stack.ingest.ingest([data], calling_ae="PACS", source="dimse").decision


def spine_study_with_a_chest(stack: Stack, *, chest_tags: bool = True) -> tuple[str, list[str]]:
    uid = generate_uid()
    decisions = [
        send(stack, phantom_bytes(1, study_uid=uid, view="AP")[0]),
        send(stack, phantom_bytes(2, study_uid=uid, view="LAT")[0]),
        send(stack, other_bytes(3, uid, tags=chest_tags)),
    ]
    return uid, decisions


# ----------------------------------------------------------------------------- ingest rules


def test_chest_pa_in_a_spine_study_is_not_for_analysis(stack: Stack) -> None:
    assert stack.settings.study.body_parts is BodyParts.SPINE  # the default
    uid, decisions = spine_study_with_a_chest(stack)
    assert decisions == ["analyse", "analyse", NOT_SPINE_CHEST]
    job_id = StudyAssembler(stack.settings, stack.sessions, "m@1").force_complete(uid)
    assert job_id is not None
    with stack.sessions() as s:
        rows = s.scalars(select(Instance).order_by(Instance.id)).all()
        assert [r.decision for r in rows] == decisions


def test_widened_setting_analyses_the_chest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path, study={"body_parts": "any"})
    _, decisions = spine_study_with_a_chest(stack)
    assert decisions == ["analyse"] * 3


def test_description_decides_when_body_part_is_empty(stack: Stack) -> None:
    uid = generate_uid()
    _, ds = phantom_bytes(4, study_uid=uid)
    del ds.BodyPartExamined
    ds.SeriesDescription = "Thorax p.a."
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert send(stack, buf.getvalue()) == (
        "not for analysis: not a spine image (Series Description THORAX)"
    )


def test_old_config_with_a_regex_keeps_its_meaning() -> None:
    old = load_settings(None, study={"body_part_regex": "^(CHEST|LSPINE)$"})
    assert old.study.body_parts is BodyParts.ANY  # the regex alone decides, as before
    both = load_settings(None, study={"body_part_regex": "SPINE", "body_parts": "spine"})
    assert both.study.body_parts is BodyParts.SPINE
    assert load_settings(None).study.body_parts is BodyParts.SPINE
    with pytest.raises(Exception, match="body_parts"):
        load_settings(None, study={"body_parts": "chest"})


def test_old_regex_config_still_analyses_what_it_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path, study={"body_part_regex": "^(CHEST|LSPINE)$"})
    uid = generate_uid()
    assert send(stack, other_bytes(5, uid)) == "analyse"


def test_the_settings_file_states_the_default() -> None:
    root = Path(__file__).resolve().parents[2]
    settings = load_settings(root / "settings.toml")
    assert settings.study.body_parts is BodyParts.SPINE


# ----------------------------------------------------------------------------- the worker


class Constant(nn.Module):
    def __init__(self, logits: Sequence[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(list(logits), dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def spine_pipeline(tmp_path: Path, *, spine_check: bool = True) -> Pipeline:
    """A pipeline on a placeholder bundle whose image check calls everything ``other``."""
    src = tmp_path / "bundle-src"
    src.mkdir(exist_ok=True)
    for name in ("densenet121.pt", "config.py", "model.pth"):
        (src / name).write_bytes(b"placeholder")
    files = {
        "classifier/densenet121.pt": src / "densenet121.pt",
        "detector/config.py": src / "config.py",
        "detector/model.pth": src / "model.pth",
    }
    bundle = write_bundle(tmp_path / "bundle", bundle_fields(), files)
    return Pipeline(
        bundle,
        device="cpu",
        detector=NoBoxes(),
        classifier=ClassifierEnsemble({"densenet121": Brightness()}),
        anatomy=AnatomyClassifier(Constant((0.0, 0.0, 5.0)), 0.5),
        spine_check=spine_check,
    )


def run_study(stack: Stack, uid: str, pipe: Pipeline) -> tuple[StudyResult, Dataset]:
    """Complete, claim and run the study's job; its result and the SR the worker built."""
    job_id = StudyAssembler(stack.settings, stack.sessions, "m@1").force_complete(uid)
    assert job_id is not None
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, JobState.QUEUED)
        s.commit()
    runner = JobRunner(stack.settings, stack.sessions, lambda: pipe)
    assert runner.claim() == job_id
    assert runner.run(job_id).state is JobState.BUILT
    with stack.sessions() as s:
        row = s.scalars(select(Result).where(Result.job_id == job_id)).one()
        sr = s.scalars(
            select(OutputObject).where(
                OutputObject.job_id == job_id, OutputObject.kind == OutputKind.SR
            )
        ).one()
        return (
            StudyResult.model_validate(row.payload),
            pydicom.dcmread(stack.settings.storage.output_dir / sr.path),
        )


def test_worker_analyses_the_spine_images_of_a_study_with_a_tagged_chest(
    stack: Stack, tmp_path: Path
) -> None:
    uid, _ = spine_study_with_a_chest(stack)
    result, _ = run_study(stack, uid, spine_pipeline(tmp_path))
    assert len(result.images) == 2  # the chest never reached the worker
    assert all(im.probability is not None for im in result.images)
    assert result.provenance.spine_check is SpineCheck.TAGS_AND_IMAGE


def test_untagged_chest_is_kept_out_by_the_image_check_and_the_sr_says_so(
    stack: Stack, tmp_path: Path
) -> None:
    uid, decisions = spine_study_with_a_chest(stack, chest_tags=False)
    assert decisions == ["analyse"] * 3  # the header says nothing: the worker decides
    result, sr = run_study(stack, uid, spine_pipeline(tmp_path))
    refused = [im for im in result.images if im.failed]
    assert len(result.images) == 3 and len(refused) == 1
    (chest,) = refused
    assert chest.error is not None and chest.error.reason == "not_spine"
    assert chest.error.message == "not a spine image (image check: other 0.99 >= 0.50)"
    assert chest.anatomy_scores["other"] > 0.98
    assert "1 of them not a spine image" in outcome_text(result)
    texts = [item.get("TextValue", "") for item in _walk(sr)]
    assert any("not analysed: not_spine: not a spine image (image check" in t for t in texts)
    params = [t for t in texts if t.startswith("spine_check=")]
    assert params and set(params) == {"spine_check=tags_and_image"}


def test_a_study_of_one_untagged_chest_says_not_analysed(stack: Stack, tmp_path: Path) -> None:
    uid = generate_uid()
    send(stack, other_bytes(6, uid, tags=False))
    result, sr = run_study(stack, uid, spine_pipeline(tmp_path))
    texts = [str(item.get("TextValue", "")) for item in _walk(sr)]
    assert any(t.endswith("Not analysed: not a spine image (1 image(s)).") for t in texts)
    assert outcome_text(result).endswith("Not analysed: not a spine image (1 image(s)).")


def test_runtime_turns_the_check_off_for_any_body_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spinexr.node.tasking.runtime import Runtime

    monkeypatch.chdir(tmp_path)
    seen: list[bool] = []

    def fake(directory: Path, **kwargs: object) -> str:
        seen.append(bool(kwargs["spine_check"]))
        return "pipeline"

    monkeypatch.setattr(Pipeline, "from_directory", staticmethod(fake))
    for parts, expected in (("spine", True), ("any", False)):
        stack = build_stack(
            tmp_path / parts, study={"body_parts": parts}, models={"bundle": str(tmp_path)}
        )
        settings: Settings = stack.settings
        assert Runtime(settings).pipeline() == "pipeline"
        assert seen[-1] is expected


def _walk(ds: Dataset) -> list[Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_walk(item))
    return out


# ----------------------------------------------------------------------------- real CRs


REAL_CRS = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm", "RG3_J2KI.dcm")
"""pydicom-data's Computed Radiography files: a chest PA and a tibia, each plain and JPEG 2000."""


def real_crs() -> dict[Path, str]:
    """The real CRs (found locally, never downloaded) → their Body Part Examined."""
    from pydicom.data import get_testdata_file

    found = {}
    for name in REAL_CRS:
        path = Path(str(get_testdata_file(name)))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPClassUID.name == "Computed Radiography Image Storage"
        found[path] = str(ds.BodyPartExamined)
    return found


def test_pydicom_data_ships_real_chest_and_extremity_crs() -> None:
    assert sorted(set(real_crs().values())) == ["CHEST", "EXTREMITY"]


@pytest.mark.parametrize("body_parts", ["spine", "any"])
def test_real_chest_and_extremity_crs_are_analysed_only_when_widened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body_parts: str
) -> None:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path, study={"body_parts": body_parts})
    studies = set()
    for path, part in real_crs().items():
        expected = (
            "analyse"
            if body_parts == "any"
            else f"not for analysis: not a spine image (Body Part Examined {part})"
        )
        assert send(stack, path.read_bytes()) == expected, path.name
        studies.add(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))
    assert len(studies) == 2
    for uid in sorted(studies):
        if body_parts == "spine":
            assembler = StudyAssembler(stack.settings, stack.sessions, "m@1")
            assert assembler.force_complete(uid) is None  # nothing to analyse: no job
            continue
        result, _ = run_study(stack, uid, spine_pipeline(tmp_path, spine_check=False))
        assert result.images and all(im.probability is not None for im in result.images)
        assert result.provenance.spine_check is SpineCheck.OFF
