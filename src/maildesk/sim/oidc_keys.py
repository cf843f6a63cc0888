"""The simulator's Google OIDC signing keys: the certs endpoints and the push tokens they verify.

Google signs the OIDC token on every Pub/Sub push with one of a few RSA keys and publishes their
public halves at ``https://www.googleapis.com/oauth2/v1/certs`` (``{kid: PEM X.509 certificate}``)
and ``…/oauth2/v3/certs`` (JWKS), both cacheable for ``max-age`` seconds. Keys rotate: a new key is
published and used for signing while the old one stays published for a while (``keep_old``
seconds on the clock), so tokens signed just before the rotation still verify.

Keys are 2048-bit RSA generated with ``cryptography`` (key material is random; key ids are
deterministic: ``sim-key-1``, ``sim-key-2``, …). Every time comes from the injected clock.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from maildesk.clock import Clock

ISSUER = "https://accounts.google.com"
TOKEN_LIFETIME = 3600
DEFAULT_MAX_AGE = 3600
DEFAULT_KEEP_OLD = 86_400.0
_CERT_DAYS = 14


@dataclass(slots=True)
class SigningKey:
    """One RSA key pair. ``retire_at`` is set when a newer key replaced it."""

    kid: str
    private_key: rsa.RSAPrivateKey
    created_at: datetime
    retire_at: datetime | None = None
    _cert_pem: str | None = field(default=None, repr=False)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        """The public half."""
        return self.private_key.public_key()

    def cert_pem(self) -> str:
        """A self-signed X.509 certificate for the key, PEM (Google's v1 certs shape)."""
        if self._cert_pem is None:
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.kid)])
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(self.public_key)
                .serial_number(int(hashlib.sha256(self.kid.encode()).hexdigest()[:16], 16))
                .not_valid_before(self.created_at - timedelta(days=1))
                .not_valid_after(self.created_at + timedelta(days=_CERT_DAYS))
                .sign(self.private_key, hashes.SHA256())
            )
            self._cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return self._cert_pem

    def jwk(self) -> dict[str, str]:
        """The key as a JWKS entry (Google's v3 certs shape)."""
        numbers = self.public_key.public_numbers()
        return {
            "kid": self.kid,
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }


class OidcKeys:
    """The published signing keys, the current one, and token signing.

    ``max_age`` is what the certs endpoints put in ``Cache-Control``; ``keep_old`` how long (clock
    seconds) a replaced key stays published after ``rotate``.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        max_age: int = DEFAULT_MAX_AGE,
        keep_old: float = DEFAULT_KEEP_OLD,
        key_size: int = 2048,
    ) -> None:
        self.clock = clock
        self.max_age = max_age
        self.keep_old = keep_old
        self.key_size = key_size
        self._serial = 0
        self._keys: list[SigningKey] = []
        self._foreign: SigningKey | None = None
        self.current: SigningKey = self._new_key("sim-key")
        self._keys.append(self.current)

    # -- the published set -----------------------------------------------------------------

    @property
    def published(self) -> list[SigningKey]:
        """The keys the certs endpoints serve now (replaced keys drop out once retired)."""
        now = self.clock.now()
        self._keys = [k for k in self._keys if k.retire_at is None or k.retire_at > now]
        return list(self._keys)

    def rotate(self, *, drop_old: bool = False) -> str:
        """Publish a new key and sign with it from now on; returns its kid.

        The old keys stay published for ``keep_old`` seconds, or leave at once with ``drop_old``.
        """
        retire_at = self.clock.now() + timedelta(seconds=self.keep_old)
        for key in self._keys:
            if key.retire_at is None or key.retire_at > retire_at:
                key.retire_at = retire_at
        if drop_old:
            self._keys.clear()
        self.current = self._new_key("sim-key")
        self._keys.append(self.current)
        return self.current.kid

    def drop(self, kid: str) -> bool:
        """Stop publishing ``kid`` (the current key cannot be dropped); whether it was there."""
        if kid == self.current.kid:
            raise ValueError("rotate before dropping the current key")
        before = len(self._keys)
        self._keys = [k for k in self._keys if k.kid != kid]
        return len(self._keys) != before

    def foreign_key(self) -> SigningKey:
        """A key that is never published (``sim-foreign-1``): tokens it signs must be refused."""
        if self._foreign is None:
            self._foreign = self._new_key("sim-foreign", count=False)
        return self._foreign

    def certs_v1(self) -> dict[str, str]:
        """``GET /oauth2/v1/certs``: ``{kid: PEM certificate}``."""
        return {key.kid: key.cert_pem() for key in self.published}

    def certs_v3(self) -> dict[str, Any]:
        """``GET /oauth2/v3/certs``: ``{"keys": [JWK, ...]}``."""
        return {"keys": [key.jwk() for key in self.published]}

    def cache_control(self) -> str:
        """The certs endpoints' ``Cache-Control`` value."""
        return f"public, max-age={self.max_age}"

    # -- tokens ----------------------------------------------------------------------------

    def sign(self, claims: Mapping[str, Any], *, key: SigningKey | None = None) -> str:
        """An RS256 JWT over ``claims``, header ``{alg: RS256, kid, typ: JWT}``."""
        signer = key or self.current
        return jwt.encode(
            dict(claims), signer.private_key, algorithm="RS256", headers={"kid": signer.kid}
        )

    def push_token(
        self,
        *,
        audience: str,
        email: str,
        issued_at: float | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """The OIDC token Pub/Sub attaches to a push by service account ``email``.

        ``issued_at`` (epoch seconds) defaults to the clock's now; ``exp`` is an hour later.
        """
        iat = int(self.clock.now().timestamp() if issued_at is None else issued_at)
        subject = service_account_id(email)
        claims = {
            "aud": audience,
            "azp": subject,
            "email": email,
            "email_verified": True,
            "exp": iat + TOKEN_LIFETIME,
            "iat": iat,
            "iss": ISSUER,
            "sub": subject,
        }
        return self.sign(claims, key=key)

    def _new_key(self, prefix: str, *, count: bool = True) -> SigningKey:
        if count:
            self._serial += 1
        serial = self._serial if count else 1
        private = rsa.generate_private_key(public_exponent=65537, key_size=self.key_size)
        return SigningKey(f"{prefix}-{serial}", private, self.clock.now())


def service_account_id(email: str) -> str:
    """A stable 21-digit numeric id for a service account (Google's ``sub``/``azp`` shape)."""
    digest = int(hashlib.sha256(email.lower().encode()).hexdigest(), 16)
    return "1" + str(digest % 10**20).zfill(20)


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
