"""A node's receiving side running for a test: the DICOM listener and the HTTP server."""

from __future__ import annotations

import hashlib
import threading
import time

import pydicom
import requests
import uvicorn
from ingest_support import Stack
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select
from testsupport import free_port

from spinexr.node.db.models import Instance
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.http.app import create_app


class LiveNode:
    """The DICOM listener (in its own processes) and the HTTP server of one stack."""

    def __init__(self, stack: Stack, token: str) -> None:
        self.stack, self.token = stack, token
        self.scp = StoreSCP(stack.settings)
        self.http_port = free_port()
        self.http = uvicorn.Server(
            uvicorn.Config(
                create_app(stack.settings, stack.ingest),
                host="127.0.0.1",
                port=self.http_port,
                log_level="warning",
            )
        )

    def __enter__(self) -> LiveNode:
        self.scp.start()
        self.thread = threading.Thread(target=self.http.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.http.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.should_exit = True
        self.thread.join(timeout=10)
        self.scp.stop()

    def associate(self, ds: pydicom.Dataset):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(
            ComputedRadiographyImageStorage, str(ds.file_meta.TransferSyntaxUID)
        )
        return ae.associate("127.0.0.1", self.stack.port, ae_title="SPINEXR")

    def c_store(self, ds: pydicom.Dataset) -> int | None:
        """C-STORE one data set on a new association; None when it is not accepted."""
        assoc = self.associate(ds)
        if not assoc.is_established:
            return None
        try:
            status = assoc.send_c_store(ds)
            return int(status.Status) if status else None
        finally:
            if assoc.is_established:
                assoc.release()

    def stow(self, data: bytes) -> requests.Response:
        body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--B--\r\n"
        return requests.post(
            f"http://127.0.0.1:{self.http_port}/dicomweb/studies",
            data=body,
            timeout=30,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=B',
            },
        )

    def stored(self) -> dict[str, str]:
        """SOP Instance UID → SHA-256 of the file the database points at."""
        with self.stack.sessions() as s:
            rows = list(s.scalars(select(Instance)))
        return {
            r.sop_instance_uid: hashlib.sha256(
                (self.stack.settings.storage.spool_dir / r.path).read_bytes()
            ).hexdigest()
            for r in rows
        }

    def readyz(self) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.http_port}/readyz", timeout=30)
