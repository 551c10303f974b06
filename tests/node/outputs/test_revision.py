"""A re-analysis's objects say they replace the earlier ones, and stay valid."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from outputs_support import (
    UID_ROOT,
    Variant,
    abnormal_result,
    dciodvfy_errors,
    make_settings,
    make_study,
    write_object,
)
from testsupport import require_tool

from spinexr.node.outputs.build import build_outputs, mark_revision
from spinexr.node.outputs.provenance import DEMO_WARNING
from spinexr.node.outputs.sr import SupersededReport
from spinexr.node.settings import Settings

ALL = make_settings(sr=True, gsps=True, kos=True, secondary_capture=True)


@pytest.mark.parametrize("demo", [True, False])
def test_revision_two_names_what_it_replaces_and_keeps_its_label(demo: bool) -> None:
    sources = make_study(45, Variant())
    result = abnormal_result(sources, demo=demo)
    first = build_outputs(sources, result, ALL, job_key="r1")
    second = build_outputs(sources, result, ALL, job_key="r2", revision=2)
    assert [o.kind for o in first] == [o.kind for o in second]
    for old, new in zip(first, second, strict=True):
        old_desc, new_desc = str(old.dataset.SeriesDescription), str(new.dataset.SeriesDescription)
        assert " rev " not in old_desc and len(new_desc) <= 64
        assert " rev 2 " in new_desc + " "
        assert new_desc.endswith(DEMO_WARNING) is demo
        if new.kind == "gsps":
            assert new.dataset.ContentLabel == old.dataset.ContentLabel
            text = str(new.dataset.ContentDescription)
            assert text.startswith("AI results rev 2, replaces rev 1") and len(text) <= 64
            assert text.endswith(DEMO_WARNING if demo else "- not for diagnosis")


def test_long_prefixes_and_revisions_fit_their_64_characters() -> None:
    sources = make_study(46, Variant())
    settings = Settings(node={"uid_root": UID_ROOT}, output={"series_description_prefix": "X" * 60})
    result = abnormal_result(sources)
    for obj in build_outputs(sources, result, settings, job_key="r", revision=123):
        desc = str(obj.dataset.SeriesDescription)
        assert len(desc) <= 64 and desc.endswith(f" rev 123 {DEMO_WARNING}")
        if obj.kind == "gsps":
            assert len(str(obj.dataset.ContentDescription)) <= 64


def test_first_revision_is_unchanged() -> None:
    sources = make_study(47, Variant())
    (sr, *_) = build_outputs(sources, abnormal_result(sources), ALL, job_key="r")
    before = str(sr.dataset.SeriesDescription)
    mark_revision(sr.dataset, 1, demo=True)
    assert str(sr.dataset.SeriesDescription) == before


def test_revision_objects_pass_dciodvfy_and_dcmpschk(tmp_path: Path) -> None:
    dcmpschk = require_tool("dcmpschk")
    sources = make_study(48, Variant())
    result = abnormal_result(sources)
    (old_sr, *_) = build_outputs(sources, result, ALL, job_key="v1")
    predecessor = SupersededReport(
        result.study_instance_uid, old_sr.series_instance_uid, old_sr.sop_instance_uid
    )
    built = build_outputs(sources, result, ALL, job_key="v2", predecessor=predecessor, revision=2)
    for n, obj in enumerate(o for o in built if o.kind in ("sr", "gsps")):
        path = write_object(obj.dataset, tmp_path / f"{obj.kind}-{n}.dcm")
        errors, _ = dciodvfy_errors(path)
        assert errors == [], (obj.kind, errors)
        if obj.kind == "gsps":
            check = subprocess.run([dcmpschk, str(path)], capture_output=True, text=True)
            lines = (check.stdout + check.stderr).splitlines()
            assert [ln for ln in lines if ln.startswith("E:")] == [], lines
