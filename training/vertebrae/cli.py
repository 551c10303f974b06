"""``spinexr-node vertebrae``: phantoms, training, evaluation and bundling of the keypoint models.

Registered lazily on the main CLI (it imports torch). Data come from a folder in the
keypoint layout (`spinexr.training.vertebrae.annotations`: DICOM files beside VinDr's, plus
``annotations/vertebrae_{train,test}.csv``), written for synthetic phantoms by
``vertebrae phantoms``. Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from spinexr.training.cli import user_errors

_DATA = click.Path(path_type=Path, file_okay=False, exists=True)
_OUT = click.Path(path_type=Path, file_okay=False)
_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)
_ARCHS = click.Choice(["pisov", "keypointrcnn"])


def _say(message: str) -> None:
    click.echo(message, err=True)


def _size(value: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in value.lower().split("x"))
    except ValueError as exc:
        raise click.BadParameter(f"expected ROWSxCOLUMNS, got {value!r}") from exc
    return rows, cols


@click.group()
def vertebrae() -> None:
    """Vertebral fracture keypoint models (Pisov et al. 2020): data, training, evaluation."""


@vertebrae.command("phantoms")
@click.option("--out", "out_dir", type=_OUT, required=True, help="Dataset folder to write.")
@click.option("--images", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", default="512x384", show_default=True, help="ROWSxCOLUMNS.")
@click.option("--test-fraction", type=click.FloatRange(0, 1), default=0.2, show_default=True)
@user_errors
def phantoms(out_dir: Path, images: int, seed: int, size: str, test_fraction: float) -> None:
    """Write lateral phantoms with six keypoints per vertebra and fractures of known G.

    Synthetic images for tests and the demo bundle; not patient data.
    """
    from spinexr.training.vertebrae.phantoms import write_keypoint_dataset

    summary = write_keypoint_dataset(
        out_dir, images, seed, size=_size(size), test_fraction=test_fraction
    )
    click.echo(str(summary))


@vertebrae.command("train")
@click.option("--data", type=_DATA, required=True, help="Keypoint dataset folder.")
@click.option("--arch", type=_ARCHS, default="pisov", show_default=True)
@click.option("--out", "out_dir", type=_OUT, required=True, help="Run folder (checkpoint).")
@click.option(
    "--recipe",
    type=click.Choice(["demo", "paper"]),
    default="paper",
    show_default=True,
    help="paper: Pisov's schedule / torchvision's ResNet-50 FPN (GPU); demo: the CPU recipe "
    "(pisov) or the light CPU configuration, ResNet-18 with a 128-channel FPN (keypointrcnn).",
)
@click.option("--iterations", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@user_errors
def train(
    data: Path,
    arch: str,
    out_dir: Path,
    recipe: str,
    iterations: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int,
    device: str,
) -> None:
    """Train a keypoint model on the training split; print the checkpoint path."""
    from spinexr.training.vertebrae.annotations import records_from_folder

    records = records_from_folder(data, splits=("train",))
    _say(f"[vertebrae] {len(records)} training images from {data}")
    if arch == "pisov":
        from spinexr.training.vertebrae.train import DEMO_RECIPE, PAPER_RECIPE, train_pisov

        chosen = DEMO_RECIPE if recipe == "demo" else PAPER_RECIPE
        chosen = replace(
            chosen,
            iterations=iterations or chosen.iterations,
            batch_size=batch_size or chosen.batch_size,
            lr=lr or chosen.lr,
        )
        path = train_pisov(
            records,
            out_dir,
            seed=seed,
            iterations=chosen.iterations,
            batch_size=chosen.batch_size,
            lr=chosen.lr,
            device=device,
            recipe=chosen,
        )
    else:
        from spinexr.training.vertebrae.krcnn_train import (
            DEMO_RECIPE as KRCNN_DEMO,
        )
        from spinexr.training.vertebrae.krcnn_train import (
            FULL_RECIPE as KRCNN_FULL,
        )
        from spinexr.training.vertebrae.krcnn_train import train_keypointrcnn

        plan = KRCNN_DEMO if recipe == "demo" else KRCNN_FULL
        path = train_keypointrcnn(
            records,
            out_dir,
            seed=seed,
            iterations=iterations or plan.iterations,
            batch_size=batch_size or plan.batch_size,
            lr=lr or plan.lr,
            device=device,
            config=plan.config,
            threads=plan.threads,
        )
    click.echo(str(path))


@vertebrae.command("evaluate")
@click.option("--data", type=_DATA, required=True, help="Keypoint dataset folder.")
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    metavar="ARCH=CHECKPOINT",
    help="A model to evaluate (repeatable: models are compared side by side).",
)
@click.option("--split", default="test", show_default=True)
@click.option("--out", "out_dir", type=_OUT, default=None, help="Report folder.")
@click.option("--bootstrap", type=click.IntRange(min=100), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@user_errors
def evaluate(
    data: Path,
    models: tuple[str, ...],
    split: str,
    out_dir: Path | None,
    bootstrap: int,
    seed: int,
    device: str,
) -> None:
    """Pisov et al.'s Tables 1 and 2, heights, grades and levels, with bootstrap CIs.

    Writes keypoints-report.json, the ROC and Bland-Altman plots into --out and prints the
    tables.
    """
    from spinexr.pipeline.devices import resolve_device
    from spinexr.pipeline.vertebrae.loader import load_keypoint_model
    from spinexr.training.vertebrae.annotations import records_from_folder
    from spinexr.training.vertebrae.evaluate import evaluate_keypoints

    loaded = {}
    for spec in models:
        arch, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            raise ValueError(f"--model expects ARCH=CHECKPOINT with an existing file, got {spec!r}")
        loaded[arch] = load_keypoint_model(arch, Path(path), resolve_device(device))
    records = records_from_folder(data, splits=(split,))
    evaluate_keypoints(loaded, records, out_dir, seed=seed, n_bootstrap=bootstrap)
    if out_dir is not None:
        _say(f"[vertebrae] report written to {out_dir}")


@vertebrae.command("add-to-bundle")
@click.option("--bundle", "bundle_dir", type=_DATA, required=True, help="Bundle folder.")
@click.option("--arch", type=_ARCHS, required=True)
@click.option("--checkpoint", type=_FILE, required=True)
@click.option("--report", type=_FILE, default=None, help="keypoints-report.json to record.")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--sacrum-threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@user_errors
def add_to_bundle(
    bundle_dir: Path,
    arch: str,
    checkpoint: Path,
    report: Path | None,
    score_threshold: float,
    sacrum_threshold: float,
) -> None:
    """Add (or replace) the keypoint model of a bundle (its device UID changes)."""
    from spinexr.training.vertebrae.bundle import add_vertebrae_to_bundle

    metrics = {} if report is None else json.loads(report.read_text(encoding="utf-8"))
    bundle = add_vertebrae_to_bundle(
        bundle_dir,
        checkpoint,
        arch,
        metrics,
        score_threshold=score_threshold,
        sacrum_threshold=sacrum_threshold,
    )
    click.echo(f"{bundle.name} {bundle.version}: keypoint model {arch} added ({bundle.device_uid})")
