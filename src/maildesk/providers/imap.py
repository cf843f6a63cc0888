"""The IMAP client: an async session that speaks in domain types.

**Why our own client.** We evaluated aioimaplib (the one maintained asyncio IMAP library on
PyPI). It hands back raw response lines (literals as separate byte arrays) and leaves parsing of
FETCH, ENVELOPE, LIST, VANISHED and response codes to the caller, which is most of the work;
it offers no typed errors (DNS vs TCP vs TLS vs auth) to map into ours, its timeouts are per
call rather than per wait, and it ships no type information for ``mypy --strict``. CONDSTORE,
QRESYNC and ENABLE would be raw strings either way. What remains — a tagged command loop with
literals and continuations — is small, so we own it (``imap_connection.py``) and keep the wire
format in pure, recorded-response-tested parsers (``imap_wire.py``, ``imap_fetch.py``,
``imap_folders.py``), as DESIGN §5 asks.

Remote message ids are ``"{folder}:{uidvalidity}:{uid}"`` (see ``imap_fetch``); folder remote
ids are the decoded IMAP path.

Usage::

    client = await ImapClient.connect(server, PasswordLogin("me@example.org", password))
    try:
        folders = await client.list_folders()
        inbox = await client.select("INBOX")
        messages = await client.fetch_messages(UidSet([(1, inbox.uidnext or 1)]))
        events = await client.idle(max_wait=300)   # [] on timeout, else EXISTS/EXPUNGE/…
    finally:
        await client.logout()

:func:`maildesk.providers.imap_check.check_incoming_server` is the "Test incoming server"
diagnostic.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Self

from maildesk.domain.mail import RemoteBody, RemoteFolder, RemoteMessage
from maildesk.errors import (
    CapabilityMissing,
    CursorExpired,
    LoginFailed,
    MailDeskError,
    MessageGone,
    OAuthInvalid,
    ProtocolViolation,
    ProviderRejected,
    ProviderUnavailable,
)
from maildesk.providers.imap_connection import (
    CommandResult,
    ImapConnection,
    ImapServer,
    Security,
    Stage,
)
from maildesk.providers.imap_fetch import (
    FetchedMessage,
    MailboxEvent,
    format_internaldate,
    parse_body,
    parse_fetch,
    parse_remote_id,
    parse_vanished,
    to_remote_message,
)
from maildesk.providers.imap_folders import (
    FolderStatus,
    MailboxEntry,
    SelectedFolder,
    parse_list,
    parse_select,
    parse_status,
    to_remote_folders,
)
from maildesk.providers.imap_wire import (
    CommandPart,
    Literal,
    StatusResponse,
    UidSet,
    encode_mailbox_name,
    encode_string,
)

__all__ = [
    "Changes",
    "Credentials",
    "ImapClient",
    "ImapMessage",
    "ImapServer",
    "OAuth2Login",
    "PasswordLogin",
    "QresyncState",
    "Security",
    "Stage",
]

METADATA_ITEMS = (
    b"(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY.PEEK[HEADER.FIELDS (REFERENCES)]"
)
_NO_FETCH_EVENTS = frozenset({"EXISTS", "EXPUNGE", "VANISHED"})


@dataclass(frozen=True, slots=True)
class PasswordLogin:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class OAuth2Login:
    """SASL XOAUTH2 with an OAuth access token (Gmail, Microsoft 365 IMAP)."""

    username: str
    access_token: str = field(repr=False)


Credentials = PasswordLogin | OAuth2Login


@dataclass(frozen=True, slots=True)
class ImapMessage:
    """One message's metadata: the domain view plus the IMAP facts the engine keeps."""

    uid: int
    modseq: int | None
    flags: frozenset[str]
    message: RemoteMessage


@dataclass(frozen=True, slots=True)
class QresyncState:
    """What we knew of a folder: its UIDVALIDITY, the HIGHESTMODSEQ we synced to and
    (optionally) the UIDs we hold, which lets the server report precise VANISHED sets."""

    uidvalidity: int
    modseq: int
    known_uids: UidSet | None = None


@dataclass(frozen=True, slots=True)
class Changes:
    """Flag changes (UID, FLAGS, MODSEQ only) and expunged UIDs since a modseq."""

    changed: tuple[FetchedMessage, ...]
    vanished: UidSet


def _mailbox(name: str) -> CommandPart:
    return encode_string(encode_mailbox_name(name))


class ImapClient:
    """An authenticated IMAP session. Not safe for concurrent use by several tasks (commands
    are serialized, but the selected folder is shared state)."""

    def __init__(self, connection: ImapConnection) -> None:
        self._conn = connection
        self.enabled: frozenset[str] = frozenset()
        self.selected: SelectedFolder | None = None

    # -- session ---------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls, server: ImapServer, credentials: Credentials, *, enable_sync: bool = True
    ) -> ImapClient:
        """Open, authenticate and (by default) ENABLE QRESYNC or CONDSTORE where offered."""
        connection = await ImapConnection.open(server)
        client = cls(connection)
        try:
            await client.login(credentials)
            if enable_sync:
                await client.enable_sync_extensions()
        except Exception:
            await connection.aclose()
            raise
        except BaseException:
            connection.abort()
            raise
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.logout()

    @property
    def capabilities(self) -> frozenset[str]:
        return self._conn.capabilities

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def has(self, capability: str) -> bool:
        return self._conn.has(capability)

    @property
    def condstore(self) -> bool:
        """MODSEQs are on for this session (CONDSTORE or QRESYNC enabled)."""
        return bool(self.enabled & {"CONDSTORE", "QRESYNC"})

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    async def login(self, credentials: Credentials) -> None:
        """LOGIN (password) or AUTHENTICATE XOAUTH2 (token).

        A refused password is :class:`LoginFailed`, a refused token :class:`OAuthInvalid`; a
        server saying it is unavailable (``[UNAVAILABLE]``) is :class:`ProviderUnavailable`.
        """
        if isinstance(credentials, PasswordLogin):
            if self.has("LOGINDISABLED"):
                raise CapabilityMissing(
                    "LOGIN", "the server refuses passwords without TLS (LOGINDISABLED)"
                )
            result = await self._conn.command(
                b"LOGIN",
                encode_string(credentials.username),
                encode_string(credentials.password),
                what="LOGIN",
            )
            if not result.done.ok:
                self._auth_failed(result.done, LoginFailed, "the server refused the password")
        else:
            result = await self._xoauth2(credentials)
        if result.done.code == "CAPABILITY":
            self._conn.capabilities = frozenset(str(v).upper() for v in result.done.code_args)
        else:
            await self._conn.refresh_capabilities()

    async def _xoauth2(self, credentials: OAuth2Login) -> CommandResult:
        if not self.has("AUTH=XOAUTH2"):
            raise CapabilityMissing("AUTH=XOAUTH2", "the server does not offer XOAUTH2 sign-in")
        sasl = f"user={credentials.username}\x01auth=Bearer {credentials.access_token}\x01\x01"
        initial = base64.b64encode(sasl.encode())
        detail: list[str] = []
        sent_initial = self.has("SASL-IR")

        async def respond(challenge: str) -> bytes:
            nonlocal sent_initial
            if not sent_initial:
                sent_initial = True
                return initial
            # The error challenge is JSON ({"status": "401", ...}); answer it with an empty
            # line to get the final NO.
            try:
                payload = json.loads(base64.b64decode(challenge))
                detail.append(f"status {payload.get('status', '?')}")
            except ValueError:
                pass
            return b""

        args: list[CommandPart] = [b"XOAUTH2"]
        if self.has("SASL-IR"):
            args.append(initial)
        result = await self._conn.command(
            b"AUTHENTICATE", *args, on_continuation=respond, what="AUTHENTICATE XOAUTH2"
        )
        if not result.done.ok:
            reason = "the server refused the OAuth token"
            if detail:
                reason += f" ({detail[0]})"
            self._auth_failed(result.done, OAuthInvalid, reason)
        return result

    def _auth_failed(
        self, done: StatusResponse, error: type[MailDeskError], reason: str
    ) -> None:
        text = f"{reason}: [{done.code}] {done.text}" if done.code else f"{reason}: {done.text}"
        if done.code in ("UNAVAILABLE", "INUSE", "LIMIT"):
            raise ProviderUnavailable(f"AUTH: {text}")
        if done.status == "BAD":
            raise ProtocolViolation(f"AUTH: {text}")
        raise error(f"AUTH: {text}")

    async def enable_sync_extensions(self) -> frozenset[str]:
        """ENABLE QRESYNC (which implies CONDSTORE) or CONDSTORE, as far as offered."""
        wanted = [cap for cap in ("QRESYNC", "CONDSTORE") if self.has(cap)]
        if not wanted or not self.has("ENABLE"):
            return self.enabled
        result = await self._conn.command(b"ENABLE", *(cap.encode() for cap in wanted))
        self._check(result, "ENABLE")
        enabled = set(self.enabled)
        for response in result.untagged("ENABLED"):
            enabled |= {str(v).upper() for v in response.values if isinstance(v, str)}
        self.enabled = frozenset(enabled)
        return self.enabled

    async def logout(self) -> None:
        """LOGOUT and close; never raises (the session is over either way)."""
        try:
            if not self._conn.closed:
                await self._conn.command(b"LOGOUT")
        except MailDeskError:
            pass
        finally:
            await self._conn.aclose()

    def abort(self) -> None:
        """Drop the connection without LOGOUT (for when awaiting is not possible)."""
        self._conn.abort()

    # -- folders ---------------------------------------------------------------------------------

    async def list_mailboxes(self) -> list[MailboxEntry]:
        """Every mailbox (``LIST "" "*"``), with SPECIAL-USE attributes where offered."""
        args: list[CommandPart] = [b'""', b'"*"']
        if self.has("SPECIAL-USE") and self.has("LIST-EXTENDED"):
            args += [b"RETURN", b"(SPECIAL-USE)"]
        result = await self._conn.command(b"LIST", *args)
        self._check(result, "LIST")
        return [parse_list(response) for response in result.untagged("LIST")]

    async def list_folders(self) -> list[RemoteFolder]:
        """Selectable folders with roles (special-use attributes first, then names)."""
        return to_remote_folders(await self.list_mailboxes())

    async def status(self, folder: str) -> FolderStatus:
        """STATUS without selecting: cheap "did anything change" for folders we do not IDLE on."""
        items = [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN"]
        if self.has("CONDSTORE"):
            items.append(b"HIGHESTMODSEQ")
        result = await self._conn.command(
            b"STATUS", _mailbox(folder), b"(" + b" ".join(items) + b")"
        )
        self._check(result, "STATUS", folder)
        answers = result.untagged("STATUS")
        if not answers:
            raise ProtocolViolation("IMAP: STATUS answered without data")
        return parse_status(answers[0])

    async def select(self, folder: str, *, readonly: bool = False) -> SelectedFolder:
        """SELECT (or EXAMINE with ``readonly``): UIDVALIDITY, UIDNEXT, EXISTS, HIGHESTMODSEQ."""
        args: list[CommandPart] = [_mailbox(folder)]
        if self.has("CONDSTORE") and not self.condstore:
            args.append(b"(CONDSTORE)")
            self.enabled |= {"CONDSTORE"}
        selected, _ = await self._select(folder, args, readonly)
        return selected

    async def resync(
        self, folder: str, since: QresyncState, *, readonly: bool = False
    ) -> tuple[SelectedFolder, Changes]:
        """SELECT with QRESYNC: the folder plus what changed and vanished since ``since``.

        A changed UIDVALIDITY raises :class:`CursorExpired` (the folder must be refetched; the
        folder stays selected, with its new state in :attr:`selected`).
        """
        if not self.qresync:
            raise CapabilityMissing("QRESYNC")
        params = [str(since.uidvalidity).encode(), str(since.modseq).encode()]
        if since.known_uids:
            params.append(str(since.known_uids).encode())
        args: list[CommandPart] = [_mailbox(folder), b"(QRESYNC (" + b" ".join(params) + b"))"]
        selected, result = await self._select(folder, args, readonly)
        if selected.uidvalidity != since.uidvalidity:
            raise CursorExpired(
                f"UIDVALIDITY of {folder!r} changed from {since.uidvalidity} "
                f"to {selected.uidvalidity}"
            )
        return selected, _changes(result)

    async def _select(
        self, folder: str, args: list[CommandPart], readonly: bool
    ) -> tuple[SelectedFolder, CommandResult]:
        self.selected = None
        verb = b"EXAMINE" if readonly else b"SELECT"
        result = await self._conn.command(verb, *args, events=frozenset())
        self._conn.events.clear()  # the SELECT answer is the new baseline
        self._check(result, verb.decode(), folder)
        self.selected = parse_select(folder, result.responses, result.done)
        return self.selected, result

    def _require_selected(self) -> SelectedFolder:
        if self.selected is None:
            raise ProviderRejected("IMAP: no folder selected")
        return self.selected

    # -- messages --------------------------------------------------------------------------------

    async def uid_search(self, criteria: str = "ALL") -> list[int]:
        """UIDs matching ``criteria`` (raw IMAP search keys built by our code, e.g. ``ALL``,
        ``UID 500:*``, ``SINCE 1-Jan-2024``) in the selected folder, ascending."""
        self._require_selected()
        if "\r" in criteria or "\n" in criteria:
            raise ValueError("search criteria must be one line")
        result = await self._conn.command(b"UID SEARCH", criteria.encode("ascii"))
        self._check(result, "UID SEARCH")
        uids: set[int] = set()
        for response in result.untagged("SEARCH"):
            uids.update(v for v in response.values if isinstance(v, int))
        return sorted(uids)

    async def fetch_messages(self, uids: UidSet | str) -> list[ImapMessage]:
        """Metadata of ``uids`` in the selected folder (a :class:`UidSet` or ``"500:*"``).

        UIDs that no longer exist are simply absent from the result.
        """
        selected = self._require_selected()
        items = METADATA_ITEMS + (b" MODSEQ)" if self.condstore else b")")
        fetched = await self._uid_fetch(uids, items)
        out = []
        for message in fetched:
            assert message.uid is not None
            out.append(
                ImapMessage(
                    uid=message.uid,
                    modseq=message.modseq,
                    flags=message.flags or frozenset(),
                    message=to_remote_message(selected.name, selected.uidvalidity, message),
                )
            )
        return out

    async def fetch_changes(self, since_modseq: int, uids: UidSet | str = "1:*") -> Changes:
        """Flag changes since ``since_modseq`` (CHANGEDSINCE) and, with QRESYNC, the UIDs
        expunged since then (VANISHED (EARLIER))."""
        self._require_selected()
        if not self.condstore:
            raise CapabilityMissing("CONDSTORE")
        modifier = f"(CHANGEDSINCE {since_modseq}{' VANISHED' if self.qresync else ''})"
        result = await self._uid_fetch_result(uids, b"(UID FLAGS MODSEQ)", modifier.encode())
        return _changes(result)

    async def fetch_body(self, remote_id: str) -> RemoteBody:
        """The body of one message by remote id (EXAMINEs its folder if another is selected).

        :class:`MessageGone` if the message or its UIDVALIDITY epoch no longer exists.
        """
        folder, uidvalidity, uid = parse_remote_id(remote_id)
        if self.selected is None or self.selected.name != folder:
            await self.select(folder, readonly=True)
        selected = self._require_selected()
        if selected.uidvalidity != uidvalidity:
            raise MessageGone(f"IMAP: {folder!r} was recreated (UIDVALIDITY changed)")
        fetched = await self._uid_fetch(UidSet.of([uid]), b"(UID BODY.PEEK[])")
        if not fetched or fetched[0].body is None:
            raise MessageGone(f"IMAP: message UID {uid} is no longer in {folder!r}")
        return parse_body(remote_id, fetched[0].body)

    async def _uid_fetch(self, uids: UidSet | str, items: bytes) -> list[FetchedMessage]:
        return _fetched_by_uid(await self._uid_fetch_result(uids, items))

    async def _uid_fetch_result(
        self, uids: UidSet | str, items: bytes, modifier: bytes | None = None
    ) -> CommandResult:
        uid_set = str(uids).encode("ascii")
        if not uid_set:
            raise ValueError("empty UID set")
        args: list[CommandPart] = [uid_set, items]
        if modifier is not None:
            args.append(modifier)
        result = await self._conn.command(b"UID FETCH", *args, events=_NO_FETCH_EVENTS)
        self._check(result, "UID FETCH")
        return result

    async def store_flags(
        self, uids: UidSet, flags: Sequence[str], *, add: bool = True
    ) -> None:
        """Add (or remove) flags such as ``\\Seen`` on ``uids`` in the selected folder."""
        self._require_selected()
        op = b"+FLAGS.SILENT" if add else b"-FLAGS.SILENT"
        flag_list = b"(" + " ".join(flags).encode("ascii") + b")"
        result = await self._conn.command(
            b"UID STORE", str(uids).encode("ascii"), op, flag_list, events=_NO_FETCH_EVENTS
        )
        self._check(result, "UID STORE")

    async def append(
        self,
        folder: str,
        message: bytes,
        *,
        flags: Sequence[str] = (),
        internaldate: datetime | None = None,
    ) -> int | None:
        """APPEND a message; returns its UID when the server reports it (UIDPLUS)."""
        args: list[CommandPart] = [_mailbox(folder)]
        if flags:
            args.append(b"(" + " ".join(flags).encode("ascii") + b")")
        if internaldate is not None:
            args.append(format_internaldate(internaldate))
        args.append(Literal(message))
        result = await self._conn.command(b"APPEND", *args)
        self._check(result, "APPEND", folder)
        args_ = result.done.code_args
        if result.done.code == "APPENDUID" and len(args_) == 2 and isinstance(args_[1], int):
            return args_[1]
        return None

    # -- realtime --------------------------------------------------------------------------------

    async def noop(self) -> list[MailboxEvent]:
        """NOOP: lets the server report changes; returns every queued mailbox event."""
        result = await self._conn.command(b"NOOP")
        self._check(result, "NOOP")
        return self._conn.take_events()

    async def idle(self, max_wait: float) -> list[MailboxEvent]:
        """Wait for news on the selected folder: IDLE until an event or ``max_wait`` s, then DONE.

        Returns events queued by earlier commands at once (mail that arrived between a FETCH
        and this call is not lost). One IDLE lasts at most ``server.idle_keepalive`` (well
        under RFC 2177's 29 minutes); DONE's answer proves the connection alive, so a dead one
        raises :class:`ProviderUnavailable` within ``command_timeout``. A server that drops
        the connection (BYE, reset) raises it at once. Loop over this and reconnect on
        ``ProviderUnavailable``. Without IDLE, :class:`CapabilityMissing` (poll with NOOP).
        """
        self._require_selected()
        return await self._conn.idle(max_wait)

    # -- helpers ---------------------------------------------------------------------------------

    def _check(self, result: CommandResult, command: str, folder: str | None = None) -> None:
        done = result.done
        if done.ok:
            return
        where = f"{command} {folder!r}" if folder is not None else command
        text = f"IMAP: {where} answered {done.status}"
        text += f" [{done.code}]: {done.text}" if done.code else f": {done.text}"
        if done.code in ("UNAVAILABLE", "INUSE", "SERVERBUG", "LIMIT"):
            raise ProviderUnavailable(text)
        if done.code == "NONEXISTENT":
            raise MessageGone(text)
        if done.status == "BAD":
            raise ProtocolViolation(text)
        raise ProviderRejected(text)


def _fetched_by_uid(result: CommandResult) -> list[FetchedMessage]:
    """The FETCH answers of ``result`` by ascending UID, several answers for one UID merged."""
    by_uid: dict[int, FetchedMessage] = {}
    for response in result.untagged("FETCH"):
        message = parse_fetch(response)
        if message.uid is None:
            continue  # an unsolicited flag update without UID: not an answer
        earlier = by_uid.get(message.uid)
        by_uid[message.uid] = earlier.merged(message) if earlier else message
    return [by_uid[uid] for uid in sorted(by_uid)]


def _changes(result: CommandResult) -> Changes:
    vanished = UidSet()
    for response in result.untagged("VANISHED"):
        vanished = UidSet(vanished.ranges + parse_vanished(response).uids.ranges)
    return Changes(tuple(_fetched_by_uid(result)), vanished)
