"""Outcomes of a campaign: one `Result` per input, findings, and the closing table.

An outcome is what the target answered (a DIMSE status, an HTTP code, a typed refusal, a
connection event); a finding is a defect: a crash of a node process or of the decode
worker, an unhandled exception, a hang, memory past the limit, a file outside the spool.
"""

from __future__ import annotations

import enum
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HANG_SECONDS = 30.0
"""One input taking longer than this is a hang."""


class Finding(enum.StrEnum):
    """Kinds of defect a campaign reports (any one makes the run fail)."""

    CRASH = "crash"
    UNHANDLED_EXCEPTION = "unhandled_exception"
    HANG = "hang"
    MEMORY = "memory"
    OUTSIDE_SPOOL = "file_outside_spool"
    NODE_DOWN = "node_down"
    PHI_IN_LOG = "phi_in_log"


@dataclass(frozen=True)
class Result:
    """What one input did.

    Attributes
    ----------
    target : str
        ``cstore``, ``stow`` or ``decode``.
    mutation : str
        The mutation's name (or the PDU/body mutation's).
    seed : str
        The seed file it came from.
    outcome : str
        The target's answer, e.g. ``status:0xC210``, ``http:409``, ``refused:undecodable``.
    seconds : float
        How long the input took.
    finding : Finding or None
        A defect, when the input found one.
    detail : str
        The finding's explanation (exception type and message, signal).
    """

    target: str
    mutation: str
    seed: str
    outcome: str
    seconds: float
    finding: Finding | None = None
    detail: str = ""


@dataclass
class Tally:
    """Counts of a campaign, filled as results come in."""

    inputs: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    mutations: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    findings: list[dict[str, Any]] = field(default_factory=list)
    slowest: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, result: Result, saved: Path | None = None) -> None:
        """Count one result (``saved``: where its input was written, for a finding)."""
        self.inputs[result.target] += 1
        self.outcomes[result.target][result.outcome] += 1
        self.mutations[result.target][result.mutation.split("+")[0]] += 1
        self.slowest[result.target] = max(self.slowest[result.target], result.seconds)
        if result.finding is not None:
            where = {"target": result.target, "input": saved, "mutation": result.mutation}
            self.note(
                result.finding, result.detail, seed=result.seed, outcome=result.outcome, **where
            )

    def note(self, kind: Finding, detail: str, **where: Any) -> None:
        """Record a finding not tied to one input (a node log line, a stray file)."""
        entry = {"kind": str(kind), "detail": detail[:2000]}
        entry.update({k: str(v) for k, v in where.items() if v is not None})
        self.findings.append(entry)

    @property
    def total(self) -> int:
        """Inputs over all targets."""
        return sum(self.inputs.values())


def count_by_kind(findings: list[dict[str, Any]]) -> dict[str, int]:
    """Count findings per kind, every kind listed (zero included)."""
    counts = Counter(f["kind"] for f in findings)
    return {str(k): counts.get(str(k), 0) for k in Finding}


def write_report(out: Path, tally: Tally, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md`` into ``out``; return the JSON document.

    Parameters
    ----------
    out : Path
        The campaign's output folder.
    tally : Tally
        Its counts.
    meta : dict
        Command, seed, wall time, peak RSS and the like (shown as given).

    Returns
    -------
    dict
        What ``report.json`` holds.
    """
    doc = {
        **meta,
        "inputs": dict(tally.inputs),
        "inputs_total": tally.total,
        "outcomes": {t: dict(c.most_common()) for t, c in tally.outcomes.items()},
        "mutations": {t: dict(sorted(c.items())) for t, c in tally.mutations.items()},
        "slowest_input_seconds": {t: round(s, 3) for t, s in tally.slowest.items()},
        "findings_by_kind": count_by_kind(tally.findings),
        "findings": tally.findings,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(doc))
    return doc


def markdown(doc: dict[str, Any]) -> str:
    """Render a report document as Markdown tables."""
    lines = ["# Fuzz campaign", ""]
    for key in ("command", "seed", "wall_seconds", "started"):
        if key in doc:
            lines.append(f"- {key.replace('_', ' ')}: `{doc[key]}`")
    lines += ["", "| target | inputs | slowest input (s) |", "|---|---:|---:|"]
    for target, n in doc["inputs"].items():
        lines.append(f"| {target} | {n} | {doc['slowest_input_seconds'].get(target, 0)} |")
    lines.append(f"| **total** | **{doc['inputs_total']}** | |")
    lines += ["", "| finding | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in doc["findings_by_kind"].items()]
    if "peak_rss_mib" in doc:
        lines += ["", "| process | peak RSS (MiB, VmHWM) |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in doc["peak_rss_mib"].items()]
    if "checks" in doc:
        lines += ["", "| end-of-run check | result |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in doc["checks"].items()]
    for target, outcomes in doc["outcomes"].items():
        lines += ["", f"## {target}: outcomes", "", "| outcome | count |", "|---|---:|"]
        lines += [f"| `{k}` | {v} |" for k, v in outcomes.items()]
    if doc["findings"]:
        lines += ["", "## Findings", ""]
        lines += [f"- {json.dumps(f, default=str)}" for f in doc["findings"]]
    return "\n".join(lines) + "\n"
