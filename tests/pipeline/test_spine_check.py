"""The spine check before the lesion models: tags, then the bundle's image check."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from pipelinesupport import Brightness, BundleFactory, NoBoxes, bundle_fields
from pydicom.dataset import Dataset
from torch import nn

from spinexr.pipeline.anatomy import (
    ANATOMY_ARCH,
    ANATOMY_CLASSES,
    AnatomyClass,
    AnatomyClassifier,
    build_anatomy_model,
    spine_gate,
)
from spinexr.pipeline.bodypart import TagAnatomy, TagVerdict, tag_verdict
from spinexr.pipeline.bundle import Bundle, verify_bundle, write_bundle
from spinexr.pipeline.classifier import ClassifierEnsemble
from spinexr.pipeline.engine import Pipeline
from spinexr.pipeline.errors import InvalidManifestError
from spinexr.pipeline.results import Outcome, SpineCheck, StudyResult
from spinexr.training.phantoms import make_phantom_image
from spinexr.training.phantoms.others import OtherKind, make_other_image, strip_anatomy_tags

STUDY = "1.2.826.0.1.3680043.8.498.4242"


class Constant(nn.Module):
    """An anatomy "model" that gives every image the same logits and counts what it saw."""

    def __init__(self, logits: Sequence[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(list(logits), dtype=torch.float32)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (1, 128, 128) and x.dtype == torch.uint8
        self.seen.append(int(x.shape[0]))
        return self.logits.expand(x.shape[0], -1)


SAYS_OTHER = (0.0, 0.0, 5.0)  # other ≈ 0.987
SAYS_SPINE_AP = (5.0, 0.0, 0.0)


def spine(seed: int, *, tags: bool = True, view: str = "AP") -> Dataset:
    ds, _ = make_phantom_image(
        seed, view=view, size=(160, 128), study_uid=STUDY, series_uid=f"{STUDY}.1"
    )
    return ds if tags else strip_anatomy_tags(ds)


def chest(seed: int, *, tags: bool = True) -> Dataset:
    return make_other_image(
        seed,
        kind=OtherKind.CHEST_PA,
        size=(160, 160),
        tags=tags,
        study_uid=STUDY,
        series_uid=f"{STUDY}.2",
    )


def pipeline(bundle: Bundle, anatomy: AnatomyClassifier | None = None, **kw: object) -> Pipeline:
    return Pipeline(
        bundle,
        device="cpu",
        detector=NoBoxes(),
        classifier=ClassifierEnsemble({"densenet121": Brightness()}),
        anatomy=anatomy,
        **kw,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------- the decision


def test_gate_tags_decide_before_the_image() -> None:
    scores = np.array([0.01, 0.01, 0.98])
    assert spine_gate(tag_verdict("LSPINE"), scores, 0.5).analyse
    chest_tag = spine_gate(tag_verdict("CHEST"), None, None)
    assert not chest_tag.analyse and chest_tag.reason == "Body Part Examined CHEST"
    unknown = TagVerdict(TagAnatomy.UNKNOWN)
    refused = spine_gate(unknown, scores, 0.5)
    assert not refused.analyse and refused.reason == "image check: other 0.98 >= 0.50"
    assert refused.scores == {"spine_ap": 0.01, "spine_lateral": 0.01, "other": 0.98}
    assert spine_gate(unknown, scores, 0.99).analyse
    assert spine_gate(unknown, None, None).analyse  # no model: analysed


def test_classifier_softmax_in_class_order() -> None:
    checker = AnatomyClassifier(Constant(SAYS_OTHER), 0.5)
    probs = checker.predict([np.zeros((300, 200), np.uint8), np.full((50, 80), 9, np.uint8)])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0)
    assert probs[0].argmax() == list(AnatomyClass).index(AnatomyClass.OTHER)
    with pytest.raises(ValueError, match="other_threshold"):
        AnatomyClassifier(Constant(SAYS_OTHER), 0.0)


# ----------------------------------------------------------------------------- the pipeline


def test_untagged_chest_is_not_analysed_tagged_spine_skips_the_check(
    make_bundle: BundleFactory,
) -> None:
    model = Constant(SAYS_OTHER)
    pipe = pipeline(make_bundle(), AnatomyClassifier(model, 0.5))
    result = pipe.analyze_study([spine(1), chest(2, tags=False)])
    analysed, refused = result.images
    assert analysed.probability is not None and analysed.anatomy_scores == {}
    assert refused.error is not None and refused.error.reason == "not_spine"
    assert refused.error.message == "not a spine image (image check: other 0.99 >= 0.50)"
    assert refused.anatomy_scores["other"] == pytest.approx(0.987, abs=1e-3)
    assert refused.rows == 160 and refused.boxes == []
    assert model.seen == [1], "the tagged spine image never reaches the image check"
    assert pipe.detector.calls == [1]  # type: ignore[attr-defined]
    assert result.outcome is not Outcome.FAILED
    assert result.provenance.spine_check is SpineCheck.TAGS_AND_IMAGE
    assert StudyResult.from_json(result.to_json()) == result


def test_untagged_image_the_check_calls_spine_is_analysed_with_its_scores(
    make_bundle: BundleFactory,
) -> None:
    pipe = pipeline(make_bundle(), AnatomyClassifier(Constant(SAYS_SPINE_AP), 0.5))
    (image,) = pipe.analyze_study([spine(3, tags=False)]).images
    assert image.probability is not None
    assert image.anatomy_scores["spine_ap"] == pytest.approx(0.987, abs=1e-3)


def test_tagged_chest_is_not_analysed_even_without_an_image_check(
    make_bundle: BundleFactory,
) -> None:
    pipe = pipeline(make_bundle())
    assert pipe.anatomy is None and pipe.spine_check is SpineCheck.TAGS_ONLY
    result = pipe.analyze_study([chest(4), chest(5, tags=False), spine(6)])
    refused, unchecked, analysed = result.images
    assert refused.error is not None and refused.error.reason == "not_spine"
    assert refused.error.message == "not a spine image (Body Part Examined CHEST)"
    assert unchecked.probability is not None  # no model: the header said nothing
    assert analysed.probability is not None
    assert result.provenance.spine_check is SpineCheck.TAGS_ONLY


def test_check_off_analyses_everything(make_bundle: BundleFactory) -> None:
    model = Constant(SAYS_OTHER)
    pipe = pipeline(make_bundle(), AnatomyClassifier(model, 0.5), spine_check=False)
    result = pipe.analyze_study([chest(7), chest(8, tags=False)])
    assert all(im.probability is not None for im in result.images)
    assert model.seen == [] and result.provenance.spine_check is SpineCheck.OFF


def test_a_study_of_chests_only_is_not_analysed(make_bundle: BundleFactory) -> None:
    pipe = pipeline(make_bundle(), AnatomyClassifier(Constant(SAYS_OTHER), 0.5))
    result = pipe.analyze_study([chest(9), chest(10, tags=False)])
    assert result.outcome is Outcome.FAILED
    assert result.failure_reason == "no image could be analysed: not_spine"
    assert pipe.detector.calls == []  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- the bundle


def anatomy_bundle(tmp_path: Path, densenet121_weights: Path, **entry: object) -> Bundle:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "config.py").write_text("# detector config placeholder\n")
    (src / "model.pth").write_bytes(b"placeholder checkpoint")
    torch.manual_seed(0)
    torch.save(build_anatomy_model().state_dict(), src / "anatomy.pt")
    files = {
        "classifier/densenet121.pt": densenet121_weights,
        "detector/config.py": src / "config.py",
        "detector/model.pth": src / "model.pth",
        "anatomy/anatomy.pt": src / "anatomy.pt",
    }
    fields = bundle_fields(
        anatomy={
            "model": ANATOMY_ARCH,
            "weights": "anatomy/anatomy.pt",
            "classes": list(ANATOMY_CLASSES),
            "input_size": [128, 128],
            "other_threshold": 0.7,
            **entry,
        }
    )
    return write_bundle(tmp_path / "bundle", fields, files)


def test_bundle_with_an_image_check_loads_it(tmp_path: Path, densenet121_weights: Path) -> None:
    bundle = anatomy_bundle(tmp_path, densenet121_weights)
    assert bundle.anatomy is not None and bundle.anatomy.other_threshold == 0.7
    assert bundle.anatomy_weights == bundle.directory / "anatomy/anatomy.pt"
    pipe = pipeline(bundle)
    assert pipe.anatomy is not None and pipe.anatomy.other_threshold == 0.7
    assert pipe.spine_check is SpineCheck.TAGS_AND_IMAGE
    (image,) = pipe.analyze_study([spine(11, tags=False)]).images
    assert set(image.anatomy_scores) == set(ANATOMY_CLASSES)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"classes": ["other", "spine_ap", "spine_lateral"]}, "anatomy classes"),
        ({"input_size": [224, 224]}, "input size"),
        ({"model": "resnet"}, "is not"),
        ({"other_threshold": 0.0}, "other_threshold"),
    ],
)
def test_bundle_refuses_an_image_check_the_code_cannot_run(
    tmp_path: Path, densenet121_weights: Path, entry: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidManifestError, match=message):
        anatomy_bundle(tmp_path, densenet121_weights, **entry)


def test_bundle_refuses_unlisted_image_check_weights(
    tmp_path: Path, densenet121_weights: Path
) -> None:
    bundle = anatomy_bundle(tmp_path, densenet121_weights)
    manifest = json.loads((bundle.directory / "manifest.json").read_text())
    del manifest["files"]["anatomy/anatomy.pt"]
    (bundle.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidManifestError, match="not listed"):
        verify_bundle(bundle.directory)
