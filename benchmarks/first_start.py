"""Time a first `make serve` on a fresh clone: to serving, each stage, the first analyses.

    .venv/bin/python benchmarks/first_start.py [--work /tmp/spinexr-first-start]
        [--cold-wheels] [--until serving|radiograph|ct] [--timeout-min 120]

What a PACS administrator waits for on a new machine. The script clones this repository
(committed ``HEAD``) into ``--work``, gives it a fresh demo cache (``SPINEXR_CACHE``: no demo
bundle, no test models) and its own data folder and ports, starts ``make serve`` and watches
it:

- each install step (``[install HH:MM:SS] n/4 ...``) and each demo step (``[demo] step
  n/8 ...``, printed by the background preparation) when its line first appears;
- **serving**: the first ``/healthz`` answer;
- as soon as the node serves, it sends one radiograph study (an AP and a JPEG 2000 lateral
  phantom of realistic size) and one chest CT phantom study by C-STORE, with a dcmtk
  ``storescp`` as the PACS; **first radiograph / CT analysis**: the study's SR at the PACS.

``--cold-wheels`` also starts without the cached mmcv wheel and pip's cache (the whole cold
install, about 12 more minutes for mmcv on 2 cores). The figures are seconds since ``make
serve`` started; the machine is shared, so the load average is printed with them. It stops at
``--until`` (default: the CT study analysed) and stops the node (the preparation resumes at
the next start, from its work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = re.compile(r"^\[(install) \d\d:\d\d:\d\d\] (\d/\d .*)$|^\[(demo)\] (step \d+/\d+) ")


def free_port() -> int:
    """Return a free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving(port: int) -> bool:
    """Whether the node's HTTP server answers ``/healthz``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
    except OSError:
        return False


def studies(folder: Path) -> dict[str, list[Path]]:
    """Write the radiograph and the CT study the script sends; return their files."""
    import numpy as np
    import pydicom

    from spinexr.pipeline.vertebrae.genant import Deformity
    from spinexr.training.phantoms import make_phantom_image, write
    from spinexr.training.phantoms.ct import make_ct_phantom
    from spinexr.training.phantoms.ct_anatomy import LevelFracture
    from spinexr.training.phantoms.ct_dicom import write_ct_study

    radiograph = folder / "radiograph"
    radiograph.mkdir(parents=True, exist_ok=True)
    uid = pydicom.uid.generate_uid()
    files = []
    for i, (view, compressed) in enumerate((("AP", False), ("LAT", True))):
        ds, _ = make_phantom_image(
            11 + i, view=view, size="full", compressed=compressed, study_uid=uid
        )
        path = radiograph / f"{i}.dcm"
        write(ds, path)
        files.append(path)
    phantom = make_ct_phantom(
        np.random.SeedSequence(5),
        levels=("T5", "T11"),
        fractures=(LevelFracture("T8", 0.5, Deformity.WEDGE),),
        scoliosis=False,
    )
    ct = write_ct_study(folder / "ct", phantom, distractors=False)
    return {"radiograph": files, "ct": [p for s in ct.series for p in s.paths]}


def send(port: int, files: list[Path]) -> None:
    """Send files with dcmtk's storescu (JPEG 2000 proposed as it is)."""
    subprocess.run(
        ["storescu", "-R", "-xv", "-aec", "SPINEXR", "127.0.0.1", str(port), *map(str, files)],
        check=True,
        capture_output=True,
        timeout=600,
    )


def srs_at(pacs: Path) -> set[str]:
    """Study Instance UIDs of the SRs the PACS stand-in holds."""
    import pydicom

    out = set()
    for path in pacs.iterdir():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # a file storescp is still writing
            continue
        if ds.Modality == "SR":
            out.add(str(ds.StudyInstanceUID))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the first start and print the timeline."""
    import pydicom

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/spinexr-first-start"))
    p.add_argument("--cold-wheels", action="store_true", help="no cached mmcv wheel, no pip cache")
    p.add_argument("--until", choices=("serving", "radiograph", "ct"), default="ct")
    p.add_argument("--timeout-min", type=float, default=120.0)
    args = p.parse_args(argv)
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    files = studies(work / "studies")
    uids = {
        kind: str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        for kind, paths in files.items()
    }
    pacs_dir = work / "pacs"
    pacs_dir.mkdir()
    pacs_port, dicom_port, http_port = free_port(), free_port(), free_port()
    pacs = subprocess.Popen(
        ["storescp", "-aet", "PACS", "-od", str(pacs_dir), "-uf", str(pacs_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINEXR_")}
    env.update(
        SPINEXR_CACHE=str(work / "cache"),
        SPINEXR_STORAGE__DATA_DIR=str(work / "var"),
        SPINEXR_DICOM__HOST="127.0.0.1",
        SPINEXR_DICOM__PORT=str(dicom_port),
        SPINEXR_HTTP__HOST="127.0.0.1",
        SPINEXR_HTTP__PORT=str(http_port),
        SPINEXR_STUDY__COMPLETION_SECONDS="5",
        SPINEXR_DESTINATIONS=json.dumps(
            [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
        ),
    )
    if args.cold_wheels:
        env.update(SPINEXR_WHEEL_CACHE=str(work / "wheels"), PIP_NO_CACHE_DIR="1")
    log_path = work / "serve.log"
    print(f"load average at start: {os.getloadavg()}", flush=True)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        node = subprocess.Popen(
            ["make", "serve"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        if name not in marks:
            marks[name] = time.monotonic() - started
            print(f"{marks[name]:8.0f} s  {name}", flush=True)

    seen = 0
    sent = False
    try:
        while time.monotonic() - started < args.timeout_min * 60:
            text = log_path.read_text(errors="replace")
            for line in text.splitlines()[seen:]:
                m = STAGE.match(line)
                if m:
                    mark(" ".join(g for g in m.groups() if g))
            seen = len(text.splitlines())
            if node.poll() is not None:
                print(f"make serve ended with {node.returncode}; see {log_path}")
                return 1
            if "serving" not in marks and serving(http_port):
                mark("serving")
            if "serving" in marks and not sent:
                for kind in ("radiograph", "ct"):
                    send(dicom_port, files[kind])
                mark("studies sent")
                sent = True
            if args.until == "serving" and "serving" in marks:
                break
            if sent:
                done = srs_at(pacs_dir)
                for kind in ("radiograph", "ct"):
                    if uids[kind] in done:
                        mark(f"first {kind} analysis at the PACS")
                if f"first {args.until} analysis at the PACS" in marks:
                    break
            time.sleep(1.0)
        else:
            print(f"timed out after {args.timeout_min} minutes; see {log_path}")
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        pacs.terminate()
    print(f"load average at the end: {os.getloadavg()}")
    print("\n| stage | seconds since `make serve` |\n|---|---|")
    for name, at in marks.items():
        print(f"| {name} | {at:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
