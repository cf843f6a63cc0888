"""Shared reads for the sending tests: the store's view of a mailbox's messages."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from maildesk.services import Services
from maildesk.store.tables import bodies, folders, message_folders, messages


@dataclass(frozen=True, slots=True)
class Stored:
    id: int
    remote_id: str
    message_id_header: str
    subject: str
    recipients: str
    folders: tuple[str, ...]  # folder roles (remote id when the folder has no role)


async def stored(services: Services, account_id: int) -> list[Stored]:
    """Every message of the account with the roles of the folders it is in."""
    async with services.db.read() as conn:
        rows = (await conn.execute(
            select(messages.c.id, messages.c.remote_id, messages.c.message_id_header,
                   messages.c.subject, messages.c.recipients)
            .where(messages.c.account_id == account_id).order_by(messages.c.id)
        )).all()
        links = (await conn.execute(
            select(message_folders.c.message_id, folders.c.role, folders.c.remote_id)
            .join(folders, folders.c.id == message_folders.c.folder_id)
            .where(folders.c.account_id == account_id)
        )).all()
    where: dict[int, list[str]] = {}
    for link in links:
        where.setdefault(int(link.message_id), []).append(link.role or link.remote_id)
    return [Stored(int(r.id), r.remote_id, r.message_id_header, r.subject, r.recipients,
                   tuple(sorted(where.get(int(r.id), []))))
            for r in rows]


async def with_header(services: Services, account_id: int, header: str) -> list[Stored]:
    return [s for s in await stored(services, account_id) if s.message_id_header == header]


async def body_text(services: Services, message_id: int) -> str | None:
    async with services.db.read() as conn:
        return await conn.scalar(select(bodies.c.text).where(bodies.c.message_id == message_id))
