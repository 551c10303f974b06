"""Training commands of ``spinexr-node``: ``train``, ``evaluate`` and ``bundle``.

Registered on the main CLI by `spinexr.node.cli`. Errors that a user can fix (a missing
file, an empty split, an existing output folder) become one line on stderr and exit code 2;
each command prints its progress on stderr and its result on stdout.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from spinexr.pipeline.errors import BundleError, UnsupportedImageError
from spinexr.pipeline.results import FusionMode
from spinexr.training.data import DatasetError

F = TypeVar("F", bound=Callable[..., Any])

_DATA = click.Path(path_type=Path, file_okay=False, exists=True)
_OUT = click.Path(path_type=Path, file_okay=False)
_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)


def _say(message: str) -> None:
    click.echo(message, err=True)


def user_errors(func: F) -> F:
    """Turn the errors a user can fix into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (
            FileNotFoundError,
            FileExistsError,
            ValueError,
            DatasetError,
            BundleError,
            UnsupportedImageError,
        ) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@click.group()
def train() -> None:
    """Train the classifier ensemble members and the detector."""


def _register_classifier() -> None:
    from spinexr.training.classifier.cli import classifier

    train.add_command(classifier)


_register_classifier()


@train.command("detector")
@click.option("--data", type=_DATA, required=True, help="Dataset root (VinDr-SpineXR layout).")
@click.option("--out", type=_OUT, required=True, help="Work folder (checkpoints, logs, model).")
@click.option(
    "--config",
    "config_name",
    default="sparse-rcnn_r50_fpn_spinexr",
    show_default=True,
    help="Config name in pipeline/detector/configs, or a config file.",
)
@click.option("--iterations", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Learning rate [default: the config's for batch 16, scaled to the batch].",
)
@click.option(
    "--scale",
    type=(int, int),
    default=(800, 1333),
    show_default=True,
    help="Shorter side and longer-side bound at inference (training jitters it).",
)
@click.option(
    "--jitter",
    type=(float, float),
    default=(0.8, 1.0),
    show_default=True,
    help="Training shorter side range as fractions of the scale (640-800 for 800).",
)
@click.option(
    "--autoaugment/--no-autoaugment",
    default=True,
    show_default=True,
    help="Bounding-box AutoAugment policy.",
)
@click.option(
    "--oversample-thr",
    type=click.FloatRange(min=0),
    default=0.1,
    show_default=True,
    help="Repeat-factor sampling threshold for rare classes (0: off).",
)
@click.option(
    "--val-every",
    type=click.IntRange(min=0),
    default=5000,
    show_default=True,
    help="Validation mAP every N iterations (best checkpoint kept); 0: never.",
)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=500, show_default=True)
@click.option(
    "--init",
    type=_FILE,
    default=None,
    help="Local checkpoint to start from (e.g. COCO-pretrained); no downloads.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True
)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--cache", type=_OUT, default=None, help="Display-image cache [default: DATA/.spinexr-cache]."
)
@click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--cfg-option",
    "cfg_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a config key (dotted, value as JSON or text); repeatable.",
)
@user_errors
def train_detector_command(
    data: Path,
    out: Path,
    config_name: str,
    iterations: int,
    batch_size: int,
    lr: float | None,
    scale: tuple[int, int],
    jitter: tuple[float, float],
    autoaugment: bool,
    oversample_thr: float,
    val_every: int,
    checkpoint_every: int,
    warmup: int,
    init: Path | None,
    resume: bool,
    seed: int,
    val_fraction: float,
    workers: int,
    device: str,
    cache: Path | None,
    log_every: int,
    cfg_options: tuple[str, ...],
) -> None:
    """Train a detector with MMDetection (Sparse R-CNN by default) and export it.

    Writes DIR/detector.pth and DIR/detector.py (what `bundle build` takes), checkpoints
    every --checkpoint-every iterations (resume with --resume), the best by validation
    mAP@0.5, and the resolved training config DIR/train_config.py.
    """
    from spinexr.training.detection import DetectorTrainConfig, train_detector

    cfg = DetectorTrainConfig(
        data=data,
        out=out,
        config=config_name,
        iterations=iterations,
        batch_size=batch_size,
        lr=lr,
        scale=scale,
        jitter=jitter,
        autoaugment=autoaugment,
        oversample_thr=oversample_thr,
        val_every=val_every,
        checkpoint_every=checkpoint_every,
        warmup=warmup,
        init=init,
        resume=resume,
        seed=seed,
        val_fraction=val_fraction,
        workers=workers,
        device=device,
        cache=cache,
        log_every=log_every,
        overrides=_parse_options(cfg_options),
    )
    result = train_detector(cfg, progress=_say)
    click.echo(
        json.dumps(
            {
                "checkpoint": str(result.checkpoint),
                "config": str(result.config),
                "source_checkpoint": str(result.source_checkpoint),
                "best_val_map50": result.best_map,
                "iterations": result.iterations,
                "seconds": round(result.seconds, 1),
            },
            indent=2,
        )
    )


def _parse_options(options: tuple[str, ...]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ValueError(f"--cfg-option expects KEY=VALUE, got {option!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


@click.command("evaluate")
@click.option("--data", type=_DATA, required=True, help="Dataset root (VinDr-SpineXR layout).")
@click.option("--bundle", "bundle_dir", type=_DATA, required=True, help="Bundle folder.")
@click.option(
    "--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True
)
@click.option(
    "--out",
    type=_OUT,
    default=None,
    help="Report folder [default: ./evaluation/<bundle name>-<version>-<split>].",
)
@click.option(
    "--bootstrap",
    "n_resamples",
    type=click.IntRange(min=100),
    default=10_000,
    show_default=True,
    help="Bootstrap resamples for the 95% CIs.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@user_errors
def evaluate(
    data: Path,
    bundle_dir: Path,
    split: str,
    out: Path | None,
    n_resamples: int,
    seed: int,
    device: str,
) -> None:
    """Evaluate a bundle: the paper's Tables 3-5 with bootstrap CIs, ROC and PR plots.

    c* is the bundle's (fitted on the validation split at build time); nothing is fitted
    on the evaluated split. Prints the Markdown report; writes evaluation.json,
    evaluation.md, roc.png, pr_detector.png, pr_fusion.png and predictions.csv.
    """
    from spinexr.pipeline.bundle import verify_bundle
    from spinexr.training.evaluation import evaluate_bundle

    bundle = verify_bundle(bundle_dir)
    if out is None:
        out = Path("evaluation") / f"{bundle.name}-{bundle.version}-{split}"
    result = evaluate_bundle(
        bundle_dir,
        data,
        out,
        split=split,
        n_resamples=n_resamples,
        seed=seed,
        device=device,
        say=_say,
    )
    click.echo(result.markdown)
    _say(f"reports written to {out}")


@click.group()
def bundle() -> None:
    """Build model bundles (and the synthetic-phantom demo bundle)."""


@bundle.command("build")
@click.option("--out", type=_OUT, required=True, help="Bundle folder to write.")
@click.option("--name", required=True, help="Bundle name.")
@click.option("--version", "version", required=True, help="Bundle version.")
@click.option(
    "--classifier",
    "classifiers",
    multiple=True,
    required=True,
    metavar="ARCH=FILE",
    help="Ensemble member: architecture and state dict (e.g. a run's best.pt).",
)
@click.option(
    "--detector",
    "detector_dir",
    type=_DATA,
    required=True,
    help="Detector training folder (detector.pth, detector.py, train_config.py).",
)
@click.option("--data", type=_DATA, required=True, help="Dataset whose validation split fits c*.")
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
)
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option(
    "--fusion", type=click.Choice([m.value for m in FusionMode]), default="paper", show_default=True
)
@click.option("--display-threshold", type=click.FloatRange(0, 1), default=0.3, show_default=True)
@click.option(
    "--demo/--no-demo",
    default=False,
    show_default=True,
    help="Mark as trained on synthetic phantoms.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@user_errors
def bundle_build(
    out: Path,
    name: str,
    version: str,
    classifiers: tuple[str, ...],
    detector_dir: Path,
    data: Path,
    val_fraction: float,
    split_seed: int,
    fusion: str,
    display_threshold: float,
    demo: bool,
    device: str,
    force: bool,
) -> None:
    """Write a bundle: weights, hashes, c* fitted on validation, validation metrics."""
    from spinexr.training.bundles import BundleSpec, build_bundle, detector_scale_of_run

    members = []
    for item in classifiers:
        arch, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--classifier expects ARCH=FILE, got {item!r}")
        members.append((arch, Path(path)))
    spec = BundleSpec(
        name=name,
        version=version,
        classifiers=members,
        detector_checkpoint=detector_dir / "detector.pth",
        detector_config=detector_dir / "detector.py",
        data=data,
        val_fraction=val_fraction,
        split_seed=split_seed,
        detector_scale=detector_scale_of_run(detector_dir),
        fusion=FusionMode(fusion),
        display_threshold=display_threshold,
        demo=demo,
        training_data={"root": str(data)},
    )
    built = build_bundle(spec, out, device=device, force=force, say=_say)
    click.echo(
        json.dumps(
            {
                "bundle": str(built.directory),
                "name": built.name,
                "version": built.version,
                "threshold": built.threshold,
                "device_uid": built.device_uid,
                "metrics": built.manifest.metrics,
            },
            indent=2,
        )
    )


@bundle.command("demo")
@click.option(
    "--out", type=_OUT, default=None, help="Bundle folder [default: ~/.cache/spinexr/demo-bundle]."
)
@click.option(
    "--work",
    type=_OUT,
    default=None,
    help="Work folder for phantoms and runs [default: next to the bundle].",
)
@click.option("--force", is_flag=True, help="Rebuild even when a cached demo bundle verifies.")
@click.option(
    "--quick",
    is_flag=True,
    help="A much smaller recipe (seconds; for tests; the bundle works but is weak).",
)
@user_errors
def bundle_demo(out: Path | None, work: Path | None, force: bool, quick: bool) -> None:
    """Generate phantoms, train small models on them and write the demo bundle (cached).

    Everything trains from scratch on this machine (no downloads). The bundle is marked as a
    synthetic-phantom demo: its outputs say so and it is not for clinical use.
    """
    from spinexr.training.bundles.demo import DEMO_RECIPE, QUICK_RECIPE, default_demo_dir, demo

    recipe = QUICK_RECIPE if quick else DEMO_RECIPE
    target = out if out is not None else default_demo_dir(recipe)
    from spinexr.training.ct.bundle import DEMO_CT_RECIPE

    ct = None if quick else DEMO_CT_RECIPE
    built = demo(target, recipe, work=work, force=force, say=_say, ct=ct)
    click.echo(str(built.directory))
