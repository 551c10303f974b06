"""The MMDetection adapter on randomly initialised models (CPU, no downloads)."""

from __future__ import annotations

import fractions
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spinexr.pipeline import detector as det_mod
from spinexr.pipeline.classes import CLASS_NAMES
from spinexr.pipeline.detector import (
    Detections,
    Detector,
    available_configs,
    build_detector_model,
    check_config,
    config_class_names,
    config_num_classes,
    detector_config_path,
    dump_config,
    find_urls,
    load_config,
    save_checkpoint,
)
from spinexr.pipeline.geometry import ResizeTransform, detector_size

ROOT = Path(__file__).resolve().parents[2]
TINY = "sparse-rcnn_r18_fpn_tiny_spinexr"
R50_CONFIGS = [
    "sparse-rcnn_r50_fpn_spinexr",
    "faster-rcnn_r50_fpn_spinexr",
    "retinanet_r50_fpn_spinexr",
]
# ResNet-18 variants of the two other architectures, for fast tests of their code paths.
R18 = {"model.backbone.depth": 18, "model.neck.in_channels": [64, 128, 256, 512]}


def phantom(
    original: tuple[int, int], seed: int = 0, shorter: int = 800
) -> tuple[np.ndarray, ResizeTransform]:
    """A grey detector input (3 equal channels) resized from an ``original`` (rows, cols).

    ``shorter`` below 800 makes a smaller input than the node's, for tests that only need the
    model's code path to run.
    """
    tf = ResizeTransform(original, detector_size(*original, shorter=shorter))
    rows, cols = tf.resized_size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    grey = 127 + 60 * np.sin(x / 37.0) * np.cos(y / 23.0) + rng.normal(0, 10, (rows, cols))
    img = np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return img, tf


def assert_valid(d: Detections, tf: ResizeTransform, max_detections: int = 100) -> None:
    n = len(d)
    assert isinstance(d, Detections)
    assert d.boxes.shape == (n, 4) and d.boxes.dtype == np.float32
    assert d.labels.shape == (n,) and d.labels.dtype == np.int64
    assert d.scores.shape == (n,) and d.scores.dtype == np.float32
    assert n <= max_detections
    assert np.all(np.diff(d.scores) <= 0)
    assert np.all((d.scores >= 0) & (d.scores <= 1))
    if n:
        assert d.labels.min() >= 0 and d.labels.max() < len(CLASS_NAMES)
        rows, cols = tf.original_size
        assert d.boxes[:, [0, 2]].min() >= 0 and d.boxes[:, [0, 2]].max() <= cols
        assert d.boxes[:, [1, 3]].min() >= 0 and d.boxes[:, [1, 3]].max() <= rows
        assert np.all(d.boxes[:, 2] > d.boxes[:, 0]) and np.all(d.boxes[:, 3] > d.boxes[:, 1])


@pytest.fixture(scope="module")
def tiny() -> Detector:
    torch.manual_seed(0)
    return Detector(detector_config_path(TINY))


@pytest.fixture(scope="module")
def inputs() -> tuple[list[np.ndarray], list[ResizeTransform]]:
    # Landscape 384×512 → 800×1067 and portrait 512×384 → 1067×800: one padded batch.
    a, ta = phantom((384, 512), seed=1)
    b, tb = phantom((512, 384), seed=2)
    assert a.shape == (800, 1067, 3) and b.shape == (1067, 800, 3)
    return [a, b], [ta, tb]


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, ResizeTransform]:
    return phantom((384, 512), seed=3, shorter=320)


@pytest.fixture(scope="module")
def tiny_out(
    tiny: Detector, inputs: tuple[list[np.ndarray], list[ResizeTransform]]
) -> list[Detections]:
    images, transforms = inputs
    return tiny.predict(images, transforms)


# --- configs ---------------------------------------------------------------------------------


def test_available_configs() -> None:
    assert {*R50_CONFIGS, TINY} <= set(available_configs())
    assert "spinexr_metainfo" not in available_configs()  # _base_ files are not configs
    assert detector_config_path(TINY + ".py") == detector_config_path(TINY)
    with pytest.raises(FileNotFoundError, match="available"):
        detector_config_path("yolo")


@pytest.mark.parametrize("name", available_configs())
def test_config_resolves_without_urls_and_with_our_classes(name: str) -> None:
    cfg = load_config(detector_config_path(name))
    assert find_urls(cfg) == []
    assert "://" not in cfg.pretty_text
    assert cfg.load_from is None
    assert cfg.model.backbone.init_cfg is None
    assert config_class_names(cfg) == CLASS_NAMES
    assert config_num_classes(cfg) == {len(CLASS_NAMES)}
    test_cfg = cfg.model.test_cfg
    assert (test_cfg.get("rcnn") or test_cfg).max_per_img == 100
    check_config(cfg)


def test_sparse_rcnn_default_has_100_proposals_and_6_stages() -> None:
    cfg = load_config(detector_config_path("sparse-rcnn_r50_fpn_spinexr"))
    assert cfg.model.type == "SparseRCNN"
    assert cfg.model.rpn_head.num_proposals == 100
    assert cfg.model.backbone.depth == 50
    assert len(cfg.model.roi_head.bbox_head) == cfg.model.roi_head.num_stages == 6
    assert len(cfg.model.train_cfg.rcnn) == 6


def test_check_config_refuses_urls_and_other_classes() -> None:
    path = detector_config_path(TINY)
    url = load_config(path)
    url.model.backbone.init_cfg = {"type": "Pretrained", "checkpoint": "torchvision://x"}
    assert find_urls(url) == ["model.backbone.init_cfg.checkpoint"]
    with pytest.raises(ValueError, match="URL"):
        build_detector_model(url)
    with pytest.raises(ValueError, match="metainfo"):
        check_config(load_config(path, {"metainfo.classes": ("a", "b")}))
    heads = load_config(path)
    heads.model.roi_head.bbox_head[0].num_classes = 80
    with pytest.raises(ValueError, match="num_classes"):
        check_config(heads)


def test_dump_config_is_self_contained(tmp_path: Path) -> None:
    src = load_config(detector_config_path(TINY))
    out = dump_config(src, tmp_path / "resolved.py")
    text = out.read_text()
    assert "_base_" not in text and "mmdet::" not in text
    assert load_config(out).to_dict() == src.to_dict()


def test_load_config_does_not_modify_its_input() -> None:
    cfg = load_config(detector_config_path(TINY))
    load_config(cfg, {"model.rpn_head.num_proposals": 3})
    assert cfg.model.rpn_head.num_proposals == 20


# --- inference -------------------------------------------------------------------------------


def test_predict_returns_valid_detections_in_original_pixels(
    tiny: Detector,
    inputs: tuple[list[np.ndarray], list[ResizeTransform]],
    tiny_out: list[Detections],
) -> None:
    _, transforms = inputs
    out = tiny_out
    assert len(out) == 2
    for d, tf in zip(out, transforms, strict=True):
        assert_valid(d, tf)
        assert len(d) > 0  # random weights still score every proposal
    assert tiny.class_names == CLASS_NAMES
    assert tiny.predict([], []) == []


def test_batching_does_not_change_results(
    tiny: Detector, small: tuple[np.ndarray, ResizeTransform]
) -> None:
    img, tf = small
    batched = tiny.predict([img, img.copy()], [tf, tf])
    single = tiny.predict([img], [tf])[0]
    for d in batched:
        np.testing.assert_allclose(d.boxes, single.boxes, atol=1e-2)
        np.testing.assert_allclose(d.scores, single.scores, atol=1e-5)
        np.testing.assert_array_equal(d.labels, single.labels)


def test_boxes_are_mapped_sorted_limited_and_clipped(
    tiny: Detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model's raw output in resized pixels, in no particular order.
    raw_boxes = np.array(
        [
            [100, 200, 300, 400],  # inside
            [-50, -50, 2000, 2000],  # larger than the image: clipped
            [1100, 0, 1200, 10],  # right of the image: no area once clipped, dropped
            [0, 0, 1067, 800],  # the whole image
        ],
        np.float32,
    )
    raw_scores = np.array([0.3, 0.9, 0.95, 0.6], np.float32)
    raw_labels = np.array([6, 0, 1, 4], np.int64)
    monkeypatch.setattr(
        tiny, "_forward", lambda images: [(raw_boxes, raw_scores, raw_labels)] * len(images)
    )
    tf = ResizeTransform((384, 512), (800, 1067))
    img = np.zeros((800, 1067, 3), np.uint8)
    (d,) = tiny.predict([img], [tf])
    np.testing.assert_array_equal(d.scores, np.array([0.9, 0.6, 0.3], np.float32))
    np.testing.assert_array_equal(d.labels, [0, 4, 6])
    np.testing.assert_allclose(
        d.boxes,
        [[0, 0, 512, 384], [0, 0, 512, 384], tf.to_original([[100, 200, 300, 400]])[0]],
        rtol=1e-6,
    )
    assert_valid(d, tf)
    monkeypatch.setattr(tiny, "max_detections", 2)
    assert len(tiny.predict([img], [tf])[0]) == 2


def test_no_detection_gives_empty_arrays(
    tiny: Detector, small: tuple[np.ndarray, ResizeTransform], monkeypatch: pytest.MonkeyPatch
) -> None:
    img, tf = small
    # Sparse R-CNN always scores all its proposals: our own threshold empties the result.
    monkeypatch.setattr(tiny, "min_score", 1.01)
    (d,) = tiny.predict([img], [tf])
    assert len(d) == 0
    assert d.boxes.shape == (0, 4) and d.boxes.dtype == np.float32
    assert d.labels.shape == (0,) and d.labels.dtype == np.int64
    assert d.scores.shape == (0,) and d.scores.dtype == np.float32
    assert_valid(d, tf)


@pytest.mark.parametrize(
    ("name", "threshold_key"),
    [
        ("faster-rcnn_r50_fpn_spinexr", "model.test_cfg.rcnn.score_thr"),
        ("retinanet_r50_fpn_spinexr", "model.test_cfg.score_thr"),
    ],
)
def test_mmdet_empty_result_path(
    name: str, threshold_key: str, small: tuple[np.ndarray, ResizeTransform]
) -> None:
    # MMDetection's own score threshold leaves nothing: its empty tensors become ours.
    img, tf = small
    overrides = {**R18, threshold_key: 1.1}
    (d,) = Detector(detector_config_path(name), overrides=overrides).predict([img], [tf])
    assert len(d) == 0
    assert_valid(d, tf)


def test_predict_checks_its_inputs(tiny: Detector) -> None:
    img, tf = phantom((384, 512))
    with pytest.raises(ValueError, match="transforms"):
        tiny.predict([img], [])
    with pytest.raises(ValueError, match="uint8"):
        tiny.predict([img.astype(np.float32)], [tf])
    with pytest.raises(ValueError, match="uint8"):
        tiny.predict([img[..., 0]], [tf])
    with pytest.raises(ValueError, match="resized_size"):
        tiny.predict([img[:700]], [tf])


def test_detector_arguments_are_checked() -> None:
    path = detector_config_path(TINY)
    with pytest.raises(ValueError, match="max_detections"):
        Detector(path, max_detections=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            Detector(path, device="cuda")
    with pytest.raises(ValueError, match="device"):
        Detector(path, device="tpu")


def test_detections_validate_themselves() -> None:
    empty = Detections.empty()
    assert len(empty) == 0
    ok = Detections(
        boxes=np.array([[0, 0, 1, 1], [1, 1, 2, 2]], np.float32),
        labels=np.array([0, 6], np.int64),
        scores=np.array([0.9, 0.1], np.float32),
    )
    with pytest.raises(ValueError, match="read-only"):
        ok.scores[0] = 0.0
    with pytest.raises(ValueError, match="sorted"):
        Detections(ok.boxes.copy(), ok.labels.copy(), ok.scores[::-1].copy())
    with pytest.raises(ValueError, match="class ids"):
        Detections(ok.boxes.copy(), np.array([0, 7], np.int64), ok.scores.copy())
    with pytest.raises(ValueError, match="float32"):
        Detections(ok.boxes.astype(np.float64), ok.labels.copy(), ok.scores.copy())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Detections(ok.boxes.copy(), ok.labels.copy(), ok.scores * 2)
    with pytest.raises(ValueError, match="finite"):
        Detections(ok.boxes * np.nan, ok.labels.copy(), ok.scores.copy())
    mine = np.array([0.5], np.float32)
    Detections(np.zeros((1, 4), np.float32), np.zeros(1, np.int64), mine)
    mine[0] = 0.6  # the caller's array is copied, not frozen


# --- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_predictions(
    tiny: Detector,
    inputs: tuple[list[np.ndarray], list[ResizeTransform]],
    tiny_out: list[Detections],
    tmp_path: Path,
) -> None:
    images, transforms = inputs
    before = tiny_out
    ckpt, cfg_path = save_checkpoint(tiny.model, tmp_path / "detector.pth", tiny.config)
    assert cfg_path == tmp_path / "detector.py"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detector.pth", "detector.py"]

    raw = torch.load(ckpt, weights_only=True)  # only tensors and plain containers
    assert raw["meta"]["format"] == det_mod.CHECKPOINT_FORMAT
    assert tuple(raw["meta"]["dataset_meta"]["classes"]) == CLASS_NAMES

    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    reloaded = Detector(cfg_path, ckpt)
    assert reloaded.meta["format"] == det_mod.CHECKPOINT_FORMAT
    after = reloaded.predict(images, transforms)
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_array_equal(x.scores, y.scores)


def test_checkpoint_for_another_model_is_refused(tiny: Detector, tmp_path: Path) -> None:
    ckpt, _ = save_checkpoint(tiny.model, tmp_path / "d.pth", tiny.config)
    other = {"model.rpn_head.num_proposals": 10}
    with pytest.raises(ValueError, match="do not match"):
        Detector(detector_config_path(TINY), ckpt, overrides=other)


def test_missing_and_remote_checkpoints_are_refused(tmp_path: Path) -> None:
    path = detector_config_path(TINY)
    with pytest.raises(FileNotFoundError):
        Detector(path, tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="local"):
        Detector(path, Path("https://example.org/x.pth"))


def test_pickled_training_checkpoint_is_refused(tiny: Detector, tmp_path: Path) -> None:
    # An mmengine Runner checkpoint also pickles optimizer/logging objects: stand-in here
    # (training converts one with spinexr.training.detection.export.export_checkpoint).
    runner_ckpt = tmp_path / "iter_10.pth"
    torch.save(
        {
            "state_dict": tiny.model.state_dict(),
            "message_hub": {"lr": fractions.Fraction(1, 3)},
            "meta": {"iter": 10},
        },
        runner_ckpt,
    )
    with pytest.raises(ValueError, match="weights-only"):
        Detector(detector_config_path(TINY), runner_ckpt)


def test_build_detector_model_for_training() -> None:
    model = build_detector_model(detector_config_path(TINY))
    assert isinstance(model, torch.nn.Module)
    assert model.training
    assert type(model).__name__ == "SparseRCNN"


# --- full-size models ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", R50_CONFIGS)
def test_full_size_model_predicts(name: str, small: tuple[np.ndarray, ResizeTransform]) -> None:
    # The served architectures, built and run once; a small input keeps it quick (the
    # 800-pixel geometry is exercised with the tiny model above).
    img, tf = small
    torch.manual_seed(0)
    (d,) = Detector(detector_config_path(name)).predict([img], [tf])
    assert_valid(d, tf)


# --- import boundary -------------------------------------------------------------------------

_MM_IMPORT = re.compile(r"^\s*(?:import|from)\s+(?:mmdet|mmcv|mmengine)\b", re.MULTILINE)


# Besides the serving adapter's backend: the installation check (mmcv's compiled ops) and the
# trainer (MMDetection's Runner); they import inside functions, so importing them imports
# nothing.
_LAZY_USERS = {
    ROOT / "node" / "doctor" / "install.py",
    ROOT / "training" / "detection" / "mmdata.py",
    ROOT / "training" / "detection" / "train.py",
}
_TOP_LEVEL_MM_IMPORT = re.compile(r"^(?:import|from)\s+(?:mmdet|mmcv|mmengine)\b", re.MULTILINE)


def test_only_the_detector_backend_imports_mmdetection() -> None:
    allowed = {ROOT / "pipeline" / "detector" / "backend.py", *_LAZY_USERS}
    for path in _LAZY_USERS:
        assert not _TOP_LEVEL_MM_IMPORT.search(path.read_text(encoding="utf-8")), path
    offenders = [
        str(p.relative_to(ROOT))
        for top in ("node", "pipeline", "training")
        for p in sorted((ROOT / top).rglob("*.py"))
        if p not in allowed
        and (ROOT / "pipeline" / "detector" / "configs") not in p.parents
        and _MM_IMPORT.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    init = (ROOT / "pipeline" / "__init__.py").read_text(encoding="utf-8")
    assert "detector" not in init


def test_importing_the_detector_package_does_not_import_mmdetection() -> None:
    code = (
        "import sys\n"
        "import spinexr.pipeline.detector as d\n"
        "d.Detections.empty(); d.detector_config_path()\n"
        "print(sorted(m for m in ('mmdet', 'mmcv', 'mmengine') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
