"""K-fold cross-validation of the CT keypoint detector: folds by patient, pooled held-out report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from spinexr.pipeline.vertebrae.krcnn import KRCNNConfig
from spinexr.pipeline.vertebrae.loader import load_keypoint_model
from spinexr.pipeline.vertebrae.objects import KeypointModel
from spinexr.training.ct.crossval import assign_folds, cross_validate
from spinexr.training.ct.keypoints import generate_ct_keypoint_records
from spinexr.training.vertebrae.krcnn_train import train_keypointrcnn
from spinexr.training.vertebrae.records import KeypointRecord


def test_folds_split_patients_evenly_and_reproducibly() -> None:
    studies = [f"p{i}" for i in range(11)] * 2  # two images per patient
    folds = assign_folds(studies, 5, seed=3)
    assert set(folds) == set(studies) and set(folds.values()) == set(range(5))
    sizes = sorted(list(folds.values()).count(f) for f in range(5))
    assert sizes == [2, 2, 2, 2, 3]
    assert assign_folds(studies, 5, seed=3) == folds
    assert assign_folds(studies, 5, seed=4) != folds
    with pytest.raises(ValueError, match="folds"):
        assign_folds(studies, 12, seed=3)


@pytest.mark.slow
def test_every_patient_is_predicted_once_by_a_model_that_never_saw_it(tmp_path: Path) -> None:
    records = generate_ct_keypoint_records(6, seed=21, progress=False)
    seen: list[set[str]] = []

    def train(training: Sequence[KeypointRecord], folder: Path) -> KeypointModel:
        seen.append({r.study for r in training})
        checkpoint = train_keypointrcnn(
            training, folder, seed=0, iterations=2, config=KRCNNConfig.cpu(), progress=False
        )
        return load_keypoint_model("keypointrcnn", checkpoint, "cpu")

    report = cross_validate(records, 3, train, tmp_path, n_bootstrap=50, progress=False)
    folds = assign_folds([r.study for r in records], 3, seed=0)
    assert [f["images"] for f in report["folds"]] == [2, 2, 2]
    for fold, trained_on in enumerate(seen):
        held_out = {s for s, f in folds.items() if f == fold}
        assert trained_on.isdisjoint(held_out) and trained_on | held_out == set(folds)
    assert report["data"]["images"] == len(records)
    assert (tmp_path / "keypoints-report.json").is_file()
    assert (tmp_path / "fold-3").is_dir()
