"""IMAP folders: LIST entries, special-use role detection, SELECT and STATUS results. Pure.

Roles come first from SPECIAL-USE attributes (RFC 6154: ``\\Sent``, ``\\Drafts``, ``\\Trash``,
``\\Junk``, ``\\Archive``, ``\\All``, ``\\Flagged``, RFC 8457 ``\\Important``), which the
server's operator set; only for roles no attribute claimed do we go by name (``Sent Items``,
``Deleted Items``, ``Spam``, …). Names count only at the top level or directly under INBOX (or
``[Gmail]``): a user's ``Projects/Sent`` is not the account's Sent folder. Each role goes to one
folder at most.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from maildesk.domain.mail import FolderRole, RemoteFolder
from maildesk.errors import ProtocolViolation
from maildesk.providers.imap_wire import StatusResponse, Untagged, Value, decode_mailbox_name

__all__ = [
    "FolderStatus",
    "MailboxEntry",
    "SelectedFolder",
    "assign_roles",
    "parse_list",
    "parse_select",
    "parse_status",
    "to_remote_folders",
]

_SPECIAL_USE = {
    "\\sent": FolderRole.SENT,
    "\\drafts": FolderRole.DRAFTS,
    "\\trash": FolderRole.TRASH,
    "\\junk": FolderRole.SPAM,
    "\\archive": FolderRole.ARCHIVE,
    "\\all": FolderRole.ALL,
    "\\flagged": FolderRole.STARRED,
    "\\important": FolderRole.IMPORTANT,
}

# Lower-cased leaf names seen in the wild (English first, then common localisations).
_NAMES = {
    FolderRole.SENT: (
        "sent", "sent items", "sent mail", "sent messages", "sent-mail", "outbox.sent",
        "gesendet", "gesendete elemente", "gesendete objekte", "envoyés", "éléments envoyés",
        "enviados", "elementos enviados", "inviata", "posta inviata", "verzonden",
        "verzonden items", "skickat", "отправленные",
    ),
    FolderRole.DRAFTS: (
        "drafts", "draft", "entwürfe", "brouillons", "borradores", "bozze", "concepten",
        "utkast", "черновики",
    ),
    FolderRole.TRASH: (
        "trash", "deleted items", "deleted messages", "deleted", "bin", "papierkorb",
        "gelöschte elemente", "gelöschte objekte", "corbeille", "éléments supprimés",
        "papelera", "elementos eliminados", "cestino", "prullenbak", "verwijderde items",
        "papperskorgen", "корзина", "удаленные",
    ),
    FolderRole.SPAM: (
        "junk", "spam", "junk e-mail", "junk email", "junk mail", "bulk mail", "junk-e-mail",
        "spamverdacht", "courrier indésirable", "correo no deseado", "posta indesiderata",
        "ongewenste e-mail", "skräppost", "спам",
    ),
    FolderRole.ARCHIVE: ("archive", "archives", "archiv", "archivio", "archivo", "archief"),
    FolderRole.ALL: ("all mail", "alle nachrichten", "tous les messages", "todos"),
}
_ROLE_BY_NAME = {name: role for role, names in _NAMES.items() for name in names}
_ROLE_PARENTS = frozenset({"", "inbox", "[gmail]", "[google mail]"})


@dataclass(frozen=True, slots=True)
class MailboxEntry:
    """One ``* LIST`` answer. ``name`` is decoded (modified UTF-7 → text); it is the folder's
    path and remote id. Attributes keep the server's spelling; compare them lower-cased."""

    name: str
    delimiter: str | None
    attributes: frozenset[str]

    @property
    def selectable(self) -> bool:
        lowered = {attr.lower() for attr in self.attributes}
        return not lowered & {"\\noselect", "\\nonexistent"}

    @property
    def leaf(self) -> str:
        if self.delimiter and self.delimiter in self.name:
            return self.name.rsplit(self.delimiter, 1)[1]
        return self.name

    @property
    def parent(self) -> str:
        if self.delimiter and self.delimiter in self.name:
            return self.name.rsplit(self.delimiter, 1)[0]
        return ""

    @property
    def is_inbox(self) -> bool:
        return self.name.upper() == "INBOX"


def parse_list(response: Untagged) -> MailboxEntry:
    """``* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"`` → :class:`MailboxEntry`."""
    values = response.values
    if response.keyword not in ("LIST", "LSUB") or len(values) < 3:
        raise ProtocolViolation("IMAP: LIST needs attributes, delimiter and name")
    attributes, delimiter, name = values[0], values[1], values[2]
    if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
        raise ProtocolViolation("IMAP: LIST attributes must be a list of atoms")
    if delimiter is not None and not isinstance(delimiter, bytes | str):
        raise ProtocolViolation("IMAP: LIST delimiter must be a string or NIL")
    if not isinstance(name, bytes | str | int):
        raise ProtocolViolation("IMAP: LIST mailbox name must be a string")
    delim = delimiter.decode("ascii", "replace") if isinstance(delimiter, bytes) else delimiter
    return MailboxEntry(
        name=decode_mailbox_name(name),
        delimiter=delim or None,
        attributes=frozenset(str(a) for a in attributes),
    )


def assign_roles(entries: Sequence[MailboxEntry]) -> dict[str, FolderRole]:
    """Folder name → role for every folder that has one (see the module docstring)."""
    roles: dict[str, FolderRole] = {}
    taken: set[FolderRole] = set()
    for entry in entries:
        if entry.is_inbox:
            roles[entry.name] = FolderRole.INBOX
            taken.add(FolderRole.INBOX)
    for entry in entries:
        if entry.name in roles or not entry.selectable:
            continue
        for attribute in sorted(entry.attributes, key=str.lower):
            role = _SPECIAL_USE.get(attribute.lower())
            if role is not None and role not in taken:
                roles[entry.name] = role
                taken.add(role)
                break
    # Among several candidates for a role the server's first one wins.
    for entry in entries:
        if entry.name in roles or not entry.selectable:
            continue
        if entry.parent.lower() not in _ROLE_PARENTS:
            continue
        role = _ROLE_BY_NAME.get(entry.leaf.strip().lower())
        if role is not None and role not in taken:
            roles[entry.name] = role
            taken.add(role)
    return roles


def to_remote_folders(entries: Iterable[MailboxEntry]) -> list[RemoteFolder]:
    """Selectable folders as domain folders, roles assigned, in the server's order."""
    selectable = [entry for entry in entries if entry.selectable]
    roles = assign_roles(selectable)
    folders = []
    for entry in selectable:
        role = roles.get(entry.name, FolderRole.NONE)
        name = "Inbox" if entry.is_inbox else entry.leaf
        folders.append(
            RemoteFolder(remote_id=entry.name, name=name, role=role, system=role != FolderRole.NONE)
        )
    return folders


# -- SELECT / EXAMINE / STATUS -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SelectedFolder:
    """What SELECT/EXAMINE told us. ``highest_modseq`` is ``None`` without CONDSTORE (or with
    ``[NOMODSEQ]``)."""

    name: str
    uidvalidity: int
    uidnext: int | None
    exists: int
    highest_modseq: int | None
    flags: frozenset[str]
    permanent_flags: frozenset[str]
    read_only: bool


def _flag_list(values: tuple[Value, ...] | list[Value]) -> frozenset[str]:
    if len(values) == 1 and isinstance(values[0], list):
        return frozenset(str(flag) for flag in values[0] if isinstance(flag, str))
    return frozenset()


def parse_select(
    name: str, responses: Iterable[Untagged | StatusResponse], done: StatusResponse
) -> SelectedFolder:
    """The untagged data of a successful SELECT/EXAMINE and its tagged OK."""
    uidvalidity: int | None = None
    uidnext: int | None = None
    highest: int | None = None
    nomodseq = False
    exists = 0
    flags: frozenset[str] = frozenset()
    permanent: frozenset[str] = frozenset()
    for response in responses:
        if isinstance(response, StatusResponse):
            code, args = response.code, response.code_args
            number = args[0] if len(args) == 1 and isinstance(args[0], int) else None
            if code == "UIDVALIDITY":
                uidvalidity = number
            elif code == "UIDNEXT":
                uidnext = number
            elif code == "HIGHESTMODSEQ":
                highest = number
            elif code == "NOMODSEQ":
                nomodseq = True
            elif code == "PERMANENTFLAGS":
                permanent = _flag_list(args)
        elif response.keyword == "EXISTS" and response.number is not None:
            exists = response.number
        elif response.keyword == "FLAGS":
            flags = _flag_list(response.values)
    if uidvalidity is None:
        raise ProtocolViolation(f"IMAP: SELECT {name!r} answered without UIDVALIDITY")
    return SelectedFolder(
        name=name,
        uidvalidity=uidvalidity,
        uidnext=uidnext,
        exists=exists,
        highest_modseq=None if nomodseq else highest,
        flags=flags,
        permanent_flags=permanent,
        read_only=done.code == "READ-ONLY",
    )


@dataclass(frozen=True, slots=True)
class FolderStatus:
    """``* STATUS name (MESSAGES n UIDNEXT n UIDVALIDITY n UNSEEN n HIGHESTMODSEQ n)``."""

    name: str
    messages: int | None = None
    uidnext: int | None = None
    uidvalidity: int | None = None
    unseen: int | None = None
    highest_modseq: int | None = None


def parse_status(response: Untagged) -> FolderStatus:
    if response.keyword != "STATUS" or len(response.values) != 2:
        raise ProtocolViolation("IMAP: STATUS needs a name and a list")
    raw_name, items = response.values
    if not isinstance(raw_name, bytes | str | int) or not isinstance(items, list):
        raise ProtocolViolation("IMAP: malformed STATUS")
    if len(items) % 2:
        raise ProtocolViolation("IMAP: STATUS items must be pairs")
    found: dict[str, int] = {}
    for index in range(0, len(items), 2):
        key, value = items[index], items[index + 1]
        if isinstance(key, str) and isinstance(value, int):
            found[key.upper()] = value
    return FolderStatus(
        name=decode_mailbox_name(raw_name),
        messages=found.get("MESSAGES"),
        uidnext=found.get("UIDNEXT"),
        uidvalidity=found.get("UIDVALIDITY"),
        unseen=found.get("UNSEEN"),
        highest_modseq=found.get("HIGHESTMODSEQ"),
    )
