"""IMAP IDLE watches: the ``push_subscriptions`` rows with provider ``imap``.

A row says which worker watches the mailbox (``subscription_id`` = the worker's owner id, held
until ``expiration`` and renewed by its heartbeat), how the watch is doing (``state``, typed
last error, failure count) and when it last saw news (``last_notification_at``). Whenever a
watch stops being healthy its mailbox's next poll is brought within the normal poll interval,
so an IMAP mailbox without working IDLE is polled like any other.

The ``*_blocking`` functions run on ``Database.run_write`` (one short write transaction).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from maildesk.domain.accounts import ProviderKind
from maildesk.domain.idle import FolderSnapshot, IdlePlan
from maildesk.domain.push import PushState
from maildesk.store import accounts as account_store
from maildesk.store import mail as mail_store
from maildesk.store.tables import accounts, folders, message_folders, messages, push_subscriptions

_IMAP = ProviderKind.IMAP.value
_subs = push_subscriptions


def _mine(account_ids: Sequence[int]) -> list[Any]:
    return [_subs.c.account_id.in_(list(account_ids)), _subs.c.provider == _IMAP]


def _free(owner: str, now: datetime) -> Any:
    """Held by nobody alive: no holder, ``owner`` itself, or a hold that ran out."""
    return or_(_subs.c.subscription_id.is_(None), _subs.c.subscription_id == owner,
               _subs.c.expiration.is_(None), _subs.c.expiration < now)


async def holders(conn: AsyncConnection) -> dict[int, tuple[str | None, datetime | None]]:
    """account id -> (holding worker, held until) of every IMAP watch row."""
    rows = await conn.execute(select(_subs.c.account_id, _subs.c.subscription_id,
                                     _subs.c.expiration).where(_subs.c.provider == _IMAP))
    return {int(r.account_id): (r.subscription_id, r.expiration) for r in rows}


def claim_blocking(conn: Connection, account_id: int, plan: IdlePlan, *, owner: str,
                   now: datetime, hold: timedelta) -> bool:
    """Take the mailbox's watch for ``owner`` unless another live worker holds it."""
    values: dict[str, Any] = {
        "subscription_id": owner, "expiration": now + hold, "last_renewal_at": now,
        "state": PushState.PENDING.value, "resource": ", ".join(plan.idle),
        "settings_json": json.dumps({"idle": list(plan.idle), "polled": list(plan.polled)},
                                    sort_keys=True),
        "updated_at": now,
    }
    taken = conn.execute(update(_subs).where(*_mine([account_id]), _free(owner, now))
                         .values(**values).returning(_subs.c.id)).first()
    if taken is not None:
        return True
    if conn.execute(select(_subs.c.id).where(*_mine([account_id]))).first():
        return False  # another worker holds this mailbox's watch
    conn.execute(insert(_subs).values(account_id=account_id, provider=_IMAP, created_at=now,
                                      failure_count=0, **values))
    return True


def renew_blocking(conn: Connection, *, owner: str, now: datetime, hold: timedelta) -> set[int]:
    """Extend every hold of ``owner``; returns the mailboxes it still holds."""
    rows = conn.execute(update(_subs).where(
        _subs.c.provider == _IMAP, _subs.c.subscription_id == owner,
    ).values(expiration=now + hold, last_renewal_at=now).returning(_subs.c.account_id))
    return {int(a) for a in rows.scalars()}


def release_blocking(conn: Connection, *, owner: str, now: datetime,
                     poll_interval: float) -> None:
    """Hand back every row ``owner`` holds; an ``active`` one becomes ``pending`` (and its
    mailbox is polled again) until a worker watches it."""
    ids = [int(a) for a in conn.execute(select(_subs.c.account_id).where(
        _subs.c.provider == _IMAP, _subs.c.subscription_id == owner)).scalars()]
    set_rows_blocking(conn, ids, owner=owner, now=now, poll_interval=poll_interval,
                      subscription_id=None, expiration=None)
    conn.execute(update(_subs).where(*_mine(ids), _subs.c.state == PushState.ACTIVE.value)
                 .values(state=PushState.PENDING.value))


def stop_free_blocking(conn: Connection, account_ids: Sequence[int] | None, *, owner: str,
                       now: datetime, poll_interval: float) -> None:
    """Rows (of ``account_ids``, or all) that no live worker holds say ``stopped``, and their
    mailboxes are polled at the normal interval."""
    pick = select(_subs.c.account_id).where(
        _subs.c.provider == _IMAP, _subs.c.state != PushState.STOPPED.value, _free(owner, now))
    if account_ids is not None:
        pick = pick.where(_subs.c.account_id.in_(list(account_ids)))
    ids = [int(a) for a in conn.execute(pick).scalars()]
    set_rows_blocking(conn, ids, owner=None, now=now, poll_interval=poll_interval,
                      state=PushState.STOPPED.value, subscription_id=None, expiration=None)


def request_sync_blocking(conn: Connection, account_id: int, *, reason: str, owner: str,
                          now: datetime) -> list[int]:
    """Stamp the mailbox for a sync and note the news on ``owner``'s row; returns the
    ``request_syncs_blocking`` answer (the mailbox, if a worker should be woken for it)."""
    to_wake = account_store.request_syncs_blocking(conn, [account_id], reason=reason, now=now)
    conn.execute(update(_subs).where(*_mine([account_id]), _subs.c.subscription_id == owner)
                 .values(last_notification_at=now))
    return to_wake


def set_rows_blocking(conn: Connection, account_ids: Sequence[int], *, owner: str | None,
                      now: datetime, poll_interval: float | None, **values: Any) -> None:
    """Update the ``imap`` rows of ``account_ids`` (only those ``owner`` holds, unless None);
    with ``poll_interval``, bring their mailboxes' next poll to within that interval."""
    if not account_ids:
        return
    where = _mine(account_ids)
    if owner is not None:
        where.append(_subs.c.subscription_id == owner)
    conn.execute(update(_subs).where(*where).values(updated_at=now, **values))
    if poll_interval is not None:
        soon = now + timedelta(seconds=poll_interval)
        conn.execute(update(accounts).where(
            accounts.c.id.in_(list(account_ids)), accounts.c.next_poll_at > soon,
        ).values(next_poll_at=soon))


def failure_counted() -> Any:
    """The value that adds one to a row's failure count (for ``set_rows_blocking``)."""
    return _subs.c.failure_count + 1


async def synced_snapshot(conn: AsyncConnection, account_id: int,
                          folder: str) -> FolderSnapshot | None:
    """What the sync engine last stored of ``folder``: ``uidnext`` is the top of the window it
    holds. The message count is comparable with EXISTS only once the window reaches down to
    UID 1 (backfill done); before that it is left unknown."""
    row = (await conn.execute(select(
        folders.c.id, folders.c.uidvalidity, folders.c.uidnext, folders.c.highestmodseq,
        folders.c.backfill_done,
    ).where(folders.c.account_id == account_id, folders.c.remote_id == folder))).first()
    if row is None:
        return None
    count = None
    if row.backfill_done:
        # Provider messages only: a local Sent entry of a message being sent is no message
        # of the server's folder, and counting it would look like news on every check.
        count = int(await conn.scalar(
            select(func.count()).select_from(
                message_folders.join(messages, messages.c.id == message_folders.c.message_id))
            .where(message_folders.c.folder_id == row.id, mail_store.provider_messages())
        ) or 0)
    return FolderSnapshot(row.uidvalidity, row.uidnext, count, row.highestmodseq)
