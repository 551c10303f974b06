from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from spinexr.node.admin.secrets import masked_dict
from spinexr.node.cli import cli
from spinexr.node.errors import ConfigError
from spinexr.node.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Run every test in an empty folder with no SPINEXR_* variables from the outside.
    import os

    for key in list(os.environ):
        if key.startswith("SPINEXR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_any_file() -> None:
    s = load_settings()
    assert s.dicom.ae_title == "SPINEXR"
    assert s.dicom.port == 11112
    assert s.embedded_queue
    assert s.models.bundle is None
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("spinexr.db")
    assert s.destinations == []


def test_repository_settings_file_is_valid() -> None:
    repo_file = Path(__file__).resolve().parents[2] / "settings.toml"
    s = load_settings(repo_file)
    assert s.study.completion_seconds > 0


def test_toml_file_then_environment_override(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = write(
        tmp_path / "site.toml",
        """
[dicom]
ae_title = "FROMFILE"
port = 4242
[study]
completion_seconds = 12.5
""",
    )
    s = load_settings(cfg)
    assert (s.dicom.ae_title, s.dicom.port, s.study.completion_seconds) == ("FROMFILE", 4242, 12.5)
    monkeypatch.setenv("SPINEXR_DICOM__PORT", "104")
    s = load_settings(cfg)
    assert s.dicom.port == 104
    assert s.dicom.ae_title == "FROMFILE"  # untouched keys of the same table survive


def test_settings_toml_in_working_directory_is_used(tmp_path: Path) -> None:
    write(tmp_path / "settings.toml", "[http]\nport = 9999\n")
    assert load_settings().http.port == 9999


def test_config_file_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = write(tmp_path / "other.toml", "[http]\nport = 9000\n")
    monkeypatch.setenv("SPINEXR_CONFIG", str(cfg))
    assert load_settings().http.port == 9000


@pytest.mark.parametrize(
    ("var", "value", "check"),
    [
        ("SPINEXR_DICOM__AE_TITLE", "NODE1", lambda s: s.dicom.ae_title == "NODE1"),
        ("SPINEXR_HTTP__PORT", "8081", lambda s: s.http.port == 8081),
        ("SPINEXR_STORAGE__DATA_DIR", "/srv/x", lambda s: s.storage.data_dir == Path("/srv/x")),
        (
            "SPINEXR_DATABASE__URL",
            "postgresql://u:pw@db/spx",
            lambda s: s.database_url == "postgresql://u:pw@db/spx",
        ),
        ("SPINEXR_QUEUE__BROKER_URL", "redis://127.0.0.1:6379/0", lambda s: not s.embedded_queue),
        ("SPINEXR_STUDY__COMPLETION_SECONDS", "3", lambda s: s.study.completion_seconds == 3),
        ("SPINEXR_MODELS__BUNDLE", "/opt/bundle", lambda s: s.models.bundle == Path("/opt/bundle")),
        (
            "SPINEXR_DICOM__ALLOWED_CALLING_AETS",
            '["PACS1", "PACS2"]',
            lambda s: s.dicom.allowed_calling_aets == ["PACS1", "PACS2"],
        ),
        ("SPINEXR_DICOM__TLS__ENABLED", "false", lambda s: s.dicom.tls.enabled is False),
    ],
)
def test_every_documented_setting_is_overridable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, check
) -> None:
    monkeypatch.setenv(var, value)
    assert check(load_settings())


def test_destinations_as_json_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SPINEXR_DESTINATIONS",
        json.dumps(
            [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                {
                    "name": "web",
                    "kind": "stowrs",
                    "url": "https://pacs/dicom-web",
                    "token": "s3cret",
                    "objects": ["sr"],
                },
            ]
        ),
    )
    s = load_settings()
    assert [d.name for d in s.destinations] == ["pacs", "web"]
    assert s.destinations[1].token is not None
    assert s.destinations[1].token.get_secret_value() == "s3cret"
    masked = masked_dict(s)
    assert masked["destinations"][1]["token"] == "********"
    assert "s3cret" not in json.dumps(masked)


def test_empty_bundle_string_means_none(tmp_path: Path) -> None:
    cfg = write(tmp_path / "a.toml", '[models]\nbundle = ""\n')
    assert load_settings(cfg).models.bundle is None


def problems(**kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    return info.value.problems


def test_invalid_values_give_one_line_each(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "bad.toml",
        """
[dicom]
ae_title = "THIS-AE-TITLE-IS-TOO-LONG"
port = 70000
[study]
completion_seconds = -1
[models]
display_threshold = 2
""",
    )
    lines = problems(config_file=cfg)
    assert len(lines) == 4, lines
    joined = "\n".join(lines)
    assert "dicom.ae_title" in joined and "longer than 16" in joined
    assert "dicom.port" in joined and "70000" in joined
    assert "study.completion_seconds" in joined
    assert "models.display_threshold" in joined
    assert all(str(cfg) in line for line in lines)


def test_invalid_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINEXR_DICOM__PORT", "not-a-port")
    (line,) = problems()
    assert line.startswith("dicom.port:")
    assert "SPINEXR_DICOM__PORT" in line


def test_unknown_setting_is_rejected(tmp_path: Path) -> None:
    cfg = write(tmp_path / "typo.toml", "[dicom]\naetitle = 'X'\n")
    (line,) = problems(config_file=cfg)
    assert "dicom.aetitle" in line and "unknown setting" in line


@pytest.mark.parametrize(
    ("dest", "needle"),
    [
        ({"name": "p", "kind": "dimse", "host": "h", "port": 104}, "needs ae_title"),
        ({"name": "w", "kind": "stowrs"}, "needs an http(s) url"),
        ({"name": "p", "kind": "ftp", "url": "x"}, "destinations.0.kind"),
    ],
)
def test_incomplete_destinations(dest: dict, needle: str) -> None:
    lines = problems(destinations=[dest])
    assert any(needle in line for line in lines), lines


def test_duplicate_destination_names() -> None:
    d = {"name": "p", "ae_title": "PACS", "host": "h", "port": 104}
    assert any("unique" in line for line in problems(destinations=[d, d]))


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "broken.toml", "[dicom\nport=1")
    assert "not valid TOML" in problems(config_file=bad)[0]
    assert "does not exist" in problems(config_file=tmp_path / "nope.toml")[0]


def test_tls_needs_files() -> None:
    lines = problems(dicom={"tls": {"enabled": True}})
    assert any("cert_file" in line for line in lines)


def test_allowed_networks_validated() -> None:
    lines = problems(dicom={"allowed_networks": ["10.0.0.0/8", "not-an-ip"]})
    assert any("not-an-ip" in line for line in lines)


def test_uid_root_validated() -> None:
    assert any("UID root" in line for line in problems(node={"uid_root": "1.2.03.x"}))


# ------------------------------------------------------------------ CLI
def test_config_check_prints_effective_settings_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPINEXR_HTTP__API_TOKEN", "topsecret")
    monkeypatch.setenv("SPINEXR_DATABASE__URL", "postgresql://u:dbpassword@db/x")
    result = CliRunner().invoke(cli, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert "[dicom]" in result.output and 'ae_title = "SPINEXR"' in result.output
    assert "topsecret" not in result.output and "dbpassword" not in result.output
    assert 'api_token = "********"' in result.output


def test_config_check_output_is_valid_toml_that_loads_back(tmp_path: Path) -> None:
    import tomllib

    result = CliRunner().invoke(cli, ["config", "check"])
    data = tomllib.loads(result.stdout)
    data.pop("_derived")
    out = write(tmp_path / "roundtrip.toml", result.stdout.split("[_derived]")[0])
    assert load_settings(out).model_dump() == load_settings().model_dump()
    assert data["dicom"]["port"] == 11112


def test_config_check_exits_2_with_one_line_per_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINEXR_DICOM__PORT", "0")
    monkeypatch.setenv("SPINEXR_HTTP__PORT", "99999")
    result = CliRunner().invoke(cli, ["config", "check"])
    assert result.exit_code == 2
    err_lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 2, err_lines
    assert all(ln.startswith("error: ") for ln in err_lines)
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ [ct] (issue 17)
def test_ct_section_defaults_and_the_repository_file_agree() -> None:
    from spinexr.pipeline.ct.series import ALLOWED_BODY_PARTS

    s = load_settings()
    assert s.ct.enabled is True
    assert s.ct.body_parts == sorted(ALLOWED_BODY_PARTS)
    assert s.study.accepted_modalities == ["CR", "DX", "CT"]
    repo = load_settings(Path(__file__).resolve().parents[2] / "settings.toml")
    assert repo.ct.enabled is True
    assert sorted(repo.ct.body_parts) == sorted(ALLOWED_BODY_PARTS)
    assert repo.study.accepted_modalities == ["CR", "DX", "CT"]


def test_ct_section_from_file_and_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = write(tmp_path / "ct.toml", '[ct]\nenabled = false\nbody_parts = ["chest", "L-Spine"]\n')
    s = load_settings(cfg)
    assert (s.ct.enabled, s.ct.body_parts) == (False, ["CHEST", "LSPINE"])
    monkeypatch.setenv("SPINEXR_CT__ENABLED", "true")
    monkeypatch.setenv("SPINEXR_CT__BODY_PARTS", '["WHOLE BODY"]')
    s = load_settings(cfg)
    assert (s.ct.enabled, s.ct.body_parts) == (True, ["WHOLEBODY"])


def test_ct_section_invalid_values(tmp_path: Path) -> None:
    cfg = write(tmp_path / "ct.toml", '[ct]\nenabled = "perhaps"\nbody_parts = []\nmode = 1\n')
    lines = problems(config_file=cfg)
    joined = "\n".join(lines)
    assert len(lines) == 3, lines
    assert "ct.enabled" in joined and "ct.body_parts" in joined
    assert "ct.mode" in joined and "unknown setting" in joined


def test_config_check_prints_the_ct_section() -> None:
    import tomllib

    result = CliRunner().invoke(cli, ["config", "check"], env={"SPINEXR_CT__ENABLED": "false"})
    assert result.exit_code == 0, result.output
    assert "[ct]" in result.stdout and "enabled = false" in result.stdout.split("[ct]")[1]
    data = tomllib.loads(result.stdout)
    assert data["ct"]["enabled"] is False
    assert "CHESTABDPELVIS" in data["ct"]["body_parts"] and "HEAD" not in data["ct"]["body_parts"]
    assert data["study"]["accepted_modalities"] == ["CR", "DX", "CT"]
    assert "1.2.840.10008.5.1.4.1.1.2" in data["study"]["accepted_sop_classes"]
