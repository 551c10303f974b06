"""Ingest test support: an in-process stack (settings, SQLite, spool, service) and small
phantom files. Importable as ``ingest_support`` (``tests/`` is on pytest's path)."""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker
from testsupport import free_port

from spinexr.node.db.engine import make_engine, make_session_factory
from spinexr.node.db.migrate import upgrade
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.ingest.service import IngestService
from spinexr.node.ingest.spool import Spool
from spinexr.node.settings import Settings, load_settings
from spinexr.training.phantoms import make_phantom_image, write


@dataclass
class Stack:
    settings: Settings
    sessions: sessionmaker[Session]
    spool: Spool
    ingest: IngestService
    port: int = 0
    scp: StoreSCP | None = None


def build_stack(tmp_path: Path, **sections: Any) -> Stack:
    for key in [k for k in os.environ if k.startswith("SPINEXR_")]:
        del os.environ[key]
    port = free_port()
    dicom = {"host": "127.0.0.1", "port": port, **sections.pop("dicom", {})}
    storage = {"data_dir": str(tmp_path / "var"), "min_free_mb": 1, **sections.pop("storage", {})}
    settings = load_settings(None, dicom=dicom, storage=storage, **sections)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    spool = Spool(settings.storage.spool_dir)
    return Stack(settings, sessions, spool, IngestService(settings, sessions, spool), port)


def phantom_bytes(
    seed: int = 0,
    *,
    study_uid: str | None = None,
    compressed: bool = False,
    sop_class: str = "DX",
    view: str = "AP",
    size: tuple[int, int] = (256, 192),
    **kw: object,
) -> tuple[bytes, pydicom.Dataset]:
    ds, _ = make_phantom_image(
        seed,
        view=view,
        sop_class=sop_class,
        compressed=compressed,
        size=size,
        study_uid=study_uid,
        **kw,
    )
    buf = io.BytesIO()
    write(ds, buf)
    return buf.getvalue(), ds


def write_study(folder: Path, study_uid: str | None = None, seed: int = 0) -> list[Path]:
    """An AP and a lateral view of one study, one uncompressed and one JPEG 2000."""
    study_uid = study_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (view, compressed, sop) in enumerate([("AP", False, "DX"), ("LAT", True, "CR")]):
        data, ds = phantom_bytes(
            seed + i, study_uid=study_uid, compressed=compressed, sop_class=sop, view=view
        )
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


class AssociationMemory:
    """Memory growth of an SCP's association processes while they run, sampled from ``/proc``.

    For each association process: the most anonymous memory (``RssAnon``: the heap, not the
    libraries' pages it maps again after the fork) it held beyond what it held when first
    seen (a fork of the listener, before it received anything).

    Parameters
    ----------
    listener_pid : int
        The SCP's listener process (:attr:`StoreSCP.pid`).
    interval : float
        Seconds between samples.
    """

    def __init__(self, listener_pid: int, interval: float = 0.002) -> None:
        self.listener = listener_pid
        self.interval = interval
        self.first: dict[int, int] = {}
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        sizes = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "RssAnon":
                sizes[key] = int(value.split()[0]) * 1024
        return sizes

    def _run(self) -> None:
        children = Path(f"/proc/{self.listener}/task/{self.listener}/children")
        while not self._stop.wait(self.interval):
            try:
                pids = [int(p) for p in children.read_text().split()]
            except OSError:
                continue
            for pid in pids:
                try:
                    anon = self._status(pid)["RssAnon"]
                except (OSError, KeyError, ValueError):
                    continue  # gone meanwhile
                self.first.setdefault(pid, anon)
                self.peaks[pid] = max(anon, self.peaks.get(pid, 0))

    def __enter__(self) -> AssociationMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth(self) -> int:
        """Sum over the processes seen of their peak beyond their first size (bytes)."""
        return sum(max(0, self.peaks[pid] - self.first[pid]) for pid in self.peaks)


def record_all(settings: Settings, files: list[bytes], start: object) -> list[str]:
    """In a process of its own: ingest ``files`` through its own engine and service, all
    started together once ``start`` (a manager's Event) is set."""
    engine = make_engine(settings.database_url)
    ingest = IngestService(
        settings, make_session_factory(engine), Spool(settings.storage.spool_dir)
    )
    start.wait()  # type: ignore[attr-defined]
    try:
        return [
            ingest.ingest([data], calling_ae="PACS", source="dimse").outcome.value for data in files
        ]
    finally:
        engine.dispose()
