"""Detector training through MMDetection's Runner: config, resume, export, serving round trip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from spinexr.pipeline.detector import Detector, find_urls, load_config
from spinexr.pipeline.geometry import ResizeTransform, detector_size
from spinexr.pipeline.preprocess import gray_to_rgb, resize_image
from spinexr.training.data import DisplayCache, load_dataset
from spinexr.training.detection import DetectorTrainConfig, build_training_config, train_detector
from spinexr.training.phantoms import generate_dataset

pytestmark = pytest.mark.slow

TINY = "sparse-rcnn_r18_fpn_tiny_spinexr"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    generate_dataset(root, 8, 3, size="small", test_fraction=0.25)
    return root


def _config(data: Path, out: Path, **kw: object) -> DetectorTrainConfig:
    base: dict[str, object] = dict(
        data=data,
        out=out,
        config=TINY,
        iterations=2,
        batch_size=2,
        scale=(256, 352),
        autoaugment=False,
        val_every=2,
        checkpoint_every=1,
        warmup=1,
        workers=0,
        device="cpu",
        log_every=1,
    )
    base.update(kw)
    return DetectorTrainConfig(**base)  # type: ignore[arg-type]


def test_training_config_replaces_coco_data_and_schedule(data: Path, tmp_path: Path) -> None:
    cfg = build_training_config(
        _config(data, tmp_path, iterations=1000, batch_size=4, autoaugment=True)
    )
    assert find_urls(cfg) == []
    dataset = cfg.train_dataloader.dataset
    assert dataset.type == "ClassBalancedDataset" and dataset.oversample_thr == 0.1
    assert dataset.dataset.type == "SpineXRDetDataset" and dataset.dataset.split == "train"
    steps = [t["type"] for t in dataset.dataset.pipeline]
    assert steps[0] == "LoadSpineDisplayImage"
    assert {"RandomFlip", "RandomChoiceResize", "AutoAugment"} <= set(steps)
    sides = sorted(s[1] for s in dataset.dataset.pipeline[2]["scales"])
    assert sides[0] == round(256 * 0.8) and sides[-1] == 256
    assert cfg.train_cfg.max_iters == 1000 and cfg.train_cfg.type == "IterBasedTrainLoop"
    assert cfg.param_scheduler[1].milestones == [600]
    # AdamW lr of the base config (batch 16) scaled linearly to batch 4.
    from spinexr.pipeline.detector import detector_config_path

    base_lr = load_config(detector_config_path(TINY)).optim_wrapper.optimizer.lr
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(base_lr * 4 / 16)
    assert cfg.val_dataloader.dataset.split == "val"
    assert cfg.default_hooks.checkpoint.save_best == "spinexr/mAP50"


def test_train_resume_and_export_into_serving(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = train_detector(_config(data, out))
    assert first.iterations == 2
    assert (out / "train_config.py").is_file() and (out / "last_checkpoint").is_file()
    assert first.best_map is not None and 0.0 <= first.best_map <= 1.0
    resumed = train_detector(_config(data, out, iterations=3, resume=True))
    assert resumed.iterations == 3
    assert "iter_3.pth" in (out / "last_checkpoint").read_text()

    # The exported checkpoint loads weights-only into the serving detector and predicts in
    # original pixel coordinates.
    detector = Detector(resumed.config, resumed.checkpoint, device="cpu", min_score=0.0)
    dataset = load_dataset(data, seed=0)
    record = dataset.split("test")[0]
    cache = DisplayCache(tmp_path / "cache")
    entry = cache.get_entry(record)
    size = detector_size(*entry.image.shape, 256, 352)
    image = gray_to_rgb(resize_image(entry.image, size))
    (dets,) = detector.predict([image], [ResizeTransform(entry.image.shape, size)])
    assert dets.boxes.shape[1] == 4 and len(dets) > 0
    assert np.all(dets.boxes[:, 2] <= entry.image.shape[1] + 1e-3)


def test_missing_init_and_bad_resume_are_clear(data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="local files only"):
        build_training_config(_config(data, tmp_path, init=tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train_detector(_config(data, tmp_path / "empty", resume=True))


def test_two_runs_in_one_process_keep_their_own_validation_figures(
    data: Path, tmp_path: Path
) -> None:
    # mmengine hands out visualizers by name: a fixed name made the second run write its
    # scalars (validation mAP) into the first run's folder, and report no best mAP.
    runs = [train_detector(_config(data, tmp_path / name)) for name in ("a", "b")]
    for name, run in zip(("a", "b"), runs, strict=True):
        assert run.best_map is not None
        assert list((tmp_path / name).glob("*/vis_data/scalars.json"))
