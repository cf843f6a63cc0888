"""Parsing of a Cloud Pub/Sub push body carrying a Gmail notification (pure, no IO)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from maildesk.errors import WebhookRejected


@dataclass(frozen=True, slots=True)
class GmailNotification:
    email: str
    history_id: int
    message_id: str
    publish_time: str


def _b64_any(data: str) -> bytes:
    """Pub/Sub says base64, Gmail's guide says base64url; accept both, padding optional."""
    cleaned = data.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    return base64.b64decode(cleaned, validate=True)


def peek_email(body: bytes) -> str | None:
    """The (unverified) address in a push body, for attributing a rejected delivery on the
    timeline; never used to pick an account for a sync."""
    try:
        return parse_gmail_push(body).email
    except WebhookRejected:
        return None


def parse_gmail_push(body: bytes) -> GmailNotification:
    try:
        envelope: Any = json.loads(body)
        message = envelope["message"]
        data = json.loads(_b64_any(message["data"]))
        email = data["emailAddress"]
        history_id = int(str(data["historyId"]))
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise WebhookRejected(400, f"not a Gmail Pub/Sub push ({type(exc).__name__})") from exc
    if not isinstance(email, str) or "@" not in email or history_id < 0:
        raise WebhookRejected(400, "not a Gmail Pub/Sub push (bad emailAddress/historyId)")
    message_id = message.get("messageId") or message.get("message_id") or ""
    publish_time = message.get("publishTime") or message.get("publish_time") or ""
    return GmailNotification(email.lower(), history_id, str(message_id), str(publish_time))
