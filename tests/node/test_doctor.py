"""``spinexr-node doctor`` through the real CLI: a good installation, then a broken one."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from ingest_support import Stack, build_stack
from pipelinesupport import build_tiny_bundle
from testsupport import free_port

from spinexr.node.cli import cli
from spinexr.node.db.engine import make_engine
from spinexr.node.db.migrate import upgrade
from spinexr.node.dimse.scp import StoreSCP

pytestmark = pytest.mark.slow  # each run imports torch and mmcv in a child process


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("models") / "bundle").directory


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Stack]:
    peer = build_stack(tmp_path / "pacs", dicom={"ae_title": "PACS"})
    peer.scp = StoreSCP(peer.settings)
    peer.scp.start()
    yield peer
    peer.scp.stop()


def toml(value: object) -> str:
    return json.dumps(str(value) if isinstance(value, Path) else value)


def write_config(path: Path, sections: dict[str, dict], destinations: list[dict]) -> Path:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml(v)}" for k, v in table.items()]
    for dest in destinations:
        lines.append("[[destinations]]")
        lines += [f"{k} = {toml(v)}" for k, v in dest.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def base_sections(tmp_path: Path, bundle: Path) -> dict[str, dict]:
    return {
        "dicom": {"host": "127.0.0.1", "port": free_port()},
        "http": {"host": "127.0.0.1", "port": free_port(), "api_token": "doctor-token"},
        "storage": {"data_dir": tmp_path / "var", "min_free_mb": 1},
        "models": {"bundle": bundle, "device": "cpu"},
    }


def run(config: Path, *args: str) -> tuple[int, str, str]:
    for key in [k for k in os.environ if k.startswith("SPINEXR_")]:
        del os.environ[key]
    result = CliRunner().invoke(cli, ["--config", str(config), "doctor", *args])
    return result.exit_code, result.stdout, result.stderr


def table_rows(stdout: str) -> dict[str, tuple[str, str]]:
    """Parse the doctor's table: check name → (status, detail)."""
    lines = stdout.splitlines()
    column = lines[0].index("status")
    out = {}
    for line in lines[1:]:
        if not line.strip():
            break  # the summary follows a blank line
        status, _, detail = line[column:].partition(" ")
        out[line[:column].strip()] = (status, detail.strip())
    return out


def rows(stdout: str) -> dict[str, dict]:
    return {c["check"]: c for c in json.loads(stdout)["checks"]}


def test_good_installation_passes(
    tmp_path: Path, monkeypatch, tiny_bundle: Path, pacs: Stack
) -> None:
    monkeypatch.chdir(tmp_path)
    sections = base_sections(tmp_path, tiny_bundle)
    dest = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}
    config = write_config(tmp_path / "settings.toml", sections, [dest])
    engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'spinexr.db'}")
    upgrade(engine)
    engine.dispose()
    (tmp_path / "var" / "spool").mkdir()

    code, out, err = run(config, "--json")
    assert code == 0, out
    checks = rows(out)
    assert json.loads(out)["ok"] is True
    for name in (
        "python",
        "package torch",
        "package torchvision",
        "package mmcv",
        "package mmdet",
        "package mmengine",
        "mmcv ops",
        "cuda",
        "settings",
        "bundle",
        "database",
        "broker",
        "spool",
        "dicom port",
        "http port",
        "tls",
        "destination pacs",
        "tool dcmtk",
        "tool dciodvfy",
    ):
        assert name in checks, name
        assert checks[name]["status"] in ("OK", "WARN"), checks[name]
    assert checks["mmcv ops"]["status"] == "OK" and "cpu" in checks["mmcv ops"]["detail"]
    assert "(pin ==2.1.0)" in checks["package mmcv"]["detail"]
    # The tiny test bundle is a demo bundle: verified, flagged as WARN.
    assert checks["bundle"]["status"] == "WARN"
    assert "test-bundle 0.0.1 verified" in checks["bundle"]["detail"]
    assert "DEMO" in checks["bundle"]["detail"]
    assert checks["database"]["status"] == "OK" and "head" in checks["database"]["detail"]
    assert checks["destination pacs"]["detail"].endswith("success")
    assert "doctor-token" not in out + err
    assert "checked mmcv ops: OK" in err  # progress on stderr


def test_broken_installation_fails_row_by_row(
    tmp_path: Path, monkeypatch, tiny_bundle: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with open(bundle / "detector" / "detector.py", "a") as fh:
        fh.write("# edited after the bundle was made\n")
    sections = base_sections(tmp_path, bundle)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "spinexr.db").touch()  # a database nobody migrated
    sections["dicom.tls"] = {
        "enabled": True,
        "cert_file": tmp_path / "missing.pem",
        "key_file": tmp_path / "missing.key",
    }
    down = free_port()
    dests = [
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": down},
        {"name": "web", "kind": "stowrs", "url": f"http://127.0.0.1:{down}/dicom-web"},
    ]
    config = write_config(tmp_path / "settings.toml", sections, dests)
    taken = socket.socket()  # another program holds the DICOM port
    taken.bind(("127.0.0.1", sections["dicom"]["port"]))
    taken.listen(1)
    try:
        code, out, _err = run(config)
    finally:
        taken.close()
    assert code == 1
    table = table_rows(out)
    failed = {name: detail for name, (status, detail) in table.items() if status == "FAIL"}
    assert set(failed) == {
        "bundle",
        "database",
        "destination pacs",
        "destination web",
        "dicom port",
        "tls",
    }, out
    assert "detector/detector.py" in failed["bundle"] and "SHA-256" in failed["bundle"]
    assert "spinexr-node db upgrade" in failed["database"]
    assert "not reachable" in failed["destination web"]
    assert "another program" in failed["dicom port"]
    assert "missing.pem" in failed["tls"]
    # The other checks still ran: one failure does not stop the rest.
    assert table["mmcv ops"][0] == "OK" and table["package torch"][0] == "OK"
    assert table["broker"][0] == "OK" and table["http port"][0] == "OK"
    assert out.rstrip().splitlines()[-1].endswith("6 FAIL")


def test_invalid_settings_fail_but_installation_is_still_checked(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('[dicom]\nport = 70000\nae_title = "THIS AE TITLE IS FAR TOO LONG"\n')
    code, out, _err = run(config, "--json")
    assert code == 1
    checks = rows(out)
    assert checks["settings"]["status"] == "FAIL"
    assert "dicom.port" in checks["settings"]["detail"]
    assert "dicom.ae_title" in checks["settings"]["detail"]
    assert checks["python"]["status"] == "OK"
    assert checks["mmcv ops"]["status"] == "OK"
    assert "database" not in checks  # needs valid settings
