"""C-STORE throughput of our SCP against dcmtk's storescp, same files, same sender.

Usage::

    .venv/bin/python benchmarks/ingest.py [--files 200] [--size 2500x2000] [--pdu 131072]
        [--associations 1 4] [--repeats 3]
        [--targets storescp storescp-nodelay storescp+fsync ours] [--dcmtk-nagle]
        [--baseline DIR]

Sends the same N phantom DX files (uncompressed, 16-bit) over loopback with dcmtk's
``storescu`` (one process per association, files split round-robin) to

* ``storescp``: dcmtk's reference SCP as shipped (``--fork``, writes each file to a folder;
  it does not fsync and keeps no database, which favours it). dcmtk >= 3.6.2 leaves Nagle's
  algorithm on unless ``TCP_NODELAY=1`` is set, so it writes each C-STORE response in two
  pieces and the second waits for the sender's delayed ACK (~40 ms per instance on Linux),
* ``storescp-nodelay``: the same with ``TCP_NODELAY=1``, its best case,
* ``storescp+fsync``: the same with ``TCP_NODELAY=1``, running ``sync FILE`` before each
  response (``--exec-on-reception --exec-sync``): the same durability as ours for the file
  (no folder fsync, no database), and
* ``ours``: ``spinexr-node serve`` (fsync of file and folder, SQLite commit with
  ``synchronous=FULL``, rules; study completion pushed out so the assembler stays idle),

with the same maximum PDU on both, and prints MB/s (file bytes, 10^6; min, median and max
of the repeats), instances/s (median) and the ratios ours / reference per association count
(median of the per-repeat ratios, with their min and max). Dirty pages are
flushed (``sync``) between runs, outside the timed part. A node is timed once its start-up is
over (its processes idle), not while its worker is still importing. After each run of ours
every instance must be acknowledged (storescu exit code 0) and in the database.

``--baseline DIR`` adds the target ``baseline``: the same node run from another checkout
(e.g. ``git worktree add /tmp/base HEAD``), interleaved with the others so that a change is
compared with what it replaces under the same load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from testsupport import NodeProcess, free_port, node_env  # noqa: E402

DCMTK_MAX_PDU = 131072  # storescu/storescp accept 4096..131072

# The sender (storescu, for every target) runs with Nagle off, its best case, unless
# --dcmtk-nagle is given; the target 'storescp' runs as shipped (Nagle on), 'storescp-nodelay'
# with Nagle off.
DCMTK_ENV: dict[str, str] = {**os.environ, "TCP_NODELAY": "1"}
DCMTK_DEFAULT_ENV: dict[str, str] = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- files


def make_files(n: int, rows: int, cols: int, cache: Path) -> list[Path]:
    """N DX files of rows×cols (a few renders, new UIDs each); cached between runs."""
    folder = cache / f"dx-{n}-{rows}x{cols}-v1"
    done = folder / ".complete"
    if done.exists():
        files = sorted(folder.glob("*.dcm"))
        if len(files) == n:
            log(f"using {n} cached files in {folder}")
            return files
    from pydicom.uid import generate_uid

    from spinexr.training.phantoms import make_phantom_image, write

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    bases = []
    for seed, view in enumerate(["AP", "LAT", "AP", "LAT"]):
        log(f"rendering phantom {seed + 1}/4 ({rows}x{cols}, {view})")
        bases.append(make_phantom_image(seed, sop_class="DX", size=(rows, cols), view=view)[0])
    per_study = 4
    files = []
    for i in range(n):
        ds = bases[i % len(bases)]
        key = f"bench-{n}-{rows}x{cols}"
        study = generate_uid(entropy_srcs=[key, "study", str(i // per_study)])
        sop = generate_uid(entropy_srcs=[key, "sop", str(i)])
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study, "series"])
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = i % per_study + 1
        path = folder / f"{i:04d}.dcm"
        write(ds, path)
        files.append(path)
        if (i + 1) % 50 == 0 or i + 1 == n:
            log(f"written {i + 1}/{n} files")
    done.touch()
    log(f"generated {n} files in {time.perf_counter() - t0:.1f} s")
    return files


# --------------------------------------------------------------------------- targets


@dataclass
class RunResult:
    seconds: float
    ok: bool
    detail: str = ""


def send(aec: str, port: int, files: list[Path], associations: int, pdu: int) -> RunResult:
    """Run one storescu per association at once; wall time from first start to last end."""
    groups = [files[i::associations] for i in range(associations)]
    cmd = ["storescu", "-aec", aec, "-pdu", str(min(pdu, DCMTK_MAX_PDU))]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*cmd, "127.0.0.1", str(port), *map(str, g)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=DCMTK_ENV,
        )
        for g in groups
    ]
    outputs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - t0
    bad = [
        f"storescu exited {p.returncode}: {out.decode(errors='replace')[-500:]}"
        for p, out in zip(procs, outputs, strict=True)
        if p.returncode != 0
    ]
    return RunResult(seconds, not bad, "\n".join(bad))


def wait_for_echo(aec: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok = subprocess.run(
            ["echoscu", "-aec", aec, "127.0.0.1", str(port)], capture_output=True, env=DCMTK_ENV
        ).returncode
        if ok == 0:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{aec} did not start on port {port}")
        time.sleep(0.1)


def run_storescp(
    files: list[Path],
    associations: int,
    pdu: int,
    work: Path,
    *,
    fsync: bool = False,
    nodelay: bool = False,
) -> RunResult:
    """dcmtk's storescp; with ``fsync`` it runs ``sync FILE`` before each response."""
    out = work / "storescp-out"
    out.mkdir()
    port = free_port()
    cmd = ["storescp", "--fork", "-pdu", str(min(pdu, DCMTK_MAX_PDU)), "-aet", "STORESCP"]
    if fsync:
        # --exec-sync runs the command in the foreground, before the C-STORE response.
        cmd += ["--exec-on-reception", "sync #p/#f", "--exec-sync"]
    proc = subprocess.Popen(
        [*cmd, "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV if nodelay else DCMTK_DEFAULT_ENV,
    )
    try:
        wait_for_echo("STORESCP", port, proc)
        result = send("STORESCP", port, files, associations, pdu)
        stored = sum(1 for p in out.iterdir() if p.is_file())
        if stored != len(files):
            result.ok = False
            result.detail += f"\nstorescp wrote {stored}/{len(files)} files"
    finally:
        proc.terminate()
        proc.wait()
    return result


def run_storescp_nodelay(files: list[Path], associations: int, pdu: int, work: Path) -> RunResult:
    return run_storescp(files, associations, pdu, work, nodelay=True)


def run_storescp_fsync(files: list[Path], associations: int, pdu: int, work: Path) -> RunResult:
    return run_storescp(files, associations, pdu, work, fsync=True, nodelay=True)


def tree_cpu_seconds(root: int) -> float:
    """CPU time (user + system) used so far by process ``root`` and its descendants."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(
    pid: int, *, busy: float = 0.1, window: float = 1.0, timeout: float = 90
) -> float:
    """Wait until a process tree uses less than ``busy`` of a core; return the seconds waited."""
    t0 = time.monotonic()
    before = tree_cpu_seconds(pid)
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        now = tree_cpu_seconds(pid)
        if (now - before) / window < busy:
            break
        before = now
    return time.monotonic() - t0


BASELINE_PATH: list[str] = []
"""PYTHONPATH that makes ``spinexr`` the baseline checkout's (set by ``--baseline``)."""


def baseline_path(tree: Path, work: Path) -> str:
    """A folder whose ``spinexr/`` package maps to another checkout's node, pipeline, training."""
    pkg = work / "spinexr"
    pkg.mkdir(parents=True)
    for top in ("node", "pipeline", "training"):
        if not (tree / top).is_dir():
            raise SystemExit(f"--baseline: {tree / top} is not a folder")
        (pkg / top).symlink_to((tree / top).resolve())
    return str(work)


def run_ours(
    files: list[Path], associations: int, pdu: int, work: Path, *, pythonpath: str = ""
) -> RunResult:
    data = work / "var"
    extra = {"PYTHONPATH": pythonpath} if pythonpath else {}
    for attempt in range(3):  # a free port may be taken by someone else before serve binds it
        dport, hport = free_port(), free_port()
        env = node_env(
            data,
            dport,
            hport,
            SPINEXR_DICOM__MAX_PDU=str(pdu),
            SPINEXR_DICOM__MAX_ASSOCIATIONS=str(max(10, associations)),
            SPINEXR_STUDY__COMPLETION_SECONDS="1000000",
            **extra,
        )
        node = NodeProcess(data, dport, hport, env, work / "serve.log")
        try:
            node.start()
            break
        except Exception as exc:
            node.kill()
            if attempt == 2:
                raise
            log(f"serve did not start ({type(exc).__name__}); trying other ports")
    try:
        assert node.proc is not None
        wait_until_idle(node.proc.pid)
        result = send("SPINEXR", dport, files, associations, pdu)
    finally:
        code = node.stop()
    with sqlite3.connect(data / "spinexr.db") as db:
        (rows,) = db.execute("SELECT count(DISTINCT sop_instance_uid) FROM instances").fetchone()
    if rows != len(files) or code != 0:
        result.ok = False
        result.detail += f"\n{rows}/{len(files)} instances in the database, serve exited {code}"
    if not result.ok:
        result.detail += "\n" + node.log()[-2000:]
    return result


def run_baseline(files: list[Path], associations: int, pdu: int, work: Path) -> RunResult:
    return run_ours(files, associations, pdu, work, pythonpath=BASELINE_PATH[0])


TARGETS = {
    "storescp": run_storescp,
    "storescp-nodelay": run_storescp_nodelay,
    "storescp+fsync": run_storescp_fsync,
    "ours": run_ours,
    "baseline": run_baseline,
}
DEFAULT_TARGETS = ["storescp", "storescp-nodelay", "storescp+fsync", "ours"]
NODES = ("ours", "baseline")


# --------------------------------------------------------------------------- main


def paired(
    times: dict[tuple[str, int], list[float]], ref: str, node: str, assoc: int
) -> tuple[float, float, float]:
    """Min, median and max over the repeats of ref time / node time (one repeat's runs are
    adjacent)."""
    ratios = [r / n for r, n in zip(times[(ref, assoc)], times[(node, assoc)], strict=True)]
    return min(ratios), statistics.median(ratios), max(ratios)


def spread(low: float, mid: float, high: float, fmt: str) -> str:
    """``mid (low-high)`` in ``fmt``."""
    return f"{mid:{fmt}} ({low:{fmt}}-{high:{fmt}})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size", default="2500x2000", help="ROWSxCOLS (16-bit pixels)")
    parser.add_argument("--pdu", type=int, default=131072, help="maximum PDU on both SCPs")
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=DEFAULT_TARGETS)
    parser.add_argument(
        "--dcmtk-nagle",
        action="store_true",
        help="leave Nagle on in the sender (storescu) and in every storescp",
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "spinexr-bench")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run the node of another checkout (target 'baseline'), e.g. a git worktree",
    )
    args = parser.parse_args()
    rows, cols = (int(v) for v in args.size.lower().split("x"))
    if not 4096 <= args.pdu <= DCMTK_MAX_PDU:
        parser.error(f"--pdu must be 4096..{DCMTK_MAX_PDU} (dcmtk's limit)")
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} (dcmtk) is not installed")

    if args.dcmtk_nagle:
        DCMTK_ENV.pop("TCP_NODELAY", None)
        if "storescp-nodelay" in args.targets:
            args.targets.remove("storescp-nodelay")
    if args.baseline is not None:
        links = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
        BASELINE_PATH.append(baseline_path(args.baseline, links))
        if "baseline" not in args.targets:
            args.targets.append("baseline")
    elif "baseline" in args.targets:
        parser.error("target 'baseline' needs --baseline DIR")
    files = make_files(args.files, rows, cols, args.cache)
    # Read once: the sender starts from a warm page cache for every target.
    total = sum(len(f.read_bytes()) for f in files)
    mb = total / 1e6
    log(
        f"{len(files)} files, {mb:.0f} MB ({mb / len(files):.1f} MB each), "
        f"max PDU {args.pdu}, {os.cpu_count()} CPUs, repeats {args.repeats}, "
        f"sender Nagle {'on (default)' if args.dcmtk_nagle else 'off (TCP_NODELAY=1)'}"
    )

    log("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    times: dict[tuple[str, int], list[float]] = {}
    failed = False
    for assoc in args.associations:
        for rep in range(args.repeats):
            for target in args.targets:
                with tempfile.TemporaryDirectory(prefix=f"bench-{target}-") as tmp:
                    os.sync()
                    result = TARGETS[target](files, assoc, args.pdu, Path(tmp))
                    os.sync()  # the next run does not pay for this run's dirty pages
                status = "ok" if result.ok else "FAILED"
                log(
                    f"{target:>14}  {assoc} assoc  run {rep + 1}/{args.repeats}: "
                    f"{result.seconds:6.2f} s  {mb / result.seconds:7.1f} MB/s  "
                    f"{len(files) / result.seconds:6.1f} inst/s  {status}"
                )
                if not result.ok:
                    failed = True
                    log(result.detail)
                times.setdefault((target, assoc), []).append(result.seconds)

    log("")
    refs = [t for t in args.targets if t not in NODES]
    nodes = [t for t in args.targets if t in NODES]
    columns = [f"{n}/{r}" for n in nodes for r in refs]
    if "ours" in nodes and "baseline" in nodes:
        columns.append("ours/baseline")
    log(
        f"{'target':>16} {'assoc':>5} {'MB/s median (min-max)':>24} {'inst/s':>7}"
        + "".join(f" {c:>28}" for c in columns)
    )
    for assoc in args.associations:
        for target in args.targets:
            runs = times[(target, assoc)]
            rates = spread(mb / max(runs), mb / statistics.median(runs), mb / min(runs), ".0f")
            ratios = ""
            if target in NODES:
                cells = {f"{target}/{r}": paired(times, r, target, assoc) for r in refs}
                if target == "ours" and "baseline" in args.targets:
                    cells["ours/baseline"] = paired(times, "baseline", target, assoc)
                ratios = "".join(
                    f" {spread(*cells[c], '.2f') if c in cells else '':>28}" for c in columns
                )
            inst = len(files) / statistics.median(runs)
            log(f"{target:>16} {assoc:>5} {rates:>24} {inst:7.1f}{ratios}")
    log(
        "(MB/s: median of the repeats, with min and max; inst/s: median; ratios: median of "
        "the per-repeat throughput ratios, with min and max; storescp neither fsyncs nor keeps "
        "a database; storescp: as shipped (Nagle on), storescp-nodelay: TCP_NODELAY=1, "
        "storescp+fsync: TCP_NODELAY=1 and `sync FILE` before each response)"
    )
    log("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if failed:
        log("SOME RUNS FAILED (see above)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
