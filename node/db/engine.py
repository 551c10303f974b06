"""Engines and sessions for SQLite (embedded) and PostgreSQL (scaled out)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """Pick the drivers we ship: psycopg 3 for PostgreSQL.

    Parameters
    ----------
    url : str
        A SQLAlchemy URL as an admin writes it (``postgresql://...`` or ``sqlite:///...``).

    Returns
    -------
    str
        The URL with an explicit driver.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; synchronous=FULL makes a commit durable
    # before C-STORE is acknowledged.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine with the settings each backend needs.

    Parameters
    ----------
    url : str
        SQLAlchemy URL.
    echo : bool
        Log SQL statements (debugging only).

    Returns
    -------
    Engine
        The engine. For SQLite files the parent folder is created.
    """
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory bound to ``engine`` (objects stay usable after commit).

    Parameters
    ----------
    engine : Engine
        The engine.

    Returns
    -------
    sessionmaker
        Factory of :class:`~sqlalchemy.orm.Session`.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)
