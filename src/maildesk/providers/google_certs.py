"""Google's OIDC signing keys, fetched from the certs URL and cached as long as Google says.

Accepts both shapes Google serves: v1 ``{kid: "-----BEGIN CERTIFICATE-----..."}`` and v3 JWKS
``{"keys": [{kid, kty, n, e, ...}]}``. The cache honours ``Cache-Control: max-age``; an unknown
``kid`` (Google rotated its keys) refetches at most once a minute, so forged tokens with random
key ids cannot make us hammer Google.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.x509 import load_pem_x509_certificate
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from maildesk.clock import Clock
from maildesk.errors import ProtocolViolation, ProviderRejected
from maildesk.providers.http import ProviderHttp

_MAX_AGE = re.compile(r"max-age=(\d+)")
DEFAULT_TTL = timedelta(hours=1)
MIN_REFETCH = timedelta(seconds=60)


def parse_certs(body: bytes) -> dict[str, RSAPublicKey]:
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise ProtocolViolation("Google certs: not JSON") from exc
    if not isinstance(data, dict):
        raise ProtocolViolation("Google certs: not an object")
    keys: dict[str, RSAPublicKey] = {}
    try:
        if isinstance(data.get("keys"), list):
            for jwk in data["keys"]:
                key = PyJWK(jwk).key
                if isinstance(key, RSAPublicKey) and isinstance(jwk.get("kid"), str):
                    keys[jwk["kid"]] = key
        else:
            for kid, pem in data.items():
                cert = load_pem_x509_certificate(str(pem).encode())
                public = cert.public_key()
                if isinstance(public, RSAPublicKey):
                    keys[str(kid)] = public
    except (PyJWKError, ValueError, TypeError, KeyError) as exc:
        raise ProtocolViolation(f"Google certs: unusable key ({type(exc).__name__})") from exc
    if not keys:
        raise ProtocolViolation("Google certs: no RSA keys")
    return keys


class GoogleCerts:
    def __init__(self, http: ProviderHttp, url: str, clock: Clock) -> None:
        self._http = http
        self._url = url
        self._clock = clock
        self._keys: dict[str, RSAPublicKey] = {}
        self._expires: datetime | None = None
        self._fetched: datetime | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> RSAPublicKey | None:
        now = self._clock.now()
        stale = self._expires is None or now >= self._expires
        rotated = kid not in self._keys and (
            self._fetched is None or now - self._fetched >= MIN_REFETCH
        )
        if stale or rotated:
            await self._refresh(now)
        return self._keys.get(kid)

    async def _refresh(self, now: datetime) -> None:
        async with self._lock:
            if self._fetched is not None and self._fetched > now - timedelta(seconds=1):
                return  # another caller refreshed while we waited
            response = await self._http.request("GET", self._url)
            if response.status_code != 200:
                raise ProviderRejected(f"Google certs answered {response.status_code}",
                                       response.status_code)
            self._keys = parse_certs(response.content)
            self.fetches += 1
            self._fetched = self._clock.now()
            match = _MAX_AGE.search(response.headers.get("cache-control", ""))
            ttl = timedelta(seconds=int(match.group(1))) if match else DEFAULT_TTL
            self._expires = self._fetched + ttl
