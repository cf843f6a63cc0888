"""The Alembic migrations produce exactly the schema of ``store/tables.py``."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from maildesk.store.database import Database
from maildesk.store.migrate import current_revision, head_revision
from maildesk.store.tables import metadata


async def test_migrated_schema_matches_the_tables(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert await current_revision(db.engine) == head_revision()

        def diff(connection: Connection) -> list[Any]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))

        async with db.read() as conn:
            differences = await conn.run_sync(diff)
        assert differences == []
    finally:
        await db.dispose()
