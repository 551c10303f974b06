"""A 2,000-instance CT study through ingest, assembly and the admin pages (issue 17).

Usage::

    .venv/bin/python benchmarks/ct_ingest.py [--instances 2000] [--size 64] [--small 4]
        [--runs 1] [--repeats 5] [--window 100] [--history 50] [--no-reference]
        [--cache DIR]

"A CT study has hundreds of instances: the assembler, the completion timer, the job table
and the admin pages must stay fast with 2,000-instance studies." This measures each, always
against a reference from the same run:

* **ingest**: a ``spinexr-node serve`` in a fresh data folder (study completion pushed out,
  so the assembler stays idle) receives a small CT study (``--small`` slices, the reference
  study below), then the big one (``--instances`` slices of ``--size``² 16-bit pixels, one
  series): dcmtk's ``storescu`` on one association (``TCP_NODELAY=1``), each instance timed
  from the previous C-STORE response to its own (the first from its request), as
  ``storescu -v`` reports them. Reported: instances/s over the first and the last
  ``--window`` instances of the big study and their ratio (last/first: 1 means the cost of an
  instance does not grow with the study; quadratic work shows as a ratio well under 1), and
  per tenth of the study. The same sender and files go to dcmtk's ``storescp``
  (``TCP_NODELAY=1``; no fsync, no database) and to ``storescp+fsync`` (the same, running
  ``sync FILE`` before each response: the file as durable as ours, no database) as the
  references: their own last/first ratio shows the sender's drift, ours/reference the node's
  overhead. Small slices, so that the per-instance overhead is measured, not the disk.
* **assembly**: the node stopped, its database is copied (SQLite backup API) ``--repeats``
  times; on each copy the study assembler's completion timer (`StudyAssembler.complete_due`)
  completes the big study and creates its job, and the same on a copy taken while only the
  small study had arrived. Also one timer tick with nothing due while the big study is
  receiving.
* **admin**: on those copies, the node's own app (`create_app`, through FastAPI's TestClient,
  logged in): the study page, the studies list (filtered to the study, and its first page of
  50 studies), the API's study, the job table (``/api/v1/jobs``), the job, the dashboard and
  the failures page, each ``--repeats`` times (after one warm-up request); big study (and
  database holding it) against small study (database without the big one).
* **+history**: the same for the big study on a copy that also holds ``--history`` past
  studies of the same size (database rows only, received two days earlier, each with a
  verified job): pages that read every instance row of the database, rather than those of
  the study they show, slow down as a CT site's database grows.

Prints a progress line every 250 instances, then two tables (medians, min-max) with the
ratios. Exits 1 if an instance was refused or is missing from the database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import pydicom  # noqa: E402
from ct_ingest_support import ct_series, write_slices  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from testsupport import NodeProcess, free_port, node_env  # noqa: E402

from spinexr.node.settings import Settings  # noqa: E402

TOKEN = "ct-ingest-benchmark-token"
HISTORY_ROOT = "1.2.826.0.1.3680043.8.498.1717."
"""Study UIDs of the past studies (none starts with another study's UID)."""
DCMTK_PDU = 131072


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- files


def make_study(count: int, size: int, cache: Path, name: str) -> list[Path]:
    """``count`` CT slices of one series (chest), written once under ``cache``."""
    folder = cache / f"ct-{name}-{count}-{size}-v1"
    if (folder / ".complete").exists():
        files = sorted(folder.glob("*.dcm"))
        if len(files) == count:
            log(f"using {count} cached files in {folder}")
            return files
    shutil.rmtree(folder, ignore_errors=True)
    study = generate_uid(entropy_srcs=["ct-bench", name, str(count), str(size)])
    series = generate_uid(entropy_srcs=[study, "series"])
    t0 = time.perf_counter()
    datasets = ct_series(count, study_uid=study, series_uid=series, size=size)
    files: list[Path] = []
    step = 500
    for start in range(0, count, step):
        files += write_slices(datasets[start : start + step], folder)
        log(f"written {len(files)}/{count} files ({name})")
    (folder / ".complete").touch()
    log(f"generated {count} files in {time.perf_counter() - t0:.1f} s")
    return files


# --------------------------------------------------------------------------- sending


def send(port: int, aec: str, files: list[Path], label: str, progress: int = 250) -> list[float]:
    """Send ``files`` with one ``storescu`` (one association, Nagle off); per-instance seconds.

    Each instance's time is the interval between its C-STORE response and the previous one
    (for the first, from its request: the process start and the association are left out),
    from the time each ``Sending Store Request`` / ``Received Store Response`` line of
    ``storescu -v`` reaches this process.
    """
    cmd = ["storescu", "-v", "-pdu", str(DCMTK_PDU), "-aec", aec, "127.0.0.1", str(port)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    t_start = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    assert proc.stdout is not None
    stamps: list[float] = []
    tail: list[bytes] = []
    for line in proc.stdout:
        tail = [*tail[-20:], line]
        if not stamps and b"Sending Store Request" in line:
            stamps.append(time.perf_counter())
        if b"Received Store Response" not in line:
            continue
        if b"(Success)" not in line:
            raise RuntimeError(f"{label}: {line.decode(errors='replace').strip()}")
        stamps.append(time.perf_counter())
        done = len(stamps) - 1
        if progress and (done % progress == 0 or done == len(files)):
            spent = stamps[-1] - t_start
            log(f"{label:>14}: sent {done}/{len(files)} in {spent:.1f} s ({done / spent:.0f}/s)")
    if proc.wait() != 0 or len(stamps) != len(files) + 1:  # the first request, each response
        text = b"".join(tail).decode(errors="replace")
        raise RuntimeError(f"{label}: storescu exited {proc.returncode}: {text}")
    return [b - a for a, b in itertools.pairwise(stamps)]


def rate(times: list[float]) -> float:
    return len(times) / sum(times)


def run_storescp(files: list[Path], work: Path, *, fsync: bool = False) -> list[float]:
    """dcmtk's storescp; with ``fsync`` it runs ``sync FILE`` before each response."""
    out = work / "storescp-out"
    out.mkdir()
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    cmd = ["storescp", "-pdu", str(DCMTK_PDU), "-aet", "STORESCP", "-od", str(out)]
    if fsync:
        cmd += ["--exec-on-reception", "sync #p/#f", "--exec-sync"]
    proc = subprocess.Popen(
        [*cmd, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(
            ["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)], capture_output=True, env=env
        ).returncode:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("storescp did not start")
            time.sleep(0.1)
        return send(port, "STORESCP", files, "storescp+fsync" if fsync else "storescp")
    finally:
        proc.terminate()
        proc.wait()


def run_ours(small: list[Path], big: list[Path], work: Path) -> tuple[list[float], Path, Path]:
    """Small study, snapshot of the database, big study; per-instance times of the big one."""
    from ingest import wait_until_idle

    data = work / "var"
    dport, hport = free_port(), free_port()
    env = node_env(data, dport, hport, SPINEXR_STUDY__COMPLETION_SECONDS="1000000")
    node = NodeProcess(data, dport, hport, env, work / "serve.log")
    node.start()
    ref_db = work / "small-only.db"
    try:
        assert node.proc is not None
        wait_until_idle(node.proc.pid)
        send(dport, "SPINEXR", small, "ours", progress=0)
        backup(data / "spinexr.db", ref_db)
        times = send(dport, "SPINEXR", big, "ours")
    finally:
        code = node.stop()
    if code != 0:
        raise RuntimeError(f"serve exited {code}:\n{node.log()[-2000:]}")
    with sqlite3.connect(data / "spinexr.db") as db:
        (rows,) = db.execute("SELECT count(*) FROM instances").fetchone()
        (analysed,) = db.execute(
            "SELECT count(*) FROM instances WHERE decision='analyse'"
        ).fetchone()
    if rows != len(small) + len(big) or analysed != rows:
        raise RuntimeError(f"{rows} rows ({analysed} analyse) for {len(small) + len(big)} sent")
    return times, ref_db, data


def backup(src: Path, dst: Path) -> None:
    """Copy a SQLite database (consistent even while another process writes it)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def add_history(src: Path, dst: Path, big_uid: str, count: int) -> None:
    """Copy ``src`` with ``count`` past CT studies: the big study's rows received 2+ days ago.

    Rows only (their paths are the big study's files), each study complete with a verified
    job: the database of a site that has been receiving CT for a while, outside the
    dashboard's 24-hour window.
    """
    backup(src, dst)
    with sqlite3.connect(dst) as con:
        big_id, first = con.execute(
            "SELECT id, first_received_at FROM studies WHERE study_instance_uid=?", (big_uid,)
        ).fetchone()
        start = dt.datetime.fromisoformat(first) - dt.timedelta(days=2 + count / 86400)
        for h in range(count):
            at = (start + dt.timedelta(seconds=h)).strftime("%Y-%m-%d %H:%M:%S.%f")
            sid = con.execute(
                "INSERT INTO studies (study_instance_uid, accession_number, modality, calling_ae,"
                " source, priority, status, decision, first_received_at, last_received_at,"
                " completed_at) SELECT ? || ?, accession_number,"
                " modality, calling_ae, source, priority, 'complete', decision, ?, ?, ?"
                " FROM studies WHERE id=?",
                (HISTORY_ROOT, h + 1, at, at, at, big_id),
            ).lastrowid
            con.execute(
                "INSERT INTO instances (study_id, series_instance_uid, sop_instance_uid,"
                " sop_class_uid, transfer_syntax_uid, version, path, size_bytes, content_hash,"
                " calling_ae, source, decision, received_at) SELECT ?, series_instance_uid,"
                " sop_instance_uid || '.' || ?, sop_class_uid, transfer_syntax_uid, version,"
                " path, size_bytes, content_hash, calling_ae, source, decision, ?"
                " FROM instances WHERE study_id=?",
                (sid, h + 1, at, big_id),
            )
            con.execute(
                "INSERT INTO jobs (study_id, state, priority, idempotency_key, attempts,"
                " max_attempts, bundle_version, created_at, updated_at)"
                " VALUES (?, 'verified', 0, ?, 1, 5, 'bench@1', ?, ?)",
                (sid, f"history-{h}", at, at),
            )


# --------------------------------------------------------------------------- in-process


def node_settings(data: Path, db: Path) -> Settings:
    for key in [k for k in os.environ if k.startswith("SPINEXR_")]:
        del os.environ[key]
    return Settings(
        storage={"data_dir": str(data), "min_free_mb": 1},
        database={"url": f"sqlite:///{db}"},
        http={"api_token": TOKEN},
        study={"completion_seconds": 1},
    )


def study_times(db: Path, uid: str) -> tuple[dt.datetime, dt.datetime]:
    with sqlite3.connect(db) as con:
        first, last = con.execute(
            "SELECT first_received_at, last_received_at FROM studies WHERE study_instance_uid=?",
            (uid,),
        ).fetchone()

    def parse(v: str) -> dt.datetime:
        return dt.datetime.fromisoformat(v).replace(tzinfo=dt.UTC)

    return parse(first), parse(last)


PAGES: list[tuple[str, Callable[[str, int], str]]] = [
    ("study page", lambda uid, job: f"/admin/studies/{uid}"),
    ("studies list, the study", lambda uid, job: f"/admin/studies?uid={uid}"),
    ("studies list, 1st page", lambda uid, job: "/admin/studies"),
    ("API study", lambda uid, job: f"/api/v1/studies/{uid}"),
    ("job table (API)", lambda uid, job: "/api/v1/jobs"),
    ("API job", lambda uid, job: f"/api/v1/jobs/{job}"),
    ("dashboard", lambda uid, job: "/admin/"),
    ("failures page", lambda uid, job: "/admin/failures"),
]


def measure_copy(
    source: Path, data: Path, work: Path, name: str, others: list[str], uid: str, repeats: int
) -> dict[str, list[float]]:
    """On ``repeats`` copies: complete ``others`` (untimed), then ``uid`` (timed); pages."""
    from fastapi.testclient import TestClient

    from spinexr.node.db.engine import make_engine, make_session_factory
    from spinexr.node.http.app import create_app
    from spinexr.node.ingest.assembler import StudyAssembler
    from spinexr.node.ingest.service import IngestService
    from spinexr.node.ingest.spool import Spool

    out: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    for r in range(repeats):
        db = work / f"{name}-{r}.db"
        backup(source, db)
        settings = node_settings(data, db)
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        assembler = StudyAssembler(settings, sessions, "bench@1")
        first, last = study_times(db, uid)
        assembler.complete_due(now=first)  # warm: the connection, its statement cache
        t0 = time.perf_counter()
        assert assembler.complete_due(now=first) == []  # a tick with nothing due
        out.setdefault("timer tick, nothing due", []).append(time.perf_counter() - t0)
        for other in others:
            assembler.force_complete(other)
        t0 = time.perf_counter()
        created = assembler.complete_due(now=last + dt.timedelta(seconds=2))
        out.setdefault("completion + job", []).append(time.perf_counter() - t0)
        if len(created) != 1:
            raise RuntimeError(f"{name}: {len(created)} jobs created for the study")
        job = created[0]
        ingest = IngestService(settings, sessions, Spool(settings.storage.spool_dir))
        with TestClient(create_app(settings, ingest)) as client:
            login = client.post("/admin/login", data={"token": TOKEN}, follow_redirects=False)
            assert login.status_code == 303, login.text
            headers = {"Authorization": f"Bearer {TOKEN}"}
            for label, path in PAGES:
                url = path(uid, job)
                client.get(url, headers=headers)  # warm (templates, statement caches)
                t0 = time.perf_counter()
                response = client.get(url, headers=headers)
                out.setdefault(label, []).append(time.perf_counter() - t0)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
                sizes[label] = len(response.content)
        engine.dispose()
        log(f"{name}: repeat {r + 1}/{repeats} done")
    for label, size in sizes.items():
        out.setdefault(f"{label} bytes", []).append(float(size))
    return out


# --------------------------------------------------------------------------- report


def spread(values: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):{fmt}} ({min(v):{fmt}}-{max(v):{fmt}})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="rows = columns of each slice")
    parser.add_argument("--small", type=int, default=4, help="slices of the reference study")
    parser.add_argument("--runs", type=int, default=1, help="ingest runs per target")
    parser.add_argument("--repeats", type=int, default=5, help="assembly and page repeats")
    parser.add_argument("--window", type=int, default=100, help="first/last N instances")
    parser.add_argument(
        "--history",
        type=int,
        default=50,
        help="past CT studies (database rows) of the third admin column",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip dcmtk's storescp")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "spinexr-bench")
    args = parser.parse_args()
    if args.instances < 2 * args.window:
        parser.error("--instances must be at least twice --window")
    for tool in ("storescu", "echoscu") + (() if args.no_reference else ("storescp",)):
        if shutil.which(tool) is None:
            parser.error(f"{tool} (dcmtk) is not installed")

    big = make_study(args.instances, args.size, args.cache, "big")
    small = make_study(args.small, args.size, args.cache, "small")
    big_uid = str(pydicom.dcmread(big[0], stop_before_pixels=True).StudyInstanceUID)
    small_uid = str(pydicom.dcmread(small[0], stop_before_pixels=True).StudyInstanceUID)
    for f in big + small:  # the sender starts from a warm page cache for every target
        f.read_bytes()
    log(
        f"{len(big)} + {len(small)} CT slices of {args.size}x{args.size} "
        f"({big[0].stat().st_size / 1e3:.1f} kB each), {os.cpu_count()} CPUs; "
        "load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    )

    w = args.window
    ingest: dict[str, list[list[float]]] = {}
    kept: tuple[Path, Path, Path] | None = None
    work_root = Path(tempfile.mkdtemp(prefix="bench-ct-"))
    try:
        for run in range(args.runs):
            targets = ([] if args.no_reference else ["storescp", "storescp+fsync"]) + ["ours"]
            for target in targets:
                work = work_root / f"{target}-{run}"
                work.mkdir()
                os.sync()
                if target.startswith("storescp"):
                    times = run_storescp(big, work, fsync=target.endswith("fsync"))
                else:
                    times, ref_db, data = run_ours(small, big, work)
                    kept = (ref_db, data / "spinexr.db", data)
                ingest.setdefault(target, []).append(times)
                log(
                    f"{target:>14}  run {run + 1}/{args.runs}: {rate(times):.0f} inst/s; first "
                    f"{w} {rate(times[:w]):.0f}/s, last {w} {rate(times[-w:]):.0f}/s"
                )
        assert kept is not None
        ref_db, big_db, data = kept
        pages_dir = work_root / "copies"
        pages_dir.mkdir()
        log("assembly and pages: database without the big study, small study")
        small_side = measure_copy(ref_db, data, pages_dir, "small", [], small_uid, args.repeats)
        log("assembly and pages: database with the big study, big study")
        big_side = measure_copy(big_db, data, pages_dir, "big", [small_uid], big_uid, args.repeats)
        history_db = work_root / "history.db"
        log(f"adding {args.history} past {args.instances}-instance studies (rows only)")
        add_history(big_db, history_db, big_uid, args.history)
        log("assembly and pages: database with the big study and the past ones, big study")
        past_side = measure_copy(
            history_db, data, pages_dir, "history", [small_uid], big_uid, args.repeats
        )
    except Exception as exc:
        log(f"FAILED: {type(exc).__name__}: {exc}")
        return 1
    finally:
        shutil.rmtree(work_root, ignore_errors=True)

    log("")
    log(f"ingest, {args.instances}-instance CT study, one association (inst/s, median of runs)")
    log(f"{'target':>19} {'all':>8} {f'first {w}':>10} {f'last {w}':>10} {'last/first':>11}")
    rates: dict[str, tuple[float, float, float]] = {}
    for target, runs in ingest.items():
        a = statistics.median(rate(t) for t in runs)
        f = statistics.median(rate(t[:w]) for t in runs)
        la = statistics.median(rate(t[-w:]) for t in runs)
        rates[target] = (a, f, la)
        log(f"{target:>19} {a:8.0f} {f:10.0f} {la:10.0f} {la / f:11.2f}")
    for ref in [t for t in rates if t != "ours"]:
        o, s = rates["ours"], rates[ref]
        log(f"{'ours/' + ref:>19} {o[0] / s[0]:8.2f} {o[1] / s[1]:10.2f} {o[2] / s[2]:10.2f}")
    if len(rates) > 1:
        log("(storescp: no fsync, no database; storescp+fsync: `sync FILE` before each response)")
    log("inst/s by tenth of the study (median of runs):")
    for target, runs in ingest.items():
        tenths = [
            statistics.median(rate(t[len(t) * k // 10 : len(t) * (k + 1) // 10]) for t in runs)
            for k in range(10)
        ]
        log(f"{target:>19} " + " ".join(f"{v:6.0f}" for v in tenths))
    slowest = max(max(t) for t in ingest["ours"])
    log(f"ours: slowest single C-STORE {slowest * 1e3:.1f} ms")

    log("")
    log(
        f"assembly and admin (ms, median (min-max) of {args.repeats}; small: the "
        f"{args.small}-instance study, database without the big one; big: the "
        f"{args.instances}-instance study; +history: big, with {args.history} past "
        f"{args.instances}-instance studies in the database)"
    )
    log(
        f"{'':>24} {'small':>20} {'big':>20} {'+history':>20} {'big/small':>10} {'+hist/small':>11}"
    )
    for label in ["timer tick, nothing due", "completion + job"] + [p for p, _ in PAGES]:
        s, b, h = small_side[label], big_side[label], past_side[label]
        r1 = statistics.median(b) / statistics.median(s)
        r2 = statistics.median(h) / statistics.median(s)
        log(
            f"{label:>24} {spread(s, 1e3):>20} {spread(b, 1e3):>20} {spread(h, 1e3):>20} "
            f"{r1:10.2f} {r2:11.2f}"
        )
    log(
        "page sizes (kB, small / big): "
        + ", ".join(
            f"{p} {small_side[p + ' bytes'][0] / 1e3:.0f} / {big_side[p + ' bytes'][0] / 1e3:.0f}"
            for p, _ in PAGES
        )
    )
    log("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
