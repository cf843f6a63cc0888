"""Verification of the OIDC token Pub/Sub puts on every push (PROVIDERS.md, "Cloud Pub/Sub push").

Order matters: the signature is checked first (against Google's keys), then the claims. Every
failure is a 403 whose reason goes to our logs and the timeline, never to the caller. Unlike
google-auth's ``verify_token`` we also check ``iss`` and cache the keys.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from maildesk.errors import WebhookRejected

ISSUERS = ("https://accounts.google.com", "accounts.google.com")
LEEWAY_SECONDS = 60


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


async def verify_push_token(
    token: str,
    keys: KeySource,
    *,
    audiences: Collection[str],
    signers: Collection[str],
    now: float,
) -> PushIdentity:
    """Verify signature, issuer, times, audience and signer; return who pushed to whom."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise WebhookRejected(403, "malformed token") from exc
    if header.get("alg") != "RS256":
        raise WebhookRejected(403, "token is not RS256")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise WebhookRejected(403, "token has no key id")
    key = await keys.key(kid)
    if key is None:
        raise WebhookRejected(403, "token signed by an unknown key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=list(audiences),
            issuer=list(ISSUERS),
            # Times are checked below against our injectable clock, not PyJWT's wall clock.
            options={"require": ["exp", "iat", "iss", "aud"], "verify_exp": False,
                     "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError as exc:
        raise WebhookRejected(403, "bad signature") from exc
    except jwt.InvalidAudienceError as exc:
        raise WebhookRejected(403, "audience mismatch") from exc
    except jwt.InvalidIssuerError as exc:
        raise WebhookRejected(403, "issuer is not Google") from exc
    except jwt.PyJWTError as exc:
        raise WebhookRejected(403, f"invalid token ({type(exc).__name__})") from exc
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
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
    aud = claims["aud"]
    audience = aud if isinstance(aud, str) else next(a for a in aud if a in audiences)
    return PushIdentity(audience=audience, email=email)
