"""No PHI in the node's logs, its metrics or the error messages it stores.

Studies with distinctive patient names (ASCII, ISO_IR 100 and ISO_IR 192: "Müller^Jürgen",
"山田^太郎"), patient IDs, birth dates and accession numbers go through every path a live
``spinexr-node serve`` (embedded worker, tiny random bundle) takes:

* success: C-STORE and STOW-RS, analysed, outputs built and sent to a dcmtk ``storescp``;
* refusal: an unsupported SOP class (C-STORE: context refused; STOW-RS: 0x0122), a
  malformed data set (C-STORE: pixel data short of Rows × Columns; STOW-RS: a file cut
  short), and a part that is not DICOM at all;
* analysis failure: a JPEG 2000 image whose code stream is garbage (the structure is whole,
  so ingest accepts it; the decoder refuses it);
* export failure: a second destination that refuses every association;
* admin actions: retry (CLI), cancel and complete (admin API), the study through the admin
  API and the admin pages with its preview.

Then every line ``serve`` and its children wrote (listener, association processes, worker),
the ``/metrics`` text and the error texts in the database (job errors, export errors, the
audit timeline's details, the instances' and studies' decisions) are searched for each
value, as UTF-8 and Latin-1 bytes and as Python and JSON escapes: zero hits.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pipelinesupport import build_tiny_bundle
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    MRImageStorage,
)
from sqlalchemy import select
from testsupport import NodeProcess, free_port, make_node, require_tool, wait_for

from spinexr.node.db.engine import make_engine, make_session_factory
from spinexr.node.db.models import AuditEvent, ExportAttempt, Instance, Job, Study
from spinexr.training.phantoms import make_phantom_image, write

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # The test writes a non-conforming birth date on purpose.
    pytest.mark.filterwarnings("ignore:Invalid value for VR DA"),
]

TOKEN = "phi-test-token-0123456789abcdef"


@dataclass(frozen=True)
class Patient:
    """Demographics planted in a study (each value must never leave the node's records)."""

    name: str
    patient_id: str
    birth_date: str
    accession: str
    charset: str

    def values(self) -> list[str]:
        """The values searched for: name components, ID, birth date, accession number."""
        parts = [p for p in self.name.replace("=", "^").split("^") if p]
        return [*parts, self.patient_id, self.birth_date, self.accession]


MUELLER = Patient("Müller^Jürgen", "PIDQ7X3301", "19230405", "ACCQ7X3301", "ISO_IR 100")
# A birth date written as many systems do, which DICOM's DA does not allow (pydicom's
# validation warnings quote such values), and an over-long accession number.
YAMADA = Patient("山田^太郎", "PIDQ7X3302", "1931-09-17", "ACCQ7X3302LONGER", "ISO_IR 192")
# A name without carets: highdicom logs such a name in full ("potentially invalid").
BROKEN = Patient("Quillfeather Zebadiah", "PIDQ7X3303", "19450228", "ACCQ7X3303", "ISO_IR 100")
REFUSED = Patient("Øresund^Ægidius", "PIDQ7X3304", "19190811", "ACCQ7X3304", "ISO_IR 100")
MALFORMED = Patient("Vandersloot^Ottoline", "PIDQ7X3305", "19270312", "ACCQ7X3305", "ISO_IR 100")
VANISHED = Patient("Fairweather^Lucasta", "PIDQ7X3306", "19330726", "ACCQ7X3306", "ISO_IR 100")
PATIENTS = [MUELLER, YAMADA, BROKEN, REFUSED, MALFORMED, VANISHED]


def image(
    seed: int,
    patient: Patient,
    study_uid: str,
    *,
    view: str = "AP",
    sop_class: str = "DX",
    compressed: bool = False,
) -> Dataset:
    """A phantom spine radiograph carrying ``patient``'s demographics."""
    ds, _ = make_phantom_image(
        seed,
        view=view,  # type: ignore[arg-type]
        sop_class=sop_class,  # type: ignore[arg-type]
        compressed=compressed,
        size=(256, 192),
        study_uid=study_uid,
    )
    ds.SpecificCharacterSet = patient.charset
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.AccessionNumber = patient.accession
    ds.OtherPatientIDs = patient.patient_id
    return ds


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    write(ds, buf)
    return buf.getvalue()


def stow(node: NodeProcess, parts: list[bytes], study: str | None = None) -> httpx.Response:
    boundary = "phi-boundary-7731"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    return httpx.post(
        f"http://127.0.0.1:{node.http_port}/dicomweb/studies" + (f"/{study}" if study else ""),
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            "Authorization": f"Bearer {TOKEN}",
        },
        timeout=60,
    )


def c_store(node: NodeProcess, datasets: list[Dataset]) -> list[int | None]:
    """C-STORE datasets over one association; the status of each (None: not sent)."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in (
        DigitalXRayImageStorageForPresentation,
        ComputedRadiographyImageStorage,
        MRImageStorage,
    ):
        for syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90"):
            ae.add_requested_context(sop_class, syntax)  # one context per syntax
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="SPINEXR")
    assert assoc.is_established
    statuses: list[int | None] = []
    try:
        for ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except ValueError:  # no accepted presentation context (refused SOP class)
                statuses.append(None)
                continue
            statuses.append(int(status.Status) if status else None)
    finally:
        assoc.release()
    return statuses


def needles(patients: list[Patient]) -> dict[bytes, str]:
    """Every byte string whose presence means a leak, with the value it encodes."""
    found: dict[bytes, str] = {}
    for patient in patients:
        for value in patient.values():
            forms = {
                value.encode("utf-8"),
                ascii(value)[1:-1].encode(),  # Python escapes: M\xfcller, \u5c71\u7530
                json.dumps(value)[1:-1].encode(),  # JSON escapes: M\u00fcller
            }
            with contextlib.suppress(UnicodeEncodeError):
                forms.add(value.encode("latin-1"))  # the ISO_IR 100 bytes as received
            if value.isdigit() and len(value) == 8:  # a birth date, as a formatter writes it
                forms.add(f"{value[:4]}-{value[4:6]}-{value[6:]}".encode())
            if len(value) == 10 and value[4] == value[7] == "-":  # and without the dashes
                forms.add(value.replace("-", "").encode())
            for form in forms:
                found[form] = value
    return found


def leaks(where: str, data: bytes, patients: list[Patient]) -> list[str]:
    hits = []
    for needle, value in needles(patients).items():
        at = data.find(needle)
        if at >= 0:
            context = data[max(0, at - 120) : at + 80].decode("utf-8", "replace")
            hits.append(f"{where}: {value!r} in ...{context}...")
    return hits


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A dcmtk storescp that stores, and one that refuses every association."""
    storescp = require_tool("storescp")
    ok_port, refusing_port = free_port(), free_port()
    (tmp_path / "pacs").mkdir()
    procs = [
        subprocess.Popen(
            [storescp, "-aet", "PACS", "-od", str(tmp_path / "pacs"), str(ok_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [storescp, "--refuse", "-aet", "REFUSER", str(refusing_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        yield ok_port, refusing_port
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_no_phi_in_logs_metrics_or_stored_errors(tmp_path: Path, pacs: tuple[int, int]) -> None:
    ok_port, refusing_port = pacs
    bundle = build_tiny_bundle(tmp_path / "bundle", threshold=0.0)
    destinations = [
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": ok_port},
        {"name": "refuser", "ae_title": "REFUSER", "host": "127.0.0.1", "port": refusing_port},
    ]
    node = make_node(
        tmp_path,
        SPINEXR_STUDY__COMPLETION_SECONDS="1",
        SPINEXR_MODELS__BUNDLE=str(bundle.directory),
        SPINEXR_MODELS__DEVICE="cpu",
        SPINEXR_QUEUE__MAX_ATTEMPTS="1",
        SPINEXR_HTTP__API_TOKEN=TOKEN,
        SPINEXR_DICOM__SCU_TIMEOUT="5",
        SPINEXR_DESTINATIONS=json.dumps(destinations),
    ).start()
    try:
        metrics = _drive(node, tmp_path)
    finally:
        code = node.stop()
    assert code == 0, node.log()[-4000:]

    hits = leaks("serve log", node.log_path.read_bytes(), PATIENTS)
    hits += leaks("/metrics", metrics, PATIENTS)
    hits += leaks("database", _stored_errors(node).encode("utf-8"), PATIENTS)
    assert not hits, "\n".join(hits)


def _drive(node: NodeProcess, tmp_path: Path) -> bytes:
    """Send the studies through every path; return the /metrics text at the end."""
    mueller_uid, yamada_uid, broken_uid = generate_uid(), generate_uid(), generate_uid()
    refused_uid, malformed_uid, vanished_uid = generate_uid(), generate_uid(), generate_uid()

    # Success over DIMSE (ISO_IR 100) and STOW-RS (ISO_IR 192).
    mueller = [
        image(1, MUELLER, mueller_uid, view="AP"),
        image(2, MUELLER, mueller_uid, view="LAT", sop_class="CR", compressed=True),
    ]
    assert c_store(node, mueller) == [0, 0]
    yamada = [image(3, YAMADA, yamada_uid, view="LAT")]
    answer = stow(node, [part10(ds) for ds in yamada])
    assert answer.status_code == 200, answer.text

    # Analysis failure in the runner: the image leaves the spool before it is analysed.
    vanished = image(9, VANISHED, vanished_uid)
    assert c_store(node, [vanished]) == [0]
    for path in (node.data_dir / "spool" / vanished_uid).glob("*.dcm"):
        path.unlink()

    # Analysis failure: a JPEG 2000 stream of garbage in a whole structure.
    broken = image(5, BROKEN, broken_uid, compressed=True)
    broken.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 8])
    assert c_store(node, [broken]) == [0]

    # Refusals: an unsupported SOP class, malformed data sets, a part that is no DICOM.
    mr = image(6, REFUSED, refused_uid)
    mr.SOPClassUID = MRImageStorage
    mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    mr.Modality = "MR"
    short = image(7, MALFORMED, malformed_uid)
    short.PixelData = short.PixelData[: len(short.PixelData) // 3]
    assert c_store(node, [mr, short]) == [None, 0xC213]
    cut = part10(image(8, MALFORMED, malformed_uid))
    mr_bytes = part10(copy.deepcopy(mr))
    answer = stow(node, [mr_bytes, cut[: len(cut) * 2 // 3], b"not DICOM " + b"Q7X" * 10])
    assert answer.status_code in (200, 202, 409), answer.text
    failed = answer.json().get("00081198", {}).get("Value", [])
    assert len(failed) >= 2, answer.text
    # STOW-RS to a study the instance is not part of: refused.
    other = image(10, MALFORMED, generate_uid())
    answer = stow(node, [part10(other)], study=malformed_uid)
    assert answer.status_code in (202, 409), answer.text
    # Stored, not analysed: another body part.
    chest = image(11, REFUSED, refused_uid)
    chest.BodyPartExamined = "CHEST"
    chest.SeriesDescription = "CHEST PA"
    assert c_store(node, [chest]) == [0]

    # Wait for the analysis: two studies built and exported (one destination refuses:
    # dead letter after one round), one analysis failed (dead).
    def settled() -> dict[str, str] | None:
        rows = {
            r["study_instance_uid"]: r["job_state"]
            for r in json.loads(node.cli("studies", "list", "--json"))
        }
        wanted = [mueller_uid, yamada_uid, broken_uid, vanished_uid]
        if rows.get(refused_uid) is not None:  # the chest image: no job
            raise AssertionError(f"a job for a study with nothing to analyse: {rows}")
        if all(rows.get(uid) in ("dead", "verified", "exported") for uid in wanted):
            return rows
        return None

    states = wait_for(settled, 300, "jobs to settle", node)
    assert states[broken_uid] == states[vanished_uid] == "dead", states
    for uid in (mueller_uid, yamada_uid, broken_uid):  # outputs built (the failure report)
        timeline = json.loads(node.cli("studies", "show", uid, "--json"))["timeline"]
        assert "built" in [e["to_state"] for e in timeline], (uid, timeline)
    vanished_job = json.loads(node.cli("studies", "show", vanished_uid, "--json"))["jobs"][-1]
    shown = json.loads(node.cli("jobs", "show", str(vanished_job["id"]), "--json"))
    assert "missing from the spool" in (shown["last_error"] or ""), shown

    # Admin actions: retry (CLI), cancel and complete (admin API), pages and preview.
    jobs = json.loads(node.cli("jobs", "list", "--json"))
    dead = [j["id"] for j in jobs if j["state"] == "dead"]
    node.cli("jobs", "retry", str(dead[0]))
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{node.http_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    with api:
        assert api.get(f"/api/v1/studies/{mueller_uid}").status_code == 200
        found = api.get("/api/v1/studies", params={"accession": MUELLER.accession})
        assert found.status_code == 200 and mueller_uid in found.text
        assert api.post(f"/api/v1/studies/{yamada_uid}/complete").status_code == 200
        for job_id in dead[1:]:
            api.post(f"/api/v1/jobs/{job_id}/cancel")
        assert api.post("/api/v1/destinations/refuser/echo").status_code == 200
        assert api.post("/admin/login", data={"token": TOKEN}).status_code in (200, 303)
        page = api.get(f"/admin/studies/{mueller_uid}")
        assert page.status_code == 200 and "Müller" in page.text  # shown, behind the login
        sop = str(mueller[0].SOPInstanceUID)
        assert (
            api.get(f"/admin/studies/{mueller_uid}/instances/{sop}/preview.png").status_code == 200
        )
        assert api.get("/admin/failures").status_code == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10) as r:
        return bytes(r.read())


def _stored_errors(node: NodeProcess) -> str:
    """Every error text and decision the node stored, one per line."""
    engine = make_engine(f"sqlite:///{node.data_dir.resolve()}/spinexr.db")
    texts: list[str] = []
    try:
        with make_session_factory(engine)() as session:
            texts += [str(t) for t in session.scalars(select(Job.last_error)) if t]
            texts += [str(t) for t in session.scalars(select(ExportAttempt.error)) if t]
            texts += [str(t) for t in session.scalars(select(AuditEvent.detail)) if t]
            texts += [str(t) for t in session.scalars(select(Instance.decision)) if t]
            texts += [str(t) for t in session.scalars(select(Study.decision)) if t]
    finally:
        engine.dispose()
    assert any("refuser" in t or "REFUSER" in t for t in texts), texts  # export failure seen
    return "\n".join(texts)


def test_the_search_finds_what_it_looks_for() -> None:
    """The needles match the forms a leak would take."""
    text = "C-STORE from MODALITY: name M\\xfcller, id PIDQ7X3301, born 1923-04-05"
    hits = leaks("log", text.encode(), [MUELLER])
    assert {h.split(": ")[1].split(" in")[0] for h in hits} == {
        "'Müller'",
        "'PIDQ7X3301'",
        "'19230405'",
    }
    assert leaks("log", "山田".encode(), [YAMADA]) and leaks("log", b"J\xfcrgen", [MUELLER])
    ds = pydicom.Dataset()
    assert not leaks("log", repr(ds).encode(), PATIENTS)
