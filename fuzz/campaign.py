"""A campaign: seeds → mutants → targets, within a budget, with progress and a closing report."""

from __future__ import annotations

import logging
import random
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from spinexr.fuzz.mutators import mutate
from spinexr.fuzz.node import LiveNode
from spinexr.fuzz.report import Finding, Result, Tally, write_report
from spinexr.fuzz.seeds import Seed, make_seeds
from spinexr.fuzz.targets.decode import ADDRESS_SPACE_BYTES, ANALYSE, DecodeTarget

logger = logging.getLogger(__name__)

TARGETS = ("cstore", "stow", "decode")
PROGRESS_SECONDS = 10.0


class Target(Protocol):
    """What a campaign drives: one input in, one result out."""

    name: str

    def run(self, data: bytes, mutation: str, seed: str) -> Result:
        """Feed one input."""
        ...

    def close(self) -> None:
        """Release what the target holds."""
        ...


@dataclass
class Budget:
    """When a campaign stops: after ``inputs`` inputs or ``minutes`` minutes, whichever first."""

    inputs: int | None = None
    minutes: float | None = None

    def done(self, count: int, elapsed: float) -> bool:
        """Whether the budget is spent."""
        if self.inputs is not None and count >= self.inputs:
            return True
        return self.minutes is not None and elapsed >= self.minutes * 60

    def eta(self, count: int, elapsed: float) -> float | None:
        """Seconds left, estimated from the rate so far."""
        left: list[float] = []
        if self.inputs is not None and count:
            left.append((self.inputs - count) * elapsed / count)
        if self.minutes is not None:
            left.append(self.minutes * 60 - elapsed)
        return max(0.0, min(left)) if left else None


@dataclass
class Campaign:
    """One run of the harness.

    Parameters
    ----------
    out : Path
        Output folder (report, findings, the node's folder).
    seed : int
        Seeds every random choice: the same seed gives the same inputs.
    targets : tuple of str
        Among ``cstore``, ``stow``, ``decode``.
    budget : Budget
        When to stop.
    decode_limit : int
        Address-space limit of the decode worker in bytes.
    command : str
        The command line, for the report.
    """

    out: Path
    seed: int
    targets: tuple[str, ...] = TARGETS
    budget: Budget = field(default_factory=lambda: Budget(inputs=1000))
    decode_limit: int = ADDRESS_SPACE_BYTES
    command: str = ""
    decode_analyse: str | None = None
    tally: Tally = field(default_factory=Tally)

    def run(self) -> dict[str, Any]:
        """Run the campaign; return the report document (``report.json``'s content)."""
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        t0 = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "findings").mkdir(exist_ok=True)
        seeds = make_seeds(self.seed)
        rng = random.Random(self.seed)
        node: LiveNode | None = None
        targets: list[Target] = []
        checks: dict[str, Any] = {}
        try:
            if {"cstore", "stow"} & set(self.targets):
                node = LiveNode(self.out / "node")
                node.start()
                print(f"node up: DICOM {node.dicom_port}, HTTP {node.http_port}", flush=True)
            targets = self._targets(node)
            self._loop(targets, seeds, rng, node, t0)
        finally:
            for target in targets:
                target.close()
            if node is not None:
                checks = self._check_node(node, seeds)
        decode = next((t for t in targets if isinstance(t, DecodeTarget)), None)
        peaks = dict(node.peaks) if node is not None else {}
        if decode is not None:
            peaks["decode worker"] = decode.peak_rss
            checks["decode worker restarts"] = decode.restarts
            checks["decode worker address-space limit (MiB)"] = self.decode_limit // 2**20
        wall = time.monotonic() - t0
        meta = {
            "command": self.command,
            "seed": self.seed,
            "started": started_at,
            "wall_seconds": round(wall, 1),
            "rate_per_second": round(self.tally.total / wall, 1) if wall else 0,
            "seeds": [s.name for s in seeds],
            "peak_rss_mib": {k: round(v / 2**20, 1) for k, v in peaks.items()},
            "checks": checks,
        }
        return write_report(self.out, self.tally, meta)

    def _targets(self, node: LiveNode | None) -> list[Target]:
        from spinexr.fuzz.targets.cstore import CStoreTarget
        from spinexr.fuzz.targets.stow import StowTarget

        out: list[Target] = []
        for i, name in enumerate(self.targets):
            sub = random.Random(f"{self.seed}:{name}:{i}")
            if name == "cstore":
                assert node is not None
                out.append(CStoreTarget(node.dicom_port, sub))
            elif name == "stow":
                assert node is not None
                out.append(StowTarget(node.http_port, node.token, sub))
            elif name == "decode":
                out.append(DecodeTarget(self.decode_limit, analyse=self.decode_analyse or ANALYSE))
            else:
                raise ValueError(f"unknown target {name!r} (choose from {', '.join(TARGETS)})")
        return out

    def _loop(
        self,
        targets: list[Target],
        seeds: list[Any],
        rng: random.Random,
        node: LiveNode | None,
        t0: float,
    ) -> None:
        count = 0
        next_progress = t0 + PROGRESS_SECONDS
        while not self.budget.done(count, time.monotonic() - t0):
            target = targets[count % len(targets)]
            source = rng.choice(seeds)
            mutant = mutate(source.data, rng)
            result = target.run(mutant.data, mutant.mutation, source.name)
            saved = None
            if result.finding is not None:
                saved = self.out / "findings" / f"{count:06d}-{target.name}-{source.name}.dcm"
                saved.write_bytes(mutant.data)
                print(
                    f"FINDING {result.finding} {target.name} {result.mutation}: {result.detail}",
                    flush=True,
                )
            self.tally.add(result, saved)
            count += 1
            now = time.monotonic()
            if now >= next_progress:
                next_progress = now + PROGRESS_SECONDS
                self._progress(count, now - t0)
                if node is not None and not node.alive():
                    self.tally.note(Finding.NODE_DOWN, "serve exited during the campaign")
                    return
        self._progress(count, time.monotonic() - t0)

    def _progress(self, count: int, elapsed: float) -> None:
        eta = self.budget.eta(count, elapsed)
        per = ", ".join(f"{t} {n}" for t, n in self.tally.inputs.items())
        print(
            f"[{elapsed:7.0f} s] {count} inputs ({count / elapsed:.1f}/s; {per}); "
            f"findings {len(self.tally.findings)}; ETA {'?' if eta is None else f'{eta:.0f} s'}",
            flush=True,
        )

    def _check_node(self, node: LiveNode, seeds: list[Seed]) -> dict[str, Any]:
        """End-of-run checks on the node; each failure is recorded as a finding."""
        checks: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while node.association_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        node.sample()
        left = node.association_processes()
        checks["association processes left after 30 s"] = len(left)
        if left:
            self.tally.note(Finding.HANG, f"association processes still running: {left}")
        checks["serve alive"] = node.alive()
        checks["C-ECHO"] = _echo(node.dicom_port)
        checks["/healthz"] = node.healthy()
        if not (checks["serve alive"] and checks["C-ECHO"] == "0x0000" and checks["/healthz"]):
            self.tally.note(Finding.NODE_DOWN, f"end-of-run checks: {checks}")
        time.sleep(2)  # a commit in flight lands
        code = node.stop()
        checks["serve exit code on SIGTERM"] = code
        problems = node.log_problems()
        checks["problem log lines"] = len(problems)
        for line in problems[:50]:
            kind = (
                Finding.CRASH
                if "ended with" in line or "process failed" in line
                else Finding.UNHANDLED_EXCEPTION
            )
            self.tally.note(kind, line, where=node.log_path)
        stray = node.stray_files()
        checks["files outside the spool"] = len(stray)
        for path in stray[:50]:
            self.tally.note(Finding.OUTSIDE_SPOOL, path)
        checks["spool instances"] = len(list((node.data_dir / "spool").glob("*/*.dcm")))
        leaked = _phi_in(node.log_path, seeds)
        checks["patient values in the node log"] = len(leaked)
        for value in leaked:
            self.tally.note(Finding.PHI_IN_LOG, f"a seed's identifying value ({len(value)} chars)")
        return checks


def _phi_in(log: Path, seeds: list[Seed]) -> list[str]:
    """Return the seeds' identifying values (names, IDs, birth dates...) in the node's log."""
    import io

    import pydicom

    from spinexr.node.phi import identifying_values

    headers = [pydicom.dcmread(io.BytesIO(s.data), stop_before_pixels=True) for s in seeds]
    text = log.read_text(errors="replace") if log.exists() else ""
    found = []
    for value in identifying_values(headers):
        if len(value) < 4 or (value.isdigit() and len(value) < 6):
            continue  # a name's 4-digit part would match byte offsets and counts
        if re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", text):
            found.append(value)
    return sorted(found)


def _echo(port: int) -> str:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="FUZZ")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SPINEXR")
    if not assoc.is_established:
        return "no association"
    status = assoc.send_c_echo()
    assoc.release()
    return f"0x{int(status.Status):04X}" if status and "Status" in status else "no answer"


def healthz(port: int) -> bool:
    """Whether the node's ``/healthz`` answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
            return True
    except OSError:
        return False
