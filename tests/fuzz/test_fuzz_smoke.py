"""The fuzz harness: a smoke campaign against a live node finds nothing, and findings are found.

The smoke run is ``python -m spinexr.fuzz``'s campaign at about 1,000 inputs over the three
targets (C-STORE and STOW-RS to a live ``serve``, and the decode path); the other tests show
that the harness can fail: a decode input that kills the worker, one that raises, one that
hangs, and a node log with an unhandled exception are each reported as findings.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import pytest

from spinexr.fuzz.campaign import Budget, Campaign
from spinexr.fuzz.elements import scan
from spinexr.fuzz.mutators import MUTATIONS, mutate
from spinexr.fuzz.node import LiveNode
from spinexr.fuzz.report import Finding
from spinexr.fuzz.seeds import make_seeds
from spinexr.fuzz.targets.decode import DecodeTarget

SMOKE_INPUTS = 1000

CRASHERS = """
import os, signal, time
from pathlib import Path

def analyse(path: Path) -> str:
    data = path.read_bytes()
    if data == b"crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if data == b"raise":
        raise KeyError("not a typed refusal")
    if data == b"hang":
        time.sleep(60)
    if data == b"memory":
        bytearray(2**40)
    return "fine"
"""


@pytest.mark.integration
@pytest.mark.slow
def test_smoke_campaign_finds_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    doc = Campaign(tmp_path / "fuzz", seed=20260, budget=Budget(inputs=SMOKE_INPUTS)).run()
    seconds = time.monotonic() - started
    assert doc["inputs_total"] == SMOKE_INPUTS
    assert set(doc["inputs"]) == {"cstore", "stow", "decode"}
    assert doc["findings"] == [], json.dumps(doc["findings"][:5], indent=1)
    assert doc["checks"]["serve alive"] and doc["checks"]["C-ECHO"] == "0x0000"
    assert doc["checks"]["files outside the spool"] == 0
    assert doc["checks"]["patient values in the node log"] == 0  # names, IDs, dates
    assert any(k.startswith("status:0x0000") for k in doc["outcomes"]["cstore"])
    assert any(k.startswith("status:0xC2") for k in doc["outcomes"]["cstore"])
    assert "http:200" in doc["outcomes"]["stow"] and "http:409" in doc["outcomes"]["stow"]
    assert (tmp_path / "fuzz" / "report.md").exists()
    assert seconds < 120, seconds


def test_decode_worker_findings_are_reported(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "fuzz_crashers.py").write_text(CRASHERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    target = DecodeTarget(limit=2**31, timeout=3, analyse="fuzz_crashers:analyse")
    try:
        assert target.run(b"fine", "m", "s").finding is None
        crashed = target.run(b"crash", "m", "s")
        assert crashed.finding is Finding.CRASH and crashed.outcome == "died:-11"
        raised = target.run(b"raise", "m", "s")
        assert raised.finding is Finding.UNHANDLED_EXCEPTION and "KeyError" in raised.detail
        assert target.run(b"memory", "m", "s").finding is Finding.MEMORY
        assert target.run(b"hang", "m", "s").finding is Finding.HANG
        assert target.run(b"fine", "m", "s").outcome == "fine"  # restarted after each
    finally:
        target.close()


def test_a_finding_fails_the_campaign_and_keeps_its_input(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "fuzz_crashers.py").write_text(CRASHERS.replace('data == b"crash"', "True"))
    monkeypatch.syspath_prepend(str(tmp_path))
    campaign = Campaign(
        tmp_path / "out", seed=1, targets=("decode",), budget=Budget(inputs=2),
        decode_analyse="fuzz_crashers:analyse",
    )  # fmt: skip
    doc = campaign.run()
    assert doc["findings_by_kind"]["crash"] == 2
    assert len(list((tmp_path / "out" / "findings").glob("*.dcm"))) == 2


def test_node_log_problems_are_findings(tmp_path: Path) -> None:
    node = LiveNode(tmp_path)
    node.log_path.write_text(
        "2026-01-01 00:00:00,000 ERROR   pynetdicom.dul: Unable to decode the received PDU data\n"
        "Traceback (most recent call last):\n"
        '  File "/v/site-packages/pynetdicom/dul.py", line 324, in _read_pdu_data\n'
        "AssertionError\n"
        "2026-01-01 00:00:01,000 ERROR   spinexr.node.dimse.handlers: C-STORE 1.2: internal error\n"
        "Traceback (most recent call last):\n"
        "Exception in thread Thread-1 (run_reactor):\n"
        "2026-01-01 00:00:02,000 WARNING spinexr.node.dimse.listener: "
        "association process 7 ended with 1\n"
    )
    problems = node.log_problems()
    assert len(problems) == 4, problems  # not pynetdicom's handled-and-logged broken PDU


def test_a_chained_traceback_pynetdicom_logged_is_not_a_finding(tmp_path: Path) -> None:
    """Seen in the 100,000-input campaign (seed 20): pydicom could not decode a command set
    inside pynetdicom's state machine, which logged the chained exception and aborted the
    association; the first traceback of the chain is pydicom's, the raised one pynetdicom's."""
    node = LiveNode(tmp_path)
    node.log_path.write_text(
        "2026-01-01 00:00:00,000 ERROR   pynetdicom.fsm: State Machine received an exception\n"
        "Traceback (most recent call last):\n"
        '  File "/v/site-packages/pydicom/hooks.py", line 246, in raw_element_value\n'
        "pydicom.errors.BytesLengthException: Expected total bytes ...\n"
        "\n"
        "During handling of the above exception, another exception occurred:\n"
        "\n"
        "Traceback (most recent call last):\n"
        '  File "/v/site-packages/pynetdicom/fsm.py", line 91, in do_action\n'
        "pydicom.errors.BytesLengthException: Expected total bytes ...\n"
        "2026-01-01 00:00:01,000 ERROR   spinexr.node.worker: internal error\n"
        "Traceback (most recent call last):\n"
        '  File "/v/site-packages/pynetdicom/fsm.py", line 91, in do_action\n'
        "ValueError\n"
        "\n"
        "The above exception was the direct cause of the following exception:\n"
        "\n"
        "Traceback (most recent call last):\n"
        '  File "/v/spinexr/node/worker.py", line 10, in run\n'
        "RuntimeError\n"
    )
    problems = node.log_problems()
    # Only the second record: "internal error" and its chain's tracebacks (raised by ours).
    assert problems == [
        "2026-01-01 00:00:01,000 ERROR   spinexr.node.worker: internal error",
        "Traceback (most recent call last):",
        "Traceback (most recent call last):",
    ], problems


def test_mutations_are_seeded_and_each_applies() -> None:
    seeds = make_seeds(0)
    assert all(scan(s.data).complete for s in seeds)
    first = [mutate(s.data, random.Random(7)) for s in seeds]
    again = [mutate(s.data, random.Random(7)) for s in seeds]
    assert first == again
    rng = random.Random(3)
    for name, (func, _) in MUTATIONS.items():
        changed = 0
        for s in seeds:
            out = func(s.data, scan(s.data), rng)
            changed += out is not None and out != s.data
        assert changed, name


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_patient_value_in_the_node_log_is_found(tmp_path: Path) -> None:
    import io

    import pydicom

    from spinexr.fuzz.campaign import _phi_in
    from spinexr.fuzz.seeds import make_seeds

    seeds = make_seeds(0)
    name = str(pydicom.dcmread(io.BytesIO(seeds[0].data), stop_before_pixels=True).PatientName)
    log = tmp_path / "serve.log"
    log.write_text("INFO C-STORE 1.2.3 from FUZZ: stored\n")
    assert _phi_in(log, seeds) == []
    log.write_text(f"WARNING pydicom: Invalid value for VR PN: {name!r}\n")
    assert _phi_in(log, seeds)
