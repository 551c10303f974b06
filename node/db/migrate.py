"""Alembic migrations run from code: ``serve`` upgrades at start, ``db upgrade`` on demand."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from spinexr.node.errors import DatabaseError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    """Build an Alembic config that runs on ``engine``'s connection.

    Parameters
    ----------
    engine : Engine
        Target database.

    Returns
    -------
    Config
        Config with ``script_location`` set to our migrations.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    """Return the newest migration's revision id."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """Return the database's revision (None for an empty database).

    Parameters
    ----------
    engine : Engine
        The database.

    Returns
    -------
    str or None
        The revision id stamped in ``alembic_version``.
    """
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision``.

    Parameters
    ----------
    engine : Engine
        The database.
    revision : str
        Target revision.
    """
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``"base"`` drops everything).

    Parameters
    ----------
    engine : Engine
        The database.
    revision : str
        Target revision.
    """
    command.downgrade(alembic_config(engine), revision)


def require_head(engine: Engine) -> None:
    """Raise unless the database is at the newest revision.

    Parameters
    ----------
    engine : Engine
        The database.

    Raises
    ------
    DatabaseError
        If the schema is older (or newer) than this code.
    """
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseError(
            f"database schema is at {current or 'nothing'}, this version needs {head}: "
            "run `spinexr-node db upgrade`"
        )
