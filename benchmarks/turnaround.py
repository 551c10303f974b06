"""End-to-end turnaround (issue 20, part 1): last image sent → last result object at the PACS.

The embedded default (``serve`` with its worker; ``--mode scaled``: Redis + PostgreSQL + a
separate worker) and dcmtk's ``storescp`` as the PACS, on this machine's CPU. Two phases:

* **one at a time**: ``--studies`` two-image studies (AP + lateral phantoms of realistic
  size, one JPEG 2000), each sent on one association after the previous one's results
  arrived. For each: seconds from the last C-STORE response to the last result file written
  by the PACS, split into stages from the job's audit timeline and the result's own timings:
  completion timer, queue wait, decode/preprocess, each model, fusion, the rest of the
  analysis step (building SR/GSPS, saving), export queue wait, export, PACS tail.
  p50 / p90 / max per stage. Target: p50 ≤ completion timer + 10 s.
* **burst**: ``--burst`` studies sent at once over 4 associations: studies per hour from
  the first send to the last result at the PACS, and the same split (p50 / p90).

The bundle is ``--bundle`` (e.g. the demo bundle ``var/demo-bundle``), else one with the
production shape and random weights (``benchmarks/inference.py``'s: DenseNet-121/169/201 and
Sparse R-CNN R50-FPN), which takes the same time to run. Prints the worker settings used.

Usage::

    .venv/bin/python benchmarks/turnaround.py [--mode embedded|scaled] [--studies 10]
        [--burst 20] [--completion 5] [--bundle DIR] [--seed 0] [--out var/turnaround]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import pydicom  # noqa: E402
from cluster import Cluster  # noqa: E402
from pynetdicom import AE  # noqa: E402
from sqlalchemy import select  # noqa: E402

from spinexr.node.db.engine import make_engine, make_session_factory  # noqa: E402
from spinexr.node.db.models import AuditEvent, Job, Study  # noqa: E402
from spinexr.node.db.states import JobState  # noqa: E402
from spinexr.training.phantoms import make_phantom_image, write  # noqa: E402

STAGES = (
    "completion timer",
    "queue wait",
    "decode/preprocess",
    "models",
    "fusion",
    "build and save",
    "export queue wait",
    "export",
    "PACS tail",
    "total",
)


def production_bundle(out: Path, seed: int) -> Path:
    """A bundle of the production shape with random weights (``benchmarks/inference.py``)."""
    spec = importlib.util.spec_from_file_location("inference", ROOT / "benchmarks/inference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.build_bundle(out, seed))


def make_study(folder: Path, seed: int) -> list[Path]:
    """An AP (uncompressed) and a lateral (JPEG 2000) phantom of realistic size."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    study_uid = pydicom.uid.generate_uid()
    for i, (view, compressed) in enumerate((("AP", False), ("LAT", True))):
        ds, _ = make_phantom_image(
            seed * 2 + i, view=view, size="full", compressed=compressed, study_uid=study_uid
        )
        path = folder / f"{i}.dcm"
        write(ds, path)
        paths.append(path)
    return paths


def send(port: int, files: list[Path]) -> float:
    """C-STORE the files on one association; return the wall time of the last response."""
    ae = AE(ae_title="MODALITY")
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SPINEXR")
    assert assoc.is_established, "the node refused the association"
    try:
        for f in files:
            status = assoc.send_c_store(f)
            assert status and status.Status == 0, f"C-STORE answered {status}"
        return time.time()
    finally:
        assoc.release()


def at_pacs(pacs_dir: Path, seen: dict[Path, str]) -> dict[str, float]:
    """Study Instance UID → mtime of its newest file at the PACS (reads new files only)."""
    newest: dict[str, float] = {}
    for p in pacs_dir.iterdir():
        if p not in seen:
            try:
                seen[p] = str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID)
            except Exception:
                continue
        uid = seen[p]
        newest[uid] = max(newest.get(uid, 0.0), p.stat().st_mtime)
    return newest


def split(sessions, study_uid: str, sent: float, landed: float) -> dict[str, float] | None:
    """The stages of a study's last job, in seconds; None until it is exported."""
    with sessions() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            return None
        job = s.scalar(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc()))
        if job is None or job.state not in (JobState.EXPORTED, JobState.VERIFIED):
            return None
        events = list(
            s.scalars(select(AuditEvent).where(AuditEvent.job_id == job.id).order_by(AuditEvent.id))
        )
        timings = dict((job.result.payload or {}).get("timings", {})) if job.result else {}
    when: dict[str, float] = {}
    for e in events:
        if e.to_state:
            when[e.to_state] = e.at.replace(tzinfo=dt.UTC).timestamp()  # the last one wins
    need = ("complete", "queued", "analyzing", "built", "exporting", "exported")
    if any(k not in when for k in need):
        return None
    each = {k: v for k, v in timings.items() if k.startswith("classifier.") or k == "detector"}
    models = sum(each.values())
    analysis = when["built"] - when["analyzing"]
    return {
        "completion timer": when["complete"] - sent,
        "queue wait": when["analyzing"] - when["complete"],
        "decode/preprocess": timings.get("preprocess", 0.0),
        "models": models,
        "fusion": timings.get("fusion", 0.0),
        "build and save": analysis - timings.get("total", 0.0),
        "export queue wait": when["exporting"] - when["built"],
        "export": when["exported"] - when["exporting"],
        "PACS tail": landed - when["exported"],
        "total": landed - sent,
        **{
            f"  {k}": v
            for k, v in timings.items()
            if k.startswith("classifier.") or k == "detector"
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def table(rows: list[dict[str, float]], title: str) -> None:
    print(f"\n{title} ({len(rows)} studies): seconds")
    print(f"{'stage':<22}{'p50':>8}{'p90':>8}{'max':>8}")
    keys = list(STAGES) + sorted({k for r in rows for k in r if k.startswith("  ")})
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        if vals:
            print(
                f"{k:<22}{statistics.median(vals):8.2f}{percentile(vals, 0.9):8.2f}{max(vals):8.2f}"
            )


def wait_all(
    sessions, pacs_dir: Path, sent: dict[str, float], timeout: float
) -> dict[str, dict[str, float]]:
    """Wait until every study is exported and at the PACS; return each one's stages."""
    seen: dict[Path, str] = {}
    done: dict[str, dict[str, float]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(sent):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(sent) - len(done)} studies did not arrive in {timeout:.0f} s")
        time.sleep(0.5)
        landed = at_pacs(pacs_dir, seen)
        for uid, t in sent.items():
            if uid not in done and uid in landed:
                got = split(sessions, uid, t, landed[uid])
                if got is not None:
                    time.sleep(0.5)  # the other objects of the round may still be arriving
                    got = split(sessions, uid, t, at_pacs(pacs_dir, seen)[uid])
                    if got is not None:
                        done[uid] = got
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("embedded", "scaled"), default="embedded")
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--completion", type=float, default=5.0)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "turnaround")
    args = parser.parse_args(argv)
    out = args.out.resolve() / args.mode
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    from testsupport import start_storescp

    bundle = args.bundle.resolve() if args.bundle else production_bundle(out / "bundle", args.seed)
    print(f"bundle {bundle}", flush=True)
    studies = [
        make_study(out / "src" / f"s{i:03d}", args.seed * 1000 + i)
        for i in range(args.studies + args.burst)
    ]
    pacs_dir = out / "pacs"
    pacs, pacs_port = start_storescp(pacs_dir, unique=True)
    cluster = Cluster(
        out, args.mode, bundle, pacs_port, SPINEXR_STUDY__COMPLETION_SECONDS=str(args.completion)
    )
    report: dict[str, object] = {"mode": args.mode, "completion seconds": args.completion}
    try:
        cluster.start()
        sessions = make_session_factory(make_engine(cluster.database_url()))
        port = cluster.node.dicom_port
        worker = (
            "embedded worker in serve (queues inference+export, concurrency 1, solo pool)"
            if args.mode == "embedded"
            else "separate worker (queues inference+export, concurrency 1, solo pool); Redis"
        )
        print(f"worker: {worker}; torch threads: torch's default for this CPU", flush=True)
        report["worker"] = worker
        one: list[dict[str, float]] = []
        for i, files in enumerate(studies[: args.studies]):
            uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            t = send(port, files)
            one += list(wait_all(sessions, pacs_dir, {uid: t}, 600).values())
            print(f"study {i + 1}/{args.studies}: {one[-1]['total']:.1f} s", flush=True)
        table(one, "one at a time")
        burst = studies[args.studies :]
        sent: dict[str, float] = {}
        lock = threading.Lock()
        began = time.time()

        def sender(part: list[list[Path]]) -> None:
            for files in part:
                uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                t = send(port, files)
                with lock:
                    sent[uid] = t

        threads = [threading.Thread(target=sender, args=(burst[k::4],)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        arrived = wait_all(sessions, pacs_dir, sent, 3600)
        rows = list(arrived.values())
        last = max(sent[uid] + stages["total"] for uid, stages in arrived.items())
        hours = (last - began) / 3600
        table(rows, f"burst of {len(burst)}")
        per_hour = len(burst) / hours if hours else float("nan")
        print(f"\nburst: {len(burst)} studies in {hours * 3600:.0f} s: {per_hour:.0f} studies/hour")
        p50 = statistics.median(r["total"] for r in one)
        target = args.completion + 10
        print(
            f"one at a time: p50 {p50:.1f} s, target completion + 10 s = {target:.0f} s: "
            f"{'met' if p50 <= target else 'missed'}"
        )
        report |= {
            "one at a time": one,
            "burst": rows,
            "studies per hour": per_hour,
            "p50 seconds": p50,
            "target met": p50 <= target,
        }
        (out / "report.json").write_text(json.dumps(report, indent=2))
    finally:
        cluster.stop()
        cluster.remove()
        pacs.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
