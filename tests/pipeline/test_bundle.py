"""Model bundle: writing, verification with distinct errors, device UID."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pipelinesupport import BundleFactory, bundle_fields

from spinexr.pipeline.bundle import (
    MANIFEST_NAME,
    device_uid,
    load_manifest,
    verify_bundle,
    weights_digest,
    write_bundle,
)
from spinexr.pipeline.classes import CLASS_NAMES
from spinexr.pipeline.errors import (
    BundleError,
    BundleHashError,
    ClassListError,
    InvalidManifestError,
    MissingBundleFileError,
    PreprocessingMismatchError,
)
from spinexr.pipeline.preprocess import PREPROCESSING
from spinexr.pipeline.results import FusionMode

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def edit_manifest(directory: Path, **changes: Any) -> None:
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_written_bundle_verifies(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    data = json.loads((bundle.directory / MANIFEST_NAME).read_text())
    assert data["classes"] == list(CLASS_NAMES)
    assert data["preprocessing"] == json.loads(json.dumps(PREPROCESSING))
    assert set(data["files"]) == {
        "classifier/densenet121.pt",
        "detector/config.py",
        "detector/model.pth",
    }
    assert data["demo"] is True and data["schema_version"] == 1
    again = verify_bundle(bundle.directory)
    assert again.manifest == bundle.manifest
    assert bundle.version == "0.0.1" and bundle.name == "test-bundle" and bundle.demo
    assert bundle.threshold == 0.3 and bundle.display_threshold == 0.2
    assert bundle.fusion is FusionMode.PAPER
    assert bundle.classifier_weights == {
        "densenet121": bundle.directory / "classifier" / "densenet121.pt"
    }
    assert bundle.detector_config.read_text().startswith("# detector config")
    assert bundle.detector_checkpoint.is_file()


def test_device_uid_is_a_valid_uid_derived_from_the_hashes(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    uid = bundle.device_uid
    assert uid.startswith("2.25.") and UID.match(uid) and len(uid) <= 64
    assert bundle.weights_digest == weights_digest(bundle.manifest.files)
    # Same weights under another name and version: same device; other weights: another.
    same = make_bundle(name="renamed", version="9.9")
    assert same.device_uid == uid
    (bundle.directory / "detector" / "model.pth").write_bytes(b"other checkpoint")
    changed = write_bundle(
        bundle.directory,
        bundle_fields(),
        {
            "classifier/densenet121.pt": bundle.directory / "classifier/densenet121.pt",
            "detector/config.py": bundle.directory / "detector/config.py",
            "detector/model.pth": bundle.directory / "detector/model.pth",
        },
    )
    assert changed.device_uid != uid
    assert device_uid("0" * 64) == "2.25.0"
    assert len(device_uid("f" * 64)) <= 64


def test_wrong_hash_names_the_file(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    (bundle.directory / "detector" / "config.py").write_text("# tampered\n")
    with pytest.raises(BundleHashError) as info:
        verify_bundle(bundle.directory)
    assert "detector/config.py" in info.value.message and "SHA-256" in info.value.message
    assert info.value.reason == "wrong_hash"


def test_wrong_class_list_shows_expected_and_found(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    swapped = list(CLASS_NAMES)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    edit_manifest(bundle.directory, classes=swapped)
    with pytest.raises(ClassListError) as info:
        verify_bundle(bundle.directory)
    message = info.value.message
    assert str(list(CLASS_NAMES)) in message and str(swapped) in message
    assert info.value.reason == "wrong_classes"


def test_missing_file_is_named(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    (bundle.directory / "detector" / "model.pth").unlink()
    with pytest.raises(MissingBundleFileError) as info:
        verify_bundle(bundle.directory)
    assert "detector/model.pth" in info.value.message and "missing" in info.value.message
    assert info.value.reason == "missing_file"


def test_preprocessing_mismatch_names_the_key(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    changed = json.loads(json.dumps(PREPROCESSING))
    changed["classifier_size"] = [256, 256]
    edit_manifest(bundle.directory, preprocessing=changed)
    with pytest.raises(PreprocessingMismatchError) as info:
        verify_bundle(bundle.directory)
    assert "classifier_size" in info.value.message and "[256, 256]" in info.value.message
    assert info.value.reason == "wrong_preprocessing"


def test_problems_have_distinct_types_reasons_and_messages(make_bundle: BundleFactory) -> None:
    errors: list[BundleError] = []
    for damage in ("hash", "classes", "missing"):
        bundle = make_bundle()
        if damage == "hash":
            (bundle.directory / "detector" / "model.pth").write_bytes(b"x")
        elif damage == "classes":
            edit_manifest(bundle.directory, classes=list(CLASS_NAMES)[:-1])
        else:
            (bundle.directory / "detector" / "model.pth").unlink()
        with pytest.raises(BundleError) as info:
            verify_bundle(bundle.directory)
        errors.append(info.value)
    assert len({type(e) for e in errors}) == 3
    assert len({e.reason for e in errors}) == 3
    assert len({e.message for e in errors}) == 3


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"schema_version": 2}, "schema_version"),
        ({"surprise": 1}, "surprise"),
        ({"classifier": []}, "classifier"),
        ({"classifier": [{"arch": "resnet50", "weights": "classifier/densenet121.pt"}]}, "arch"),
        ({"files": {"../outside.pt": "0" * 64}}, "outside"),
        ({"files": {"classifier/densenet121.pt": "0" * 64}}, "not listed"),
        ({"files": {"classifier/densenet121.pt": "XYZ"}}, "files"),
        ({"demo": "perhaps"}, "demo"),
    ],
)
def test_invalid_manifest(
    make_bundle: BundleFactory, change: dict[str, Any], expected: str
) -> None:
    bundle = make_bundle()
    edit_manifest(bundle.directory, **change)
    with pytest.raises(InvalidManifestError, match=re.escape(expected)) as info:
        load_manifest(bundle.directory)
    assert info.value.reason == "invalid_manifest"


def test_repeated_architecture_is_invalid(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    member = {"arch": "densenet121", "weights": "classifier/densenet121.pt"}
    edit_manifest(bundle.directory, classifier=[member, member])
    with pytest.raises(InvalidManifestError, match="repeat"):
        verify_bundle(bundle.directory)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(InvalidManifestError, match="not a model bundle"):
        verify_bundle(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(InvalidManifestError, match=r"invalid manifest\.json"):
        verify_bundle(tmp_path)


def test_write_bundle_refuses_bad_fields(tmp_path: Path, densenet121_weights: Path) -> None:
    files = {"classifier/densenet121.pt": densenet121_weights}
    with pytest.raises(ValueError, match="files"):
        write_bundle(tmp_path / "b", {**bundle_fields(), "files": {}}, files)
    with pytest.raises(InvalidManifestError, match="not listed"):
        write_bundle(tmp_path / "b", bundle_fields(), files)


def test_detector_scale_is_the_bundles_own(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    assert bundle.detector_scale == (800, 1333)
    changed = json.loads(json.dumps(PREPROCESSING))
    changed.update(detector_shorter=384, detector_longer_max=640)
    edit_manifest(bundle.directory, preprocessing=changed)
    assert verify_bundle(bundle.directory).detector_scale == (384, 640)


@pytest.mark.parametrize("shorter,longer", [(900, 800), (64, 640), (384, 10_000), (384.0, 640)])
def test_invalid_detector_scale_is_refused(
    make_bundle: BundleFactory, shorter: Any, longer: Any
) -> None:
    bundle = make_bundle()
    changed = json.loads(json.dumps(PREPROCESSING))
    changed.update(detector_shorter=shorter, detector_longer_max=longer)
    edit_manifest(bundle.directory, preprocessing=changed)
    with pytest.raises(PreprocessingMismatchError) as info:
        verify_bundle(bundle.directory)
    assert "detector scale" in info.value.message
