"""Synthetic VinDr-SpineXR phantoms: layout, CSVs, DICOM headers, pixels, determinism."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_voi_lut
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
)
from testsupport import require_tool

from spinexr.pipeline.classes import NO_FINDING, LesionClass
from spinexr.training.phantoms import (
    CSV_HEADER,
    SMALL_SIZE,
    PhantomSummary,
    genant_index,
    generate_dataset,
    make_phantom_image,
    render_phantom,
    write,
)

HEX32 = re.compile(r"^[0-9a-f]{32}$")


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small")
    generate_dataset(out, 6, 3, size="small")
    return out


@pytest.fixture(scope="module")
def ten(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PhantomSummary]:
    out = tmp_path_factory.mktemp("ten")
    summary = generate_dataset(out, 10, 5, size="small")
    return out, summary


@pytest.fixture(scope="module")
def vindr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vindr")
    generate_dataset(out, 3, 7, size="small", vindr_like=True)
    return out


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with (root / "annotations" / f"{split}.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _all_rows(root: Path) -> Iterator[tuple[str, dict[str, str]]]:
    for split in ("train", "test"):
        for row in _rows(root, split):
            yield split, row


def _files(root: Path) -> list[Path]:
    return sorted(root.glob("*_images/*.dicom"))


def _read(path: Path | io.BytesIO, **kwargs: object) -> pydicom.Dataset:
    return pydicom.dcmread(path, **kwargs)  # type: ignore[arg-type]


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS element."""
    if isinstance(value, pydicom.multival.MultiValue):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for path in _files(root):
        ds = _read(path)
        out[path.name] = hashlib.sha256(ds.pixel_array.tobytes()).hexdigest()
    return out


# --- layout and CSV -------------------------------------------------------------------------


def test_layout_and_csv_header(small: Path) -> None:
    for split in ("train", "test"):
        path = small / "annotations" / f"{split}.csv"
        with path.open(newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh))
        assert tuple(header) == CSV_HEADER
        assert path.read_text(encoding="utf-8").splitlines()[0] == (
            "study_id,series_id,image_id,rad_id,lesion_type,xmin,ymin,xmax,ymax"
        )
        assert (small / f"{split}_images").is_dir()
    for _, row in _all_rows(small):
        assert re.fullmatch(r"rad[1-3]", row["rad_id"])
        coords = [row[k] for k in ("xmin", "ymin", "xmax", "ymax")]
        if row["lesion_type"] == NO_FINDING:
            assert coords == ["", "", "", ""]
        else:
            LesionClass.from_dataset_string(row["lesion_type"])
            [float(c) for c in coords]


def test_ids_match_files_and_headers(small: Path) -> None:
    for split in ("train", "test"):
        files = {p.stem: p for p in (small / f"{split}_images").glob("*.dicom")}
        rows = _rows(small, split)
        assert {r["image_id"] for r in rows} == set(files)
        for row in rows:
            ds = _read(files[row["image_id"]], stop_before_pixels=True)
            assert ds.SOPInstanceUID == row["image_id"]
            assert ds.file_meta.MediaStorageSOPInstanceUID == row["image_id"]
            assert ds.StudyInstanceUID == row["study_id"]
            assert ds.SeriesInstanceUID == row["series_id"]
            assert pydicom.uid.UID(row["image_id"]).is_valid


def test_split_is_by_study(small: Path) -> None:
    train = {r["study_id"] for r in _rows(small, "train")}
    test = {r["study_id"] for r in _rows(small, "test")}
    assert train and test
    assert not train & test
    # Each study has an AP and a lateral image.
    per_study: dict[str, set[str]] = {}
    for _, row in _all_rows(small):
        per_study.setdefault(row["study_id"], set()).add(row["image_id"])
    assert all(len(images) == 2 for images in per_study.values())


def test_boxes_inside_and_nondegenerate(ten: tuple[Path, PhantomSummary]) -> None:
    root, _ = ten
    shapes = {p.stem: _read(p, stop_before_pixels=True) for p in _files(root)}
    n_boxes = 0
    for _, row in _all_rows(root):
        if row["lesion_type"] == NO_FINDING:
            continue
        ds = shapes[row["image_id"]]
        xmin, ymin, xmax, ymax = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        assert 0 <= xmin < xmax <= ds.Columns
        assert 0 <= ymin < ymax <= ds.Rows
        n_boxes += 1
    assert n_boxes > 0


def test_about_half_normal_and_every_class(ten: tuple[Path, PhantomSummary]) -> None:
    root, summary = ten
    by_image: dict[str, set[str]] = {}
    for _, row in _all_rows(root):
        by_image.setdefault(row["image_id"], set()).add(row["lesion_type"])
    normal = sum(1 for types in by_image.values() if types == {NO_FINDING})
    assert all(NO_FINDING not in t or t == {NO_FINDING} for t in by_image.values())
    assert len(by_image) == 20
    assert 0.3 <= normal / len(by_image) <= 0.7
    seen = {
        LesionClass.from_dataset_string(r["lesion_type"])
        for _, r in _all_rows(root)
        if r["lesion_type"] != NO_FINDING
    }
    assert seen == set(LesionClass)
    counts = summary.boxes_per_class
    assert max(counts, key=counts.get) is LesionClass.OSTEOPHYTES
    assert summary.total_images == 20
    assert summary.files_written == 22
    assert sum(summary.normal_images.values()) == normal


# --- DICOM content --------------------------------------------------------------------------


def test_variants_occur_and_decode(small: Path) -> None:
    photometric, syntaxes, sop_classes = set(), set(), set()
    voi_sequences = 0
    for path in _files(small):
        ds = _read(path)
        photometric.add(ds.PhotometricInterpretation)
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        sop_classes.add(ds.SOPClassUID)
        voi_sequences += "VOILUTSequence" in ds
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
        assert (ds.PixelRepresentation, ds.SamplesPerPixel) == (0, 1)
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns) == SMALL_SIZE
        assert arr.dtype == np.uint16
        assert int(arr.max()) <= 4095
        assert int(arr.max()) - int(arr.min()) > 1000
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert syntaxes == {JPEG2000Lossless, ExplicitVRLittleEndian}
    assert sop_classes == {ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation}
    assert voi_sequences >= 1


def test_required_headers(small: Path) -> None:
    for path in _files(small):
        ds = _read(path, stop_before_pixels=True)
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "ReferringPhysicianName",
            "StudyID",
            "AccessionNumber",
            "SeriesNumber",
            "InstanceNumber",
            "PatientOrientation",
            "BodyPartExamined",
            "ViewPosition",
        ):
            assert keyword in ds, keyword
        assert str(ds.PatientName).startswith("PHANTOM^")
        assert ds.Manufacturer == "spinexr-node phantom"
        assert ds.BodyPartExamined in {"LSPINE", "TSPINE", "SPINE"}
        assert ds.ViewPosition in {"AP", "LL"}
        assert "WindowCenter" in ds or "VOILUTSequence" in ds
        assert (ds.RescaleIntercept, ds.RescaleSlope) == (0, 1)
        if ds.SOPClassUID == ComputedRadiographyImageStorage:
            assert ds.Modality == "CR"
            assert "PixelSpacing" in ds
        else:
            assert ds.SOPClassUID == DigitalXRayImageStorageForPresentation
            assert ds.Modality == "DX"
            assert ds.PresentationIntentType == "FOR PRESENTATION"
            assert "ImagerPixelSpacing" in ds
            assert ds.ImageLaterality == "U"
            assert ds.AnatomicRegionSequence[0].CodingSchemeDesignator == "SCT"
            expected = "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
            assert ds.PresentationLUTShape == expected
            assert ds.LossyImageCompression == "00"
            assert ds.RescaleType == "US"


def test_monochrome1_stores_inverted_values() -> None:
    ds2, _ = make_phantom_image(11, photometric="MONOCHROME2")
    ds1, _ = make_phantom_image(11, photometric="MONOCHROME1")
    a2 = ds2.pixel_array.astype(np.int32)
    a1 = ds1.pixel_array.astype(np.int32)
    assert np.array_equal(a1, 4095 - a2)
    # The window follows the inversion: LINEAR's exact mirror is c -> 4096 - c.
    assert _first(ds1.WindowCenter) == 4096 - _first(ds2.WindowCenter)
    assert _first(ds1.WindowWidth) == _first(ds2.WindowWidth)


@pytest.mark.parametrize(("voi_lut_sequence", "window"), [(False, True), (True, False)])
def test_both_photometrics_display_alike_with_bone_bright(
    voi_lut_sequence: bool, window: bool
) -> None:
    # method.md section 3: VOI (sequence, else first window), then invert MONOCHROME1.
    shown = []
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        ds, boxes = make_phantom_image(
            4,
            photometric=photometric,  # type: ignore[arg-type]
            sop_class="DX",
            voi_lut_sequence=voi_lut_sequence,
            window=window,
            lesions=(LesionClass.VERTEBRAL_COLLAPSE,),
        )
        shown_ = apply_voi_lut(ds.pixel_array, ds, index=0).astype(np.float64)
        if photometric == "MONOCHROME1":
            shown_ = shown_.max() - shown_
        shown_ = (shown_ - shown_.min()) / (shown_.max() - shown_.min()) * 255.0
        box = boxes[0]
        body = shown_[int(box.ymin) : int(box.ymax), int(box.xmin) : int(box.xmax)]
        assert body.mean() > np.median(shown_) + 20.0
        shown.append(shown_)
    assert np.abs(shown[0] - shown[1]).max() < 1.0


# VinDr-like files carry hex "UIDs" on purpose; pydicom warns when it reads them.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_vindr_like_headers(vindr: Path) -> None:
    for _, row in _all_rows(vindr):
        for key in ("study_id", "series_id", "image_id"):
            assert HEX32.match(row[key]), row[key]
    for path in _files(vindr):
        ds = _read(path)
        assert HEX32.match(path.stem)
        assert ds.SOPInstanceUID == path.stem
        assert HEX32.match(ds.StudyInstanceUID) and HEX32.match(ds.SeriesInstanceUID)
        for keyword in ("SOPClassUID", "Modality", "BodyPartExamined", "ViewPosition"):
            assert keyword not in ds, keyword
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.BitsStored == 12
        assert "WindowCenter" in ds and "WindowWidth" in ds
        assert ds.pixel_array.max() <= 4095


# --- determinism ----------------------------------------------------------------------------


def test_same_seed_is_identical_and_other_seed_differs(small: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_dataset(again, 6, 3, size="small")
    for split in ("train", "test"):
        name = f"annotations/{split}.csv"
        assert (again / name).read_bytes() == (small / name).read_bytes()
    assert [p.name for p in _files(again)] == [p.name for p in _files(small)]
    for a, b in zip(_files(again), _files(small), strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    other = tmp_path / "other"
    generate_dataset(other, 6, 4, size="small")
    assert (other / "annotations/train.csv").read_bytes() != (
        small / "annotations/train.csv"
    ).read_bytes()
    assert set(_digest(other).values()).isdisjoint(_digest(small).values())


def test_factory_is_deterministic() -> None:
    ds_a, boxes_a = make_phantom_image(5, lesions=(LesionClass.OSTEOPHYTES,), compressed=True)
    ds_b, boxes_b = make_phantom_image(5, lesions=(LesionClass.OSTEOPHYTES,), compressed=True)
    assert boxes_a == boxes_b
    assert ds_a.SOPInstanceUID == ds_b.SOPInstanceUID
    buf_a, buf_b = io.BytesIO(), io.BytesIO()
    write(ds_a, buf_a)
    write(ds_b, buf_b)
    assert buf_a.getvalue() == buf_b.getvalue()
    ds_c, _ = make_phantom_image(6)
    assert ds_c.SOPInstanceUID != ds_a.SOPInstanceUID


# --- lesions --------------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["AP", "LAT"])
def test_lesions_are_visible_inside_their_box(view: str) -> None:
    for seed, cls in itertools.product((1, 2), LesionClass):
        normal = render_phantom(seed, view=view).display.astype(np.float32)  # type: ignore[arg-type]
        sick = render_phantom(seed, view=view, lesions=(cls,))  # type: ignore[arg-type]
        assert len(sick.boxes) == 1
        box = sick.boxes[0]
        assert box.class_id is cls
        x0, y0 = int(box.xmin), int(box.ymin)
        x1, y1 = int(np.ceil(box.xmax)), int(np.ceil(box.ymax))
        inside = np.abs(sick.display[y0:y1, x0:x1].astype(np.float32) - normal[y0:y1, x0:x1])
        assert inside.mean() > 25.0, (cls.name, view, seed, float(inside.mean()))


def test_collapse_has_genant_geometry() -> None:
    for seed in range(4):
        normal = render_phantom(seed, view="LAT", region="LSPINE")
        assert all(genant_index(v.body) > 0.85 for v in normal.spine.vertebrae)
        sick = render_phantom(
            seed, view="LAT", region="LSPINE", lesions=(LesionClass.VERTEBRAL_COLLAPSE,)
        )
        worst = min(genant_index(v.body) for v in sick.spine.vertebrae)
        assert worst <= 0.75


def test_factory_sizes_and_all_lesions_together() -> None:
    ds, boxes = make_phantom_image(
        9,
        view="LAT",
        size=(600, 500),
        lesions=tuple(LesionClass),
        sop_class="DX",
        photometric="MONOCHROME1",
        voi_lut_sequence=True,
        window=False,
    )
    assert (ds.Rows, ds.Columns) == (600, 500)
    assert {b.class_id for b in boxes} == set(LesionClass)
    assert "WindowCenter" not in ds and "VOILUTSequence" in ds
    buf = io.BytesIO()
    write(ds, buf)
    back = _read(io.BytesIO(buf.getvalue()))
    assert back.pixel_array.shape == (600, 500)
    with pytest.raises(ValueError, match="size"):
        make_phantom_image(1, size="huge")  # type: ignore[arg-type]


def test_full_size_is_in_the_thousands() -> None:
    ds, _ = make_phantom_image(3, size="full", lesions=(LesionClass.SURGICAL_IMPLANT,))
    assert 2000 <= ds.Rows <= 3000 and 1500 <= ds.Columns <= 2500
    spacing = float(ds.PixelSpacing[0])
    assert 0.1 < spacing < 0.25


def test_single_study_progress_and_argument_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = generate_dataset(tmp_path / "one", 1, 0, size="small", progress=True)
    assert summary.total_images == 2
    assert summary.studies == {"train": 1, "test": 0}
    assert _rows(tmp_path / "one", "test") == []
    assert "phantoms:" in capsys.readouterr().err
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "bad", 0, 0)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "bad", 2, 0, test_fraction=1.5)


# --- external validators --------------------------------------------------------------------


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("variants")
    paths = []
    combos = itertools.product(
        ("CR", "DX"), ("MONOCHROME1", "MONOCHROME2"), (False, True), ("window", "voi", "both")
    )
    for i, (sop, photometric, compressed, voi) in enumerate(combos):
        ds, _ = make_phantom_image(
            100 + i,
            view="AP" if i % 2 else "LAT",
            photometric=photometric,  # type: ignore[arg-type]
            sop_class=sop,  # type: ignore[arg-type]
            compressed=compressed,
            lesions=(LesionClass.OSTEOPHYTES,) if i % 3 else (),
            voi_lut_sequence=voi != "window",
            window=voi != "voi",
        )
        path = out / f"{sop}_{photometric}_{'j2k' if compressed else 'raw'}_{voi}.dicom"
        write(ds, path)
        paths.append(path)
    return paths


@pytest.mark.integration
def test_dciodvfy_reports_no_errors(variants: list[Path]) -> None:
    tool = require_tool("dciodvfy")
    for path in variants:
        proc = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
        lines = (proc.stdout + proc.stderr).splitlines()
        errors = [line for line in lines if "Error" in line]
        assert not errors, f"{path.name}: {errors}"


@pytest.mark.integration
def test_dcmdump_opens_every_variant(variants: list[Path], vindr: Path) -> None:
    tool = require_tool("dcmdump")
    for path in [*variants, *_files(vindr)]:
        proc = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
        assert "E:" not in proc.stderr, f"{path.name}: {proc.stderr}"
        assert "(7fe0,0010)" in proc.stdout
