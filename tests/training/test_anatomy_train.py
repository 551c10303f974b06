"""Non-spine phantoms and the image check's training, bundle entry and demo step."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pipelinesupport import Brightness, NoBoxes, bundle_fields

from spinexr.pipeline.anatomy import (
    ANATOMY_CLASSES,
    AnatomyClass,
    AnatomyClassifier,
    build_anatomy_model,
)
from spinexr.pipeline.bodypart import TagAnatomy, dataset_tag_verdict
from spinexr.pipeline.bundle import verify_bundle, write_bundle
from spinexr.pipeline.classifier import ClassifierEnsemble
from spinexr.pipeline.engine import Pipeline
from spinexr.pipeline.preprocess import prepare_image
from spinexr.training.anatomy import (
    ANATOMY_WEIGHTS,
    AnatomyTrainConfig,
    add_anatomy_to_bundle,
    anatomy_examples,
    train_anatomy,
)
from spinexr.training.anatomy.train import augment
from spinexr.training.bundles.demo import cached_demo
from spinexr.training.phantoms import make_phantom_image, write
from spinexr.training.phantoms.others import (
    TAG_KEYWORDS,
    OtherKind,
    make_other_image,
    render_other,
    strip_anatomy_tags,
)
from spinexr.training.vertebrae.bundle import add_vertebrae_to_bundle

# ----------------------------------------------------------------------------- phantoms


@pytest.mark.parametrize("kind", list(OtherKind))
def test_other_phantoms_are_deterministic_12_bit_and_tagged(kind: OtherKind) -> None:
    a = render_other(5, kind, (200, 160))
    assert a.shape == (200, 160) and a.dtype == np.uint16 and 0 <= a.min() < a.max() <= 4095
    assert np.array_equal(a, render_other(5, kind, (200, 160)))
    assert not np.array_equal(a, render_other(6, kind, (200, 160)))
    ds = make_other_image(5, kind=kind, size=(200, 160), sop_class="DX")
    assert dataset_tag_verdict(ds).anatomy is TagAnatomy.OTHER
    assert ds.BodyPartExamined in {"CHEST", "LEG", "HAND"}
    buf = io.BytesIO()
    write(ds, buf)
    back = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert back.pixel_array.shape == (200, 160)
    bare = make_other_image(5, kind=kind, size=(200, 160), tags=False)
    assert not any(k in bare for k in TAG_KEYWORDS)
    assert dataset_tag_verdict(bare).anatomy is TagAnatomy.UNKNOWN


def test_chest_pa_lungs_are_darker_than_the_mediastinum() -> None:
    image = prepare_image(make_other_image(3, kind=OtherKind.CHEST_PA, size=(256, 256))).display
    mediastinum = image[100:160, 118:138].mean()
    lungs = np.r_[image[90:150, 50:80].ravel(), image[90:150, 176:206].ravel()].mean()
    assert mediastinum > lungs + 20  # bone and soft tissue bright, air dark


def test_strip_anatomy_tags_leaves_the_rest() -> None:
    ds, _ = make_phantom_image(1, size=(128, 96))
    strip_anatomy_tags(ds)
    assert "BodyPartExamined" not in ds and "SeriesDescription" not in ds
    assert ds.SOPInstanceUID and ds.Modality == "CR"


# ----------------------------------------------------------------------------- training data


def test_examples_are_balanced_serving_inputs() -> None:
    examples = anatomy_examples(2, 11, rows=(128, 160))
    assert examples.images.shape == (6, 128, 128) and examples.images.dtype == np.uint8
    assert examples.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert examples.kinds[0].startswith("spine_ap/") and examples.kinds[-1].startswith("other/")
    again = anatomy_examples(2, 11, rows=(128, 160))
    assert np.array_equal(examples.images, again.images)


def test_augment_keeps_shape_and_range() -> None:
    x = torch.rand(8, 1, 128, 128) * 255
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 255.0
    assert not torch.equal(x, y)


# ----------------------------------------------------------------------------- bundle


def placeholder_bundle(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("densenet121.pt", "config.py", "model.pth"):
        (src / name).write_bytes(b"placeholder " + name.encode())
    files = {
        "classifier/densenet121.pt": src / "densenet121.pt",
        "detector/config.py": src / "config.py",
        "detector/model.pth": src / "model.pth",
    }
    return write_bundle(tmp_path / "bundle", bundle_fields(), files).directory


def test_add_anatomy_to_a_bundle(tmp_path: Path) -> None:
    directory = placeholder_bundle(tmp_path)
    before = verify_bundle(directory)
    assert before.anatomy is None
    weights = tmp_path / "anatomy.pt"
    torch.save(build_anatomy_model().state_dict(), weights)
    after = add_anatomy_to_bundle(directory, weights, 0.6, {"accuracy": 0.9})
    assert after.anatomy is not None and after.anatomy.other_threshold == 0.6
    assert after.anatomy.classes == list(ANATOMY_CLASSES)
    assert after.anatomy.metrics == {"accuracy": 0.9}
    assert (directory / ANATOMY_WEIGHTS).is_file()
    assert after.device_uid != before.device_uid  # a weight file was added
    assert after.manifest.threshold == before.manifest.threshold
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["anatomy"]["weights"] == ANATOMY_WEIGHTS
    checker = AnatomyClassifier.from_file(directory / ANATOMY_WEIGHTS, 0.6)
    assert checker.predict([np.zeros((64, 64), np.uint8)]).shape == (1, 3)


def test_a_cached_demo_without_its_image_check_or_keypoint_model_is_rebuilt(tmp_path: Path) -> None:
    directory = placeholder_bundle(tmp_path)
    assert verify_bundle(directory).demo
    assert cached_demo(directory) is None
    weights = tmp_path / "anatomy.pt"
    torch.save(build_anatomy_model().state_dict(), weights)
    add_anatomy_to_bundle(directory, weights, 0.5, {})
    # Still incomplete: the keypoint model (step 6) is the last thing the demo adds.
    assert cached_demo(directory) is None
    checkpoint = tmp_path / "keypoints.pt"
    checkpoint.write_bytes(b"a checkpoint")
    add_vertebrae_to_bundle(directory, checkpoint, "pisov", {})
    assert cached_demo(directory) is not None


# ----------------------------------------------------------------------------- trained


@pytest.mark.slow
def test_a_small_check_trained_here_keeps_untagged_chests_out(tmp_path: Path) -> None:
    config = AnatomyTrainConfig(
        per_class=30, val_per_class=10, epochs=20, rows=(160, 200), augment=False, seed=3
    )
    trained = train_anatomy(config, tmp_path / "anatomy", device="cpu")
    assert trained.metrics["accuracy"] >= 0.9
    assert trained.metrics["spine_refused"] == 0.0
    pipe = Pipeline(
        verify_bundle(placeholder_bundle(tmp_path)),
        device="cpu",
        detector=NoBoxes(),
        classifier=ClassifierEnsemble({"densenet121": Brightness()}),
        anatomy=AnatomyClassifier.from_file(trained.weights, trained.other_threshold),
    )
    study = "1.2.826.0.1.3680043.8.498.99"
    chests = [
        make_other_image(100 + i, kind=OtherKind.CHEST_PA, tags=False, study_uid=study)
        for i in range(3)
    ]
    spines = [
        strip_anatomy_tags(make_phantom_image(200 + i, view=v, size=(192, 160), study_uid=study)[0])
        for i, v in enumerate(("AP", "LAT"))
    ]
    result = pipe.analyze_study([*chests, *spines])
    for image in result.images[:3]:
        assert image.error is not None and image.error.reason == "not_spine", image.anatomy_scores
        assert image.anatomy_scores["other"] >= 0.5
    ap, lat = result.images[3:]
    assert ap.probability is not None and lat.probability is not None
    assert max(ap.anatomy_scores, key=ap.anatomy_scores.__getitem__) == AnatomyClass.SPINE_AP
    assert max(lat.anatomy_scores, key=lat.anatomy_scores.__getitem__) == (
        AnatomyClass.SPINE_LATERAL
    )
