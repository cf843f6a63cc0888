"""RFC 2047 encoded words in header values (``=?UTF-8?B?…?=``), decoded for display. Pure.

Gmail's API and IMAP's ENVELOPE both hand header values back undecoded, so both wire modules
use this one decoder.
"""

from __future__ import annotations

import email.errors
import email.header


def decode_encoded_words(value: str) -> str:
    """``value`` with its encoded words decoded.

    Unknown charsets and broken encodings (bad base64 raises ``HeaderParseError``) give the raw
    text back instead of failing: one odd subject must not stop a folder's sync.
    """
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, ValueError, UnicodeError, email.errors.HeaderParseError):
        return value
