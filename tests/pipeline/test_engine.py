"""The pipeline end to end: plumbing with a fake detector, failures, chunks, timings."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from pipelinesupport import BundleFactory, bundle_fields
from pydicom.dataset import Dataset
from torch import nn

from spinexr.pipeline import engine as engine_module
from spinexr.pipeline.bundle import write_bundle
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.classifier import ClassifierEnsemble, images_to_batch
from spinexr.pipeline.devices import resolve_device
from spinexr.pipeline.engine import Pipeline
from spinexr.pipeline.geometry import ResizeTransform
from spinexr.pipeline.preprocess import prepare_image
from spinexr.pipeline.results import FusionMode, Outcome, StudyResult
from spinexr.pipeline.spacing import SpacingBasis
from spinexr.training.phantoms import make_phantom_image

STUDY = "1.2.826.0.1.3680043.8.498.777"


def study(n: int, **kwargs: object) -> list[Dataset]:
    series = f"{STUDY}.1"
    return [
        make_phantom_image(
            100 + i,
            size=(128, 96),
            study_uid=STUDY,
            series_uid=series,
            instance_number=i + 1,
            **kwargs,  # type: ignore[arg-type]
        )[0]
        for i in range(n)
    ]


@dataclass(frozen=True)
class FakeDetections:
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


class FakeDetector:
    """Returns, per image, fixed boxes given in *detector-input* pixels, mapped back."""

    def __init__(self, boxes: Sequence[tuple[float, float, float, float, int, float]]) -> None:
        self.boxes = boxes
        self.calls: list[list[tuple[int, int]]] = []

    def predict(
        self, images: Sequence[np.ndarray], transforms: Sequence[ResizeTransform]
    ) -> list[FakeDetections]:
        self.calls.append([im.shape[:2] for im in images])
        out = []
        for im, tf in zip(images, transforms, strict=True):
            assert im.dtype == np.uint8 and im.shape == (*tf.resized_size, 3)
            xyxy = np.array([b[:4] for b in self.boxes], np.float32).reshape(-1, 4)
            out.append(
                FakeDetections(
                    boxes=tf.to_original(xyxy).astype(np.float32),
                    labels=np.array([b[4] for b in self.boxes], np.int64),
                    scores=np.array([b[5] for b in self.boxes], np.float32),
                )
            )
        return out


class BrightnessLogit(nn.Module):
    """A stand-in classifier: logit = mean of the normalised input (varies per image)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        return x.mean(dim=(1, 2, 3)).unsqueeze(1)


BOXES = [(80.0, 100.0, 400.0, 300.0, 0, 0.9), (10.0, 20.0, 50.0, 60.0, 4, 0.3)]


def fast_pipeline(bundle_factory: BundleFactory, **fields: object) -> tuple[Pipeline, FakeDetector]:
    member = BrightnessLogit()
    detector = FakeDetector(BOXES)
    pipe = Pipeline(
        bundle_factory(**fields),
        device="cpu",
        detector=detector,
        classifier=ClassifierEnsemble({"densenet121": member}),
    )
    return pipe, detector


def test_study_with_real_classifier_weights(make_bundle: BundleFactory) -> None:
    bundle = make_bundle(threshold=0.0)  # every probability ≥ c*: all boxes kept
    detector = FakeDetector(BOXES)
    pipe = Pipeline(bundle, device="cpu", detector=detector)
    datasets = study(2)
    result = pipe.analyze_study(datasets)

    loaded = pipe.classifier.members["densenet121"].state_dict()
    saved = torch.load(bundle.classifier_weights["densenet121"], weights_only=True)
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    reference = pipe.classifier.predict(
        images_to_batch([prepare_image(ds).classifier_input for ds in datasets])
    )
    assert result.study_instance_uid == STUDY
    assert [im.sop_instance_uid for im in result.images] == [ds.SOPInstanceUID for ds in datasets]
    for k, im in enumerate(result.images):
        assert im.classifier_probability == pytest.approx(float(reference.probability[k]), 1e-5)
        assert im.member_logits["densenet121"] == pytest.approx(
            float(reference.logits["densenet121"][k]), abs=1e-4
        )
        assert im.decision is True and len(im.boxes) == 2
    assert result.outcome is Outcome.ABNORMAL and result.decision is True
    assert result.probability == max(im.probability or 0 for im in result.images)
    assert detector.calls == [[(1067, 800), (1067, 800)]]


def test_boxes_come_back_in_original_pixels_and_fusion_applies(
    make_bundle: BundleFactory,
) -> None:
    pipe, _ = fast_pipeline(make_bundle, threshold=1.0, display_threshold=0.95)
    result = pipe.analyze_study(study(1))
    (im,) = result.images
    assert im.rows == 128 and im.columns == 96
    # p < c* = 1: only the 0.9 box survives; 0.9 < display threshold 0.95: kept, not shown.
    (box,) = im.boxes
    assert box.label is LesionClass.OSTEOPHYTES and box.score == pytest.approx(0.9)
    scale = 800 / 96  # detector input is 1067×800 for a 128×96 image
    assert box.xmin == pytest.approx(80 / scale, abs=1e-3)
    assert box.ymin == pytest.approx(100 / (1067 / 128), abs=1e-3)
    assert box.xmax == pytest.approx(400 / scale, abs=1e-3)
    assert not box.displayed and im.displayed_boxes == []
    assert result.flagged_classes == [] and result.outcome is Outcome.NO_FINDING
    assert result.decision is False


def test_display_threshold_override_and_flags(make_bundle: BundleFactory) -> None:
    bundle = make_bundle(threshold=0.0, display_threshold=0.95)
    pipe = Pipeline(
        bundle,
        device="cpu",
        detector=FakeDetector(BOXES),
        classifier=ClassifierEnsemble({"densenet121": BrightnessLogit()}),
        display_threshold=0.25,
    )
    result = pipe.analyze_study(study(1))
    assert result.display_threshold == 0.25
    assert [b.displayed for b in result.images[0].boxes] == [True, True]
    assert result.flagged_classes == [
        LesionClass.OSTEOPHYTES,
        LesionClass.DISC_SPACE_NARROWING,
    ]


def test_average_fusion_mode_from_the_bundle(make_bundle: BundleFactory) -> None:
    pipe, _ = fast_pipeline(make_bundle, fusion="paper+average")
    result = pipe.analyze_study(study(1))
    (im,) = result.images
    assert result.fusion_mode is FusionMode.PAPER_AVERAGE
    assert im.classifier_probability is not None
    assert im.probability == pytest.approx((im.classifier_probability + 0.9) / 2)


def test_unreadable_image_does_not_stop_the_study(make_bundle: BundleFactory) -> None:
    pipe, detector = fast_pipeline(make_bundle)
    datasets = study(3)
    datasets[1].NumberOfFrames = 4
    del datasets[2].PixelData
    result = pipe.analyze_study(datasets)
    assert [im.failed for im in result.images] == [False, True, True]
    assert result.images[1].error is not None
    assert result.images[1].error.reason == "multi_frame"
    assert result.images[2].error is not None
    assert result.images[2].error.reason == "no_pixel_data"
    assert result.images[1].rows == 128 and result.images[1].boxes == []
    assert result.outcome is not Outcome.FAILED
    assert detector.calls == [[(1067, 800)]]  # only the good image reached the detector


def test_study_fails_when_no_image_can_be_analysed(make_bundle: BundleFactory) -> None:
    pipe, detector = fast_pipeline(make_bundle)
    datasets = study(2, photometric="MONOCHROME1")
    for ds in datasets:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
    result = pipe.analyze_study(datasets)
    assert result.outcome is Outcome.FAILED
    assert result.failure_reason is not None and "not_monochrome" in result.failure_reason
    assert result.probability is None and result.decision is None
    assert detector.calls == []
    assert StudyResult.from_json(result.to_json()) == result
    empty = pipe.analyze_study([])
    assert empty.outcome is Outcome.FAILED and empty.images == []


def test_images_are_processed_in_chunks(make_bundle: BundleFactory) -> None:
    member = BrightnessLogit()
    detector = FakeDetector(BOXES)
    pipe = Pipeline(
        make_bundle(),
        device="cpu",
        detector=detector,
        classifier=ClassifierEnsemble({"densenet121": member}),
        chunk_size=2,
    )
    datasets = study(5)
    result = pipe.analyze_study(datasets)
    assert member.batches == [2, 2, 1]
    assert [len(c) for c in detector.calls] == [2, 2, 1]
    assert [im.sop_instance_uid for im in result.images] == [ds.SOPInstanceUID for ds in datasets]
    # chunking does not change the results
    single = Pipeline(
        make_bundle(),
        device="cpu",
        detector=FakeDetector(BOXES),
        classifier=ClassifierEnsemble({"densenet121": BrightnessLogit()}),
    ).analyze_study(datasets)
    assert [im.probability for im in single.images] == pytest.approx(
        [im.probability for im in result.images]
    )


def test_timings_provenance_and_serialisation(make_bundle: BundleFactory) -> None:
    pipe, detector = fast_pipeline(make_bundle)
    pipe.warm_up()
    assert detector.calls == [[(800, 800)]]
    result = pipe.analyze_study(study(2, sop_class="DX"))
    assert {"preprocess", "classifier.densenet121", "detector", "fusion", "total"} <= set(
        result.timings
    )
    assert all(v >= 0 for v in result.timings.values())
    assert result.timings["total"] >= result.timings["preprocess"]
    for im in result.images:
        assert {"preprocess", "classifier.densenet121", "detector", "fusion"} == set(im.timings)
        assert im.pixel_spacing_basis in (
            SpacingBasis.PIXEL_SPACING,
            SpacingBasis.IMAGER_PIXEL_SPACING,
        )
    prov = result.provenance
    assert prov.device_uid == pipe.bundle.device_uid and prov.demo is True
    assert prov.bundle_version == "0.0.1" and prov.torch_device == "cpu"
    assert result.threshold == pipe.bundle.threshold
    assert StudyResult.from_json(result.to_json()) == result


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def test_engine_imports_the_detector_adapter_lazily() -> None:
    # Only pipeline/detector/backend.py may import MMDetection, and the engine imports the
    # detector package only when it builds a detector: no module-level import of it here.
    tree = ast.parse(Path(engine_module.__file__ or "").read_text(encoding="utf-8"))
    top_level = [
        alias.name if isinstance(node, ast.Import) else f"{node.module}"
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [
        m for m in top_level if "detector" in m or m.startswith(("mmdet", "mmcv", "mmengine"))
    ]


@pytest.mark.slow
def test_bundle_with_the_real_detector(tmp_path: Path, densenet121_weights: Path) -> None:
    try:
        from spinexr.pipeline import detector as det_mod
    except ImportError as exc:  # pragma: no cover - until pipeline/detector/ exists
        pytest.skip(f"spinexr.pipeline.detector is not available yet: {exc}")
    try:
        config = det_mod.detector_config_path("sparse-rcnn_r18_fpn_tiny_spinexr")
    except FileNotFoundError:
        config = det_mod.detector_config_path()
    torch.manual_seed(0)
    model = det_mod.build_detector_model(config)
    checkpoint, resolved = det_mod.save_checkpoint(model, tmp_path / "src" / "detector.pth", config)
    bundle = write_bundle(
        tmp_path / "bundle",
        bundle_fields(
            threshold=0.0,
            detector={
                "model": "sparse-rcnn",
                "config": "detector/detector.py",
                "checkpoint": "detector/detector.pth",
            },
        ),
        {
            "classifier/densenet121.pt": densenet121_weights,
            "detector/detector.py": resolved,
            "detector/detector.pth": checkpoint,
        },
    )
    pipe = Pipeline.from_directory(bundle.directory, device="cpu")
    assert isinstance(pipe.detector, det_mod.Detector)
    datasets = study(2, photometric="MONOCHROME1") + study(1, compressed=True)
    result = pipe.analyze_study(datasets)
    assert len(result.analysed_images) == 3 and result.outcome is not Outcome.FAILED
    for im in result.images:
        assert len(im.boxes) <= 100  # threshold 0: every detector box is kept
        for b in im.boxes:
            assert 0 <= b.xmin <= b.xmax <= 96 and 0 <= b.ymin <= b.ymax <= 128
    assert StudyResult.from_json(result.to_json()) == result
