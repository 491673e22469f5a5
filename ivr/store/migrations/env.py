"""Alembic environment: runs on the connection the store hands over (no ini file)."""

from __future__ import annotations

from alembic import context

from ivr.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable from the alembic CLI
    raise RuntimeError("run migrations through ivr.store.db.migrate()")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
