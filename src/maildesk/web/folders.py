"""The folder sidebar: which folders to show, in which order, under which names.

Order: the inbox first, then the other system folders (well-known roles in a fixed order, then
the rest alphabetically), then the user's labels alphabetically. System folders without a role
(Gmail's categories, CHAT, the UNREAD pseudo-label) are shown only when they hold mail.
"""

from __future__ import annotations

from dataclasses import dataclass

from maildesk.domain.mail import FolderRole
from maildesk.store.views import FolderView

_ROLE_ORDER = (
    FolderRole.INBOX, FolderRole.STARRED, FolderRole.IMPORTANT, FolderRole.SENT,
    FolderRole.DRAFTS, FolderRole.ARCHIVE, FolderRole.ALL, FolderRole.SPAM, FolderRole.TRASH,
)
_ROLE_NAMES = {
    FolderRole.INBOX: "Inbox", FolderRole.STARRED: "Starred", FolderRole.IMPORTANT: "Important",
    FolderRole.SENT: "Sent", FolderRole.DRAFTS: "Drafts", FolderRole.ARCHIVE: "Archive",
    FolderRole.ALL: "All mail", FolderRole.SPAM: "Spam", FolderRole.TRASH: "Trash",
}
# Folders whose unread count is noise (everything in Sent or Trash is "read" in spirit).
_QUIET = {FolderRole.SENT, FolderRole.DRAFTS, FolderRole.TRASH, FolderRole.SPAM, FolderRole.ALL}


@dataclass(frozen=True, slots=True)
class SidebarFolder:
    id: int
    label: str
    role: str
    is_user: bool
    total: int
    unread: int
    show_unread: bool


def folder_label(folder: FolderView) -> str:
    if folder.role in _ROLE_NAMES:
        return _ROLE_NAMES[folder.role]
    name = folder.name
    if folder.is_system and name.isupper():
        # Provider constants such as CATEGORY_SOCIAL: "Social".
        name = name.removeprefix("CATEGORY_").replace("_", " ").title()
    return name


def _rank(folder: FolderView) -> tuple[int, int, str]:
    if folder.role in _ROLE_ORDER:
        return (0, _ROLE_ORDER.index(folder.role), "")
    if folder.is_system:
        return (1, 0, folder_label(folder).casefold())
    return (2, 0, folder.name.casefold())


def sidebar(folders: list[FolderView]) -> list[SidebarFolder]:
    shown = [f for f in folders if f.role in _ROLE_NAMES or not f.is_system or f.total > 0]
    return [
        SidebarFolder(
            id=f.id, label=folder_label(f), role=f.role.value,
            is_user=not f.is_system and f.role not in _ROLE_NAMES,
            total=f.total, unread=f.unread, show_unread=f.role not in _QUIET,
        )
        for f in sorted(shown, key=_rank)
    ]


def default_folder(folders: list[FolderView]) -> FolderView | None:
    """The inbox, else the first folder in sidebar order."""
    for f in folders:
        if f.role is FolderRole.INBOX:
            return f
    ordered = sorted(folders, key=_rank)
    return ordered[0] if ordered else None
