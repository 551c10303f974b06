"""Typed results: JSON round trip, stable enum strings, schema conformance, validation."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pydantic
import pytest

from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.results import (
    Box,
    FusionMode,
    ImageError,
    ImageResult,
    Outcome,
    Provenance,
    StudyResult,
    study_result_schema,
)
from spinexr.pipeline.spacing import SpacingBasis

PROVENANCE = Provenance(
    bundle_name="demo",
    bundle_version="1.0.0",
    device_uid="2.25.123456789",
    weights_digest="ab" * 32,
    demo=True,
    software_version="0.1.0",
    torch_device="cpu",
)


def analysed_image() -> ImageResult:
    return ImageResult(
        sop_instance_uid="1.2.3.4.1",
        series_instance_uid="1.2.3.4",
        rows=2500,
        columns=1600,
        photometric="MONOCHROME1",
        pixel_spacing_basis=SpacingBasis.IMAGER_PIXEL_SPACING,
        pixel_spacing_mm=(0.15, 0.15),
        classifier_probability=0.6,
        member_logits={"densenet121": 0.3, "densenet169": 0.5},
        probability=0.6,
        decision=True,
        boxes=[
            Box(label=LesionClass.SPONDYLOLISTHESIS, score=0.8, xmin=1, ymin=2, xmax=3, ymax=4),
            Box(
                label=LesionClass.OTHER_LESIONS,
                score=0.1,
                xmin=10.5,
                ymin=20.25,
                xmax=30,
                ymax=40,
                displayed=False,
            ),
        ],
        timings={"preprocess": 0.1, "detector": 0.2},
    )


def failed_image() -> ImageResult:
    return ImageResult(
        sop_instance_uid="1.2.3.4.2",
        error=ImageError(reason="multi_frame", message="NumberOfFrames = 3"),
        timings={"preprocess": 0.01},
    )


def study(**overrides: Any) -> StudyResult:
    fields: dict[str, Any] = {
        "study_instance_uid": "1.2.3",
        "outcome": Outcome.ABNORMAL,
        "probability": 0.6,
        "decision": True,
        "threshold": 0.2808,
        "display_threshold": 0.3,
        "fusion_mode": FusionMode.PAPER,
        "flagged_classes": [LesionClass.SPONDYLOLISTHESIS],
        "images": [analysed_image(), failed_image()],
        "provenance": PROVENANCE,
        "timings": {"total": 1.5, "classifier.densenet121": 0.2},
        "analysed_at": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
    }
    fields.update(overrides)
    return StudyResult(**fields)


def test_json_round_trip_is_exact() -> None:
    result = study()
    text = result.to_json()
    again = StudyResult.from_json(text)
    assert again == result
    assert again.to_json() == text
    assert again.images[0].boxes[0].label is LesionClass.SPONDYLOLISTHESIS
    assert again.images[0].pixel_spacing_mm == (0.15, 0.15)


def test_enums_serialise_as_stable_strings() -> None:
    data = json.loads(study().to_json())
    assert data["outcome"] == "ABNORMAL"
    assert data["fusion_mode"] == "paper"
    assert data["flagged_classes"] == ["SPONDYLOLISTHESIS"]
    assert data["schema_version"] == 1
    image = data["images"][0]
    assert [b["label"] for b in image["boxes"]] == ["SPONDYLOLISTHESIS", "OTHER_LESIONS"]
    assert image["pixel_spacing_basis"] == "ImagerPixelSpacing"
    assert data["images"][1]["error"] == {"reason": "multi_frame", "message": "NumberOfFrames = 3"}
    assert data["analysed_at"].startswith("2024-05-06T07:08:09")


def test_views() -> None:
    result = study()
    assert [b.score for b in result.images[0].displayed_boxes] == [0.8]
    assert result.images[1].failed and not result.images[0].failed
    assert result.analysed_images == [result.images[0]]
    flags = result.class_flags
    assert flags[LesionClass.SPONDYLOLISTHESIS] and not flags[LesionClass.OSTEOPHYTES]
    assert len(flags) == 7


def test_failed_study() -> None:
    failed = study(
        outcome=Outcome.FAILED,
        failure_reason="no image could be analysed: multi_frame",
        probability=None,
        decision=None,
        flagged_classes=[],
        images=[failed_image()],
    )
    assert StudyResult.from_json(failed.to_json()) == failed
    with pytest.raises(pydantic.ValidationError, match="failure_reason"):
        study(outcome=Outcome.FAILED, probability=None, decision=None)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("outcome",), "MAYBE"),
        (("flagged_classes",), ["Osteophytes"]),  # display names are not the stable keys
        (("flagged_classes",), [0]),
        (("probability",), 1.5),
        (("images", 0, "boxes", 0, "score"), -0.1),
        (("images", 0, "boxes", 0, "xmax"), 0.5),  # xmax < xmin
        (("images", 0, "unexpected"), 1),
        (("images", 1, "probability"), 0.4),  # a failed image with a probability
        (("schema_version",), 2),
    ],
)
def test_invalid_json_is_refused(path: tuple[Any, ...], value: Any) -> None:
    data = json.loads(study().to_json())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(pydantic.ValidationError):
        StudyResult.from_json(json.dumps(data))


# --- JSON Schema ----------------------------------------------------------------------------

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}
_IGNORED = {"title", "description", "default", "format", "$defs"}


def check(instance: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "$") -> None:
    """A small JSON Schema checker for the keywords pydantic emits."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        check(instance, root["$defs"][name], root, where)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                check(instance, option, root, where)
                break
            except AssertionError as exc:
                errors.append(str(exc))
        else:
            raise AssertionError(f"{where}: matches no option: {errors}")
    if "type" in schema:
        expected = _TYPES[schema["type"]]
        ok = isinstance(instance, expected) and not (
            schema["type"] in ("integer", "number") and isinstance(instance, bool)
        )
        assert ok, f"{where}: {instance!r} is not {schema['type']}"
    if "enum" in schema:
        assert instance in schema["enum"], f"{where}: {instance!r} not in {schema['enum']}"
    if "const" in schema:
        assert instance == schema["const"], f"{where}: {instance!r} != {schema['const']!r}"
    if "minimum" in schema:
        assert instance >= schema["minimum"], f"{where}: below minimum"
    if "maximum" in schema:
        assert instance <= schema["maximum"], f"{where}: above maximum"
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in instance, f"{where}: missing {key}"
        for key, value in instance.items():
            if key in props:
                check(value, props[key], root, f"{where}.{key}")
            else:
                extra = schema.get("additionalProperties", True)
                assert extra is not False, f"{where}: unexpected {key}"
                if isinstance(extra, dict):
                    check(value, extra, root, f"{where}.{key}")
    if isinstance(instance, list):
        assert len(instance) >= schema.get("minItems", 0), f"{where}: too short"
        assert len(instance) <= schema.get("maxItems", len(instance)), f"{where}: too long"
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(instance):
            sub = prefix[i] if i < len(prefix) else schema.get("items")
            if sub is not None:
                check(item, sub, root, f"{where}[{i}]")
    known = {
        "$ref", "anyOf", "type", "enum", "const", "minimum", "maximum", "properties",
        "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    }  # fmt: skip
    unknown = set(schema) - known - _IGNORED
    assert not unknown, f"{where}: checker does not know {unknown}"


def test_serialised_result_conforms_to_the_schema() -> None:
    schema = study_result_schema()
    assert schema["type"] == "object" and "$defs" in schema
    box_label = schema["$defs"]["Box"]["properties"]["label"]
    assert box_label == {"type": "string", "enum": [c.name for c in LesionClass]}
    for result in (
        study(),
        study(
            outcome=Outcome.FAILED,
            failure_reason="x",
            probability=None,
            decision=None,
            flagged_classes=[],
            images=[failed_image()],
        ),
    ):
        check(json.loads(result.to_json()), schema, schema)


def test_schema_checker_catches_mismatches() -> None:
    schema = study_result_schema()
    data = json.loads(study().to_json())
    data["images"][0]["boxes"][0]["label"] = 2
    with pytest.raises(AssertionError, match="label"):
        check(data, schema, schema)
