"""The preparation file of a bundle being prepared (the demo's staged first start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spinexr.pipeline.preparation import (
    Preparation,
    clear_preparation,
    preparation_file,
    read_preparation,
    update_preparation,
    waiting_for,
    write_preparation,
)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tmp_path / "demo-bundle-x"


def test_the_file_lies_beside_the_bundle_and_round_trips(bundle: Path) -> None:
    assert preparation_file(bundle) == bundle.parent / "demo-bundle-x.preparing.json"
    assert read_preparation(bundle) is None
    write_preparation(bundle, Preparation(pid=os.getpid(), identity="demo@1"))
    prep = read_preparation(bundle)
    assert prep is not None and prep.identity == "demo@1" and prep.ready == ()
    assert prep.started > 0 and prep.updated >= prep.started
    update_preparation(bundle, step=7, steps=8, text="CT models", ready=["radiograph"])
    update_preparation(bundle, ready=["radiograph"])  # idempotent
    prep = read_preparation(bundle)
    assert prep is not None and (prep.step, prep.steps, prep.ready) == (7, 8, ("radiograph",))
    assert prep.waiting_parts == ["ct"]
    assert prep.describe() == "step 7/8: CT models (CT analyses wait)"
    clear_preparation(bundle)
    assert read_preparation(bundle) is None
    assert update_preparation(bundle, ready=["ct"]) is None  # nothing to update


def test_what_a_study_waits_for(bundle: Path) -> None:
    assert waiting_for(bundle, radiographs=True, ct=True) is None  # no preparation
    write_preparation(bundle, Preparation(pid=os.getpid(), identity="demo@1", step=2, steps=8))
    both = waiting_for(bundle, radiographs=True, ct=True)
    assert both is not None and both.startswith("radiograph and CT models being prepared")
    update_preparation(bundle, ready=["radiograph"])
    assert waiting_for(bundle, radiographs=True, ct=False) is None
    said = waiting_for(bundle, radiographs=True, ct=True)
    assert said is not None and said.startswith("CT models being prepared (step 2/8")
    update_preparation(bundle, ready=["ct"])
    assert waiting_for(bundle, radiographs=False, ct=True) is None


def test_a_preparation_whose_process_is_gone_counts_as_none(bundle: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    write_preparation(bundle, Preparation(pid=child.pid, identity="demo@1"))
    assert preparation_file(bundle).is_file()
    assert read_preparation(bundle) is None
    assert waiting_for(bundle, radiographs=True, ct=True) is None


def test_an_unreadable_file_counts_as_none(bundle: Path) -> None:
    preparation_file(bundle).write_text("{not json")
    assert read_preparation(bundle) is None
