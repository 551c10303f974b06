from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from testsupport import free_port, require_tool

from spinexr.node.cli import cli

EXE = Path(sys.executable).parent / "spinexr-node"


def all_commands() -> list[list[str]]:
    out: list[list[str]] = [[]]

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            out.append([*prefix, name])
            if hasattr(cmd, "commands"):
                walk(cmd, [*prefix, name])

    walk(cli, [])
    return out


@pytest.mark.parametrize("args", all_commands(), ids=lambda a: " ".join(a) or "(root)")
def test_every_command_has_help(args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_installed_console_script_runs() -> None:
    assert EXE.exists(), "spinexr-node console script is not installed in this venv"
    proc = subprocess.run([str(EXE), "--help"], capture_output=True, text=True, check=True)
    for name in ("serve", "worker", "config", "phantoms", "version"):
        assert name in proc.stdout
    proc = subprocess.run([str(EXE), "version"], capture_output=True, text=True, check=True)
    assert "torch" in proc.stdout and "2.14.1" in proc.stdout
    assert "mmcv" in proc.stdout and "2.1.0" in proc.stdout


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINEXR_")}
    env.update(extra)
    return env


@pytest.mark.integration
def test_serve_starts_answers_echo_and_says_no_bundle(tmp_path: Path) -> None:
    echoscu = require_tool("echoscu")
    dport, hport = free_port(), free_port()
    env = clean_env(
        SPINEXR_DICOM__HOST="127.0.0.1",
        SPINEXR_DICOM__PORT=str(dport),
        SPINEXR_HTTP__HOST="127.0.0.1",
        SPINEXR_HTTP__PORT=str(hport),
        SPINEXR_STORAGE__DATA_DIR=str(tmp_path / "var"),
    )
    proc = subprocess.Popen(
        [str(EXE), "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{hport}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"serve did not come up: {proc.stdout.read()}") from None
                time.sleep(0.3)
        echo = subprocess.run(
            [echoscu, "-aec", "SPINEXR", "127.0.0.1", str(dport)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert echo.returncode == 0, echo.stdout + echo.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "NO MODEL BUNDLE LOADED" in out
    assert "C-ECHO" in out
    assert (tmp_path / "var" / "spinexr.db").exists()
    assert (tmp_path / "var" / "spool").is_dir()


def test_serve_refuses_a_bundle_folder_without_manifest(tmp_path: Path) -> None:
    env = clean_env(
        SPINEXR_MODELS__BUNDLE=str(tmp_path), SPINEXR_STORAGE__DATA_DIR=str(tmp_path / "var")
    )
    proc = subprocess.run(
        [str(EXE), "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "not a model bundle" in proc.stderr


def test_phantoms_command_writes_the_vindr_layout(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        cli, ["phantoms", "--out", str(out), "--studies", "4", "--seed", "1", "--size", "small"]
    )
    assert result.exit_code == 0, result.output
    header = "study_id,series_id,image_id,rad_id,lesion_type,xmin,ymin,xmax,ymax"
    for split in ("train", "test"):
        csv = out / "annotations" / f"{split}.csv"
        assert csv.read_text().splitlines()[0] == header
        assert (out / f"{split}_images").is_dir()
    files = list(out.glob("*_images/*.dicom"))
    assert len(files) == 8  # an AP and a lateral view per study
