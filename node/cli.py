"""The ``spinexr-node`` command line: one CLI for every command.

Errors from :mod:`spinexr.node.errors` become one clear line on stderr and the error's exit
code (2 for invalid settings or usage).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import click

from spinexr.node import __version__
from spinexr.node.db.states import JobState
from spinexr.node.errors import ConfigError, SpinexrError
from spinexr.node.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """What the group passes to commands: where the settings come from."""

    def __init__(self, config_file: Path | None, log_level: str | None) -> None:
        self.config_file = config_file
        self.log_level = log_level
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        """Load (once) and return the validated settings."""
        if self._settings is None:
            self._settings = load_settings(self.config_file)
        return self._settings

    def reset(self) -> None:
        """Forget the loaded settings (after the environment changed)."""
        self._settings = None


def edge(func: F) -> F:
    """Translate our errors into one line on stderr and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            for line in exc.problems:
                click.echo(f"error: {line}", err=True)
            sys.exit(exc.exit_code)
        except SpinexrError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


pass_ctx = click.make_pass_decorator(Context)


class LazyGroup(click.Group):
    """A group whose training commands are imported only when used (they import torch)."""

    lazy: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("spinexr.training.cli", "train"),
        "evaluate": ("spinexr.training.cli", "evaluate"),
        "bundle": ("spinexr.training.cli", "bundle"),
        "vertebrae": ("spinexr.training.vertebrae.cli", "vertebrae"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        """All command names, the lazy ones included."""
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Return a command, importing a lazy one on first use."""
        if cmd_name in self.lazy and cmd_name not in self.commands:
            import importlib

            module, attr = self.lazy[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Settings file (TOML). Default: $SPINEXR_CONFIG, else ./settings.toml if present.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Override node.log_level.",
)
@click.version_option(__version__, "--version", prog_name="spinexr-node")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, log_level: str | None) -> None:
    """spinexr-node: a DICOM/DICOMweb AI node for spine radiographs (VinDr-SpineXR)."""
    ctx.obj = Context(config_file, log_level.upper() if log_level else None)


@cli.command()
def version() -> None:
    """Print the versions of the node and of its ML/DICOM stack."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    click.echo(f"spinexr-node {__version__}")
    for dist in (
        "torch",
        "torchvision",
        "mmcv",
        "mmdet",
        "mmengine",
        "pydicom",
        "pynetdicom",
        "highdicom",
        "celery",
        "sqlalchemy",
    ):
        try:
            click.echo(f"  {dist:<12} {dist_version(dist)}")
        except PackageNotFoundError:
            click.echo(f"  {dist:<12} not installed")


# ---------------------------------------------------------------- config
@cli.group()
def config() -> None:
    """Inspect the settings."""


@config.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@pass_ctx
@edge
def config_check(obj: Context, as_json: bool) -> None:
    """Validate the settings and print the effective values (secrets masked).

    Exits 2 with one line per invalid value.
    """
    from spinexr.node.admin.secrets import effective_settings
    from spinexr.node.tomlout import dumps

    data = effective_settings(obj.settings())
    click.echo(json.dumps(data, indent=2) if as_json else dumps(data), nl=not as_json)
    click.echo("settings OK", err=True)


# ---------------------------------------------------------------- db
@cli.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_ctx
@edge
def db_upgrade(obj: Context, revision: str) -> None:
    """Migrate the database to the newest (or given) revision."""
    from spinexr.node.db.engine import make_engine
    from spinexr.node.db.migrate import current_revision, upgrade

    settings = obj.settings()
    _configure_logging(settings, obj.log_level)
    engine = make_engine(settings.database_url)
    upgrade(engine, revision)
    click.echo(f"database at revision {current_revision(engine)}")


@db.command("current")
@pass_ctx
@edge
def db_current(obj: Context) -> None:
    """Print the database's schema revision and the one this code needs."""
    from spinexr.node.db.engine import make_engine
    from spinexr.node.db.migrate import current_revision, head_revision

    engine = make_engine(obj.settings().database_url)
    click.echo(f"database: {current_revision(engine) or 'empty'}; code: {head_revision()}")


# ---------------------------------------------------------------- phantoms
@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Dataset folder to create (VinDr-SpineXR layout).",
)
@click.option("--studies", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--size",
    type=click.Choice(["full", "small"]),
    default="full",
    show_default=True,
    help="full: Rows×Columns in the thousands; small: about 512×384 for tests.",
)
@click.option("--test-fraction", type=click.FloatRange(0, 1), default=0.2, show_default=True)
@click.option(
    "--vindr-like",
    is_flag=True,
    help="Write headers as the real dataset has them (hex UIDs, no SOP Class UID, no Modality).",
)
@edge
def phantoms(
    out_dir: Path,
    studies: int,
    seed: int,
    size: Literal["full", "small"],
    test_fraction: float,
    vindr_like: bool,
) -> None:
    """Write a synthetic spine radiograph dataset in the VinDr-SpineXR layout.

    The images are phantoms: synthetic spines with drawn lesions, for tests and the demo
    bundle. They are not patient data and teach nothing clinical.
    """
    from spinexr.training.phantoms import generate_dataset

    summary = generate_dataset(
        out_dir,
        studies,
        seed,
        size=size,
        vindr_like=vindr_like,
        test_fraction=test_fraction,
        progress=True,
    )
    click.echo(str(summary))


# ---------------------------------------------------------------- studies
def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=lambda v: v.isoformat())


def _sessions(settings: Settings) -> Any:
    from spinexr.node.db.engine import make_engine, make_session_factory
    from spinexr.node.db.migrate import require_head

    engine = make_engine(settings.database_url)
    require_head(engine)
    return make_session_factory(engine)


@cli.group()
def studies() -> None:
    """Inspect and complete received studies."""


@studies.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@pass_ctx
@edge
def studies_list(obj: Context, as_json: bool, limit: int) -> None:
    """List studies, newest first: UID, instances, state, rule decision."""
    from spinexr.node.admin.studies import find_studies

    rows, _total = find_studies(_sessions(obj.settings()), per_page=limit)
    if as_json:
        click.echo(_json(rows))
        return
    if not rows:
        click.echo("no studies")
        return
    click.echo(f"{'study UID':<64} {'inst':>4} {'status':<9} {'job':<10} decision")
    for r in rows:
        click.echo(
            f"{r['study_instance_uid']:<64} {r['instances']:>4} {r['status']:<9} "
            f"{r['job_state'] or '-':<10} {r['decision']}"
        )


@studies.command("show")
@click.argument("uid")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
@edge
def studies_show(obj: Context, uid: str, as_json: bool) -> None:
    """Show a study's instances, jobs and audit timeline."""
    from spinexr.node.admin.studies import study_detail

    data = study_detail(_sessions(obj.settings()), uid)
    if as_json:
        click.echo(_json(data))
        return
    click.echo(
        f"study {data['study_instance_uid']}  status {data['status']}  decision {data['decision']}"
    )
    click.echo(f"instances ({len(data['instances'])}):")
    for i in data["instances"]:
        click.echo(f"  {i['sop_instance_uid']} v{i['version']} {i['size_bytes']} B {i['decision']}")
    click.echo("jobs:")
    for j in data["jobs"]:
        click.echo(
            f"  job {j['id']} {j['state']} attempts {j['attempts']}"
            + (f" error: {j['last_error']}" if j["last_error"] else "")
        )
    click.echo("timeline:")
    for e in data["timeline"]:
        move = f"{e['from_state'] or ''} -> {e['to_state']}" if e["to_state"] else ""
        click.echo(f"  {e['at']} {e['event']:<12} {move:<24} {e['detail'] or ''}")


@studies.command("complete")
@click.argument("uid")
@pass_ctx
@edge
def studies_complete(obj: Context, uid: str) -> None:
    """Mark a study complete now (creates and queues its job if it has something to analyse)."""
    from spinexr.node.admin.actions import CeleryDispatcher, complete_study

    settings = obj.settings()
    done = complete_study(settings, _sessions(settings), CeleryDispatcher(settings), uid, "cli")
    click.echo(done.message)


# ---------------------------------------------------------------- jobs / status
@cli.group()
def jobs() -> None:
    """List, inspect, retry and cancel analysis jobs."""


@jobs.command("list")
@click.option("--state", type=click.Choice([s.value for s in JobState]), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
@edge
def jobs_list(obj: Context, state: str | None, limit: int, as_json: bool) -> None:
    """List the newest jobs (optionally of one state)."""
    from spinexr.node.admin.jobs import list_jobs

    rows = list_jobs(_sessions(obj.settings()), state, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'job':>5} {'state':<10} {'prio':>4} {'try':>3}  study UID / last error")
    for r in rows:
        click.echo(
            f"{r['id']:>5} {r['state']:<10} {r['priority']:>4} {r['attempts']:>3}  "
            f"{r['study_instance_uid']}"
            + (f"\n{'':>26}{r['last_error']}" if r["last_error"] else "")
        )


@jobs.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
@edge
def jobs_show(obj: Context, job_id: int, as_json: bool) -> None:
    """Show a job: state, last error, result, outputs and export attempts."""
    from spinexr.node.admin.jobs import show_job

    row = show_job(_sessions(obj.settings()), job_id)
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    for key in (
        "id",
        "study_instance_uid",
        "state",
        "priority",
        "attempts",
        "last_error",
        "bundle_version",
        "result",
    ):
        click.echo(f"{key:<20} {row[key]}")
    for o in row["outputs"]:
        click.echo(f"output  {o['kind']:<5} {o['sop_instance_uid']}")
    for a in row["exports"]:
        click.echo(
            f"export  {a['destination']} round {a['attempt']} {a['status']}"
            + (f" ({a['error']})" if a["error"] else "")
        )


@jobs.command("retry")
@click.argument("job_id", type=int)
@pass_ctx
@edge
def jobs_retry(obj: Context, job_id: int) -> None:
    """Run a failed, dead, cancelled or finished job again (export only if built)."""
    from spinexr.node.admin.actions import CeleryDispatcher, retry

    settings = obj.settings()
    click.echo(retry(_sessions(settings), CeleryDispatcher(settings), job_id, "cli").message)


@jobs.command("cancel")
@click.argument("job_id", type=int)
@pass_ctx
@edge
def jobs_cancel(obj: Context, job_id: int) -> None:
    """Cancel a job that has not finished."""
    from spinexr.node.admin.actions import cancel

    click.echo(cancel(_sessions(obj.settings()), job_id, "cli").message)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
@edge
def status(obj: Context, as_json: bool) -> None:
    """Queue depths, jobs per state, oldest waiting job, workers seen."""
    from spinexr.node.admin.jobs import status as job_status
    from spinexr.node.tasking.depth import queue_depths

    settings = obj.settings()
    data = job_status(_sessions(settings))
    data["queue_depths"] = queue_depths(settings)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        "queues: "
        + ", ".join(f"{k} {v if v is not None else '?'}" for k, v in data["queue_depths"].items())
    )
    click.echo("jobs:   " + ", ".join(f"{k} {v}" for k, v in data["jobs"].items() if v))
    oldest = data["oldest_waiting"]
    click.echo(
        "oldest waiting: "
        + (f"job {oldest['job_id']} for {oldest['waiting_seconds']} s" if oldest else "none")
    )
    click.echo("workers seen (last hour): " + (", ".join(data["workers_seen_last_hour"]) or "none"))
    click.echo(f"failed export attempts: {data['failed_export_attempts']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="Seconds for each network check (database, broker, C-ECHO, HTTP).",
)
@pass_ctx
@edge
def doctor(obj: Context, as_json: bool, timeout: float) -> None:
    """Check installation and configuration end to end; exit 1 if any check FAILs."""
    from spinexr.node.doctor.run import exit_code, render_json, render_table, run_doctor

    results = run_doctor(
        obj.settings,
        timeout=timeout,
        on_result=lambda r: click.echo(f"checked {r.name}: {r.status.value}", err=True),
    )
    click.echo(render_json(results) if as_json else render_table(results))
    sys.exit(exit_code(results))


# ---------------------------------------------------------------- send / echo
@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--to", "to", required=True, help="Peer address HOST:PORT.")
@click.option("--calling", default="SPINEXR", show_default=True, help="Our AE title.")
@click.option("--called", default="ANY-SCP", show_default=True, help="The peer's AE title.")
@click.option("--max-pdu", type=int, default=131072, show_default=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds for the connection and each answer. Default: dicom.scu_timeout.",
)
@pass_ctx
@edge
def send(
    obj: Context,
    paths: tuple[Path, ...],
    to: str,
    calling: str,
    called: str,
    max_pdu: int,
    timeout: float | None,
) -> None:
    """C-STORE DICOM files (or folders) to a peer, with progress and a status summary."""
    from collections import Counter

    from spinexr.node.dimse.scu import Progress, SendResult, expand_paths, parse_address, send_files

    host, port = parse_address(to)
    files = expand_paths(paths)
    progress = Progress(len(files), sum(f.stat().st_size for f in files))

    def report(result: SendResult) -> None:
        line = progress.update(result.path.stat().st_size)
        if not result.ok:
            status = f"0x{result.status:04X}" if result.status is not None else "-"
            click.echo(f"FAILED {result.path} status {status} {result.error or ''}", err=True)
        if line:
            click.echo(line, err=True)

    results = send_files(
        files,
        host,
        port,
        calling=calling,
        called=called,
        max_pdu=max_pdu,
        timeout=timeout or obj.settings().dicom.scu_timeout,
        on_result=report,
    )
    counts = Counter(f"0x{r.status:04X}" if r.status is not None else "error" for r in results)
    click.echo("status summary: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if not all(r.ok for r in results):
        sys.exit(1)


@cli.command()
@click.argument("address")
@click.option("--calling", default="SPINEXR", show_default=True)
@click.option("--called", default="ANY-SCP", show_default=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds for the connection and the answer. Default: dicom.scu_timeout.",
)
@pass_ctx
@edge
def echo(obj: Context, address: str, calling: str, called: str, timeout: float | None) -> None:
    """C-ECHO a peer at HOST:PORT."""
    from spinexr.node.dimse.scu import echo as c_echo
    from spinexr.node.dimse.scu import parse_address

    host, port = parse_address(address)
    timeout = timeout or obj.settings().dicom.scu_timeout
    status = c_echo(host, port, calling=calling, called=called, timeout=timeout)
    click.echo(f"C-ECHO {called}@{host}:{port}: status 0x{status:04X}")
    if status != 0:
        sys.exit(1)


# ---------------------------------------------------------------- analyze
@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--bundle",
    "bundle_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Model bundle folder (default: models.bundle).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for one result folder per study.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="Default: models.device.",
)
@click.option(
    "--no-vertebrae-table",
    "no_vertebrae_table",
    is_flag=True,
    help="Do not print the per-vertebra table under each study.",
)
@pass_ctx
@edge
def analyze(
    obj: Context,
    paths: tuple[Path, ...],
    bundle_dir: Path | None,
    out_dir: Path,
    device: str | None,
    no_vertebrae_table: bool,
) -> None:
    """Run the pipeline offline on DICOM files or folders, one JSON result per study."""
    from tqdm import tqdm

    from spinexr.node.analyze import analyze_paths
    from spinexr.node.analyze_table import vertebrae_table
    from spinexr.pipeline.results import StudyResult

    settings = obj.settings()
    _configure_logging(settings, obj.log_level or "WARNING")
    bundle = bundle_dir or settings.models.bundle
    if bundle is None:
        raise ConfigError(["no bundle: give --bundle DIR or set models.bundle"])
    bar = tqdm(desc="analysing", unit="img", dynamic_ncols=True)
    rows: list[StudyResult] = []

    def progress(result: StudyResult, images: int) -> None:
        bar.update(images)
        rows.append(result)

    results, skipped = analyze_paths(
        list(paths),
        bundle,
        out_dir,
        device=device or settings.models.device,
        settings=settings,
        on_study=progress,
    )
    bar.close()
    for s in skipped:
        click.echo(f"skipped {s.path}: {s.reason}", err=True)
    click.echo(f"{'study UID':<64} {'img':>3} {'outcome':<11} {'p':>5} {'s':>6}  flagged")
    for r in results:
        p = "-" if r.probability is None else f"{r.probability:.3f}"
        flagged = ", ".join(c.display_name for c in r.flagged_classes) or "-"
        click.echo(
            f"{r.study_instance_uid:<64} {len(r.images):>3} {r.outcome.value:<11} "
            f"{p:>5} {r.timings.get('total', 0):6.2f}  {flagged}"
        )
        if not no_vertebrae_table:
            for line in vertebrae_table(r):
                click.echo(line)
    if results and results[0].provenance.demo:
        click.echo("DEMO BUNDLE (trained on synthetic phantoms): not for clinical use", err=True)
    click.echo(f"{len(results)} stud{'y' if len(results) == 1 else 'ies'} written to {out_dir}")


# ---------------------------------------------------------------- serve / worker
@cli.command()
@click.option(
    "--demo-bundle",
    is_flag=True,
    help="When no bundle is configured, build (once, cached) and load the synthetic-phantom "
    "demo bundle (`bundle demo`).",
)
@pass_ctx
@edge
def serve(obj: Context, demo_bundle: bool) -> None:
    """Run the node: DICOM SCP, HTTP server and (embedded mode) the worker."""
    from spinexr.node.server import run_server

    settings = obj.settings()
    _configure_logging(settings, obj.log_level)
    if not (demo_bundle and settings.models.bundle is None):
        run_server(settings, obj.config_file)
        return
    from spinexr.training.bundles.demo import cached_demo, default_demo_dir, demo_identity
    from spinexr.training.bundles.prepare import start_preparation, stop_preparation

    out = default_demo_dir()
    preparing = None
    if cached_demo(out, ct=True, characteriser=True) is None:
        # Staged first start: receive at once, analyse each study when its models are ready.
        preparing = start_preparation(out, demo_identity())
        click.echo(
            f"[demo] the demo bundle is being prepared in the background ({out}); the node "
            "receives now and analyses each study as soon as its models are ready (the "
            "dashboard shows the progress)",
            err=True,
        )
    # Environment, so that worker processes started by serve load the same bundle.
    os.environ["SPINEXR_MODELS__BUNDLE"] = str(out)
    obj.reset()
    try:
        run_server(obj.settings(), obj.config_file)
    finally:
        if preparing is not None:
            stop_preparation(preparing, out)


@cli.command()
@click.option(
    "--queues",
    default="inference,export",
    show_default=True,
    help="Comma-separated Celery queues to consume.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes (1 per GPU is the default for inference).",
)
@pass_ctx
@edge
def worker(obj: Context, queues: str, concurrency: int) -> None:
    """Run a Celery worker for the given queues (scaled-out mode)."""
    from spinexr.node.tasking.app import INFERENCE_QUEUE, run_worker

    settings = obj.settings()
    _configure_logging(settings, obj.log_level)
    if INFERENCE_QUEUE in queues and settings.models.bundle is None:
        raise ConfigError(["models.bundle: an inference worker needs a model bundle"])
    run_worker(settings, [q.strip() for q in queues.split(",") if q.strip()], concurrency)


def _configure_logging(settings: Settings, override: str | None) -> None:
    from spinexr.node.logs import configure_logging

    configure_logging(override or settings.node.log_level)


def main() -> None:
    """Entry point of the ``spinexr-node`` console script."""
    cli(prog_name="spinexr-node")


if __name__ == "__main__":
    main()
