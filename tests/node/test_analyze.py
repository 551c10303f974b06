"""`spinexr-node analyze` end to end: phantom studies, a small real bundle, JSON results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pipelinesupport import build_tiny_bundle

from spinexr.node.analyze import result_path
from spinexr.node.cli import cli
from spinexr.pipeline.results import Outcome, StudyResult, study_result_schema
from spinexr.training.phantoms import generate_dataset

pytestmark = pytest.mark.slow


def check_schema(value, schema, defs) -> None:
    """Enough of JSON Schema for our own schema: $ref, type, properties, required, items."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                check_schema(value, option, defs)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{value!r} matches no option: {errors}")
    kind = schema.get("type")
    types = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "null": type(None),
        "integer": int,
        "number": (int, float),
    }
    if kind:
        assert isinstance(value, types[kind]), f"{value!r} is not {kind}"
    if "enum" in schema:
        assert value in schema["enum"]
    if kind == "object":
        for key in schema.get("required", []):
            assert key in value, f"missing {key}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check_schema(value[key], sub, defs)
    if kind == "array" and "items" in schema and isinstance(schema["items"], dict):
        for item in value:
            check_schema(item, schema["items"], defs)


def test_analyze_writes_one_valid_json_per_study(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, 2, seed=3, size="small", test_fraction=0.5)
    bundle = build_tiny_bundle(tmp_path / "bundle", threshold=0.0)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "analyze",
            str(data / "train_images"),
            str(data / "test_images"),
            "--bundle",
            str(bundle.directory),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 studies written" in result.output
    assert "DEMO BUNDLE" in result.output
    schema = study_result_schema()
    defs = schema.get("$defs", {})
    files = sorted(out.glob("*/result.json"))
    assert len(files) == 2
    for path in files:
        raw = json.loads(path.read_text())
        check_schema(raw, schema, defs)
        res = StudyResult.from_json(path.read_text())
        assert result_path(out, res.study_instance_uid) == path
        assert res.study_instance_uid in result.output
        assert res.outcome is not Outcome.FAILED and len(res.images) == 2
        assert res.provenance.bundle_version == "0.0.1" and res.provenance.demo
        assert {"total"} <= set(res.timings)
        objects = sorted(p.name.split("-")[0] for p in path.parent.glob("*.dcm"))
        assert objects == ["gsps", "gsps", "sr"]
        for image in res.images:
            assert image.probability is not None and image.rows and image.columns
            for box in image.boxes:
                assert 0 <= box.xmin < box.xmax <= image.columns
                assert 0 <= box.ymin < box.ymax <= image.rows


def test_analyze_without_a_bundle_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPINEXR_MODELS__BUNDLE", raising=False)
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no bundle" in result.output


def test_analyze_reports_why_a_ct_study_was_not_analysed(tmp_path: Path) -> None:
    from spinexr.training.phantoms.ct import make_ct_phantom
    from spinexr.training.phantoms.ct_dicom import write_ct_study

    study = write_ct_study(tmp_path / "ct", make_ct_phantom(3, levels=("T6", "T10"), fractures=()))
    bundle = build_tiny_bundle(tmp_path / "bundle")  # no CT models
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        ["analyze", str(study.root), "--bundle", str(bundle.directory), "--out", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "CT not analysed for vertebral fractures: no_model" in result.output
    assert "localizer" in result.output  # the other series and why they were not used
    parsed = StudyResult.from_json(result_path(out, study.study_uid).read_text())
    assert parsed.images == [] and parsed.ct is not None
    assert parsed.outcome is Outcome.FAILED and "no_model" in (parsed.failure_reason or "")
