"""Exports of superseded jobs against dcmtk's storescp standing in for the PACS.

Issue 14 item 8: every re-analysis added a full SR + GSPS set at the PACS. A superseded job's
export stops; with ``output.superseded = "latest_only"`` only the newest set is sent, with
``keep`` every built set is; the new SR names the last SR that really reached the PACS.
"""

from __future__ import annotations

import copy
import io
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
from ingest_support import Stack, build_stack
from outputs_support import Variant, abnormal_result, image_result, make_study
from pipelinesupport import RadiographsOnly
from pydicom.dataset import Dataset
from sqlalchemy import select
from testsupport import free_port, require_tool

from spinexr.node.db.models import AuditEvent, Job, OutputObject
from spinexr.node.db.states import JobState, OutputKind
from spinexr.node.db.timeline import transition
from spinexr.node.export.exporter import Exporter
from spinexr.node.ingest.assembler import StudyAssembler
from spinexr.node.jobs.runner import JobRunner
from spinexr.pipeline.results import StudyResult
from spinexr.training.phantoms import make_phantom_image, write

pytestmark = pytest.mark.integration

SEED = 43


class Pacs:
    """dcmtk's storescp on loopback, writing what it receives into a folder."""

    def __init__(self, tmp: Path, name: str = "pacs") -> None:
        self.exe = require_tool("storescp")
        self.port = free_port()
        self.dir = tmp / f"{name}-{self.port}"
        self.dir.mkdir(parents=True)
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Pacs:
        self.proc = subprocess.Popen(
            [self.exe, "-aet", "PACS", "-od", str(self.dir), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.4)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=10)

    @property
    def destination(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": "dimse",
            "ae_title": "PACS",
            "host": "127.0.0.1",
            "port": self.port,
        }

    def received(self) -> set[str]:
        return {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in self.dir.iterdir()
        }

    def datasets(self) -> list[Dataset]:
        return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(self.dir.iterdir())]


class Pipeline(RadiographsOnly):
    """Stands in for the models: a hand-made result for whatever sources the job has."""

    def analyze_study(
        self, sources: Sequence[Dataset], study_instance_uid: str | None = None
    ) -> StudyResult:
        ordered = sorted(sources, key=lambda d: str(d.SOPInstanceUID))
        base = abnormal_result(ordered[:2])
        extra = [image_result(ds, 0.2, base.threshold) for ds in ordered[2:]]
        return base.model_copy(update={"images": [*base.images, *extra]})


class Study:
    """One phantom study going through the node: receive, complete, analyse, export."""

    def __init__(self, tmp_path: Path, destinations: list[dict[str, object]], **output: object):
        self.stack: Stack = build_stack(
            tmp_path,
            destinations=destinations,
            queue={"max_attempts": 3},
            output={"sr": True, "gsps": True, **output},
        )
        self.sources = make_study(SEED, Variant())
        self.uid = str(self.sources[0].StudyInstanceUID)
        self.assembler = StudyAssembler(self.stack.settings, self.stack.sessions, "m@1")
        self.exporter = Exporter(self.stack.settings, self.stack.sessions)
        self.extra = 0
        self.receive(self.sources)

    def receive(self, datasets: Sequence[Dataset]) -> None:
        for ds in datasets:
            buf = io.BytesIO()
            write(ds, buf)
            self.stack.ingest.ingest([buf.getvalue()], calling_ae="PACS", source="dimse")

    def late_image(self) -> None:
        """Another image of the study arrives after it was complete."""
        self.extra += 1
        ds, _ = make_phantom_image(
            SEED,
            view="LAT",
            size="small",
            region="LSPINE",
            study_uid=self.uid,
            series_uid=str(self.sources[0].SeriesInstanceUID),
            sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{SEED}.3.{2 + self.extra}",
            instance_number=2 + self.extra,
        )
        self.receive([ds])

    def corrected_image(self) -> None:
        """A new version of the first image (same SOP Instance UID, other bytes)."""
        ds = copy.deepcopy(self.sources[0])
        ds.ImageComments = f"corrected {self.extra}"
        self.extra += 1
        self.receive([ds])

    def complete(self) -> int:
        job_id = self.assembler.force_complete(self.uid)
        assert job_id is not None
        return job_id

    def build(self, job_id: int) -> None:
        with self.stack.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            transition(s, job, JobState.QUEUED)
            s.commit()
        runner = JobRunner(self.stack.settings, self.stack.sessions, Pipeline)
        assert runner.claim(job_id) == job_id
        assert runner.run(job_id).state is JobState.BUILT

    def state(self, job_id: int) -> JobState:
        with self.stack.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job.state

    def outputs(self, job_id: int) -> list[OutputObject]:
        with self.stack.sessions() as s:
            return list(s.scalars(select(OutputObject).where(OutputObject.job_id == job_id)))

    def uids(self, job_id: int) -> set[str]:
        return {o.sop_instance_uid for o in self.outputs(job_id)}

    def sr(self, job_id: int) -> OutputObject:
        (sr,) = [o for o in self.outputs(job_id) if o.kind is OutputKind.SR]
        return sr

    def events(self, job_id: int) -> list[tuple[str, str | None]]:
        with self.stack.sessions() as s:
            return [
                (e.event, e.detail)
                for e in s.scalars(select(AuditEvent).where(AuditEvent.job_id == job_id))
            ]


def predecessors(pacs: Pacs, sr_uid: str) -> list[str]:
    (ds,) = [d for d in pacs.datasets() if str(d.SOPInstanceUID) == sr_uid]
    return [
        str(sop.ReferencedSOPInstanceUID)
        for study in ds.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]


def test_latest_only_sends_only_the_newest_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Pacs(tmp_path) as pacs:
        st = Study(tmp_path, [pacs.destination])
        first = st.complete()
        st.build(first)  # built, its export not yet run
        st.late_image()
        second = st.complete()
        assert st.state(first) is JobState.CANCELLED
        assert ("state", f"superseded by job {second}") in st.events(first)

        stopped = st.exporter.export(first)  # its queued export message
        assert stopped.stopped and pacs.received() == set()

        st.build(second)
        assert st.exporter.export(second).state is JobState.EXPORTED
        assert pacs.received() == st.uids(second)
        # 1 SR + 3 GSPS of the re-analysis, nothing of the superseded job.
        assert len(st.uids(second)) == 4 and not (pacs.received() & st.uids(first))
        # The superseded job never got out: the new SR names no predecessor, rev 1.
        assert predecessors(pacs, st.sr(second).sop_instance_uid) == []
        descriptions = {str(d.SeriesDescription) for d in pacs.datasets()}
        assert not any(" rev " in d for d in descriptions), descriptions


def test_export_retries_of_a_superseded_job_stop(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    pacs = Pacs(tmp_path)  # down for now
    st = Study(tmp_path, [pacs.destination])
    first = st.complete()
    st.build(first)
    failed = st.exporter.export(first)
    assert failed.state is JobState.FAILED and failed.retry_in  # a retry is due
    st.corrected_image()
    second = st.complete()
    assert st.state(first) is JobState.CANCELLED
    with pacs:
        again = st.exporter.export(first)  # the retry message
        assert again.stopped and again.retry_in is None
        assert pacs.received() == set()
    assert st.state(first) is JobState.CANCELLED  # not retried to dead
    assert second


def test_a_round_running_when_superseded_stops_before_its_next_destination(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Pacs(tmp_path, "pacs") as pacs, Pacs(tmp_path, "backup") as backup:
        st = Study(tmp_path, [pacs.destination, backup.destination])
        first = st.complete()
        st.build(first)
        send = st.exporter._send
        seconds: list[int] = []

        def send_then_supersede(dest, files, on_outcome=None):
            outcomes = send(dest, files, on_outcome)
            if dest.name == "pacs":
                st.late_image()
                seconds.append(st.complete())
            return outcomes

        monkeypatch.setattr(st.exporter, "_send", send_then_supersede)
        round_ = st.exporter.export(first)
        assert round_.stopped
        assert pacs.received() == st.uids(first)  # already sent: stays
        assert backup.received() == set()  # stopped before the next send
        assert st.state(first) is JobState.CANCELLED
        stops = [d for e, d in st.events(first) if e == "export_stopped"]
        assert stops == ["round 1 stopped: job cancelled; 3 object(s) had been sent"]
        assert seconds


def test_keep_sends_every_built_set_and_the_new_sr_names_the_old_one(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Pacs(tmp_path) as pacs:
        st = Study(tmp_path, [pacs.destination], superseded="keep")
        first = st.complete()
        st.build(first)
        st.late_image()
        second = st.complete()
        assert st.state(first) is JobState.BUILT  # keep: its built outputs still go out
        assert st.exporter.export(first).state is JobState.EXPORTED
        st.build(second)
        assert st.exporter.export(second).state is JobState.EXPORTED
        assert pacs.received() == st.uids(first) | st.uids(second)
        assert predecessors(pacs, st.sr(second).sop_instance_uid) == [st.sr(first).sop_instance_uid]


def test_predecessor_is_the_last_sr_that_reached_the_pacs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Pacs(tmp_path) as pacs:
        st = Study(tmp_path, [pacs.destination])
        first = st.complete()
        st.build(first)
        assert st.exporter.export(first).state is JobState.EXPORTED
        st.late_image()
        second = st.complete()
        assert st.state(first) is JobState.EXPORTED  # already exported: stays exported
        st.build(second)  # built, but superseded before its export ran
        st.corrected_image()
        third = st.complete()
        assert st.state(second) is JobState.CANCELLED
        assert st.exporter.export(second).stopped
        st.build(third)
        assert st.exporter.export(third).state is JobState.EXPORTED
        assert pacs.received() == st.uids(first) | st.uids(third)
        sr = st.sr(third).sop_instance_uid
        assert predecessors(pacs, sr) == [st.sr(first).sop_instance_uid]  # not job 2's
        # The replacing set says so where viewers look.
        new = [d for d in pacs.datasets() if str(d.SOPInstanceUID) in st.uids(third)]
        gsps = [d for d in new if d.Modality == "PR"]
        assert len(gsps) == 3
        for d in gsps:
            assert str(d.ContentDescription).startswith("AI results rev 2, replaces rev 1")
            assert d.ContentLabel == "AI_SPINEXR_DEMO"  # the label viewers list stays
        assert all(" rev 2 " in str(d.SeriesDescription) for d in new)
        old = [d for d in pacs.datasets() if str(d.SOPInstanceUID) in st.uids(first)]
        assert min(
            (str(d.PresentationCreationDate), str(d.PresentationCreationTime)) for d in gsps
        ) >= max(
            (str(d.PresentationCreationDate), str(d.PresentationCreationTime))
            for d in old
            if d.Modality == "PR"
        )
