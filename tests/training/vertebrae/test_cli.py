"""``spinexr-node vertebrae``: phantoms → train (both architectures) → evaluate → add-to-bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pipelinesupport import bundle_fields

from spinexr.node.cli import cli
from spinexr.pipeline.bundle import Bundle, verify_bundle, write_bundle

pytestmark = pytest.mark.slow


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["vertebrae", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def placeholder_bundle(tmp_path: Path) -> Bundle:
    src = tmp_path / "bundle-src"
    src.mkdir()
    for name in ("densenet121.pt", "config.py", "model.pth"):
        (src / name).write_bytes(b"placeholder")
    files = {
        "classifier/densenet121.pt": src / "densenet121.pt",
        "detector/config.py": src / "config.py",
        "detector/model.pth": src / "model.pth",
    }
    return write_bundle(tmp_path / "bundle", bundle_fields(), files)


def test_the_commands_chain(tmp_path: Path) -> None:
    data = tmp_path / "kp"
    run("phantoms", "--out", str(data), "--images", "6", "--seed", "1", "--test-fraction", "0.34")
    assert (data / "annotations" / "vertebrae_train.csv").is_file()
    checkpoints = {}
    for arch in ("pisov", "keypointrcnn"):
        out = run(
            "train",
            "--data",
            str(data),
            "--arch",
            arch,
            "--out",
            str(tmp_path / arch),
            "--recipe",
            "demo",
            "--iterations",
            "2",
            "--batch-size",
            "2",
            "--device",
            "cpu",
        )
        checkpoints[arch] = Path(out.strip().splitlines()[-1])
        assert checkpoints[arch].is_file()
    report = tmp_path / "report"
    printed = run(
        "evaluate",
        "--data",
        str(data),
        "--bootstrap",
        "100",
        "--device",
        "cpu",
        "--out",
        str(report),
        *(f"--model={arch}={path}" for arch, path in checkpoints.items()),
    )
    assert "Table 1" in printed and "keypointrcnn" in printed and "pisov" in printed
    figures = json.loads((report / "keypoints-report.json").read_text())
    assert set(figures["models"]) == {"pisov", "keypointrcnn"}
    bundle = placeholder_bundle(tmp_path)
    run(
        "add-to-bundle",
        "--bundle",
        str(bundle.directory),
        "--arch",
        "pisov",
        "--checkpoint",
        str(checkpoints["pisov"]),
        "--report",
        str(report / "keypoints-report.json"),
    )
    again = verify_bundle(bundle.directory)
    assert again.vertebrae is not None and again.vertebrae.model == "pisov"
    assert again.device_uid != bundle.device_uid


def test_a_bad_model_argument_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "kp"
    run("phantoms", "--out", str(data), "--images", "2", "--seed", "1", "--test-fraction", "0.5")
    result = CliRunner().invoke(
        cli, ["vertebrae", "evaluate", "--data", str(data), "--model", "pisov"]
    )
    assert result.exit_code == 2
    assert "ARCH=CHECKPOINT" in result.output
