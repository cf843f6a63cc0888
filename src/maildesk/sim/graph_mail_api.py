"""Graph's mail endpoints on one mailbox: mail folders, messages, delta, move, sendMail.

``MailApi.handle`` gets the path after ``/me`` (or ``/users/{id}``) with
``mailFolders('inbox')`` already rewritten to ``mailFolders/inbox``, and answers
``SimResponse``s; links (``@odata.nextLink``, ``@odata.deltaLink``) are absolute URLs built from
the request's base URL.
"""

from __future__ import annotations

import base64
import binascii
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from typing import Any
from urllib.parse import quote, urlencode

from maildesk.errors import InputError, NotFound
from maildesk.sim.graph_delta import DeltaGone, delta_page, page_size
from maildesk.sim.graph_mailbox import OutlookMailbox
from maildesk.sim.graph_objects import FLAG_STATUSES, GraphFolder, recipient_of
from maildesk.sim.graph_wire import JSON_TYPE, graph_error
from maildesk.sim.microsoft_state import MicrosoftState
from maildesk.sim.wire import SimRequest, SimResponse

DEFAULT_TOP = 10
MAX_TOP = 1000
_BODY_TYPE = re.compile(r'outlook\.body-content-type\s*=\s*"?(html|text)"?', re.IGNORECASE)
_WRITE = ("Mail.ReadWrite",)
_READ = ("Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic")


class MailApi:
    """The mail part of Graph over one ``MicrosoftState``."""

    def __init__(self, state: MicrosoftState) -> None:
        self.state = state

    async def handle(
        self,
        request: SimRequest,
        mailbox: OutlookMailbox,
        rest: list[str],
        prefix: str,
        scopes: tuple[str, ...],
    ) -> SimResponse:
        """Answer ``rest`` (path segments after the user part); ``prefix`` is the absolute URL
        of the user part (``{base}/v1.0/me``) for links."""
        method = request.method
        lowered = [s.lower() for s in rest]
        needs = _WRITE if method in ("PATCH", "DELETE") or lowered[-1:] == ["move"] else _READ
        if lowered[:1] == ["sendmail"]:
            needs = ("Mail.Send",)
        if not any(s in scopes for s in needs):
            return self._error(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        try:
            return await self._route(request, mailbox, rest, lowered, prefix)
        except NotFound as exc:
            code = "ErrorItemNotFound" if "object" in exc.message else "ErrorFolderNotFound"
            return self._error(404, code, exc.message)
        except DeltaGone as exc:
            return self._error(
                exc.status,
                exc.code,
                "The sync state is no longer valid; restart the synchronization without a token.",
            )
        except (InputError, KeyError, TypeError, ValueError) as exc:
            text = exc.message if isinstance(exc, InputError) else f"Invalid request: {exc}"
            return self._error(400, "ErrorInvalidRequest", text)

    async def _route(
        self,
        request: SimRequest,
        mailbox: OutlookMailbox,
        rest: list[str],
        lowered: list[str],
        prefix: str,
    ) -> SimResponse:
        method, n = request.method, len(rest)
        if method == "GET" and lowered == ["mailfolders"]:
            return self._folders(request, mailbox, mailbox.folders[mailbox.root_id], prefix)
        if lowered[:1] == ["mailfolders"] and n >= 2:
            folder = mailbox.folder(rest[1])
            tail = lowered[2:]
            if method == "GET" and not tail:
                return self._ok(mailbox.folder_json(folder))
            if method == "GET" and tail == ["childfolders"]:
                return self._folders(request, mailbox, folder, prefix)
            if method == "GET" and tail == ["messages"]:
                return self._messages(request, mailbox, folder, prefix)
            if method == "GET" and tail == ["messages", "delta"]:
                return self._delta(request, mailbox, folder, f"{prefix}/{'/'.join(rest)}")
            if method == "GET" and len(tail) == 2 and tail[0] == "messages":
                return self._message(request, mailbox, rest[3])
        if lowered[:1] == ["messages"] and n == 2:
            if method == "GET":
                return self._message(request, mailbox, rest[1])
            if method == "PATCH":
                return self._patch(request, mailbox, rest[1])
            if method == "DELETE":
                mailbox.get(rest[1])
                self.state.delete_message(mailbox.email, rest[1])
                return SimResponse(204)
        if method == "POST" and n == 3 and lowered[0] == "messages" and lowered[2] == "move":
            destination = _body(request).get("destinationId")
            if not isinstance(destination, str):
                raise InputError("destinationId is required")
            mailbox.get(rest[1])
            self.state.move_message(mailbox.email, rest[1], destination)
            return self._ok(mailbox.get(rest[1]).to_json(), status=201)
        if method == "POST" and lowered == ["sendmail"]:
            return self._send(request, mailbox)
        return self._error(
            400, "BadRequest", f"Resource not found for the segment '{rest[-1] if rest else ''}'."
        )

    # -- folders and listings --------------------------------------------------------------

    def _folders(
        self, request: SimRequest, mailbox: OutlookMailbox, parent: GraphFolder, prefix: str
    ) -> SimResponse:
        query = dict(request.query)
        top, skip = _int(query, "$top", DEFAULT_TOP), _int(query, "$skip", 0)
        include_hidden = query.get("includeHiddenFolders", "false").lower() == "true"
        children = [mailbox.folders[c] for c in parent.children]
        children = [f for f in children if include_hidden or not f.hidden]
        page = children[skip : skip + top]
        payload: dict[str, Any] = {
            "@odata.context": f"{request.base_url}/v1.0/$metadata#users('{mailbox.user_id}')"
            "/mailFolders",
            "value": [mailbox.folder_json(f) for f in page],
        }
        if skip + top < len(children):
            more = {**query, "$top": str(top), "$skip": str(skip + top)}
            payload["@odata.nextLink"] = _link(request, more)
        return self._ok(payload)

    def _messages(
        self, request: SimRequest, mailbox: OutlookMailbox, folder: GraphFolder, prefix: str
    ) -> SimResponse:
        query = dict(request.query)
        top, skip = _int(query, "$top", DEFAULT_TOP), _int(query, "$skip", 0)
        order = query.get("$orderby", "receivedDateTime desc").strip().lower()
        if order not in ("receiveddatetime desc", "receiveddatetime"):
            raise InputError("The simulator orders messages by receivedDateTime only")
        select = _select(query)
        if order == "receiveddatetime":
            messages, more = mailbox.oldest(folder.id, skip, top)
        else:
            messages, more = mailbox.newest(folder.id, skip, top)
        payload: dict[str, Any] = {"value": [m.to_json(select) for m in messages]}
        if more:
            payload["@odata.nextLink"] = _link(
                request, {**query, "$top": str(top), "$skip": str(skip + top)}
            )
        return self._ok(payload)

    def _delta(
        self, request: SimRequest, mailbox: OutlookMailbox, folder: GraphFolder, link_base: str
    ) -> SimResponse:
        prefer = request.headers.get("prefer", "")
        size = page_size(prefer)
        page = delta_page(
            mailbox,
            folder,
            dict(request.query),
            link_base=link_base,
            size=size,
            faults=self.state.delta_faults,
        )
        payload: dict[str, Any] = {
            "@odata.context": f"{link_base.split('/v1.0')[0]}/v1.0/$metadata#Collection(message)",
            "value": page.items,
        }
        payload["@odata.deltaLink" if page.last else "@odata.nextLink"] = page.link
        headers = (
            {"Preference-Applied": f"odata.maxpagesize={size}"} if "maxpagesize" in prefer else {}
        )
        return self._ok(payload, headers=headers)

    # -- one message -----------------------------------------------------------------------

    def _message(
        self, request: SimRequest, mailbox: OutlookMailbox, message_id: str
    ) -> SimResponse:
        message = mailbox.get(message_id)
        match = _BODY_TYPE.search(request.headers.get("prefer", ""))
        body_type = None if match is None else match.group(1).lower()
        headers = (
            {}
            if match is None
            else {"Preference-Applied": f'outlook.body-content-type="{body_type}"'}
        )
        select = _select(dict(request.query))
        return self._ok(message.to_json(select, body_type=body_type), headers=headers)

    def _patch(self, request: SimRequest, mailbox: OutlookMailbox, message_id: str) -> SimResponse:
        mailbox.get(message_id)
        body = _body(request)
        if unknown := set(body) - {"isRead", "flag", "subject"}:
            raise InputError(f"The simulator cannot change {sorted(unknown)}")
        is_read = body.get("isRead")
        if is_read is not None and not isinstance(is_read, bool):
            raise InputError("isRead must be a boolean")
        flag = body.get("flag")
        status = None
        if flag is not None:
            status = flag.get("flagStatus") if isinstance(flag, dict) else None
            if status not in FLAG_STATUSES:
                raise InputError(f"flag.flagStatus must be one of {FLAG_STATUSES}")
        subject = body.get("subject")
        if subject is not None and not isinstance(subject, str):
            raise InputError("subject must be a string")
        self.state.update_message(
            mailbox.email, message_id, is_read=is_read, flag_status=status, subject=subject
        )
        return self._ok(mailbox.get(message_id).to_json())

    def _send(self, request: SimRequest, mailbox: OutlookMailbox) -> SimResponse:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "text/plain":
            return self._send_mime(request, mailbox)
        body = _body(request)
        message = body.get("message")
        if not isinstance(message, dict):
            raise InputError("message is required")
        to = [r for r in map(recipient_of, message.get("toRecipients") or []) if r is not None]
        if not to:
            raise InputError("At least one recipient is required.")
        content = message.get("body") or {}
        kind = str(content.get("contentType", "text")).lower() if isinstance(content, dict) else ""
        text = str(content.get("content", "")) if isinstance(content, dict) else ""
        self.state.send_mail(
            mailbox.email,
            subject=str(message.get("subject") or ""),
            to=to,
            html=text if kind == "html" else "",
            text="" if kind == "html" else text,
            save_to_sent=body.get("saveToSentItems", True) is not False,
        )
        return SimResponse(202, content=b"")

    def _send_mime(self, request: SimRequest, mailbox: OutlookMailbox) -> SimResponse:
        """The MIME form: the body is the base64 of an RFC 5322 message, sent as is. As at
        Graph, the recipients (Bcc included) come from its headers and the Sent Items copy
        keeps its Message-ID as ``internetMessageId``."""
        try:
            raw = base64.b64decode(request.body.strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not raw:
            return self._error(400, "ErrorMimeContentInvalidBase64String",
                               "Invalid base64 string for MIME content.")
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)

        def pairs(*names: str) -> list[tuple[str, str]]:
            values = [str(v) for n in names for v in parsed.get_all(n, [])]
            return [(name or addr, addr) for name, addr in getaddresses(values) if addr]

        if not pairs("To", "Cc", "Bcc"):
            return self._error(400, "ErrorInvalidRecipients",
                               "At least one recipient is not valid.")
        part = parsed.get_body(("plain", "html"))
        content = part.get_content() if isinstance(part, EmailMessage) else ""
        html = part is not None and part.get_content_type() == "text/html"
        self.state.send_mail(
            mailbox.email,
            subject=str(parsed.get("Subject", "")),
            to=pairs("To"),
            also=pairs("Cc", "Bcc"),
            html=content if html else "",
            text="" if html else content,
            internet_message_id=str(parsed.get("Message-ID", "")).strip() or None,
        )
        return SimResponse(202, content=b"")

    # -- answers ---------------------------------------------------------------------------

    def _ok(
        self, payload: Any, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> SimResponse:
        return SimResponse(
            status, payload=payload, headers=dict(headers or {}), media_type=JSON_TYPE
        )

    def _error(self, status: int, code: str, message: str) -> SimResponse:
        return graph_error(status, message, code=code, now=self.state.clock.now())


def _int(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"Invalid value '{text}' for {name}") from None
    if value < 0 or (name == "$top" and not 1 <= value <= MAX_TOP):
        raise InputError(f"Invalid value '{text}' for {name}")
    return value


def _select(query: dict[str, str]) -> list[str] | None:
    names = [n.strip() for n in query.get("$select", "").split(",") if n.strip()]
    return names or None


def _body(request: SimRequest) -> dict[str, Any]:
    data = request.json()
    if not isinstance(data, dict):
        raise InputError("The body must be a JSON object")
    return data


def _link(request: SimRequest, query: dict[str, str]) -> str:
    return f"{request.base_url}{quote(request.path)}?{urlencode(query)}"
