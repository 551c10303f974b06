"""``spinexr-node doctor``: every check, side by side, as a table or JSON, with an exit code."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from functools import partial

from sqlalchemy.engine import make_url

from spinexr.node.admin.secrets import redact, secret_values
from spinexr.node.db.migrate import head_revision
from spinexr.node.doctor import install, probes
from spinexr.node.doctor.result import (
    CheckResult,
    CheckSpec,
    DaemonThreadExecutor,
    Status,
    Verdict,
    run_checks,
)
from spinexr.node.errors import ConfigError
from spinexr.node.settings import Settings

ML_PROBE_SECONDS = 240.0
"""Time allowed to import torch and mmcv in the probe process (slow on a cold disk cache)."""


def _settings_verdict(settings: Settings) -> Verdict:
    notes = [
        f"queue {'embedded' if settings.embedded_queue else 'external broker'}",
        f"database {make_url(settings.database_url).get_backend_name()}",
        f"{len(settings.destinations)} destination(s)",
    ]
    if not settings.http.api_token.get_secret_value():
        return (
            Status.WARN,
            "valid, but http.api_token is empty: STOW-RS and the admin API accept anyone ("
            + ", ".join(notes)
            + ")",
        )
    return Status.OK, "valid (" + ", ".join(notes) + ")"


def _database(settings: Settings, timeout: float) -> Verdict:
    url = settings.database_url
    path = probes.sqlite_file(url)
    if path is not None and not path.exists():
        return (
            Status.FAIL,
            f"database file {path} does not exist: {probes.UPGRADE_HINT} (serve also creates it)",
        )
    engine = probes.probe_engine(url, timeout)
    try:
        return probes.check_database(engine, head_revision())
    finally:
        engine.dispose()


def doctor_specs(
    settings: Settings | None, config_problems: Sequence[str], timeout: float
) -> list[CheckSpec]:
    """List the doctor's checks in display order.

    Parameters
    ----------
    settings : Settings or None
        The loaded settings; None when they are invalid (only installation checks run).
    config_problems : sequence of str
        Why the settings did not load.
    timeout : float
        Seconds for each network exchange (database, broker, C-ECHO, HTTP).

    Returns
    -------
    list of CheckSpec
        The checks.
    """
    # One probe process, started now, whose report both ML checks read.
    ml = DaemonThreadExecutor("ml probe").submit(install.ml_stack_report, ML_PROBE_SECONDS)
    pins = install.pins()
    backstop = timeout + 10
    specs = [CheckSpec("python", install.check_python, 10)]
    specs += [
        CheckSpec(f"package {name}", partial(install.check_package, name, pins.get(name)), 10)
        for name in install.PINNED
    ]
    specs += [
        CheckSpec("mmcv ops", lambda: install.check_mmcv_ops(ml.result()), ML_PROBE_SECONDS + 10),
        CheckSpec("cuda", lambda: install.check_cuda(ml.result(), settings), ML_PROBE_SECONDS + 10),
    ]
    if settings is None:
        problems = "; ".join(config_problems)
        specs.append(CheckSpec("settings", lambda: (Status.FAIL, problems), 1))
    else:
        s = settings
        specs += [
            CheckSpec("settings", lambda: _settings_verdict(s), 10),
            # Hashing large weights takes a while on a slow disk.
            CheckSpec("bundle", lambda: probes.check_bundle(s), probes.BUNDLE_VERIFY_SECONDS + 10),
            CheckSpec("database", lambda: _database(s, timeout), backstop),
            CheckSpec("broker", lambda: probes.check_broker(s, timeout, create=False), backstop),
            CheckSpec("spool", lambda: probes.check_spool(s, write_test=True), backstop),
            CheckSpec("dicom port", lambda: install.check_dicom_port(s, timeout), backstop * 2),
            CheckSpec("http port", lambda: install.check_http_port(s, timeout), backstop),
            CheckSpec("tls", lambda: install.check_tls(s), 10),
        ]
        specs += [
            CheckSpec(
                f"destination {d.name}", partial(probes.check_destination, d, s, timeout), backstop
            )
            for d in s.destinations
        ]
    specs += [
        CheckSpec(f"tool {group}", partial(install.check_tool, group), 10)
        for group in install.TOOLS
    ]
    return specs


def run_doctor(
    load: Callable[[], Settings],
    *,
    timeout: float = 5.0,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Load the settings and run every check; one failure never stops the others.

    Parameters
    ----------
    load : callable
        Returns the validated settings or raises :class:`~spinexr.node.errors.ConfigError`.
    timeout : float
        Seconds for each network exchange.
    on_result : callable, optional
        Progress: called with each result as it comes.

    Returns
    -------
    list of CheckResult
        One per check, in display order, with every secret redacted.
    """
    settings: Settings | None
    try:
        settings = load()
        problems: list[str] = []
    except ConfigError as exc:
        settings, problems = None, exc.problems
    secrets = secret_values(settings) if settings is not None else []

    def clean(result: CheckResult) -> CheckResult:
        return dataclasses.replace(result, detail=redact(result.detail, secrets))

    def report(result: CheckResult) -> None:
        if on_result is not None:
            on_result(clean(result))

    results = run_checks(doctor_specs(settings, problems, timeout), report)
    return [clean(r) for r in results]


def exit_code(results: Sequence[CheckResult]) -> int:
    """Return 1 when any check failed, else 0 (warnings do not fail)."""
    return 1 if any(r.status is Status.FAIL for r in results) else 0


def render_table(results: Sequence[CheckResult]) -> str:
    """Format results as an aligned table: check, status, detail.

    Parameters
    ----------
    results : sequence of CheckResult
        The rows.

    Returns
    -------
    str
        The table and a summary line.
    """
    width = max([len("check"), *(len(r.name) for r in results)])
    lines = [f"{'check':<{width}}  {'status':<6} detail"]
    lines += [f"{r.name:<{width}}  {r.status.value:<6} {r.detail}" for r in results]
    counts = {s: sum(1 for r in results if r.status is s) for s in Status}
    lines.append(
        f"\n{counts[Status.OK]} OK, {counts[Status.WARN]} WARN, {counts[Status.FAIL]} FAIL"
    )
    return "\n".join(lines)


def render_json(results: Sequence[CheckResult]) -> str:
    """Format results as JSON: ``{"ok": bool, "checks": [...]}``."""
    return json.dumps(
        {"ok": exit_code(results) == 0, "checks": [r.as_dict() for r in results]}, indent=2
    )
