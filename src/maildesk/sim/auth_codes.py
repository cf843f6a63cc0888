"""Authorization codes with PKCE (RFC 7636), as both simulated identity providers keep them."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from maildesk.errors import InputError

CODE_LIFETIME = timedelta(minutes=10)


@dataclass(slots=True)
class AuthCode:
    """An authorization code waiting to be exchanged (single use)."""

    code: str
    client_id: str
    redirect_uri: str
    email: str
    scopes: tuple[str, ...]
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: datetime

    @classmethod
    def issue(
        cls,
        new_code: Callable[[], str],
        *,
        client_id: str,
        redirect_uri: str,
        email: str,
        scopes: Iterable[str],
        code_challenge: str | None,
        code_challenge_method: str | None,
        now: datetime,
    ) -> AuthCode:
        """A new code (``new_code()``, drawn only once the request is valid), good for
        ``CODE_LIFETIME``; ``InputError`` for an unknown challenge method (a challenge without
        a method is ``plain``)."""
        if code_challenge is not None and (code_challenge_method or "plain") not in (
            "S256",
            "plain",
        ):
            raise InputError("invalid code_challenge_method")
        return cls(
            code=new_code(),
            client_id=client_id,
            redirect_uri=redirect_uri,
            email=email,
            scopes=tuple(scopes),
            code_challenge=code_challenge,
            code_challenge_method=code_challenge_method or ("plain" if code_challenge else None),
            expires_at=now + CODE_LIFETIME,
        )

    def verified_by(self, verifier: str | None) -> bool:
        """Whether ``verifier`` answers the code's PKCE challenge (always, without one)."""
        if self.code_challenge is None:
            return True
        if not verifier:
            return False
        return hmac.compare_digest(
            pkce_challenge(verifier, self.code_challenge_method or "plain"), self.code_challenge
        )


def pkce_challenge(verifier: str, method: str = "S256") -> str:
    """The RFC 7636 code challenge for ``verifier``."""
    if method == "plain":
        return verifier
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
