"""Issue 17: the admin views stay fast when CT studies fill the instance table.

A CT study has thousands of instances, so a site's instance table grows by millions of rows.
The studies list, the dashboard's activity and a study's detail must read only the rows of
the studies they show (through the index on the instance's study), never every instance
row: every statement they run on ``instances`` is checked with SQLite's EXPLAIN QUERY PLAN
(a ``SCAN`` of the table or of a whole index reads every row; a ``SEARCH`` uses the index).
The job table loads each job's study in the same statement (no query per job).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ct_ingest_support import ct_series, part10
from ingest_support import Stack, build_stack
from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine

from spinexr.node.admin.jobs import list_jobs
from spinexr.node.admin.studies import find_studies, study_detail
from spinexr.node.db.models import Instance, Study, utcnow
from spinexr.node.http.admin.dashboard import activity
from spinexr.node.ingest.assembler import StudyAssembler

SCAN = re.compile(r"\bSCAN (TABLE )?instances\b")


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.chdir(tmp_path)
    return build_stack(tmp_path)


def engine_of(stack: Stack) -> Engine:
    bind = stack.sessions.kw["bind"]
    assert isinstance(bind, Engine)
    return bind


def receive(stack: Stack, slices: int, studies: int) -> list[str]:
    uids = []
    for _ in range(studies):
        series = ct_series(slices, body_part="CHEST", size=8)
        for ds in series:
            stack.ingest.ingest([part10(ds)], calling_ae="CT1", source="dimse")
        uids.append(str(series[0].StudyInstanceUID))
    return uids


@contextmanager
def statements(stack: Stack) -> Iterator[list[tuple[str, object]]]:
    """Collect the SQL statements (with their parameters) run while the block runs."""
    seen: list[tuple[str, object]] = []

    def collect(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append((statement, parameters))

    engine = engine_of(stack)
    event.listen(engine, "before_cursor_execute", collect)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", collect)


def instance_scans(stack: Stack, seen: list[tuple[str, object]]) -> list[str]:
    """The query plan lines that read every row of ``instances`` (or of one of its indexes)."""
    bad = []
    with engine_of(stack).connect() as conn:
        for statement, parameters in seen:
            if "instances" not in statement or not statement.lstrip().upper().startswith("SELECT"):
                continue
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            bad += [f"{row[-1]}  <-  {statement[:200]}" for row in plan if SCAN.search(row[-1])]
    return bad


def test_the_studies_list_counts_instances_of_its_page_only(stack: Stack) -> None:
    uids = receive(stack, slices=5, studies=3) + receive(stack, slices=2, studies=1)
    StudyAssembler(stack.settings, stack.sessions, "m@1").force_complete(uids[0])
    with statements(stack) as seen:
        rows, total = find_studies(stack.sessions, per_page=2)
        page2, _ = find_studies(stack.sessions, per_page=2, page=2)
        one, _ = find_studies(stack.sessions, study_uid=uids[0])
    assert total == 4
    counts = {r["study_instance_uid"]: r["instances"] for r in rows + page2}
    assert counts == {uids[0]: 5, uids[1]: 5, uids[2]: 5, uids[3]: 2}
    assert [r["study_instance_uid"] for r in rows + page2] == uids[::-1]  # newest first
    assert one[0]["instances"] == 5 and one[0]["job_state"] == "complete"
    assert instance_scans(stack, seen) == []


def test_the_dashboard_counts_recent_instances_without_reading_them_all(stack: Stack) -> None:
    receive(stack, slices=4, studies=2)
    with statements(stack) as seen:
        now = activity(stack.sessions)
    assert now["instances_received"] == 8 and now["studies_received"] == 2
    assert instance_scans(stack, seen) == []
    received = utcnow()
    later = activity(stack.sessions, now=received + dt.timedelta(hours=25))
    assert later["instances_received"] == 0
    # Counted by the instances' own times, even when a study's Last Received lags behind
    # (two recording processes may commit in the other order than they read the clock).
    with stack.sessions() as s:
        s.execute(update(Study).values(last_received_at=received - dt.timedelta(minutes=30)))
        s.commit()
    edge = activity(stack.sessions, now=received + dt.timedelta(hours=24, minutes=-5))
    assert edge["instances_received"] == 8
    # A study that began before the window: only its instances received in it count.
    day_ago = utcnow() - dt.timedelta(hours=25)
    with stack.sessions() as s:
        first_two = select(Instance.id).order_by(Instance.id).limit(2).scalar_subquery()
        s.execute(update(Instance).where(Instance.id.in_(first_two)).values(received_at=day_ago))
        s.execute(update(Study).values(first_received_at=day_ago, last_received_at=utcnow()))
        s.commit()
    assert activity(stack.sessions)["instances_received"] == 6


def test_a_study_detail_reads_its_own_instances(stack: Stack) -> None:
    uids = receive(stack, slices=6, studies=2)
    with statements(stack) as seen:
        detail = study_detail(stack.sessions, uids[1])
    assert len(detail["instances"]) == 6
    assert [i["received_at"] for i in detail["instances"]] == sorted(
        i["received_at"] for i in detail["instances"]
    )
    first = detail["instances"][0]
    assert first["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2" and first["version"] == 1
    assert dt.datetime.fromisoformat(first["received_at"]).tzinfo is not None
    assert instance_scans(stack, seen) == []


def test_the_job_table_loads_the_studies_with_the_jobs(stack: Stack) -> None:
    assembler = StudyAssembler(stack.settings, stack.sessions, "m@1")
    uids = receive(stack, slices=1, studies=5)
    assembler.force_complete(uids[0])
    with statements(stack) as one:
        assert len(list_jobs(stack.sessions)) == 1
    for uid in uids[1:]:
        assembler.force_complete(uid)
    with statements(stack) as five:
        jobs = list_jobs(stack.sessions)
    assert [j["study_instance_uid"] for j in jobs] == uids[::-1]
    assert len(five) == len(one)  # no query per job
