"""Classifier training: outputs, serving parity, exact resume, --init, the click command.

DenseNet-121 on CPU with 64×64 inputs and batches of 2 keeps each iteration well under a
second; the parity test runs the real 224×224 serving path.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torchvision
from click.testing import CliRunner

from spinexr.pipeline.classifier import (
    ClassifierEnsemble,
    build_classifier,
    images_to_batch,
    load_classifier,
)
from spinexr.pipeline.preprocess import prepare_image
from spinexr.training.classifier import (
    ClassifierTrainConfig,
    ClassifierTrainResult,
    TrainingError,
    TrainProgress,
    load_init_weights,
    predict_logits,
    train_classifier,
)
from spinexr.training.classifier.cli import classifier
from spinexr.training.data import DisplayCache, load_dataset
from spinexr.training.phantoms import generate_dataset

SEED = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared, oversubscribed CPU, OpenMP barriers with two threads
    made each DenseNet step 10-40× slower (measured: 0.4 s vs 6-17 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cls-data")
    generate_dataset(root, 8, 21, size=(128, 96))
    return root


@pytest.fixture(scope="module")
def base(data: Path, tmp_path_factory: pytest.TempPathFactory) -> ClassifierTrainConfig:
    work = tmp_path_factory.mktemp("cls-runs")
    return ClassifierTrainConfig(
        data=data,
        out=work / "unused",
        iterations=4,
        batch_size=2,
        image_size=64,
        eval_every=2,
        workers=0,
        device="cpu",
        seed=SEED,
        val_fraction=0.25,
        cache=work / "cache",
    )


@pytest.fixture(scope="module")
def uninterrupted(
    base: ClassifierTrainConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ClassifierTrainResult, list[TrainProgress]]]:
    events: list[TrainProgress] = []
    out = tmp_path_factory.mktemp("run-a")
    yield train_classifier(replace(base, out=out), progress=events.append), events


def test_outputs_and_best_loads_into_the_pipeline(
    base: ClassifierTrainConfig,
    uninterrupted: tuple[ClassifierTrainResult, list[TrainProgress]],
) -> None:
    result, events = uninterrupted
    out = result.out
    assert {p.name for p in out.iterdir()} == {
        "best.pt",
        "last.pt",
        "history.jsonl",
        "val_predictions.csv",
        "config.json",
    }
    assert result.iterations == 4 and result.resumed_from is None
    assert json.loads((out / "config.json").read_text())["batch_size"] == 2

    history = [json.loads(line) for line in result.history_path.read_text().splitlines()]
    assert [h["iteration"] for h in history] == [2, 4]
    assert all(h["lr"] == 0.001 and math.isfinite(h["loss"]) for h in history)
    aurocs = [h["val_auroc"] for h in history]
    assert all(a is not None and 0.0 <= a <= 1.0 for a in aurocs)  # val has both classes
    assert result.best_val_auroc == max(aurocs)
    assert result.best_iteration == history[aurocs.index(max(aurocs))]["iteration"]

    assert [e.iteration for e in events if e.event == "iteration"] == [1, 2, 3, 4]
    assert [e.val_auroc for e in events if e.event == "evaluation"] == aurocs
    assert events[-2].eta_s == 0.0 and events[0].images_per_s > 0

    # best.pt is what the serving pipeline loads; its logits are the ones in the CSV
    model = load_classifier("densenet121", result.best_path)
    ds = load_dataset(base.data, val_fraction=base.val_fraction, seed=base.seed)
    val = ds.split("val")
    with (out / "val_predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image_id"] for r in rows] == [r.image_id for r in val]
    assert [int(r["label"]) for r in rows] == [r.label for r in val]
    for r in rows:
        assert float(r["probability"]) == pytest.approx(
            1 / (1 + math.exp(-float(r["logit"]))), rel=1e-5
        )
    again = predict_logits(
        model, val, DisplayCache(base.cache_dir), image_size=64, batch_size=3, device="cpu"
    )
    np.testing.assert_allclose(again, [float(r["logit"]) for r in rows], rtol=1e-4, atol=1e-5)
    load_classifier("densenet121", result.last_path)  # last.pt unwraps too


def test_predict_logits_equals_the_serving_path(
    base: ClassifierTrainConfig,
    uninterrupted: tuple[ClassifierTrainResult, list[TrainProgress]],
) -> None:
    result, _ = uninterrupted
    records = load_dataset(base.data, val_fraction=0.0).split("test")[:2]
    ensemble = ClassifierEnsemble.from_files({"densenet121": result.best_path})
    batch = images_to_batch(
        [prepare_image(pydicom.dcmread(r.path)).classifier_input for r in records]
    )
    serving = ensemble.predict(batch).logits["densenet121"].numpy()
    ours = predict_logits(
        load_classifier("densenet121", result.best_path),
        records,
        DisplayCache(base.cache_dir),
        image_size=224,
        batch_size=2,
    )
    np.testing.assert_allclose(ours, serving, rtol=1e-5, atol=1e-6)


def test_resume_gives_the_same_weights(
    base: ClassifierTrainConfig,
    uninterrupted: tuple[ClassifierTrainResult, list[TrainProgress]],
    tmp_path: Path,
) -> None:
    full, _ = uninterrupted
    first = train_classifier(replace(base, out=tmp_path, iterations=2))
    assert first.iterations == 2
    with pytest.raises(TrainingError, match="pass --resume"):
        train_classifier(replace(base, out=tmp_path))
    with pytest.raises(TrainingError, match="batch_size: checkpoint 2, now 3"):
        train_classifier(replace(base, out=tmp_path, batch_size=3, resume=True))
    resumed = train_classifier(replace(base, out=tmp_path, resume=True))
    assert resumed.resumed_from == 2 and resumed.iterations == 4

    a = torch.load(full.last_path, weights_only=True)
    b = torch.load(resumed.last_path, weights_only=True)
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    momentum_a = a["optimizer"]["state"]
    momentum_b = b["optimizer"]["state"]
    assert momentum_a.keys() == momentum_b.keys()
    for i in momentum_a:
        assert torch.equal(momentum_a[i]["momentum_buffer"], momentum_b[i]["momentum_buffer"])
    history_a = [json.loads(x) for x in full.history_path.read_text().splitlines()]
    history_b = [json.loads(x) for x in resumed.history_path.read_text().splitlines()]
    assert [(h["iteration"], h["val_auroc"]) for h in history_b] == [
        (h["iteration"], h["val_auroc"]) for h in history_a
    ]
    assert resumed.best_val_auroc == full.best_val_auroc

    done = train_classifier(replace(base, out=tmp_path, resume=True))  # nothing left to do
    assert done.iterations == 4 and done.final_loss is None


def _old_torchvision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key names of torchvision's published DenseNet files (``norm.1`` instead of ``norm1``)."""
    renamed = {}
    for key, value in state.items():
        for part in ("norm", "relu", "conv"):
            for i in ("1", "2"):
                if "denselayer" in key:
                    key = key.replace(f".{part}{i}.", f".{part}.{i}.")
        renamed[key] = value
    return renamed


def test_init_from_a_torchvision_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    imagenet = torchvision.models.densenet121(weights=None).state_dict()
    path = tmp_path / "densenet121-imagenet.pth"
    torch.save(_old_torchvision_names(imagenet), path)
    assert any(".norm.1." in k for k in torch.load(path, weights_only=True))

    torch.manual_seed(2)
    model = build_classifier("densenet121")
    head = model.classifier.weight.detach().clone()  # type: ignore[union-attr]
    skipped = load_init_weights(model, path, "densenet121")
    assert sorted(skipped) == ["classifier.bias", "classifier.weight"]
    state = model.state_dict()
    for key, value in imagenet.items():
        if not key.startswith("classifier."):
            assert torch.equal(state[key], value), key
    assert torch.equal(model.classifier.weight, head)  # type: ignore[union-attr]

    other = tmp_path / "densenet169.pt"
    torch.save(build_classifier("densenet169").state_dict(), other)
    with pytest.raises(TrainingError, match=r"does not fit densenet121: .*unexpected keys"):
        load_init_weights(build_classifier("densenet121"), other, "densenet121")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torch")
    with pytest.raises(TrainingError, match=r"junk\.pt"):
        load_init_weights(build_classifier("densenet121"), junk, "densenet121")


def test_cli_trains_with_init_and_reports_errors(
    base: ClassifierTrainConfig,
    uninterrupted: tuple[ClassifierTrainResult, list[TrainProgress]],
    tmp_path: Path,
) -> None:
    result, _ = uninterrupted
    common = [
        "--data", str(base.data),
        "--iterations", "2",
        "--batch-size", "2",
        "--image-size", "64",
        "--eval-every", "5",
        "--device", "cpu",
        "--seed", str(SEED),
        "--val-fraction", "0.25",
        "--cache", str(base.cache_dir),
    ]  # fmt: skip
    runner = CliRunner()
    out = tmp_path / "cli"
    ok = runner.invoke(
        classifier,
        [*common, "--out", str(out), "--workers", "1", "--init", str(result.best_path)],
    )
    assert ok.exit_code == 0, ok.output
    assert f"best.pt: {out / 'best.pt'} (iteration 2, validation AUROC" in ok.stdout
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [2]
    assert json.loads((out / "config.json").read_text())["init"] == str(result.best_path)
    trained = load_classifier("densenet121", out / "best.pt").state_dict()
    start = load_classifier("densenet121", result.best_path).state_dict()
    assert not torch.equal(trained["features.conv0.weight"], start["features.conv0.weight"])

    again = runner.invoke(classifier, [*common, "--out", str(out)])
    assert again.exit_code == 1
    assert "last.pt exists: pass --resume" in again.output

    missing = runner.invoke(
        classifier, [*common, "--out", str(tmp_path / "m"), "--init", str(tmp_path / "no.pt")]
    )
    assert missing.exit_code == 1
    assert f"--init {tmp_path / 'no.pt'}: no such file" in missing.output
    assert not (tmp_path / "m" / "last.pt").exists()

    nothing = runner.invoke(classifier, [*common, "--out", str(tmp_path / "r"), "--resume"])
    assert nothing.exit_code == 1 and "nothing to resume" in nothing.output
    usage = runner.invoke(classifier, [*common, "--out", str(tmp_path / "u"), "--max-side", "32"])
    assert usage.exit_code == 2 and "max_side (32) must be at least image_size" in usage.output


def test_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch must be one of"):
        ClassifierTrainConfig(data=tmp_path, out=tmp_path, arch="resnet50")
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        ClassifierTrainConfig(data=tmp_path, out=tmp_path, iterations=0)
    cfg = ClassifierTrainConfig(data=tmp_path, out=tmp_path / "o")
    assert cfg.cache_dir == tmp_path / ".spinexr-cache"
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.iterations) == (32, 0.001, 0.9, 10_000)
