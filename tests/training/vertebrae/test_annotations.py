"""The vertebral keypoint CSV: loading, validation errors that name file and line, and the
folder reader (phantoms written to disk and read back through serving's preprocessing)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from spinexr.pipeline.vertebrae.objects import ObjectKind
from spinexr.training.vertebrae.annotations import (
    CSV_COLUMNS,
    AnnotationError,
    load_annotations,
    records_from_folder,
)
from spinexr.training.vertebrae.phantoms import (
    PHANTOM_RATER,
    generate_keypoint_records,
    spacing_variant_of,
    write_keypoint_dataset,
)

GOOD = ["10", "40", "10", "70", "30", "42", "30", "68", "50", "40", "50", "70"]
"""Six keypoints of a plausible vertebra (x, y pairs; tops above bottoms)."""


def _write(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header if header is not None else CSV_COLUMNS)
        writer.writerows(rows)
    return path


def _row(
    image: str = "img1", rad: str = "R1", level: str = "L1", points: list[str] | None = None
) -> list[str]:
    return ["st1", "se1", image, rad, level, *(points or GOOD)]


def _shifted(dy: float) -> list[str]:
    return [v if i % 2 == 0 else str(float(v) + dy) for i, v in enumerate(GOOD)]


# --- loading --------------------------------------------------------------------------------


def test_rows_group_into_images_raters_and_objects(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "vertebrae_train.csv",
        [
            _row(rad="R2", level="L1"),
            _row(rad="R1", level="L1"),
            _row(rad="R1", level="l2", points=_shifted(40)),
            _row(rad="R1", level="", points=_shifted(80)),
            _row(rad="R1", level="", points=_shifted(120)),
            _row(rad="R1", level="S1", points=_shifted(160)),
            ["st1", "se1", "img2", "R3", "", *([""] * 12)],
        ],
    )
    images = load_annotations(path)
    assert list(images) == ["img1", "img2"]
    one = images["img1"]
    assert (one.study_id, one.series_id, one.rad_ids) == ("st1", "se1", ("R1", "R2"))
    assert one.training_rater == "R1"
    objects = one.objects()
    assert [o.level for o in objects] == ["L1", "L2", None, None, "S1"]
    assert [o.kind for o in objects][-1] is ObjectKind.SACRUM
    assert all(o.kind is ObjectKind.VERTEBRA for o in objects[:-1])
    np.testing.assert_allclose(objects[1].keypoints[0], (10.0, 80.0))
    assert len(one.objects("R2")) == 1
    assert [r.line for r in one.rows] == [2, 3, 4, 5, 6, 7]
    # A rater who found no vertebra: the image is kept, with no object.
    assert images["img2"].objects() == [] and images["img2"].rad_ids == ("R3",)


def test_extra_columns_and_blank_lines_are_accepted(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "a.csv",
        [[*_row(), "note"], [], _row(image="img2")],
        header=[*CSV_COLUMNS, "comment"],
    )
    assert list(load_annotations(path)) == ["img1", "img2"]


@pytest.mark.parametrize(
    ("rows", "line", "message"),
    [
        (
            [_row(), _row(level="L2", points=[*GOOD[:3], "abc", *GOOD[4:]])],
            3,
            "y_ab 'abc' is not a number",
        ),
        ([_row(points=[*GOOD[:5], "nan", *GOOD[6:]])], 2, "y_mt 'nan' is not a finite number"),
        ([_row(points=[*GOOD[:10], "inf", *GOOD[11:]])], 2, "not a finite number"),
        ([_row(points=[*GOOD[:11], ""])], 2, "y_pb is empty"),
        ([_row(), _row(level="X9")], 3, "unknown level 'X9'"),
        (
            [_row(), _row(level="l1", points=_shifted(40))],
            3,
            "level L1 of image img1 is given twice",
        ),
        ([_row(points=[*GOOD[:1], "90", *GOOD[2:]])], 2, "degenerate anterior height"),
        ([_row(points=[*GOOD[:9], "70", *GOOD[10:11], "40"])], 2, "degenerate posterior height"),
        ([_row(), _row()[:10]], 3, "10 values for 17 columns"),
        ([_row(), ["st2", *_row()[1:]]], 3, "listed under study_id st2 and under st1"),
        ([_row(image="")], 2, "empty image_id"),
        ([_row(image="../x")], 2, "cannot be a file name"),
        ([_row(rad="")], 2, "empty rad_id"),
    ],
)
def test_bad_rows_name_file_and_line(
    tmp_path: Path, rows: list[list[str]], line: int, message: str
) -> None:
    path = _write(tmp_path / "vertebrae_train.csv", rows)
    with pytest.raises(AnnotationError) as info:
        load_annotations(path)
    text = str(info.value)
    assert f"{path}, line {line}:" in text
    assert message in text


def test_same_level_by_two_raters_is_fine(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", [_row(rad="R1"), _row(rad="R2")])
    assert load_annotations(path)["img1"].rad_ids == ("R1", "R2")


def test_missing_column_names_file_and_header_line(tmp_path: Path) -> None:
    header = [c for c in CSV_COLUMNS if c != "y_mb"]
    path = _write(tmp_path / "vertebrae_train.csv", [_row()[:-1]], header=header)
    with pytest.raises(AnnotationError, match=r"line 1: missing column\(s\) y_mb") as info:
        load_annotations(path)
    assert str(path) in str(info.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(AnnotationError, match="line 1: empty file"):
        load_annotations(empty)


# --- folder ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keypoints")
    write_keypoint_dataset(root, 8, 3, size=(256, 192), test_fraction=0.25, progress=False)
    return root


def test_written_dataset_reads_back_as_the_in_memory_records(folder: Path) -> None:
    expected = {
        r.image: r for r in generate_keypoint_records(8, 3, size=(256, 192), test_fraction=0.25)
    }
    records = records_from_folder(folder)
    assert len(records) == 8
    # Every spacing variant is on disk (and read back below through serving's spacing).
    files = sorted(folder.glob("*_images/*.dicom"))
    assert {spacing_variant_of(pydicom.dcmread(f, stop_before_pixels=True)) for f in files} == {
        "pixel",
        "imager",
        "both",
        "none",
    }
    assert [r.split for r in records] == ["train"] * 6 + ["test"] * 2
    assert len(list((folder / "train_images").glob("*.dicom"))) == 6
    for rec in records:
        want = expected[rec.image]
        assert (rec.study, rec.series, rec.split) == (want.study, want.series, want.split)
        np.testing.assert_array_equal(rec.display, want.display)
        if want.spacing_mm is None:
            assert rec.spacing_mm is None
        else:
            np.testing.assert_allclose(rec.spacing_mm, want.spacing_mm, rtol=1e-5)
        assert [o.level for o in rec.objects] == [o.level for o in want.objects]
        assert [o.kind for o in rec.objects] == [o.kind for o in want.objects]
        for got, ref in zip(rec.objects, want.objects, strict=True):
            np.testing.assert_allclose(got.keypoints, ref.keypoints, atol=1e-3)
    header = (folder / "annotations" / "vertebrae_test.csv").read_text().splitlines()[0]
    assert header == ",".join(CSV_COLUMNS)
    assert {
        a.training_rater
        for a in load_annotations(folder / "annotations" / "vertebrae_train.csv").values()
    } == {PHANTOM_RATER}


def test_folder_errors_name_the_file(folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    train_csv = root / "annotations" / "vertebrae_train.csv"
    lines = train_csv.read_text().splitlines()
    # A keypoint far outside its image: named by CSV file and line.
    cells = lines[1].split(",")
    cells[5] = "5000"
    train_csv.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(
        AnnotationError, match=r"vertebrae_train\.csv, line 2: a keypoint lies outside"
    ):
        records_from_folder(root)
    # A missing DICOM file.
    train_csv.write_text("\n".join(lines) + "\n")
    image = next((root / "train_images").glob("*.dicom"))
    image.unlink()
    with pytest.raises(AnnotationError, match=f"has no file {image.name}"):
        records_from_folder(root)
    # No training CSV at all.
    train_csv.unlink()
    with pytest.raises(AnnotationError, match=r"vertebrae_train\.csv not found"):
        records_from_folder(root)


def test_an_image_in_both_splits_is_refused(folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    train = (root / "annotations" / "vertebrae_train.csv").read_text().splitlines()
    test_csv = root / "annotations" / "vertebrae_test.csv"
    test_csv.write_text(test_csv.read_text() + train[1] + "\n")
    with pytest.raises(AnnotationError, match="also listed in the train split"):
        records_from_folder(root)
