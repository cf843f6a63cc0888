"""Verification of the OIDC token Pub/Sub puts on every push (PROVIDERS.md, "Cloud Pub/Sub push").

Order matters: the signature is checked first (against Google's keys), then the claims. Every
failure is a 403 whose reason goes to our logs and the timeline, never to the caller. Unlike
google-auth's ``verify_token`` we also check ``iss`` and cache the keys.

The token is parsed once here and its RS256 signature checked with the cached key object
directly. PyJWT would decode the header twice (``get_unverified_header``, then ``decode``),
check every base64 character in a Python loop and re-prepare the key: about four times the cost
of the RSA verification itself, on every notification. We accept exactly what PyJWT accepts
for these tokens (compact JWS, strict canonical base64url, JSON object header and payload, no
``crit`` extensions we do not understand), and the claim rules are unchanged.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.hashes import SHA256

from maildesk.errors import WebhookRejected

ISSUERS = ("https://accounts.google.com", "accounts.google.com")
LEEWAY_SECONDS = 60
MAX_TOKEN = 16 * 1024  # Google's tokens are ~1 KB; a huge header is not worth decoding

# One segment of a compact JWS: base64url without padding. A length of 1 (mod 4) cannot be
# base64; non-canonical trailing bits are caught by re-encoding (as PyJWT does).
_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")
_PADDING = PKCS1v15()
_SHA256 = SHA256()


class KeySource(Protocol):
    async def key(self, kid: str) -> RSAPublicKey | None: ...


@dataclass(frozen=True, slots=True)
class PushIdentity:
    audience: str
    email: str


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise WebhookRejected(401, "no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise WebhookRejected(401, "Authorization is not a Bearer token")
    return token.strip()


def _b64url(segment: bytes) -> bytes:
    if len(segment) % 4 == 1 or _SEGMENT.fullmatch(segment) is None:
        raise WebhookRejected(403, "malformed token")
    try:
        decoded = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise WebhookRejected(403, "malformed token") from exc
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment:
        raise WebhookRejected(403, "malformed token")
    return decoded


def _json_object(segment: bytes, what: str) -> dict[str, Any]:
    try:
        value: Any = json.loads(_b64url(segment))
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookRejected(403, "malformed token") from exc
    if not isinstance(value, dict):
        raise WebhookRejected(403, f"malformed token ({what} is not an object)")
    return value


def _parse(token: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """(header, signing input, payload segment, signature) of a compact JWS."""
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError as exc:
        raise WebhookRejected(403, "malformed token") from exc
    if len(raw) > MAX_TOKEN or raw.count(b".") != 2:
        raise WebhookRejected(403, "malformed token")
    signing_input, _, signature = raw.rpartition(b".")
    header_segment, _, payload_segment = signing_input.partition(b".")
    header = _json_object(header_segment, "header")
    return header, signing_input, payload_segment, _b64url(signature)


async def verify_push_token(
    token: str,
    keys: KeySource,
    *,
    audiences: Collection[str],
    signers: Collection[str],
    now: float,
) -> PushIdentity:
    """Verify signature, issuer, times, audience and signer; return who pushed to whom."""
    header, signing_input, payload_segment, signature = _parse(token)
    if header.get("alg") != "RS256":
        raise WebhookRejected(403, "token is not RS256")
    if "crit" in header or header.get("b64", True) is not True:
        raise WebhookRejected(403, "token uses JWS extensions we do not support")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise WebhookRejected(403, "token has no key id")
    key = await keys.key(kid)
    if key is None:
        raise WebhookRejected(403, "token signed by an unknown key")
    try:
        key.verify(signature, signing_input, _PADDING, _SHA256)
    except InvalidSignature as exc:
        raise WebhookRejected(403, "bad signature") from exc
    claims = _json_object(payload_segment, "payload")
    for name in ("exp", "iat", "iss", "aud"):
        if name not in claims:
            raise WebhookRejected(403, f"invalid token (MissingRequiredClaimError: {name})")
    if claims["iss"] not in ISSUERS:
        raise WebhookRejected(403, "issuer is not Google")
    aud = claims["aud"]
    if isinstance(aud, str):
        aud = [aud]
    if not isinstance(aud, list) or not all(isinstance(a, str) for a in aud):
        raise WebhookRejected(403, "audience mismatch")
    audience = next((a for a in aud if a in audiences), None)
    if audience is None:
        raise WebhookRejected(403, "audience mismatch")
    exp, iat = claims["exp"], claims["iat"]
    if (not isinstance(exp, int | float) or not isinstance(iat, int | float)
            or isinstance(exp, bool) or isinstance(iat, bool)):
        raise WebhookRejected(403, "token times are not numbers")
    if exp < now - LEEWAY_SECONDS:
        raise WebhookRejected(403, "token expired")
    if iat > now + LEEWAY_SECONDS:
        raise WebhookRejected(403, "token issued in the future")
    email = claims.get("email")
    if not isinstance(email, str) or email not in signers:
        raise WebhookRejected(403, "signer not on the allow-list")
    if claims.get("email_verified") is not True:
        raise WebhookRejected(403, "signer email not verified")
    return PushIdentity(audience=audience, email=email)
