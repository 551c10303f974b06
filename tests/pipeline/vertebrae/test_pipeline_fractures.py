"""The fracture stage inside `Pipeline.analyze_study`: which images, which outcome."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pipelinesupport import Brightness, BundleFactory, NoBoxes

from spinexr.pipeline.anatomy import AnatomyClassifier
from spinexr.pipeline.classifier import ClassifierEnsemble
from spinexr.pipeline.engine import Pipeline
from spinexr.pipeline.results import Outcome, StudyResult
from spinexr.pipeline.vertebrae.findings import VertebralStatus, ViewSource
from spinexr.pipeline.vertebrae.genant import GenantGrade
from spinexr.pipeline.vertebrae.objects import DetectedObject, ObjectKind
from spinexr.training.phantoms import make_phantom_image
from spinexr.training.phantoms.others import strip_anatomy_tags

STUDY = "1.2.826.0.1.3680043.8.498.5151"


def wedge(top: float, anterior: float) -> DetectedObject:
    kp = np.array(
        [
            (100, top + 30 - anterior),
            (100, top + 30),
            (120, top),
            (120, top + 30),
            (140, top),
            (140, top + 30),
        ],
        dtype=np.float64,
    )
    return DetectedObject(ObjectKind.VERTEBRA, 0.9, kp)


class Column:
    """A keypoint model that reports three vertebrae, the middle one wedged (G 0.5)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    @property
    def name(self) -> str:
        return "column 1"

    def predict(
        self, image: np.ndarray, spacing_mm: tuple[float, float] | None
    ) -> list[DetectedObject]:
        self.seen.append(image.shape)
        return [wedge(40, 30), wedge(80, 15), wedge(120, 30)]


class Says(torch.nn.Module):
    """An anatomy model that calls every image the same."""

    def __init__(self, logits: Sequence[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(list(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def study(*, tags: bool = True) -> list:
    images = []
    for n, view in enumerate(("AP", "LAT"), start=1):
        ds, _ = make_phantom_image(
            10 + n,
            view=view,
            size=(320, 256),
            study_uid=STUDY,
            series_uid=f"{STUDY}.1",
            instance_number=n,
        )
        if not tags:
            strip_anatomy_tags(ds)
            for keyword in ("ViewPosition", "ViewCodeSequence"):
                if keyword in ds:
                    delattr(ds, keyword)
        images.append(ds)
    return images


def analyse(bundle: BundleFactory, datasets: list, **kw: object) -> tuple[StudyResult, Column]:
    model = Column()
    pipe = Pipeline(
        bundle(),
        device="cpu",
        detector=NoBoxes(),
        classifier=ClassifierEnsemble({"densenet121": Brightness()}),
        keypoints=model,
        **kw,  # type: ignore[arg-type]
    )
    return pipe.analyze_study(datasets), model


def test_only_the_lateral_view_is_graded(make_bundle: BundleFactory) -> None:
    result, model = analyse(make_bundle, study())
    ap, lat = (im.vertebrae for im in result.images)
    assert ap is not None and ap.status is VertebralStatus.NOT_LATERAL
    assert lat is not None and lat.status is VertebralStatus.ANALYSED
    assert lat.view_source is ViewSource.VIEW_POSITION
    assert model.seen == [(320, 256)]
    assert [v.grade for v in lat.vertebrae] == [
        GenantGrade.NORMAL,
        GenantGrade.SEVERE,
        GenantGrade.NORMAL,
    ]
    assert lat.spacing_mm is not None
    # A fracture makes the study abnormal even without a lesion finding.
    assert result.outcome is Outcome.ABNORMAL
    assert [im.sop_instance_uid for im, _ in result.vertebral_analyses] == [
        result.images[1].sop_instance_uid
    ]
    assert "vertebrae" in result.timings
    again = StudyResult.from_json(result.to_json())
    assert again.images[1].vertebrae == lat


def test_untagged_views_are_decided_by_the_image_model(make_bundle: BundleFactory) -> None:
    lateral = AnatomyClassifier(Says((0.0, 4.0, -4.0)), 0.5)
    result, model = analyse(make_bundle, study(tags=False), anatomy=lateral)
    for im in result.images:
        assert im.vertebrae is not None
        assert im.vertebrae.view_source is ViewSource.IMAGE_MODEL
        assert im.vertebrae.status is VertebralStatus.ANALYSED
        assert im.anatomy_scores["spine_lateral"] > 0.9
    assert len(model.seen) == 2


def test_switched_off_or_without_model_nothing_is_claimed(make_bundle: BundleFactory) -> None:
    off, model = analyse(make_bundle, study(), vertebrae=False)
    assert all(im.vertebrae is None for im in off.images) and model.seen == []
    pipe = Pipeline(
        make_bundle(),
        device="cpu",
        detector=NoBoxes(),
        classifier=ClassifierEnsemble({"densenet121": Brightness()}),
    )
    assert pipe.vertebral is None
    assert all(im.vertebrae is None for im in pipe.analyze_study(study()).images)
