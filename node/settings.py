"""The node's one typed settings object.

Settings come from, in increasing priority: the defaults below, a TOML file
(``--config FILE``, else ``$SPINEXR_CONFIG``, else ``./settings.toml`` when present) and
environment variables ``SPINEXR_<SECTION>__<KEY>`` (lists and tables as JSON, e.g.
``SPINEXR_DESTINATIONS='[{"name": "pacs", ...}]'``). Nothing else in the code base reads
``os.environ``.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from spinexr.node.errors import ConfigError
from spinexr.node.sopclasses import ANALYSABLE_SOP_CLASSES
from spinexr.pipeline.ct.series import ALLOWED_BODY_PARTS

ENV_PREFIX = "SPINEXR_"
ENV_CONFIG_FILE = "SPINEXR_CONFIG"
DEFAULT_CONFIG_FILE = Path("settings.toml")

_AE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.+:/@")


def _check_ae_title(value: str) -> str:
    """Validate a DICOM AE title (PS3.5 AE VR: 1-16 characters, no backslash/control)."""
    stripped = value.strip()
    if not stripped:
        raise ValueError("AE title must not be empty")
    if len(stripped) > 16:
        raise ValueError(f"AE title {stripped!r} is longer than 16 characters")
    if not set(stripped) <= _AE_CHARS:
        raise ValueError(f"AE title {stripped!r} contains characters not allowed in an AE")
    return stripped


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NodeSection(_Section):
    """Identity of this node: names that go into every output object."""

    name: str = "spinexr-node"
    uid_root: str = Field(
        default="1.2.826.0.1.3680043.10.1404",
        description="UID root for every UID the node creates (outputs, device UID).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, value: str) -> str:
        parts = value.split(".")
        ok = all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts)
        if not value or not ok:
            raise ValueError(f"{value!r} is not a valid UID root (digits and dots, no leading 0)")
        if len(value) > 40:
            raise ValueError("UID root must be at most 40 characters to leave room for suffixes")
        return value


class TlsSection(_Section):
    """Optional DICOM TLS for the SCP."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = Field(default=None, description="CA bundle for client certificates.")
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TlsSection:
        if self.enabled and (self.cert_file is None or self.key_file is None):
            raise ValueError("tls.enabled needs cert_file and key_file")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("tls.require_client_cert needs ca_file")
        return self


class DicomSection(_Section):
    """The DIMSE SCP (C-ECHO, C-STORE)."""

    ae_title: str = "SPINEXR"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    max_pdu: int = Field(default=131072, ge=4096, le=2**26)
    max_associations: int = Field(
        default=10,
        ge=1,
        le=1000,
        description=(
            "Associations at once, each run in its own process; more are rejected "
            "(transient, local limit exceeded)."
        ),
    )
    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="Empty = any calling AE title."
    )
    allowed_networks: list[str] = Field(
        default_factory=list, description="IP addresses or CIDR networks; empty = any."
    )
    acse_timeout: float = Field(default=30, gt=0)
    dimse_timeout: float = Field(default=60, gt=0)
    network_timeout: float = Field(default=60, gt=0)
    scu_timeout: float = Field(
        default=30,
        gt=0,
        le=3600,
        description=(
            "Seconds every outgoing association (echo, send, export, read-back, destination "
            "test) waits for the TCP connection, the association and each answer."
        ),
    )
    max_dataset_bytes: int = Field(default=512 * 2**20, ge=2**16)
    max_decompressed_bytes: int = Field(default=1024 * 2**20, ge=2**16)
    max_sequence_depth: int = Field(default=16, ge=1, le=256)
    tls: TlsSection = Field(default_factory=TlsSection)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in value]

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or network") from exc
        return value


class HttpSection(_Section):
    """The HTTP server: STOW-RS, admin API and pages, health, metrics."""

    host: str = "0.0.0.0"
    port: int = Field(default=8042, ge=1, le=65535)
    api_token: SecretStr = Field(
        default=SecretStr(""), description="Bearer token for the admin API and STOW-RS."
    )
    max_stow_bytes: int = Field(
        default=2**30,
        ge=2**16,
        description=(
            "Largest STOW-RS request body (all parts, held in memory until stored): a larger "
            "declared Content-Length is answered 413 before the body is read, a chunked body "
            "with 413 as soon as it grows past it."
        ),
    )
    body_timeout_seconds: float = Field(
        default=30,
        gt=0,
        description="A request body that sends nothing for this long is answered 408 and closed.",
    )
    auth_max_failures: int = Field(
        default=10,
        ge=1,
        description="Failed authentications from one address that lock it out (429).",
    )
    auth_failure_window_seconds: float = Field(
        default=60, gt=0, description="Window in which auth_max_failures are counted."
    )
    auth_lockout_seconds: float = Field(
        default=300, gt=0, description="How long a locked-out address is answered 429."
    )
    preview_cache_mb: int = Field(
        default=256,
        ge=1,
        description=(
            "Largest total size of the admin pages' cached preview PNGs; the least recently "
            "used are removed past it."
        ),
    )
    preview_cache_max_age_days: float = Field(
        default=7, gt=0, description="Cached previews not used for this long are removed."
    )


class StorageSection(_Section):
    """Where received files, outputs and the embedded database live."""

    data_dir: Path = Path("var")
    min_free_mb: int = Field(
        default=1024, ge=0, description="Below this free space C-STORE answers 0xA700."
    )

    @property
    def spool_dir(self) -> Path:
        """Folder for received instances."""
        return self.data_dir / "spool"

    @property
    def output_dir(self) -> Path:
        """Folder for built output objects (SR, GSPS, ...)."""
        return self.data_dir / "outputs"


class DatabaseSection(_Section):
    """SQLAlchemy URL; empty = a SQLite file in ``storage.data_dir``."""

    url: SecretStr = SecretStr("")
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url and not url.startswith(("sqlite", "postgresql")):
            raise ValueError("database.url must be a sqlite:// or postgresql:// URL (or empty)")
        return value


class QueueSection(_Section):
    """Celery broker; empty = embedded durable broker (SQLite) with an in-process worker."""

    broker_url: SecretStr = SecretStr("")
    visibility_timeout: int = Field(default=7200, ge=60)
    task_time_limit: int = Field(default=1800, ge=10)
    max_attempts: int = Field(default=5, ge=1, le=100)
    lease_seconds: int = Field(default=600, ge=10)

    @field_validator("broker_url")
    @classmethod
    def _scheme(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url and not url.startswith(("redis://", "rediss://", "sqla+", "memory://")):
            raise ValueError("queue.broker_url must be redis://, rediss://, sqla+... or empty")
        return value


class BodyParts(enum.StrEnum):
    """Which body parts the node analyses (``study.body_parts``).

    ``spine``: spine radiographs only, decided by Body Part Examined, then Series
    Description and Protocol Name (a Study Description can only say "not spine"), then, for
    images whose header says nothing, the bundle's image check; other images are recorded
    "not for analysis: not a spine image (...)". ``any``: every image of an accepted SOP
    class and modality.
    """

    SPINE = "spine"
    ANY = "any"


class StudySection(_Section):
    """Study assembly and routing rules."""

    completion_seconds: float = Field(
        default=30, gt=0, description="A study is complete after this long with no new image."
    )
    accepted_sop_classes: list[str] = Field(
        default_factory=lambda: [str(u) for u in ANALYSABLE_SOP_CLASSES],
        description=(
            "SOP classes that are analysed (CR, DX For Presentation/Processing, CT, Enhanced "
            "CT, Legacy Converted Enhanced CT)."
        ),
    )
    accepted_modalities: list[str] = Field(default_factory=lambda: ["CR", "DX", "CT"])
    body_parts: BodyParts = Field(
        default=BodyParts.SPINE,
        description=(
            "'spine': only spine radiographs are analysed (header, then the bundle's image "
            "check); 'any': every body part. A configuration that sets body_part_regex "
            "without body_parts gets 'any' (the regex alone decides, as before)."
        ),
    )
    body_part_regex: str = Field(
        default="", description="BodyPartExamined must match (case-insensitive); empty = any."
    )
    study_description_regex: str = Field(
        default="", description="StudyDescription must match (case-insensitive); empty = any."
    )
    analyse_calling_aets: list[str] = Field(
        default_factory=list, description="Only studies from these AEs are analysed; empty = any."
    )
    urgent_calling_aets: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _regex_alone_decides(cls, data: Any) -> Any:
        """Give an old configuration (a body_part_regex, no body_parts) its old meaning.

        The regex alone decides the body part, as before ``body_parts`` existed.
        """
        if isinstance(data, dict) and data.get("body_part_regex") and "body_parts" not in data:
            return {**data, "body_parts": BodyParts.ANY}
        return data

    @field_validator("body_part_regex", "study_description_regex")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class ModelsSection(_Section):
    """The model bundle and where it runs."""

    bundle: Path | None = Field(default=None, description="Bundle folder; empty = none.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    display_threshold: float = Field(default=0.3, ge=0, le=1)
    fusion: Literal["paper", "paper+average"] = "paper"

    @field_validator("bundle", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value in ("", None) else value


class VertebraeSection(_Section):
    """The vertebral fracture analysis on lateral views (Genant grading)."""

    enabled: bool = Field(
        default=True,
        description=(
            "Grade vertebral fractures on lateral views when the bundle has a keypoint model."
        ),
    )
    mild: float = Field(default=0.80, gt=0, lt=1, description="G at or below: mild (grade 1).")
    moderate: float = Field(
        default=0.75, gt=0, lt=1, description="G at or below: moderate (grade 2)."
    )
    severe: float = Field(default=0.60, gt=0, lt=1, description="G at or below: severe (grade 3).")

    @model_validator(mode="after")
    def _ordered(self) -> VertebraeSection:
        if not self.severe < self.moderate < self.mild:
            raise ValueError(
                f"vertebrae cut-offs must satisfy severe < moderate < mild, got "
                f"{self.severe}, {self.moderate}, {self.mild}"
            )
        return self


_NOT_ALNUM = re.compile(r"[^A-Z0-9]+")


def compact_body_part(value: str) -> str:
    """Return a Body Part Examined value compacted: upper case, letters and digits only.

    The compaction of the CT series selection (`spinexr.pipeline.ct.series`): ``"Chest
    Abdomen"``, ``"CHEST_ABDOMEN"`` and ``"chest-abdomen"`` all give ``"CHESTABDOMEN"``.

    Parameters
    ----------
    value : str
        The value as written.

    Returns
    -------
    str
        The compacted value (empty for one with no letter or digit).
    """
    return _NOT_ALNUM.sub("", value.upper())


class CtSection(_Section):
    """The CT analysis (vertebral fractures on CT series)."""

    enabled: bool = Field(
        default=True,
        description=(
            "Analyse CT series for vertebral fractures when the bundle has CT models; when "
            "false, CT instances are stored as 'not for analysis: CT analysis disabled'."
        ),
    )
    body_parts: list[str] = Field(
        default_factory=lambda: sorted(ALLOWED_BODY_PARTS),
        min_length=1,
        description=(
            "Body Part Examined values (compacted: upper case, no spaces, hyphens or "
            "underscores) under which a CT series is analysed; a CT instance without Body "
            "Part Examined is analysed (the series selection decides)."
        ),
    )

    characterise_from: Literal["mild", "moderate", "severe"] = Field(
        default="mild",
        description=(
            "The lowest Genant grade of a CT vertebra that triggers the benign / malignant "
            "characterisation (bundles with a characterisation model)."
        ),
    )
    characterise_all: bool = Field(
        default=False,
        description=(
            "Characterise every vertebra at or above that grade; false: only the one with "
            "the lowest Genant index (Li et al.: the most abnormal vertebra)."
        ),
    )

    @field_validator("body_parts")
    @classmethod
    def _compacted(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for item in value:
            compact = compact_body_part(item)
            if not compact:
                raise ValueError(f"{item!r} is not a body part (no letter or digit)")
            if compact not in out:
                out.append(compact)
        return out


class OutputSection(_Section):
    """Which objects the node builds for each analysed study (the site profile)."""

    sr: bool = True
    gsps: bool = True
    kos: bool = False
    secondary_capture: bool = False
    series_description_prefix: str = "AI spinexr"
    superseded: Literal["latest_only", "keep"] = Field(
        default="latest_only",
        description=(
            "When a study is analysed again: 'latest_only' stops every older job's outputs "
            "that have not reached a destination (only the newest set is sent); 'keep' "
            "still sends the older job's outputs already built. Unfinished analyses of an "
            "older job are stopped either way; sent objects stay at the PACS."
        ),
    )


ObjectKind = Literal["sr", "gsps", "kos", "sc", "reformat"]
_DEFAULT_OBJECTS: tuple[ObjectKind, ...] = ("sr", "gsps", "reformat")
"""By default a destination gets the SR, the GSPS of every analysed radiograph, and a CT
study's straightened reformat with its GSPS ("reformat")."""


class Destination(_Section):
    """A PACS (or other peer) that receives results."""

    name: str = Field(min_length=1, max_length=64)
    kind: Literal["dimse", "stowrs"] = "dimse"
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    url: str | None = None
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    objects: list[ObjectKind] = Field(default_factory=lambda: list(_DEFAULT_OBJECTS))
    verify: bool = False

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value in (None, "") else _check_ae_title(value)

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.kind == "dimse":
            missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) in (None, "")]
            if missing:
                raise ValueError(f"dimse destination {self.name!r} needs {', '.join(missing)}")
        elif not self.url or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"stowrs destination {self.name!r} needs an http(s) url")
        return self


class Settings(BaseSettings):
    """All settings of a spinexr-node process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
        validate_assignment=True,
    )

    node: NodeSection = Field(default_factory=NodeSection)
    dicom: DicomSection = Field(default_factory=DicomSection)
    http: HttpSection = Field(default_factory=HttpSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    queue: QueueSection = Field(default_factory=QueueSection)
    study: StudySection = Field(default_factory=StudySection)
    models: ModelsSection = Field(default_factory=ModelsSection)
    vertebrae: VertebraeSection = Field(default_factory=VertebraeSection)
    ct: CtSection = Field(default_factory=CtSection)
    output: OutputSection = Field(default_factory=OutputSection)
    destinations: list[Destination] = Field(default_factory=list)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique: {', '.join(dupes)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the TOML file (given as init arguments)."""
        return (env_settings, init_settings)

    @property
    def database_url(self) -> str:
        """The effective SQLAlchemy URL (SQLite in the data folder when none is set)."""
        url = self.database.url.get_secret_value()
        if url:
            return url
        return f"sqlite:///{(self.storage.data_dir / 'spinexr.db').resolve()}"

    @property
    def embedded_queue(self) -> bool:
        """True when no broker is configured (embedded durable broker, in-process worker)."""
        return not self.queue.broker_url.get_secret_value()


def resolve_config_file(config_file: Path | None) -> Path | None:
    """Return the TOML file to read: explicit, ``$SPINEXR_CONFIG``, ``./settings.toml``.

    Parameters
    ----------
    config_file : Path or None
        A path given on the command line.

    Returns
    -------
    Path or None
        The file, or None when no file is used.

    Raises
    ------
    ConfigError
        If an explicitly named file does not exist.
    """
    if config_file is None and os.environ.get(ENV_CONFIG_FILE):
        config_file = Path(os.environ[ENV_CONFIG_FILE])
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError([f"config file {config_file} does not exist"])
        return config_file
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _env_name(loc: tuple[Any, ...]) -> str:
    head = [str(p) for p in loc[:2] if isinstance(p, str)]
    return ENV_PREFIX + "__".join(head).upper()


def _format_error(err: Any, source: Path | None) -> str:
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "(settings)"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    env_name = _env_name(loc)
    if env_name != ENV_PREFIX and env_name in {k.upper() for k in os.environ}:
        origin = f" (from environment {env_name})"
    elif source is not None:
        origin = f" (from {source})"
    else:
        origin = ""
    value = err.get("input")
    shown = ""
    if err["type"] not in ("missing", "extra_forbidden") and not isinstance(value, dict | list):
        shown = f", got {value!r}" if "secret" not in where and "token" not in where else ""
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    return f"{where}: {msg}{shown}{origin}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load and validate the settings.

    Parameters
    ----------
    config_file : Path or None
        TOML file; see :func:`resolve_config_file` for the default.
    **overrides
        Section tables that replace those from the file (used by tests).

    Returns
    -------
    Settings
        The validated settings.

    Raises
    ------
    ConfigError
        With one readable line per invalid value.
    """
    path = resolve_config_file(config_file)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError([_format_error(e, path) for e in exc.errors()]) from exc
