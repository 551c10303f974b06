"""Pisov et al.'s published annotation format, read, mapped to the patient and trained on.

The files are made here in that format from a CT phantom written as DICOM: each true keypoint
becomes ``[row, column, instance-order index]`` of the series as the authors stack it
(sorted by Instance Number, here the reverse of the geometric order so that the mapping
cannot rely on slice order).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spinexr.training.ct.pisov_annotations import (
    AnnotationError,
    annotated_record,
    annotation_to_lps,
    consensus,
    instance_order,
    read_annotation,
)
from spinexr.training.phantoms.ct import make_ct_phantom
from spinexr.training.phantoms.ct_dicom import series_datasets, study_header, write_series


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    phantom = make_ct_phantom(31, size="small", levels=("T6", "T11"))
    datasets = series_datasets(phantom, study_header(phantom))
    n = len(datasets)
    for k, ds in enumerate(datasets):
        ds.InstanceNumber = n - k  # Instance Number runs inferior → superior
    folder = tmp_path_factory.mktemp("mosmed") / "RLAD-TEST_RLS-TEST"
    files = write_series(datasets, folder)
    inverse = np.linalg.inv(phantom.grid.affine())
    vertebrae = []
    for v in (v for v in phantom.vertebrae if v.complete):
        idx = np.c_[v.keypoints, np.ones(6)] @ inverse.T  # (slice, row, column)
        order_index = (n - 1) - idx[:, 0]  # geometric slice k has Instance Number n - k
        vertebrae.append(np.stack([idx[:, 1], idx[:, 2], order_index], axis=1).tolist())
    annotation = {
        "Folder": folder.name,
        "SeriesInstanceUID": str(datasets[0].SeriesInstanceUID),
        "Annotation": {
            "expert1": vertebrae,
            "expert2": (np.asarray(vertebrae) + np.array([0.4, 0.0, 0.2])).tolist(),
        },
    }
    path = folder.parent / f"{folder.name}.json"
    path.write_text(json.dumps(annotation))
    return phantom, files, path


def test_points_map_to_the_true_keypoints_through_the_series_geometry(written) -> None:
    from spinexr.pipeline.ct.volume import load_volume

    phantom, files, path = written
    annotation = read_annotation(path)
    assert set(annotation.experts) == {"expert1", "expert2"}
    slices = instance_order(files, annotation.series_instance_uid)
    volume = load_volume([p for _, p in slices], max_bytes=1 << 30)
    lps = annotation_to_lps(annotation.experts["expert1"], [u for u, _ in slices], volume)
    truth = np.array([v.keypoints for v in phantom.vertebrae if v.complete])
    np.testing.assert_allclose(lps, truth, atol=1e-3)
    both = consensus(
        {
            k: annotation_to_lps(v, [u for u, _ in slices], volume)
            for k, v in annotation.experts.items()
        }
    )
    assert both.shape == truth.shape
    assert np.abs(both - truth).max() < 1.0  # half of expert 2's offset


def test_the_record_has_every_annotated_vertebra_on_the_reformat(written) -> None:
    phantom, files, path = written
    record = annotated_record(read_annotation(path), files, split="test")
    complete = [v for v in phantom.vertebrae if v.complete]
    assert len(record.objects) == len(complete)
    assert all(o.level is None for o in record.objects)  # the published set names no level
    assert record.split == "test" and record.display.dtype == np.uint8
    # Anterior keypoints left of posterior ones, bodies stacked top to bottom.
    ys = [float(o.keypoints[:, 1].mean()) for o in record.objects]
    assert ys == sorted(ys)
    assert all(
        o.keypoints[[0, 1], 0].mean() < o.keypoints[[4, 5], 0].mean() for o in record.objects
    )


def test_malformed_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Folder": "x", "SeriesInstanceUID": "1.2", "Annotation": {}}))
    with pytest.raises(AnnotationError, match="no expert"):
        read_annotation(bad)
    bad.write_text(
        json.dumps({"Folder": "x", "SeriesInstanceUID": "1.2", "Annotation": {"e": [[[1, 2]]]}})
    )
    with pytest.raises(AnnotationError, match="six"):
        read_annotation(bad)
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="not a Pisov"):
        read_annotation(bad)


def test_the_training_command_reads_a_folder_of_annotations(written) -> None:
    from spinexr.training.ct.keypoints import annotated_records

    _, _, path = written
    (record,) = annotated_records(path.parent, path.parent, test_fraction=0.0, seed=0)
    assert record.split == "train" and record.study == path.stem
