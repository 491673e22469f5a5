"""Engine set-up (SQLite in WAL mode with full sync, or PostgreSQL by URL) and migrations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# How long a write waits for another writer. Short: a locked database must not hold a call's
# flow (the call journal keeps its writes and retries them, see ivr/store/journal.py).
SQLITE_BUSY_TIMEOUT_MS = 2000
# PostgreSQL: the same bound on waiting for a lock; a statement that runs away, or a session
# left idle inside a transaction (holding locks), is ended by the server.
PG_LOCK_TIMEOUT_MS = SQLITE_BUSY_TIMEOUT_MS
PG_STATEMENT_TIMEOUT_MS = 30_000
PG_IDLE_IN_TRANSACTION_MS = 60_000


def sqlite_url(data_dir: Path) -> str:
    """URL of the SQLite database in ``data_dir``."""
    return f"sqlite:///{(data_dir / 'ivr.sqlite3').resolve()}"


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets WAL, synchronous=FULL (durable on commit) and foreign keys.

    Statement parameters are hidden from SQLAlchemy's exception text: they hold caller numbers,
    digits and transcripts, and exceptions end up in logs."""
    if url.startswith("sqlite"):
        engine = create_engine(url, hide_parameters=True,
                               connect_args={"check_same_thread": False,
                                             "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).touch(exist_ok=True)
            # Caller numbers live here: readable by the service user only.
            os.chmod(path, 0o600)
        return engine
    if url.startswith("postgresql"):
        options = (f"-c lock_timeout={PG_LOCK_TIMEOUT_MS} "
                   f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS} "
                   f"-c idle_in_transaction_session_timeout={PG_IDLE_IN_TRANSACTION_MS}")
        return create_engine(url, pool_pre_ping=True, hide_parameters=True, pool_size=10,
                             max_overflow=20, pool_timeout=10,
                             connect_args={"options": options, "connect_timeout": 5,
                                           "application_name": "ivr"})
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def url_of(engine: Engine) -> str:
    """The engine's URL with its password (``str(engine.url)`` masks it): for a second
    engine on the same database, as another process would open it."""
    return engine.url.render_as_string(hide_password=False)


def newest_revision() -> str:
    """The newest migration's revision id (the files are named ``<revision>_<what>.py``)."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


# Several nodes start at once on one PostgreSQL: schema upgrades, sealing and seeding the
# rules run under this advisory lock, one node at a time (the others then find them done).
STARTUP_LOCK = 74_100_101


@contextmanager
def startup_lock(engine: Engine) -> Iterator[None]:
    """Hold the database-wide start-up lock (PostgreSQL; SQLite has one writer anyway)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as connection:
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({STARTUP_LOCK})")
        try:
            yield
        finally:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({STARTUP_LOCK})")
            connection.commit()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (Alembic is loaded only when there is
    something to do: the command line opens the store on every call)."""
    with startup_lock(engine):
        _migrate(engine)


def _migrate(engine: Engine) -> None:
    try:
        with engine.connect() as connection:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        current = None
    if current == newest_revision():
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
