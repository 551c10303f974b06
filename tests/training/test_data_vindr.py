"""VinDr-SpineXR loader: classes, normal rows, degenerate boxes, files, validation split."""

from __future__ import annotations

import csv
import logging
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from spinexr.pipeline.classes import NO_FINDING, RARE_TYPES, LesionClass
from spinexr.training.data import (
    CSV_COLUMNS,
    DatasetError,
    ImageRecord,
    load_dataset,
    validation_studies,
)
from spinexr.training.phantoms import PhantomSummary, generate_dataset

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PhantomSummary]:
    out = tmp_path_factory.mktemp("phantoms")
    return out, generate_dataset(out, 8, 11, size=(128, 96))


@pytest.fixture(scope="module")
def one_dicom(phantoms: tuple[Path, PhantomSummary]) -> Path:
    return sorted((phantoms[0] / "train_images").glob("*.dicom"))[0]


def _write_csv(path: Path, rows: list[list[str]], header: tuple[str, ...] = CSV_COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _hand_made(
    root: Path, rows: list[list[str]], source: Path | None, *, split: str = "train"
) -> Path:
    """A dataset whose images are copies of one phantom file (or empty files) named per row."""
    _write_csv(root / "annotations" / f"{split}.csv", rows)
    folder = root / f"{split}_images"
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in {r[2] for r in rows}:
        target = folder / f"{image_id}.dicom"
        if source is None:
            target.touch()
        else:
            shutil.copyfile(source, target)
    return root


def _box_row(
    study: str, image: str, lesion: str, box: tuple[str, ...], rad: str = "R1"
) -> list[str]:
    return [study, f"{study}.s", image, rad, lesion, *box]


def _ids(records: list[ImageRecord]) -> set[str]:
    return {r.image_id for r in records}


# --- phantom datasets -----------------------------------------------------------------------


def test_phantom_dataset_loads_with_labels_boxes_and_paths(
    phantoms: tuple[Path, PhantomSummary],
) -> None:
    root, summary = phantoms
    ds = load_dataset(root, val_fraction=0.25, seed=0)
    assert ds.root == root
    assert ds.notices == []
    assert ds.dropped_boxes == 0
    train, val, test = ds.split("train"), ds.split("val"), ds.split("test")
    assert len(train) + len(val) == summary.images["train"]
    assert len(test) == summary.images["test"]
    assert sum(not r.abnormal for r in test) == summary.normal_images["test"]
    for name, records in (("train", train), ("val", val), ("test", test)):
        for r in records:
            assert r.split == name
            assert r.path.is_file() and r.path.stem == r.image_id
            assert r.abnormal == bool(r.boxes)  # phantoms: every abnormal image has a box
            for b in r.boxes:
                assert 0 <= b.label <= 6 and b.xmin < b.xmax and b.ymin < b.ymax
    per_class = Counter(LesionClass(b.label) for r in train + val for b in r.boxes)
    assert per_class == +Counter(summary.boxes["train"])
    merged = ds.box_counts("train")
    for c in LesionClass:
        merged[c] += ds.box_counts("val")[c]
    assert merged == summary.boxes["train"]
    assert "train:" in ds.summary()
    with pytest.raises(KeyError):
        ds.split("validation")


def test_vindr_like_dataset_loads_without_headers(tmp_path: Path) -> None:
    summary = generate_dataset(tmp_path, 3, 7, size=(128, 96), vindr_like=True)
    ds = load_dataset(tmp_path, val_fraction=0.0)
    records = ds.split("train") + ds.split("test")
    assert len(records) == summary.total_images
    assert ds.split("val") == []
    for r in records:
        assert HEX32.match(r.image_id) and HEX32.match(r.study_id) and HEX32.match(r.series_id)


def test_missing_test_csv_gives_empty_test_split(
    tmp_path: Path, phantoms: tuple[Path, PhantomSummary]
) -> None:
    root = tmp_path / "ds"
    shutil.copytree(phantoms[0], root)
    (root / "annotations" / "test.csv").unlink()
    ds = load_dataset(root)
    assert ds.split("test") == []
    assert any("test.csv not found" in n for n in ds.notices)


# --- classes and rows -----------------------------------------------------------------------


def test_every_class_string_typo_and_rare_type(
    tmp_path: Path, one_dicom: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = ("10", "12", "40", "44")
    rows = [
        _box_row("st1", f"im{c.value}", c.dataset_string, box) for c in LesionClass
    ]  # includes "Spondylolysthesis" (the dataset's spelling)
    rare = sorted(RARE_TYPES)
    rows += [
        _box_row("st2", f"rare{i}", name.title() if i % 2 else name, box)
        for i, name in enumerate(rare)
    ]
    rows.append(_box_row("st2", "rare0", rare[0], box))  # the same rare type twice
    rows.append(["st3", "st3.s", "normal", "R2", NO_FINDING, "", "", "", ""])
    root = _hand_made(tmp_path, rows, one_dicom)
    with caplog.at_level(logging.INFO, logger="spinexr.training.data"):
        ds = load_dataset(root, val_fraction=0.0)
    by_id = {r.image_id: r for r in ds.split("train")}
    assert LesionClass.SPONDYLOLISTHESIS.dataset_string == "Spondylolysthesis"
    for c in LesionClass:
        record = by_id[f"im{c.value}"]
        assert [b.label for b in record.boxes] == [int(c)]
        assert record.boxes[0].as_tuple() == (10.0, 12.0, 40.0, 44.0)
        assert record.boxes[0].rad_id == "R1"
        assert record.abnormal and record.label == 1
    for i in range(len(rare)):
        assert {b.label for b in by_id[f"rare{i}"].boxes} == {int(LesionClass.OTHER_LESIONS)}
    assert len(by_id["rare0"].boxes) == 2
    assert by_id["normal"].abnormal is False and by_id["normal"].boxes == ()
    folded = [n for n in ds.notices if "rare lesion types" in n]
    assert len(folded) == 1
    assert f"{len(rare) + 1} box(es)" in folded[0]
    assert f"{rare[0]!r}: 2" in folded[0]
    assert len([r for r in caplog.records if "rare lesion types" in r.getMessage()]) == 1


def test_unknown_lesion_type_names_file_and_line(tmp_path: Path) -> None:
    rows = [
        _box_row("st1", "a", "Osteophytes", ("1", "1", "5", "5")),
        _box_row("st1", "b", "Scoliosis", ("1", "1", "5", "5")),
    ]
    root = _hand_made(tmp_path, rows, None)
    with pytest.raises(DatasetError, match=r"train\.csv, line 3: unknown lesion type 'Scoliosis'"):
        load_dataset(root)


def test_wrong_header_and_bad_rows_are_clear_errors(tmp_path: Path) -> None:
    row = _box_row("st1", "a", "Osteophytes", ("1", "1", "5", "5"))
    _write_csv(tmp_path / "h" / "annotations" / "train.csv", [row], header=CSV_COLUMNS[::-1])
    with pytest.raises(DatasetError, match="header is ymax,xmax"):
        load_dataset(tmp_path / "h")
    with pytest.raises(DatasetError, match=r"annotations/train\.csv not found"):
        load_dataset(tmp_path / "nothing")
    bad = _box_row("st1", "a", "Osteophytes", ("1", "one", "5", "5"))
    with pytest.raises(DatasetError, match="line 2: ymin 'one' is not a number"):
        load_dataset(_hand_made(tmp_path / "c", [bad], None))
    empty = ["st1", "st1.s", "", "R1", NO_FINDING, "", "", "", ""]
    with pytest.raises(DatasetError, match="line 2: empty image_id"):
        load_dataset(_hand_made(tmp_path / "e", [empty], None))
    twice = [
        _box_row("st1", "a", "Osteophytes", ("1", "1", "5", "5")),
        _box_row("st2", "a", "Osteophytes", ("1", "1", "5", "5")),
    ]
    with pytest.raises(DatasetError, match="line 3: image a is listed under study st2"):
        load_dataset(_hand_made(tmp_path / "t", twice, None))
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset(tmp_path / "t", val_fraction=1.0)


def test_degenerate_boxes_dropped_and_counted_image_stays_abnormal(tmp_path: Path) -> None:
    rows = [
        _box_row("st1", "flat", "Osteophytes", ("10", "10", "10", "20")),  # xmax == xmin
        _box_row("st1", "flat", "Osteophytes", ("10", "30", "20", "25")),  # ymax < ymin
        _box_row("st1", "nan", "Surgical implant", ("nan", "1", "5", "5")),
        _box_row("st1", "nan", "Surgical implant", ("1", "1", "inf", "5")),
        _box_row("st2", "gone", "Other lesions", ("", "", "", "")),
        _box_row("st2", "gone", "Other lesions", ("-30", "-20", "-10", "-5")),  # left of image
        _box_row("st2", "edge", "Vertebral collapse", ("-4", "-2", "10", "12")),
        _box_row("st2", "edge", "Vertebral collapse", ("1", "2", "99999", "12")),  # kept as is
    ]
    ds = load_dataset(_hand_made(tmp_path, rows, None), val_fraction=0.0)
    by_id = {r.image_id: r for r in ds.split("train")}
    assert ds.dropped_boxes == 6
    for image_id in ("flat", "nan", "gone"):
        assert by_id[image_id].abnormal and by_id[image_id].boxes == ()
    edge = by_id["edge"].boxes
    assert [b.as_tuple() for b in edge] == [(0.0, 0.0, 10.0, 12.0), (1.0, 2.0, 99999.0, 12.0)]
    dropped = [n for n in ds.notices if "degenerate" in n]
    assert len(dropped) == 1 and dropped[0].startswith("6 degenerate box(es) dropped")
    assert any("clipped" in n for n in ds.notices)


def test_duplicate_rows_and_several_radiologists_are_kept(tmp_path: Path) -> None:
    box = ("1", "2", "30", "40")
    rows = [
        _box_row("st1", "a", "Osteophytes", box, rad="R1"),
        _box_row("st1", "a", "Osteophytes", box, rad="R1"),
        _box_row("st1", "a", "Osteophytes", box, rad="R2"),
        ["st1", "st1.s", "a", "R3", NO_FINDING, "", "", "", ""],
        ["st1", "st1.s", "b", "R1", NO_FINDING, "", "", "", ""],
        ["st1", "st1.s", "b", "R2", NO_FINDING, "", "", "", ""],
    ]
    ds = load_dataset(_hand_made(tmp_path, rows, None), val_fraction=0.0)
    by_id = {r.image_id: r for r in ds.split("train")}
    assert [b.rad_id for b in by_id["a"].boxes] == ["R1", "R1", "R2"]
    assert by_id["a"].abnormal  # one radiologist's "No finding" does not make it normal
    assert not by_id["b"].abnormal and by_id["b"].boxes == ()


def test_missing_files_are_an_error_extra_files_a_notice(tmp_path: Path) -> None:
    rows = [["st1", "st1.s", f"img{i:02d}", "R1", NO_FINDING, "", "", "", ""] for i in range(12)]
    root = _hand_made(tmp_path, rows, None)
    (root / "train_images" / "unlisted.dicom").touch()
    (root / "train_images" / "notes.txt").touch()
    ds = load_dataset(root, val_fraction=0.0)
    assert any(
        n == "1 file(s) in train_images/ are not in train.csv and are ignored" for n in ds.notices
    )
    for i in (3, 5, 7, 8, 9, 10, 11):
        (root / "train_images" / f"img{i:02d}.dicom").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    message = str(info.value)
    assert "7 of 12 images in train.csv have no file" in message
    assert "first: img03, img05, img07, img08, img09" in message
    assert "img10" not in message


def test_image_in_both_csvs_is_an_error(tmp_path: Path) -> None:
    row = ["st1", "st1.s", "same", "R1", NO_FINDING, "", "", "", ""]
    _hand_made(tmp_path, [row], None, split="train")
    _hand_made(tmp_path, [row], None, split="test")
    with pytest.raises(DatasetError, match=r"listed in both train\.csv and test\.csv"):
        load_dataset(tmp_path)


# --- validation split -----------------------------------------------------------------------


@pytest.fixture
def forty_studies(tmp_path: Path) -> tuple[Path, list[list[str]]]:
    rows = []
    for s in range(40):
        for view in ("ap", "lat"):
            image = f"s{s:02d}{view}"
            if s % 3 == 0 and view == "ap":
                rows.append(_box_row(f"s{s:02d}", image, "Osteophytes", ("1", "1", "9", "9")))
                rows.append(
                    _box_row(f"s{s:02d}", image, "Disc space narrowing", ("2", "2", "8", "8"))
                )
            else:
                rows.append([f"s{s:02d}", f"s{s:02d}.s", image, "R1", NO_FINDING, "", "", "", ""])
    return _hand_made(tmp_path / "forty", rows, None), rows


def _val_studies(root: Path, **kwargs: float) -> set[str]:
    ds = load_dataset(root, **kwargs)  # type: ignore[arg-type]
    train = {r.study_id for r in ds.split("train")}
    val = {r.study_id for r in ds.split("val")}
    assert not train & val
    return val


def test_split_groups_by_study_and_is_deterministic(
    forty_studies: tuple[Path, list[list[str]]],
) -> None:
    root, rows = forty_studies
    val = _val_studies(root, seed=0)
    assert len(val) == 8  # 20% of 40
    abnormal = {f"s{s:02d}" for s in range(40) if s % 3 == 0}
    assert len(val & abnormal) == 3  # 14 of 40 abnormal: 8 × 14/40 = 2.8 → 3
    assert _val_studies(root, seed=0) == val
    assert _val_studies(root, seed=1) != val
    assert len(_val_studies(root, val_fraction=0.5, seed=0)) == 20

    shuffled = list(rows)
    random.Random(5).shuffle(shuffled)
    _write_csv(root / "annotations" / "train.csv", shuffled)
    assert _val_studies(root, seed=0) == val
    ds = load_dataset(root, seed=0)
    assert [r.image_id for r in ds.split("val")] == sorted(
        (r.image_id for r in ds.split("val")), key=lambda i: (i[:3], i)
    )


def test_validation_studies_edge_cases() -> None:
    assert validation_studies({}, 0.2, 0) == set()
    assert validation_studies({"a": True}, 0.2, 0) == set()
    assert len(validation_studies({"a": True, "b": False}, 0.01, 0)) == 1
    assert validation_studies({"a": True, "b": False, "c": True}, 0.0, 0) == set()
    many = {f"s{i}": i < 3 for i in range(10)}
    assert len(validation_studies(many, 0.9, 0)) == 9
    with pytest.raises(ValueError, match="val_fraction"):
        validation_studies(many, -0.1, 0)
