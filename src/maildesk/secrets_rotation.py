"""Re-encrypt every stored secret with the newest key (after prepending a new key)."""

from __future__ import annotations

from sqlalchemy import Table, select, update

from maildesk.services import Services
from maildesk.store.tables import accounts, push_subscriptions

_SECRET_COLUMNS: list[tuple[Table, str]] = [
    (accounts, "refresh_token_enc"),
    (accounts, "password_enc"),
    (push_subscriptions, "client_state_enc"),
]


async def rotate_all(services: Services) -> int:
    count = 0
    async with services.db.transaction() as conn:
        for table, column in _SECRET_COLUMNS:
            col = table.c[column]
            rows = (await conn.execute(select(table.c.id, col).where(col.is_not(None)))).all()
            for row_id, token in rows:
                await conn.execute(update(table).where(table.c.id == row_id).values(
                    {column: services.secrets.rotate(token)}
                ))
                count += 1
    return count
