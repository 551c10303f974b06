from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from spinexr.node.db.engine import make_engine, normalise_url
from spinexr.node.db.migrate import (
    current_revision,
    downgrade,
    head_revision,
    require_head,
    upgrade,
)
from spinexr.node.db.models import Base
from spinexr.node.errors import DatabaseError

TABLES = {
    "studies",
    "instances",
    "jobs",
    "results",
    "output_objects",
    "export_attempts",
    "audit_events",
}


def assert_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == [], f"migrations and models disagree: {diffs}"


def exercise(engine: Engine) -> None:
    assert current_revision(engine) is None
    with pytest.raises(DatabaseError, match="db upgrade"):
        require_head(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    require_head(engine)
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert_schema_matches_models(engine)
    upgrade(engine)  # idempotent
    downgrade(engine, "base")
    assert not (TABLES & set(inspect(engine).get_table_names()))
    upgrade(engine)
    assert_schema_matches_models(engine)


def test_migrations_on_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    exercise(engine)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL


@pytest.mark.integration
def test_migrations_on_postgresql(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    assert engine.dialect.name == "postgresql"
    try:
        exercise(engine)
    finally:
        downgrade(engine, "base")
        engine.dispose()


def test_postgres_url_gets_psycopg3_driver() -> None:
    assert normalise_url("postgresql://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_0002_keeps_earlier_hashes_with_their_algorithm(tmp_path: Path) -> None:
    """Rows hashed with SHA-256 before 0002 keep that digest, named; downgrade restores it."""
    engine = make_engine(f"sqlite:///{tmp_path / 'h.db'}")
    upgrade(engine, "0001")
    digest = "ab" * 32
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO studies (id, study_instance_uid, source, priority, status, "
                "decision, first_received_at, last_received_at) VALUES "
                "(1, '1.2.3', 'dimse', 0, 'RECEIVING', 'analyse', '2026-01-01', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO instances (study_id, series_instance_uid, sop_instance_uid, "
                "sop_class_uid, transfer_syntax_uid, version, path, size_bytes, sha256, source, "
                "decision, received_at) VALUES (1, '1.2.3.1', '1.2.3.1.1', '1.2', '1.2.840.10008"
                ".1.2.1', 1, 'a/b.dcm', 10, :digest, 'dimse', 'analyse', '2026-01-01')"
            ),
            {"digest": digest},
        )
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT content_hash FROM instances")).scalar() == (
            "sha256:" + digest
        )
    assert_schema_matches_models(engine)
    downgrade(engine, "0001")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sha256 FROM instances")).scalar() == digest
