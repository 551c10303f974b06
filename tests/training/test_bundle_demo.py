"""Demo bundle end to end (quick recipe), bundle build, evaluate, and the serving round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from spinexr.node.cli import cli
from spinexr.pipeline.bundle import verify_bundle
from spinexr.pipeline.engine import Pipeline
from spinexr.pipeline.results import FusionMode
from spinexr.training.bundles.demo import QUICK_RECIPE, default_demo_dir
from spinexr.training.data import load_dataset
from spinexr.training.evaluation import predict_records
from spinexr.training.metrics import youden_threshold

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    runner = CliRunner()
    result = runner.invoke(cli, ["bundle", "demo", "--quick"], env={"SPINEXR_CACHE": str(cache)})
    assert result.exit_code == 0, result.output
    out = Path(result.stdout.strip().splitlines()[-1])
    assert out.parent == cache and out.name.startswith("demo-bundle-")
    return out


def test_demo_bundle_is_a_labelled_verified_bundle(demo_dir: Path) -> None:
    bundle = verify_bundle(demo_dir)
    assert bundle.demo and bundle.name == "spinexr-demo-phantoms"
    assert bundle.detector_scale == QUICK_RECIPE.detector_scale
    assert bundle.manifest.threshold_method == "youden_j_on_validation"
    metrics = bundle.manifest.metrics
    assert {"validation", "test_phantoms"} <= set(metrics)
    assert 0.0 <= metrics["test_phantoms"]["auroc"] <= 1.0
    assert "not patient data" in bundle.manifest.training_data["kind"]
    work = demo_dir.parent / f"{demo_dir.name}.work"
    report = json.loads((work / "evaluation" / "evaluation.json").read_text())
    assert report["pycocotools_check"]["agrees_1e-6"]
    for name in ("roc.png", "pr_detector.png", "pr_fusion.png", "predictions.csv"):
        assert (work / "evaluation" / name).stat().st_size > 0
    # Step 6: the vertebra keypoint model, evaluated on held-out keypoint phantoms.
    assert bundle.vertebrae is not None
    assert bundle.vertebrae.model == QUICK_RECIPE.keypoint_arch == "keypointrcnn"
    held_out = bundle.vertebrae.metrics["test_phantoms"]
    assert held_out["images"] == QUICK_RECIPE.keypoint_test_images
    assert (work / "vertebrae-evaluation" / "keypoints-report.json").is_file()


def test_cached_demo_is_reused(demo_dir: Path) -> None:
    before = (demo_dir / "manifest.json").read_bytes()
    result = CliRunner().invoke(
        cli, ["bundle", "demo", "--quick"], env={"SPINEXR_CACHE": str(demo_dir.parent)}
    )
    assert result.exit_code == 0, result.output
    assert "using the cached demo bundle" in result.stderr
    assert (demo_dir / "manifest.json").read_bytes() == before
    assert default_demo_dir(QUICK_RECIPE).name == demo_dir.name


def test_threshold_is_youden_on_validation_not_test(demo_dir: Path) -> None:
    bundle = verify_bundle(demo_dir)
    data = demo_dir.parent / f"{demo_dir.name}.work" / "phantoms"
    dataset = load_dataset(data, val_fraction=QUICK_RECIPE.val_fraction, seed=QUICK_RECIPE.seed)
    pipeline = Pipeline(bundle, device="cpu")
    val = predict_records(pipeline, dataset.split("val"))
    y = np.array([p.record.abnormal for p in val])
    p = np.array([p.probability for p in val])
    assert bundle.threshold == pytest.approx(youden_threshold(y, p))
    report = json.loads(
        (demo_dir.parent / f"{demo_dir.name}.work" / "evaluation" / "evaluation.json").read_text()
    )
    assert report["thresholds"][FusionMode.PAPER.value] == bundle.threshold


def test_bundle_build_and_evaluate_commands(demo_dir: Path, tmp_path: Path) -> None:
    work = demo_dir.parent / f"{demo_dir.name}.work"
    out = tmp_path / "bundle"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "bundle",
            "build",
            "--out",
            str(out),
            "--name",
            "site",
            "--version",
            "1",
            "--classifier",
            f"densenet121={work / 'classifier' / 'best.pt'}",
            "--detector",
            str(work / "detector"),
            "--data",
            str(work / "phantoms"),
            "--val-fraction",
            str(QUICK_RECIPE.val_fraction),
            "--split-seed",
            str(QUICK_RECIPE.seed),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    built = verify_bundle(out)
    assert not built.demo
    assert built.threshold == pytest.approx(verify_bundle(demo_dir).threshold)
    assert built.detector_scale == QUICK_RECIPE.detector_scale
    again = runner.invoke(
        cli,
        [
            "bundle",
            "build",
            "--out",
            str(out),
            "--name",
            "site",
            "--version",
            "1",
            "--classifier",
            f"densenet121={work / 'classifier' / 'best.pt'}",
            "--detector",
            str(work / "detector"),
            "--data",
            str(work / "phantoms"),
        ],
    )
    assert again.exit_code == 2 and "exists" in again.stderr

    report_dir = tmp_path / "eval"
    result = runner.invoke(
        cli,
        [
            "evaluate",
            "--data",
            str(work / "phantoms"),
            "--bundle",
            str(out),
            "--out",
            str(report_dir),
            "--bootstrap",
            "200",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "## Classification (Table 3)" in result.stdout
    assert "AP@0.5 detector" in result.stdout and "| **mAP** |" in result.stdout
    report = json.loads((report_dir / "evaluation.json").read_text())
    assert report["data"]["split"] == "test"
    assert report["bootstrap"]["resamples"] == 200
    row = report["classification"]["classifier ensemble"]
    assert row["threshold"] == built.threshold
    assert row["auroc"]["ci95"][0] <= row["auroc"]["value"] <= row["auroc"]["ci95"][1]


def test_demo_bundle_serves_a_study(demo_dir: Path) -> None:
    work = demo_dir.parent / f"{demo_dir.name}.work"
    dataset = load_dataset(work / "phantoms", seed=QUICK_RECIPE.seed)
    study_id = dataset.split("test")[0].study_id
    paths = [r.path for r in dataset.split("test") if r.study_id == study_id]
    pipeline = Pipeline.from_directory(demo_dir, device="cpu")
    result = pipeline.analyze_study([pydicom.dcmread(p) for p in paths])
    assert len(result.images) == len(paths)
    assert result.provenance.demo and result.provenance.bundle_name == "spinexr-demo-phantoms"
    for image in result.images:
        assert image.probability is not None


def test_a_cached_demo_without_ct_models_gets_only_them(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from spinexr.training.bundles import demo as demo_module
    from spinexr.training.ct.bundle import CtModelsRecipe
    from spinexr.training.ct.characterise_bundle import CharacteriserBundleRecipe
    from spinexr.training.ct.characterise_train import CharacteriserRecipe
    from spinexr.training.ct.localise_train import LocaliserRecipe

    out = tmp_path / demo_dir.name
    shutil.copytree(demo_dir, out)
    before = verify_bundle(out)
    assert before.ct is None
    tiny = CtModelsRecipe(
        localiser=LocaliserRecipe(phantoms=2, heads=1, steps=2, batch=1, threads=1),
        keypoint_phantoms=3,
        keypoint_iterations=2,
    )
    tiny_characteriser = CharacteriserBundleRecipe(
        cases=4, test=2, training=CharacteriserRecipe(epochs=1, batch=4, threads=1)
    )
    monkeypatch.setattr(demo_module, "CT_TEST_PHANTOMS", 2)
    monkeypatch.setattr(demo_module, "CHARACTERISER_TEST_PATIENTS", 2)
    said: list[str] = []
    bundle = demo_module.demo(
        out,
        QUICK_RECIPE,
        ct=tiny,
        characteriser=tiny_characteriser,
        work=tmp_path / "work",
        say=said.append,
    )
    assert any("lacks its last models" in line for line in said), said
    assert any("step 7/8" in line for line in said) and any("step 8/8" in line for line in said)
    assert bundle.ct is not None and bundle.ct_localiser is not None
    assert bundle.ct.metrics["test_phantoms"]["images"] == 2
    assert bundle.ct.metrics["recipe"]["keypoint_iterations"] == 2
    # The characterisation model joined the CT entry, with what it was trained on.
    assert bundle.ct_characteriser is not None and bundle.ct_characteriser.is_file()
    said_of = bundle.ct.metrics["characteriser"]
    assert "synthetic CT phantoms" in said_of["trained_on"]
    assert said_of["test_phantoms_end_to_end"]["patients"] == 2
    assert said_of["recipe"]["cases"] == 4
    # The rest of the bundle is what it was; the device UID changed with the new weights.
    assert bundle.manifest.vertebrae == before.manifest.vertebrae
    assert bundle.device_uid != before.device_uid
    assert demo_module.cached_demo(out, ct=True, characteriser=True) is not None


def test_the_background_preparation_keeps_its_file_and_removes_it_when_done(
    tmp_path: Path,
) -> None:
    """`serve --demo-bundle`'s child: progress in the preparation file, removed at the end."""
    import time

    from spinexr.pipeline.preparation import preparation_file, read_preparation
    from spinexr.training.bundles.demo import demo_identity
    from spinexr.training.bundles.prepare import start_preparation

    out = tmp_path / "demo-bundle"
    child = start_preparation(out, demo_identity(QUICK_RECIPE), quick=True)
    seen = []
    try:
        while child.poll() is None:
            prep = read_preparation(out)
            if prep is not None:
                assert prep.pid == child.pid and prep.identity == demo_identity(QUICK_RECIPE)
                seen.append((prep.step, prep.ready))
            time.sleep(0.2)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0
    assert not preparation_file(out).exists()
    steps = [s for s, _ in seen]
    assert steps == sorted(steps) and max(steps) >= 5, seen  # progress, in order
    bundle = verify_bundle(out)
    assert f"{bundle.manifest.name}@{bundle.manifest.version}" == demo_identity(QUICK_RECIPE)
