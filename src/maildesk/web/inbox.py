"""The mailbox pages: the list of mailboxes, a folder's messages, one message.

Every handler first asks the access policy which accounts the caller may see; an account outside
that set is answered exactly like a missing one (404).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parseaddr

from starlette.requests import Request
from starlette.responses import Response

from maildesk.domain.mail import FolderRole
from maildesk.send import service as send_service
from maildesk.services import Services
from maildesk.store import bodies
from maildesk.store import views as view_store
from maildesk.store.views import FolderView, MailboxView
from maildesk.web import render
from maildesk.web.access import AccessPolicy, visible_mailbox
from maildesk.web.folders import default_folder, folder_label, sidebar

PAGE_SIZE = 50
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(key: tuple[datetime, int]) -> str:
    """The "older" link's key: microseconds since the epoch and the message id (exact)."""
    at, message_id = key
    return f"{(at - _EPOCH) // timedelta(microseconds=1)}_{message_id}"


def decode_cursor(value: str) -> tuple[datetime, int] | None:
    micros, sep, message_id = value.rpartition("_")
    try:
        if not sep:
            return None
        return _EPOCH + timedelta(microseconds=int(micros)), int(message_id)
    except (ValueError, OverflowError):
        return None


def _int_param(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


class InboxPages:
    def __init__(self, services: Services, access: AccessPolicy, *, page_size: int = PAGE_SIZE):
        self.services = services
        self.access = access
        self.page_size = page_size

    async def _mailbox(self, request: Request) -> MailboxView | None:
        return await visible_mailbox(self.access, self.services.db, request)

    async def index(self, request: Request) -> Response:
        visible = await self.access.visible_accounts(request)
        async with self.services.db.read() as conn:
            found = await view_store.list_mailboxes(conn, visible)
        return render.page(request, "index.html", {"mailboxes": found})

    async def mailbox(self, request: Request) -> Response:
        mailbox = await self._mailbox(request)
        if mailbox is None:
            return render.not_found(request, "There is no such mailbox.")
        before_param = request.query_params.get("before")
        before = decode_cursor(before_param) if before_param else None
        if before_param and before is None:
            return render.not_found(request, "That page of the folder does not exist.")
        async with self.services.db.read() as conn:
            # The change id first: whatever commits after it reaches the page over the websocket
            # (replayed from the change log), so nothing falls between rendering and subscribing.
            change_id = await view_store.latest_change_id(conn, mailbox.id)
            folders = await view_store.list_folders(conn, mailbox.id)
            folder = self._pick_folder(folders, request.query_params.get("folder"))
            if folder is None:
                if folders or request.query_params.get("folder"):
                    return render.not_found(request, "There is no such folder in this mailbox.")
                page = view_store.MessagePage([], None)
            else:
                page = await view_store.folder_messages(
                    conn, mailbox.id, folder.id, before=before, limit=self.page_size
                )
        shown = folder or _NO_FOLDER
        return render.page(request, "mailbox.html", {
            "mailbox": mailbox,
            "folders": sidebar(folders),
            "folder": shown,
            "folder_label": folder_label(shown),
            "current_folder_id": shown.id,
            "rows": page.rows,
            "older": encode_cursor(page.older) if page.older else None,
            "before": before_param,
            "change_id": change_id,
            "now": self.services.clock.now(),
        })

    @staticmethod
    def _pick_folder(folders: list[FolderView], param: str | None) -> FolderView | None:
        if param is None:
            return default_folder(folders)
        wanted = _int_param(param)
        return next((f for f in folders if f.id == wanted), None)

    async def message(self, request: Request) -> Response:
        mailbox = await self._mailbox(request)
        if mailbox is None:
            return render.not_found(request, "There is no such mailbox.")
        message_id = int(request.path_params["message_id"])
        async with self.services.db.read() as conn:
            change_id = await view_store.latest_change_id(conn, mailbox.id)
            detail = await view_store.message_detail(conn, mailbox.id, message_id)
            if detail is None:
                return render.not_found(request, "This message does not exist (any more).")
            body = await bodies.get(conn, message_id)
            folders = await view_store.list_folders(conn, mailbox.id)
        by_id = {f.id: f for f in folders}
        current = by_id.get(_int_param(request.query_params.get("folder")) or -1)
        if current is None:
            inbox = default_folder([by_id[i] for i in detail.folder_ids if i in by_id])
            current = inbox or default_folder(folders)
        name, address = parseaddr(detail.sender)
        side = sidebar(folders)
        return render.page(request, "message.html", {
            "mailbox": mailbox,
            "folders": side,
            "current_folder_id": current.id if current else None,
            "back_label": folder_label(current) if current else "Mailbox",
            "message": detail,
            "message_folders": [f for f in side if f.id in detail.folder_ids],
            "sender_name": name or address or detail.sender,
            "sender_address": address,
            "body": body,
            "frame_doc": render.frame_document(body) if body else "",
            "remote_images": render.has_remote_images(body) if body else False,
            "change_id": change_id,
            # A local Sent/Draft entry: its send state, error and "Try sending again".
            "outbox": await send_service.for_message(self.services, message_id),
        })


# A mailbox whose folders have not been listed yet (the first sync is still running).
_NO_FOLDER = FolderView(id=0, remote_id="", name="Inbox", role=FolderRole.INBOX,
                        is_system=True, total=0, unread=0)
