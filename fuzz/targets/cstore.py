"""C-STORE target: mutated files over real associations, and mutated PDUs, to a live node.

Mutated files are sent with pynetdicom as files (``send_c_store(path)`` with pynetdicom's
documented ``STORE_SEND_CHUNKED_DATASET`` switch: the data set bytes after the file meta go
out as they are, never decoded or re-encoded), many per association; the presentation
context is the one the (possibly mutated) file meta names. Some associations end with an
A-ABORT instead of a release; a share of inputs are raw PDUs instead
(`spinexr.fuzz.pdus`: mutated association requests, mutated P-DATA after a valid
association, a P-DATA cut off mid-PDU).
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    Verification,
)

from spinexr.fuzz.pdus import send_raw
from spinexr.fuzz.report import HANG_SECONDS, Finding, Result

SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
PER_ASSOCIATION = 25
"""Files sent on one association before it is released (or aborted)."""
ABORT_SHARE = 0.2
"""Share of associations ended with an A-ABORT after a random number of files."""
RAW_SHARE = 0.12
"""Share of inputs that are raw PDUs instead of files."""


class CStoreTarget:
    """Sends inputs to a node's C-STORE SCP.

    Parameters
    ----------
    port : int
        The node's DICOM port on loopback.
    rng : random.Random
        Decides aborts and raw PDUs (the campaign's generator).
    """

    name = "cstore"

    def __init__(self, port: int, rng: random.Random) -> None:
        # Process-wide switches, given back by close() (a test process goes on after a run).
        self._restore = (_config.STORE_SEND_CHUNKED_DATASET, logging.getLogger("pynetdicom").level)
        _config.STORE_SEND_CHUNKED_DATASET = True
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
        self.port = port
        self.rng = rng
        self.ae = AE(ae_title="FUZZ")
        self.ae.acse_timeout = 15
        self.ae.dimse_timeout = 15
        self.ae.network_timeout = 15
        self.ae.add_requested_context(Verification)
        for sop in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation):
            for syntax in SYNTAXES:
                self.ae.add_requested_context(sop, syntax)
        self.assoc: Any = None
        self.sent = 0
        self.limit = PER_ASSOCIATION
        self._folder = Path(tempfile.mkdtemp(prefix="spinexr-fuzz-cstore-"))

    def _associate(self) -> str | None:
        self.assoc = self.ae.associate("127.0.0.1", self.port, ae_title="SPINEXR")
        if not self.assoc.is_established:
            outcome = "rejected" if self.assoc.is_rejected else "no association"
            self.assoc = None
            return outcome
        self.sent = 0
        self.limit = PER_ASSOCIATION
        if self.rng.random() < ABORT_SHARE:
            self.limit = self.rng.randint(1, PER_ASSOCIATION)
        return None

    def _end(self) -> None:
        if self.assoc is None:
            return
        if self.limit < PER_ASSOCIATION:
            self.assoc.abort()
        else:
            self.assoc.release()
        self.assoc = None

    def run(self, data: bytes, mutation: str, seed: str) -> Result:
        """Send one input: a file over the current association, or now and then a raw PDU.

        Parameters
        ----------
        data : bytes
            The mutated file.
        mutation, seed : str
            Its names.

        Returns
        -------
        Result
            ``status:0x....`` (the DIMSE status), ``unsent:...`` (pynetdicom refused to send
            it, e.g. no context for its transfer syntax), ``association:...`` or a raw PDU's
            outcome; a finding for an input that took longer than the hang limit.
        """
        started = time.monotonic()
        if self.rng.random() < RAW_SHARE:
            try:
                name, outcome = send_raw(self.port, self.rng)
            except OSError as exc:
                name, outcome = "raw", f"raw-error:{type(exc).__name__}"
            return self._result(name, "-", outcome, started)
        if self.assoc is None or not self.assoc.is_established:
            refused = self._associate()
            if refused is not None:
                return self._result(mutation, seed, f"association:{refused}", started)
        path = self._folder / "input.dcm"
        path.write_bytes(data)
        try:
            status = self.assoc.send_c_store(path)
            outcome = (
                f"status:0x{int(status.Status):04X}"
                if status and "Status" in status
                else "no-status:" + ("aborted" if self.assoc.is_aborted else "none")
            )
        except Exception as exc:  # pynetdicom refuses a file it cannot send
            outcome = f"unsent:{type(exc).__name__}"
        self.sent += 1
        if not self.assoc.is_established:
            self.assoc = None
        elif self.sent >= self.limit:
            self._end()
        return self._result(mutation, seed, outcome, started)

    def _result(self, mutation: str, seed: str, outcome: str, started: float) -> Result:
        seconds = time.monotonic() - started
        finding = Finding.HANG if seconds > HANG_SECONDS else None
        detail = f"{seconds:.1f} s for one input" if finding else ""
        return Result(self.name, mutation, seed, outcome, seconds, finding, detail)

    def close(self) -> None:
        """Release the open association; give back pynetdicom's switches as they were."""
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None
        _config.STORE_SEND_CHUNKED_DATASET, level = self._restore
        logging.getLogger("pynetdicom").setLevel(level)
