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
