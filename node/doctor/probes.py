"""Runtime probes shared by ``/readyz`` and ``spinexr-node doctor``.

Each ``check_*`` function returns a :data:`~spinexr.node.doctor.result.Verdict` and bounds
its own network waits with ``timeout``; the callers add a deadline of their own on top
(:mod:`spinexr.node.doctor.result`). Details name UIDs, paths, hosts and versions, never a
password or token (:func:`spinexr.node.admin.secrets.secret_values` lists what to redact).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Hashable
from pathlib import Path
from urllib.parse import urlsplit

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from spinexr.node.admin import destinations
from spinexr.node.db.engine import normalise_url
from spinexr.node.doctor.result import Status, Verdict
from spinexr.node.settings import Destination, Settings
from spinexr.node.tasking.app import EXPORT_QUEUE, INFERENCE_QUEUE, broker_url

UPGRADE_HINT = "run `spinexr-node db upgrade`"

BUNDLE_VERIFY_SECONDS = 300.0
"""Time allowed to verify a bundle (import the pipeline library, hash every file)."""


# ------------------------------------------------------------------------------ database
def probe_engine(url: str, timeout: float) -> Engine:
    """Create an engine for probes: short connect timeouts, at most a few connections.

    Unlike :func:`spinexr.node.db.engine.make_engine` it creates no folder.

    Parameters
    ----------
    url : str
        SQLAlchemy URL.
    timeout : float
        Seconds to wait for a connection (PostgreSQL) or a lock (SQLite).

    Returns
    -------
    Engine
        The engine.
    """
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return create_engine(url, connect_args={"timeout": timeout})
    return create_engine(
        url,
        pool_size=2,
        max_overflow=2,
        pool_timeout=timeout,
        pool_pre_ping=True,
        connect_args={"connect_timeout": max(1, round(timeout))},
    )


def sqlite_file(url: str) -> Path | None:
    """Return the file of a SQLite URL (None for other backends and in-memory databases)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_database(engine: Engine, head: str) -> Verdict:
    """Run a trivial query and compare the schema revision with the code's.

    Parameters
    ----------
    engine : Engine
        The database (a probe engine).
    head : str
        The newest migration's revision (:func:`spinexr.node.db.migrate.head_revision`).

    Returns
    -------
    Verdict
        OK at head; FAIL with the fix (``spinexr-node db upgrade``) otherwise.
    """
    backend = engine.url.get_backend_name()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:  # down, unreachable, refusing: say so in one line
        reason = str(exc.orig or exc).strip().splitlines()[0]
        return Status.FAIL, f"{backend} unreachable: {reason}"
    if current is None:
        return Status.FAIL, f"{backend} reachable but has no schema: {UPGRADE_HINT}"
    if current != head:
        return (
            Status.FAIL,
            f"{backend} schema is at {current}, this version needs {head}: {UPGRADE_HINT}",
        )
    return Status.OK, f"{backend} reachable, schema at head ({head})"


# ------------------------------------------------------------------------------ broker
def _broker_options(url: str) -> dict[str, object]:
    # As spinexr.node.tasking.app.configure sets them: with priority steps a queue is several
    # Redis lists, and the transport only counts them all when it knows the steps.
    if url.startswith(("redis://", "rediss://")):
        return {"queue_order_strategy": "priority", "priority_steps": list(range(11))}
    return {}


def embedded_broker_file(settings: Settings) -> Path | None:
    """Return the embedded broker's SQLite file (None when a broker URL is configured)."""
    return (
        (settings.storage.data_dir / "broker.sqlite").resolve() if settings.embedded_queue else None
    )


def broker_depths(settings: Settings, timeout: float) -> dict[str, int]:
    """Connect to the broker and return the messages waiting per queue.

    Parameters
    ----------
    settings : Settings
        ``queue.broker_url`` (empty: the embedded SQLite broker in ``storage.data_dir``).
    timeout : float
        Connect timeout; one attempt, no retries.

    Returns
    -------
    dict of str to int
        ``{"inference": n, "export": m}``; a queue nobody declared yet counts 0.

    Raises
    ------
    Exception
        Whatever the transport raises when the broker cannot be reached.
    """
    from kombu import Connection

    url = broker_url(settings)
    depths: dict[str, int] = {}
    with Connection(url, connect_timeout=timeout, transport_options=_broker_options(url)) as conn:
        conn.ensure_connection(max_retries=0, timeout=timeout)
        channel = conn.default_channel
        for name in (INFERENCE_QUEUE, EXPORT_QUEUE):
            try:
                depths[name] = int(channel.queue_declare(name, passive=True).message_count)
            except conn.channel_errors:  # a queue nobody declared yet
                depths[name] = 0
    return depths


def check_broker(settings: Settings, timeout: float, *, create: bool = True) -> Verdict:
    """Check the Celery broker: Redis when scaled out, the SQLite file when embedded.

    Parameters
    ----------
    settings : Settings
        Queue and storage settings.
    timeout : float
        Connect timeout.
    create : bool
        Embedded mode: open the broker file even if it does not exist yet (which creates it).
        ``doctor`` passes False and reports that ``serve`` will create it.

    Returns
    -------
    Verdict
        OK with the waiting messages per queue; FAIL when the broker cannot be reached.
    """
    path = embedded_broker_file(settings)
    if path is not None and not create and not path.exists():
        return Status.OK, f"embedded SQLite broker {path} does not exist yet; serve creates it"
    try:
        depths = broker_depths(settings, timeout)
    except Exception as exc:
        where = f"embedded SQLite broker {path}" if path else _broker_host(settings)
        return Status.FAIL, f"{where} not reachable: {type(exc).__name__}: {exc}"
    waiting = ", ".join(f"{name} {n}" for name, n in depths.items())
    if path is not None:
        return Status.OK, f"embedded SQLite broker {path} opens; waiting: {waiting}"
    return Status.OK, f"{_broker_host(settings)} reachable; waiting: {waiting}"


def _broker_host(settings: Settings) -> str:
    parts = urlsplit(settings.queue.broker_url.get_secret_value())
    return f"broker {parts.scheme}://{parts.hostname or ''}:{parts.port or ''}"


# ------------------------------------------------------------------------------ bundle
def bundle_fingerprint(directory: Path) -> Hashable:
    """Return the size and modification time of every file in a bundle folder.

    Cheap (no hashing): a cached verification stays valid while this is unchanged.

    Parameters
    ----------
    directory : Path
        The bundle folder.

    Returns
    -------
    tuple
        ``(relative path, size, mtime_ns)`` per file, sorted.
    """
    entries = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            st = path.stat()
            entries.append((str(path.relative_to(directory)), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def check_bundle(settings: Settings, timeout: float = BUNDLE_VERIFY_SECONDS) -> Verdict:
    """Verify the configured model bundle (manifest, class list, preprocessing, SHA-256s).

    The verification runs in a child process (:func:`verify_in_child`): the pipeline
    library imports torch, which would cost ``serve`` several hundred MiB it never needs.

    Parameters
    ----------
    settings : Settings
        ``models.bundle`` and the queue mode.
    timeout : float
        Seconds the verification may take (it hashes every weight file).

    Returns
    -------
    Verdict
        OK with name, version and device UID; WARN for a demo bundle, or for no bundle on a
        scaled-out node (the inference workers hold it); FAIL for no bundle on an embedded
        node or a bundle that does not verify (the error names the file).
    """
    directory = settings.models.bundle
    if directory is None:
        if settings.embedded_queue:
            return (
                Status.FAIL,
                "no model bundle configured (models.bundle): studies are stored but not analysed",
            )
        return (
            Status.WARN,
            "no bundle on this node: inference workers analyse; set models.bundle here too so "
            "that job keys carry the model version",
        )
    if not (directory / "manifest.json").is_file():  # say so without starting a child
        return Status.FAIL, f"models.bundle: {directory} is not a model bundle (no manifest.json)"
    return verify_in_child(directory, timeout)


_BUNDLE_CHILD = (
    "import json, sys; from pathlib import Path; "
    "from spinexr.node.doctor.probes import bundle_verdict; "
    "status, detail = bundle_verdict(Path(sys.argv[1])); "
    "print(json.dumps([status.value, detail]))"
)


def verify_in_child(directory: Path, timeout: float) -> Verdict:
    """Run :func:`bundle_verdict` in a child Python process and return its verdict.

    Parameters
    ----------
    directory : Path
        The bundle folder.
    timeout : float
        Seconds the child may run.

    Returns
    -------
    Verdict
        The child's verdict; FAIL when it dies or runs out of time.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _BUNDLE_CHILD, str(directory)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Status.FAIL, f"verifying {directory} took longer than {timeout:g} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    if proc.returncode != 0 or not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])
        return Status.FAIL, f"bundle check process failed (exit {proc.returncode}): {tail}"[:400]
    status, detail = json.loads(lines[-1])
    return Status(status), str(detail)


def bundle_verdict(directory: Path) -> Verdict:
    """Verify a bundle in this process (imports the pipeline library, hence torch).

    Parameters
    ----------
    directory : Path
        The bundle folder.

    Returns
    -------
    Verdict
        See :func:`check_bundle`.
    """
    from spinexr.pipeline.bundle import verify_bundle
    from spinexr.pipeline.errors import BundleError

    try:
        bundle = verify_bundle(directory)
    except BundleError as exc:
        return Status.FAIL, str(exc)
    what = (
        f"{bundle.name} {bundle.version} verified ({len(bundle.manifest.files)} files, "
        f"device UID {bundle.device_uid})"
    )
    if bundle.demo:
        return (
            Status.WARN,
            f"{what}; DEMO bundle trained on synthetic phantoms: not for clinical use",
        )
    return Status.OK, what


# ------------------------------------------------------------------------------ spool
def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_spool(settings: Settings, *, write_test: bool) -> Verdict:
    """Check the spool's free space against ``storage.min_free_mb`` (and that it is writable).

    Parameters
    ----------
    settings : Settings
        ``storage`` settings.
    write_test : bool
        Write, fsync and delete a small file (doctor); else only check write permission.

    Returns
    -------
    Verdict
        FAIL below the watermark (C-STORE answers 0xA700) or when not writable; WARN below
        twice the watermark, or when the folder does not exist yet.
    """
    spool = settings.storage.spool_dir
    folder = _existing(spool)
    free_mib = shutil.disk_usage(folder).free // 2**20
    watermark = settings.storage.min_free_mb
    if free_mib < watermark:
        return (
            Status.FAIL,
            f"{free_mib} MiB free for {spool}, below the watermark storage.min_free_mb = "
            f"{watermark} MiB: C-STORE answers 0xA700 and STOW-RS 503",
        )
    if write_test:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-") as fh:
                fh.write(b"spinexr-node doctor\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            return Status.FAIL, f"{folder} is not writable: {exc.strerror or exc}"
    elif not os.access(folder, os.W_OK):
        return Status.FAIL, f"{folder} is not writable by this process"
    detail = f"{free_mib} MiB free (watermark {watermark} MiB)"
    if folder != spool:
        return Status.WARN, f"{spool} does not exist yet (serve creates it); {detail} on {folder}"
    if free_mib < 2 * watermark:
        return Status.WARN, f"{detail}: less than twice the watermark left on {spool}"
    return Status.OK, f"{detail} on {spool}" + (", writable" if write_test else "")


# ------------------------------------------------------------------------------ destinations
def check_destination(dest: Destination, settings: Settings, timeout: float) -> Verdict:
    """Check that a destination answers (`spinexr.node.admin.destinations.check_destination`).

    Parameters
    ----------
    dest : Destination
        The destination.
    settings : Settings
        Our AE title (calling AE of the C-ECHO).
    timeout : float
        Seconds for the network exchange.

    Returns
    -------
    Verdict
        OK when it answers; FAIL when it cannot be reached, refuses us or our credentials;
        WARN when a DICOMweb server answers QIDO-RS with another error (it may accept
        STOW-RS anyway).
    """
    c = destinations.check_destination(settings, dest, timeout)
    code = c.http_status
    if c.ok:
        return Status.OK, f"{c.method} to {c.address}: success"
    if code in (401, 403):
        return Status.FAIL, f"{c.address} refused our credentials (HTTP {code})"
    if code is not None:
        return Status.WARN, f"{c.address} is reachable but answered QIDO-RS with HTTP {code}"
    if c.status is not None:
        return Status.FAIL, f"C-ECHO to {c.address} answered status 0x{c.status:04X}"
    return Status.FAIL, f"{c.address} not reachable: {c.error}"
