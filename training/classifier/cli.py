"""``classifier``: the click command that trains one classifier member.

Registered by the node's CLI as ``spinexr-node train classifier``; usable on its own through
`click.testing.CliRunner` or ``python -m``-style wrappers. Errors become one line and exit
status 1 (click's convention); progress lines go to stderr through logging.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from spinexr.pipeline.classifier import ARCHS
from spinexr.pipeline.errors import PipelineError
from spinexr.training.classifier.config import ClassifierTrainConfig, TrainingError
from spinexr.training.classifier.train import train_classifier
from spinexr.training.data import DatasetError

_DEFAULTS = ClassifierTrainConfig(data=Path("."), out=Path("."))


@click.command("classifier")
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="Dataset root in the VinDr-SpineXR layout (annotations/, train_images/, ...).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Output folder: best.pt, last.pt, history.jsonl, val_predictions.csv, config.json.",
)
@click.option("--arch", type=click.Choice(ARCHS), default=_DEFAULTS.arch, show_default=True)
@click.option(
    "--iterations", type=click.IntRange(min=1), default=_DEFAULTS.iterations, show_default=True
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=_DEFAULTS.batch_size, show_default=True
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.lr,
    show_default=True,
    help="SGD learning rate, constant (paper: 0.001).",
)
@click.option(
    "--momentum",
    type=click.FloatRange(0, 1, max_open=True),
    default=_DEFAULTS.momentum,
    show_default=True,
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.weight_decay,
    show_default=True,
    help="L2 weight decay (the paper states none).",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=16),
    default=_DEFAULTS.image_size,
    show_default=True,
    help="Input side; serving feeds 224, other sizes are for experiments only.",
)
@click.option(
    "--hflip/--no-hflip",
    default=_DEFAULTS.hflip,
    show_default=True,
    help="Random horizontal flips.",
)
@click.option(
    "--init",
    "init",
    default="none",
    show_default=True,
    metavar="PATH|none",
    help="Local initial weights (torchvision DenseNet state dict, or our best.pt / last.pt); "
    "'none' = random initialisation. Nothing is downloaded.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=_DEFAULTS.val_fraction,
    show_default=True,
    help="Share of train.csv studies held out for validation (grouped by study).",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=1),
    default=_DEFAULTS.eval_every,
    show_default=True,
    help="Validate and checkpoint every N iterations (and at the end).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=_DEFAULTS.workers,
    show_default=True,
    help="DataLoader worker processes.",
)
@click.option(
    "--device", default=_DEFAULTS.device, show_default=True, help="auto, cpu, cuda or cuda:N."
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Decoded-image cache folder. Default: <data>/.spinexr-cache.",
)
@click.option(
    "--max-side",
    type=click.IntRange(min=16),
    default=None,
    help="Resize inputs from a display image cached at this longer side (faster to try "
    "several --image-size; not bit-identical to serving). Default: from full resolution, "
    "exactly as serving.",
)
@click.option(
    "--pos-weight",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="BCE pos_weight for abnormal images. Default: unweighted.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for torch. Default: torch's choice. On a shared CPU, 1 can be faster.",
)
def classifier(
    data: Path,
    out: Path,
    arch: str,
    iterations: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    image_size: int,
    hflip: bool,
    init: str,
    resume: bool,
    seed: int,
    val_fraction: float,
    eval_every: int,
    workers: int,
    device: str,
    cache: Path | None,
    max_side: int | None,
    pos_weight: float | None,
    threads: int | None,
) -> None:
    """Train one DenseNet member of the image-level classifier (abnormal vs normal).

    Paper recipe by default: SGD, batch 32, lr 0.001, 10,000 iterations, random init.
    best.pt (highest validation AUROC) loads into the serving pipeline as is.
    """
    _configure_logging()
    try:
        config = ClassifierTrainConfig(
            data=data,
            out=out,
            arch=arch,
            iterations=iterations,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            image_size=image_size,
            hflip=hflip,
            init=None if init.strip().lower() == "none" else Path(init),
            resume=resume,
            seed=seed,
            val_fraction=val_fraction,
            eval_every=eval_every,
            workers=workers,
            device=device,
            cache=cache,
            max_side=max_side,
            pos_weight=pos_weight,
            threads=threads,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        result = train_classifier(config)
    except (TrainingError, DatasetError, PipelineError) as exc:
        raise click.ClickException(str(exc)) from exc
    auc = "n/a" if result.best_val_auroc is None else f"{result.best_val_auroc:.4f}"
    click.echo(
        f"best.pt: {result.best_path} (iteration {result.best_iteration}, validation AUROC {auc})"
    )
    click.echo(f"last.pt: {result.last_path} (iteration {result.iterations})")
    click.echo(f"history: {result.history_path}")
    if result.val_predictions_path is not None:
        click.echo(f"validation predictions: {result.val_predictions_path}")
    for notice in result.notices:
        click.echo(f"dataset: {notice}", err=True)


def _configure_logging() -> None:
    """Send INFO progress lines to stderr unless the caller configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    training = logging.getLogger("spinexr.training")
    if training.getEffectiveLevel() > logging.INFO:
        training.setLevel(logging.INFO)
