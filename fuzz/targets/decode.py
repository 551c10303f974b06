"""Decode target: each mutated file through the node's ingest check, then the worker's path.

In a worker process of its own, under an address-space limit (``RLIMIT_AS``), each input is
written to a file and goes where a received file goes in the node:

1. `spinexr.node.ingest.header.read_header`, the check every C-STORE and STOW-RS part passes
   before it is acknowledged (an `IngestError` is a typed refusal: ``ingest:<reason>``);
2. for an accepted file, what the analysis worker does with it: ``pydicom.dcmread`` of the
   whole file, `spinexr.pipeline.bodypart.dataset_tag_verdict`, and
   `spinexr.pipeline.preprocess.prepare_image` (``check_supported``, ``decode_pixels`` with
   pydicom's decoders: native, RLE, JPEG-LS, JPEG 2000..., then VOI and resizing). An
   `UnsupportedImageError` is a typed refusal (``refused:<reason>``).

Any other exception, a ``MemoryError``, the worker dying (a signal) or an input taking longer
than the time limit is a finding. A file the node refuses at step 1 never reaches the worker,
so pydicom's parse errors on it are not findings: they are what step 1 turns into refusals.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

from spinexr.fuzz.report import HANG_SECONDS, Finding, Result

ADDRESS_SPACE_BYTES: Final = 3 * 2**30
"""Address-space limit of the decode worker (``RLIMIT_AS``): a decoder that allocates past
it gets a ``MemoryError``, reported as a finding."""

MAX_DECOMPRESSED_BYTES: Final = 1024 * 2**20
"""The node's default ``dicom.max_decompressed_bytes`` (the ingest check's bomb guard)."""

MAX_SEQUENCE_DEPTH: Final = 16
"""The node's default ``dicom.max_sequence_depth``."""

ANALYSE: Final = "spinexr.fuzz.targets.decode:analyse"
"""The function the worker runs on each input file (tests substitute their own)."""


def analyse(path: Path) -> str:
    """Run one file through the ingest check and the worker's decode path.

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    str
        ``ingest:<reason>`` (refused at ingest), ``refused:<reason>`` (the pipeline's typed
        refusal) or ``prepared`` (decoded and resized).

    Raises
    ------
    Exception
        Anything else: a finding.
    """
    import pydicom

    from spinexr.node.errors import IngestError
    from spinexr.node.ingest.header import read_header
    from spinexr.pipeline.bodypart import dataset_tag_verdict
    from spinexr.pipeline.errors import UnsupportedImageError
    from spinexr.pipeline.preprocess import prepare_image

    try:
        read_header(
            path,
            max_sequence_depth=MAX_SEQUENCE_DEPTH,
            max_decompressed_bytes=MAX_DECOMPRESSED_BYTES,
        )
    except IngestError as exc:
        return f"ingest:{exc.reason}"
    ds = pydicom.dcmread(path)
    dataset_tag_verdict(ds)
    try:
        prepare_image(ds)
    except UnsupportedImageError as exc:
        return f"refused:{exc.reason}"
    return "prepared"


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _worker(conn: Connection, limit: int, folder: str, ref: str) -> None:
    """Child process: answer ``(outcome, error, peak RSS)`` for each file sent."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    func = _resolve(ref)
    path = Path(folder) / "input.dcm"
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        path.write_bytes(data)
        error = ""
        try:
            outcome = str(func(path))
        except MemoryError as exc:
            outcome, error = "memory_error", _describe(exc)
        except RecursionError as exc:
            outcome, error = "exception:RecursionError", _describe(exc)
        except Exception as exc:
            outcome, error = f"exception:{type(exc).__name__}", _describe(exc)
        conn.send((outcome, error, _peak_rss()))


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]} at {where}"


class DecodeTarget:
    """A decode worker process, restarted after a crash or a hang.

    Parameters
    ----------
    limit : int
        Address-space limit of the worker in bytes.
    timeout : float
        Seconds one input may take (a hang past it).
    analyse : str
        ``module:function`` the worker runs on each input file.
    """

    name = "decode"

    def __init__(
        self,
        limit: int = ADDRESS_SPACE_BYTES,
        timeout: float = HANG_SECONDS,
        analyse: str = ANALYSE,
    ) -> None:
        self.limit = limit
        self.timeout = timeout
        self.ref = analyse
        self.peak_rss = 0
        self.restarts = 0
        self._folder = tempfile.mkdtemp(prefix="spinexr-fuzz-decode-")
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "RUST_BACKTRACE": "0"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self._proc = self._ctx.Process(
                target=_worker, args=(child, self.limit, self._folder, self.ref), daemon=True
            )
            self._proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._proc is not None:
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None
        self.restarts += 1

    def run(self, data: bytes, mutation: str, seed: str) -> Result:
        """Decode one input; return its outcome (a finding for a crash, hang or exception).

        Parameters
        ----------
        data : bytes
            The mutated file.
        mutation, seed : str
            Its names, for the result.

        Returns
        -------
        Result
            ``ingest:...``, ``refused:...``, ``prepared`` or a finding.
        """
        if self._proc is None:
            self._start()
        assert self._conn is not None
        started = time.monotonic()
        try:
            self._conn.send_bytes(data)
            ready = self._conn.poll(self.timeout)
            answer = self._conn.recv() if ready else None
        except (EOFError, OSError):
            answer, ready = None, True
        seconds = time.monotonic() - started
        if answer is None:
            if not ready:
                self._kill()
                detail = f"no answer in {self.timeout:.0f} s"
                return Result(self.name, mutation, seed, "hang", seconds, Finding.HANG, detail)
            self._proc.join(5)
            code = self._proc.exitcode
            self._kill()
            detail = f"decode worker ended with exit code {code} (negative: signal)"
            return Result(self.name, mutation, seed, f"died:{code}", seconds, Finding.CRASH, detail)
        outcome, error, rss = answer
        self.peak_rss = max(self.peak_rss, rss)
        finding = None
        if outcome == "memory_error":
            finding = Finding.MEMORY
        elif outcome.startswith("exception:"):
            finding = Finding.UNHANDLED_EXCEPTION
        if seconds > self.timeout:
            finding = finding or Finding.HANG
        return Result(self.name, mutation, seed, outcome, seconds, finding, error)

    def close(self) -> None:
        """Stop the worker and remove its folder."""
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        self._proc, self._conn = None, None
        shutil.rmtree(self._folder, ignore_errors=True)
