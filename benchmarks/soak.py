"""Kill soak (issue 19, part 2): send thousands of instances while processes are SIGKILLed.

Four C-STORE senders (one association each) and one STOW-RS sender push ``--studies``
studies of ``--per-study`` instances into a live ``spinexr-node serve`` while a chaos loop
SIGKILLs, at random moments (seeded), ``serve`` itself, its embedded worker, and in scaled-out
mode (``--mode scaled``: Redis + PostgreSQL + a separate worker) the worker and
``redis-server``. Each killed process is started again the way an operator's supervisor
would (``serve`` and the separate worker by this script, the embedded worker by ``serve``).
A sender that loses its association or its HTTP request re-sends what was not acknowledged.

At the end the node is stopped cleanly and checked:

* every acknowledged instance (C-STORE 0x0000 / STOW-RS ReferencedSOPSequence) is in the
  database and on disk with the content hash the database recorded (``lost``);
* every result object of every exported job reached the PACS stand-in (dcmtk's
  ``storescp`` with unique file names, so a second copy is a second file) exactly once
  (``duplicates``, ``missing results``);
* no temporary or orphan file is left in the spool or the output folder;
* every job's audit timeline is a chain of legal transitions of the job state machine.

Usage (from the repository root)::

    .venv/bin/python benchmarks/soak.py --mode embedded --studies 100 --per-study 20 --seed 1
    .venv/bin/python benchmarks/soak.py --mode scaled ...

Needs dcmtk's ``storescp``, and for ``scaled`` ``redis-server`` and PostgreSQL's server
binaries (``scripts/system-deps.sh`` installs them). The model bundle is random-initialised
(``tests/pipelinesupport.build_tiny_bundle``): the soak is about durability, not findings.
Prints progress every 10 s and a table at the end; writes ``OUT/report.json``. Exit status 1
when anything was lost, duplicated, left behind or illegal.
"""

from __future__ import annotations

import argparse
import io
import json
import queue
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the node/peer helpers and the tiny bundle

import pydicom  # noqa: E402
import requests  # noqa: E402
from blake3 import blake3  # noqa: E402
from cluster import Cluster  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from sqlalchemy import select  # noqa: E402

from spinexr.node.db.engine import make_engine, make_session_factory  # noqa: E402
from spinexr.node.db.models import AuditEvent, Instance, Job, OutputObject  # noqa: E402
from spinexr.node.db.states import JobState, can_transition  # noqa: E402
from spinexr.training.phantoms import make_phantom_image, write  # noqa: E402

TOKEN = "soak-token"
FINAL = {JobState.EXPORTED, JobState.VERIFIED, JobState.DEAD, JobState.CANCELLED}
IGNORABLE = {JobState.IGNORED}


@dataclass
class Source:
    """One instance as sent."""

    path: Path
    sop_uid: str
    study_uid: str
    sop_class: str
    syntax: str


@dataclass
class Tally:
    """What happened, shared by the threads."""

    acknowledged: dict[str, Path] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    resends: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


# ------------------------------------------------------------------------------ studies
def make_studies(
    folder: Path, studies: int, per_study: int, seed: int, analysed: int = 2
) -> list[list[Source]]:
    """Write the studies: four rendered phantoms, each re-used with new UIDs (fast).

    The first ``analysed`` images of a study are spine views; the others say Body Part
    Examined CHEST, so they are received, stored and checked like any other but not
    analysed (as the other images of a real study): the soak's analyses stay short enough
    to finish between two kills on a 2-core CPU.
    """
    renders = []
    for i, view in enumerate(("AP", "LAT", "AP", "LAT")):
        ds, _ = make_phantom_image(seed + i, view=view, sop_class="DX", size=(384, 288))
        renders.append(ds)
    out = []
    for s in range(studies):
        study_uid = generate_uid()
        folder_s = folder / f"study{s:04d}"
        folder_s.mkdir(parents=True, exist_ok=True)
        series = [generate_uid(), generate_uid()]  # one per view
        items = []
        for i in range(per_study):
            ds = renders[i % len(renders)].copy()
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series[i % 2]
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = i + 1
            ds.BodyPartExamined = "SPINE" if i < analysed else "CHEST"
            path = folder_s / f"{i:03d}.dcm"
            write(ds, path)
            items.append(
                Source(
                    path,
                    str(ds.SOPInstanceUID),
                    study_uid,
                    str(ds.SOPClassUID),
                    str(ds.file_meta.TransferSyntaxUID),
                )
            )
        out.append(items)
    return out


# ------------------------------------------------------------------------------ senders
def send_dimse(port: int, study: list[Source], tally: Tally, stop: threading.Event) -> None:
    """C-STORE a study on one association at a time until every instance is acknowledged."""
    pending = list(study)
    while pending and not stop.is_set():
        ae = AE(ae_title="MODALITY")
        ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for sop_class in {s.sop_class for s in pending}:
            ae.add_requested_context(sop_class, [s.syntax for s in pending][:1])
        assoc = ae.associate("127.0.0.1", port, ae_title="SPINEXR")
        if not assoc.is_established:
            time.sleep(random.uniform(0.5, 2.0))
            with tally.lock:
                tally.resends += 1
            continue
        left = []
        for item in pending:
            if not assoc.is_established:
                left.append(item)
                continue
            try:
                status = assoc.send_c_store(item.path)
            except (OSError, RuntimeError, ValueError):
                status = None
            code = int(status.Status) if status else None
            if code is not None and (code == 0 or 0xB000 <= code <= 0xBFFF):
                with tally.lock:
                    tally.acknowledged[item.sop_uid] = item.path
            else:
                left.append(item)
                with tally.lock:
                    tally.refusals["no answer" if code is None else f"0x{code:04X}"] += 1
        if assoc.is_established:
            assoc.release()
        if left:
            with tally.lock:
                tally.resends += 1
            time.sleep(random.uniform(0.5, 2.0))
        pending = left


def send_stow(url: str, study: list[Source], tally: Tally, stop: threading.Event) -> None:
    """STOW-RS a study in one request until every instance is acknowledged."""
    pending = list(study)
    while pending and not stop.is_set():
        body = io.BytesIO()
        for item in pending:
            body.write(b"--SOAK\r\nContent-Type: application/dicom\r\n\r\n")
            body.write(item.path.read_bytes())
            body.write(b"\r\n")
        body.write(b"--SOAK--\r\n")
        stored: set[str] = set()
        try:
            r = requests.post(
                f"{url}/studies",
                data=body.getvalue(),
                timeout=60,
                headers={
                    "Authorization": f"Bearer {TOKEN}",
                    "Content-Type": 'multipart/related; type="application/dicom"; boundary=SOAK',
                    "Accept": "application/dicom+json",
                },
            )
            if r.status_code in (200, 202):
                refs = r.json().get("00081199", {}).get("Value", [])
                stored = {ref["00081155"]["Value"][0] for ref in refs}
            else:
                with tally.lock:
                    tally.refusals[f"HTTP {r.status_code}"] += 1
        except (requests.RequestException, ValueError):
            with tally.lock:
                tally.refusals["no HTTP answer"] += 1
        with tally.lock:
            for item in pending:
                if item.sop_uid in stored:
                    tally.acknowledged[item.sop_uid] = item.path
        pending = [p for p in pending if p.sop_uid not in stored]
        if pending:
            with tally.lock:
                tally.resends += 1
            time.sleep(random.uniform(0.5, 2.0))


def chaos(cluster: Cluster, tally: Tally, stop: threading.Event, lo: float, hi: float) -> None:
    """SIGKILL a random victim every ``lo``-``hi`` seconds until ``stop``."""
    while not stop.wait(random.uniform(lo, hi)):
        victim = random.choice(cluster.victims())
        try:
            if cluster.kill(victim):
                with tally.lock:
                    tally.kills[victim] += 1
        except Exception as exc:
            print(f"chaos: restarting {victim} failed: {exc}", flush=True)


# ------------------------------------------------------------------------------ checks
def job_states(sessions) -> Counter[str]:
    with sessions() as s:
        return Counter(j.state.value for j in s.scalars(select(Job)))


def check(cluster: Cluster, tally: Tally, pacs_dir: Path, studies: list[list[Source]]) -> dict:
    """Everything the soak promises, counted."""
    sessions = make_session_factory(make_engine(cluster.database_url()))
    spool = cluster.node.data_dir / "spool"
    outputs = cluster.node.data_dir / "outputs"
    with sessions() as s:
        instances = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
        jobs = list(s.scalars(select(Job).order_by(Job.id)))
        outs = list(s.scalars(select(OutputObject)))
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        job_state = {j.id: j.state for j in jobs}
    lost = []
    for uid in tally.acknowledged:
        row = instances.get(uid)
        if row is None or not (spool / row.path).is_file():
            lost.append(uid)
            continue
        digest = "blake3:" + blake3((spool / row.path).read_bytes()).hexdigest()
        if digest != row.content_hash:
            lost.append(uid)
    received = Counter(
        str(
            pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).get(
                "SOPInstanceUID", ""
            )
        )
        for p in pacs_dir.iterdir()
        if p.is_file()
    )
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    exported = {j for j, st in job_state.items() if st in (JobState.EXPORTED, JobState.VERIFIED)}
    missing_results = [
        o.sop_instance_uid
        for o in outs
        if o.job_id in exported and not received[o.sop_instance_uid]
    ]
    named = {spool / r.path for r in instances.values()}
    orphans = [p for p in spool.rglob("*") if p.is_file() and p not in named]
    out_named = {outputs / o.path for o in outs}
    orphans += [p for p in outputs.rglob("*") if p.is_file() and p not in out_named]
    illegal = []
    last: dict[int, str] = {}
    for e in events:
        if e.job_id is None or e.to_state is None:
            continue
        before = last.get(e.job_id)
        if e.from_state is not None and before is not None and e.from_state != before:
            illegal.append(f"job {e.job_id}: {before} then {e.from_state}->{e.to_state}")
        elif e.from_state is not None and not can_transition(
            JobState(e.from_state), JobState(e.to_state)
        ):
            illegal.append(f"job {e.job_id}: {e.from_state}->{e.to_state}")
        last[e.job_id] = e.to_state
    study_uids = {s[0].study_uid for s in studies}
    with sessions() as s:
        from spinexr.node.db.models import Study

        latest = {}
        for j in jobs:
            latest[j.study_id] = j  # ids grow: the last one wins
        rows = {st.id: st.study_instance_uid for st in s.scalars(select(Study))}
    ends = Counter(latest[sid].state.value for sid in latest if rows.get(sid) in study_uids)
    return {
        "instances sent": sum(len(s) for s in studies),
        "instances acknowledged": len(tally.acknowledged),
        "studies": len(studies),
        "studies with a job": sum(ends.values()),
        "latest job per study": dict(ends),
        "result objects at the PACS": len(received),
        "kills": dict(tally.kills),
        "kills survived": sum(tally.kills.values()),
        "sender retries": tally.resends,
        "refusals seen by senders": dict(tally.refusals),
        "lost": len(lost),
        "duplicates": duplicates,
        "missing results": len(missing_results),
        "orphan files": [str(p) for p in orphans][:20],
        "illegal transitions": illegal[:20],
    }


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("embedded", "scaled"), default="embedded")
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--per-study", type=int, default=20)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument(
        "--analysed", type=int, default=2, help="spine images per study (the rest: CHEST)"
    )
    parser.add_argument("--stow-every", type=int, default=5, help="every Nth study by STOW-RS")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(8.0, 20.0))
    parser.add_argument(
        "--tail", type=float, default=900.0, help="most chaos seconds after the sending"
    )
    parser.add_argument("--settle", type=float, default=1800.0, help="seconds to finish the jobs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "soak")
    args = parser.parse_args(argv)
    random.seed(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on kill
    out = args.out.resolve() / args.mode
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    from pipelinesupport import build_tiny_bundle

    t0 = time.monotonic()
    print(f"soak {args.mode}: writing {args.studies} x {args.per_study} instances", flush=True)
    studies = make_studies(out / "src", args.studies, args.per_study, args.seed, args.analysed)
    bundle = build_tiny_bundle(out / "bundle", threshold=0.0).directory
    pacs_dir = out / "pacs"
    from testsupport import start_storescp

    pacs, pacs_port = start_storescp(pacs_dir, unique=True)
    cluster = Cluster(
        out,
        args.mode,
        bundle,
        pacs_port,
        SPINEXR_STUDY__COMPLETION_SECONDS="3",
        SPINEXR_QUEUE__LEASE_SECONDS="10",  # a killed worker's job runs again after 10 s
        SPINEXR_HTTP__API_TOKEN=TOKEN,
    )
    tally = Tally()
    code = 1
    try:
        cluster.start()
        by_dimse: queue.Queue[list[Source]] = queue.Queue()
        by_stow: queue.Queue[list[Source]] = queue.Queue()
        for i, study in enumerate(studies):
            stow = i % args.stow_every == args.stow_every - 1
            (by_stow if stow else by_dimse).put(study)
        stop_senders, stop_chaos = threading.Event(), threading.Event()

        def sender(stow: bool) -> None:
            work = by_stow if stow else by_dimse
            while not stop_senders.is_set():
                try:
                    study = work.get_nowait()
                except queue.Empty:
                    return
                if stow:
                    url = f"http://127.0.0.1:{cluster.node.http_port}/dicomweb"
                    send_stow(url, study, tally, stop_senders)
                else:
                    send_dimse(cluster.node.dicom_port, study, tally, stop_senders)

        threads = [threading.Thread(target=sender, args=(False,)) for _ in range(args.associations)]
        threads.append(threading.Thread(target=sender, args=(True,)))
        chaos_thread = threading.Thread(
            target=chaos, args=(cluster, tally, stop_chaos, *args.kill_every), daemon=True
        )
        for t in threads:
            t.start()
        chaos_thread.start()
        total = sum(len(s) for s in studies)
        began = time.monotonic()
        while any(t.is_alive() for t in threads):
            time.sleep(10)
            done = len(tally.acknowledged)
            rate = done / max(1e-6, time.monotonic() - began)
            eta = (total - done) / rate if rate else float("inf")
            print(
                f"[{time.monotonic() - t0:6.0f} s] acknowledged {done}/{total} "
                f"({rate:.1f}/s, ETA {eta:.0f} s), kills {dict(tally.kills)}",
                flush=True,
            )
        sessions = make_session_factory(make_engine(cluster.database_url()))
        print(
            f"sending done; chaos goes on while the jobs run (at most {args.tail:.0f} s)",
            flush=True,
        )
        chaos_until = time.monotonic() + args.tail
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            states = job_states(sessions)
            busy = {k: v for k, v in states.items() if JobState(k) not in FINAL | IGNORABLE}
            chaos_on = not stop_chaos.is_set()
            print(
                f"[{time.monotonic() - t0:6.0f} s] jobs {dict(states)}; kills {dict(tally.kills)}"
                f"{'' if chaos_on else ' (chaos over)'}",
                flush=True,
            )
            if not busy and states:
                break
            if chaos_on and time.monotonic() > chaos_until:
                stop_chaos.set()
                chaos_thread.join()
            time.sleep(10)
        stop_chaos.set()
        chaos_thread.join()
        code = cluster.stop()
        # One more start and stop: the start-up sweep deletes quarantined spool files whose
        # instance was sent again and recorded (a kill between the file's rename and its
        # database commit leaves one; it was never acknowledged).
        cluster.start_serve()
        cluster.node.stop()
        report = check(cluster, tally, pacs_dir, studies)
        report["serve exit code at the end"] = code
        report["wall seconds"] = round(time.monotonic() - t0)
        report["mode"] = args.mode
        report["seed"] = args.seed
        (out / "report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2), flush=True)
        bad = (
            report["lost"]
            or report["duplicates"]
            or report["missing results"]
            or report["orphan files"]
            or report["illegal transitions"]
            or report["instances acknowledged"] != report["instances sent"]
        )
        code = 1 if bad else 0
    finally:
        cluster.stop()
        cluster.remove()
        pacs.terminate()
    return code


if __name__ == "__main__":
    sys.exit(main())
