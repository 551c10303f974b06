"""Train a detector with MMDetection's Runner and export it for bundles.

`train_detector` prepares the display-image cache (progress line with rate and ETA), builds
the training config (`build_training_config`), saves it resolved beside the checkpoints as
``<out>/train_config.py``, runs mmengine's ``Runner`` (its log lines carry loss, time per
iteration and ETA; ``--resume`` continues from ``<out>/last_checkpoint``), then converts the
best (or last) checkpoint into the weights-only serving format:
``<out>/detector.pth`` + ``<out>/detector.py`` (model config only, what a bundle ships).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spinexr.training.data import DisplayCache, ImageRecord, load_dataset
from spinexr.training.detection.config import DetectorTrainConfig, build_training_config
from spinexr.training.progress import RateProgress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorTrainResult:
    """What `train_detector` produced.

    Attributes
    ----------
    checkpoint : pathlib.Path
        Weights-only checkpoint for a bundle (``<out>/detector.pth``).
    config : pathlib.Path
        Its resolved model config (``<out>/detector.py``).
    source_checkpoint : pathlib.Path
        The Runner checkpoint it was exported from (best by validation mAP, else last).
    best_map : float or None
        Validation mAP@0.5 of the best checkpoint, when validation ran.
    iterations : int
        Iterations trained in total.
    seconds : float
        Wall time of this call.
    """

    checkpoint: Path
    config: Path
    source_checkpoint: Path
    best_map: float | None
    iterations: int
    seconds: float


def warm_cache(
    records: Sequence[ImageRecord],
    cache: DisplayCache,
    *,
    label: str = "images",
    stream: Any = None,
    every: float = 5.0,
    workers: int = 0,
) -> None:
    """Decode every record into the display cache, printing progress with rate and ETA.

    Decoding (JPEG 2000 above all) dominates a first epoch on the real data: about half a
    second per 2500×1600 image on one core. ``workers`` processes decode in parallel.

    Parameters
    ----------
    records : sequence of ImageRecord
        Images to cache.
    cache : DisplayCache
        The cache.
    label : str
        What the progress lines call the images.
    stream : file-like, optional
        Where progress goes (default stderr).
    every : float
        Seconds between progress lines.
    workers : int
        Decoding processes (0: in this process).
    """
    total = len(records)
    progress = RateProgress(total, label, prefix="cache", every=every, stream=stream)
    report = progress.update

    if workers > 0 and total > 1:
        import concurrent.futures
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            for done, _ in enumerate(pool.map(_cache_one, [(cache, r) for r in records]), 1):
                report(done)
        return
    for done, record in enumerate(records, 1):
        cache.get_entry(record)
        report(done)


def _cache_one(item: tuple[DisplayCache, ImageRecord]) -> None:
    cache, record = item
    cache.get_entry(record)


def train_detector(
    cfg: DetectorTrainConfig, *, progress: Callable[[str], None] | None = None
) -> DetectorTrainResult:
    """Train (or resume) a detector and export it.

    Parameters
    ----------
    cfg : DetectorTrainConfig
        The run.
    progress : callable, optional
        Receives one-line status messages (stages); the Runner logs its own lines.

    Returns
    -------
    DetectorTrainResult
        Exported files and figures.
    """
    from spinexr.pipeline.detector import load_config
    from spinexr.training.detection.export import export_checkpoint
    from spinexr.training.detection.mmdata import register

    say = progress or (lambda msg: logger.info("%s", msg))
    started = time.monotonic()
    register()
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.resume and not (cfg.out / "last_checkpoint").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint to resume from in {cfg.out}")
    dataset = load_dataset(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    for notice in dataset.notices:
        say(f"dataset: {notice}")
    cache = DisplayCache(cfg.cache_dir(), max_side=cfg.cache_side())
    splits = ["train"] + (["val"] if cfg.val_every > 0 else [])
    for name in splits:
        warm_cache(dataset.split(name), cache, label=f"{name} images", workers=cfg.workers)
    mm = build_training_config(cfg)
    mm.dump(str(cfg.out / "train_config.py"))
    device = _device(cfg.device)
    if device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    say(
        f"training {cfg.config} for {cfg.iterations} iterations, batch {cfg.batch_size}, "
        f"scale {cfg.scale[0]}/{cfg.scale[1]}, on {device}"
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        from mmengine.runner import Runner

        runner = Runner.from_cfg(mm)
        with _trusted_checkpoints():
            runner.train()
        iterations = int(runner.iter)
    source, best = _pick_checkpoint(cfg.out)
    model_cfg = load_config(cfg.out / "train_config.py")
    for key in (
        "train_dataloader",
        "val_dataloader",
        "test_dataloader",
        "train_cfg",
        "val_cfg",
        "test_cfg",
        "val_evaluator",
        "test_evaluator",
        "param_scheduler",
        "optim_wrapper",
        "default_hooks",
        "custom_hooks",
        "resume",
        "load_from",
        "work_dir",
        "spinexr",
        "auto_scale_lr",
        "randomness",
    ):
        model_cfg.pop(key, None)
    checkpoint, config = export_checkpoint(source, cfg.out / "detector.pth", model_cfg)
    say(
        f"exported {checkpoint.name} from {source.name}"
        + (f" (validation mAP@0.5 {best:.4f})" if best is not None else "")
    )
    return DetectorTrainResult(
        checkpoint=checkpoint,
        config=config,
        source_checkpoint=source,
        best_map=best,
        iterations=iterations,
        seconds=time.monotonic() - started,
    )


@contextlib.contextmanager
def _trusted_checkpoints() -> Iterator[None]:
    """Let mmengine unpickle its own Runner checkpoints (resume) and ``--init`` files.

    torch ≥ 2.6 loads weights-only by default; mmengine's checkpoints also hold the optimizer
    state and the message hub (numpy scalars, mmengine objects) and fail that check. Inside
    this block mmengine's ``torch.load`` calls read the files this run's work folder holds and
    the local ``--init`` file the user named; bundles are still loaded weights-only.
    """
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA device is available")
    return name


def _pick_checkpoint(out: Path) -> tuple[Path, float | None]:
    """Return the best checkpoint by validation mAP, else the last one."""
    best = sorted(out.glob("best_spinexr_mAP50_iter_*.pth"))
    if best:
        path = best[-1]
        score = _best_score(out)
        return path, score
    pointer = out / "last_checkpoint"
    if pointer.is_file():
        return Path(pointer.read_text().strip()), None
    raise FileNotFoundError(f"no checkpoint written in {out}")


def _best_score(out: Path) -> float | None:
    best: float | None = None
    for line in _json_lines(out):
        value = line.get("spinexr/mAP50")
        if isinstance(value, int | float) and (best is None or value > best):
            best = float(value)
    return best


def _json_lines(out: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in sorted(out.glob("*/vis_data/scalars.json")):
        for text in path.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    return lines
