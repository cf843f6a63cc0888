"""Encryption of secrets at rest (refresh tokens, clientState, IMAP passwords).

Keys come from ``MAILDESK_SECRET_KEY``: a comma-separated list whose first entry encrypts and
all entries decrypt, so a key is rotated by prepending a new one, running
``maildesk rotate-secrets`` (re-encrypts every stored secret with the new key) and then dropping
the old one. Each configured key string is stretched with HKDF into a Fernet key, so operators
may use any long random string.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from maildesk.errors import ConfigError

_INFO = b"maildesk secret box v1"
_UNDECRYPTABLE = "a stored secret cannot be decrypted with the configured keys"


def _derive(key: str) -> Fernet:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(key.encode())
    return Fernet(base64.urlsafe_b64encode(raw))


class SecretBox:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigError("MAILDESK_SECRET_KEY", "no key configured")
        self._fernet = MultiFernet([_derive(k) for k in keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise ConfigError("MAILDESK_SECRET_KEY", _UNDECRYPTABLE) from exc

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` with the newest key."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError) as exc:
            raise ConfigError("MAILDESK_SECRET_KEY", _UNDECRYPTABLE) from exc
