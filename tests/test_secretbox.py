"""Encryption at rest: round trip, key rotation, wrong keys."""

from __future__ import annotations

import base64

import pytest

from maildesk.config import Settings
from maildesk.errors import ConfigError
from maildesk.secretbox import SecretBox

TOKEN = "1//0g-refresh-token-of-alice@example.com-ÄÖü"


def test_round_trip() -> None:
    box = SecretBox(["a long random key"])
    ciphertext = box.encrypt(TOKEN)
    assert box.decrypt(ciphertext) == TOKEN
    assert ciphertext.isascii()


def test_the_ciphertext_does_not_contain_the_plaintext() -> None:
    box = SecretBox(["a long random key"])
    plaintext = "refresh-token-SEKRIT-0123456789"
    ciphertext = box.encrypt(plaintext)
    assert plaintext not in ciphertext
    assert "SEKRIT" not in ciphertext
    # Nor in the decoded bytes (Fernet is base64 of IV + ciphertext + MAC).
    assert b"SEKRIT" not in base64.urlsafe_b64decode(ciphertext.encode())


def test_encrypting_twice_gives_different_ciphertexts() -> None:
    box = SecretBox(["k"])
    assert box.encrypt(TOKEN) != box.encrypt(TOKEN)


def test_the_same_key_string_decrypts_in_another_process() -> None:
    # Keys are derived deterministically from the configured string (HKDF), not random.
    ciphertext = SecretBox(["shared key"]).encrypt(TOKEN)
    assert SecretBox(["shared key"]).decrypt(ciphertext) == TOKEN


def test_a_wrong_key_names_maildesk_secret_key() -> None:
    ciphertext = SecretBox(["right"]).encrypt(TOKEN)
    with pytest.raises(ConfigError) as info:
        SecretBox(["wrong"]).decrypt(ciphertext)
    assert info.value.field == "MAILDESK_SECRET_KEY"
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("garbage", ["", "not-a-token", "gAAAAA" + "A" * 80, "é"])
def test_garbage_names_maildesk_secret_key(garbage: str) -> None:
    with pytest.raises(ConfigError) as info:
        SecretBox(["k"]).decrypt(garbage)
    assert info.value.field == "MAILDESK_SECRET_KEY"


def test_no_key_names_maildesk_secret_key() -> None:
    with pytest.raises(ConfigError) as info:
        SecretBox([])
    assert info.value.field == "MAILDESK_SECRET_KEY"


def test_rotation_old_ciphertext_decrypts_with_new_and_old_keys() -> None:
    old = SecretBox(["old-key"]).encrypt(TOKEN)
    during = SecretBox(["new-key", "old-key"])
    assert during.decrypt(old) == TOKEN

    rotated = during.rotate(old)
    assert rotated != old
    after = SecretBox(["new-key"])
    assert after.decrypt(rotated) == TOKEN
    with pytest.raises(ConfigError):
        after.decrypt(old)  # the old key is gone: only rotated secrets survive
    with pytest.raises(ConfigError):
        SecretBox(["old-key"]).decrypt(rotated)  # rotated means: under the new key


def test_the_first_key_encrypts() -> None:
    ciphertext = SecretBox(["new-key", "old-key"]).encrypt(TOKEN)
    assert SecretBox(["new-key"]).decrypt(ciphertext) == TOKEN
    with pytest.raises(ConfigError):
        SecretBox(["old-key"]).decrypt(ciphertext)


def test_rotating_with_unknown_keys_names_maildesk_secret_key() -> None:
    ciphertext = SecretBox(["gone"]).encrypt(TOKEN)
    with pytest.raises(ConfigError) as info:
        SecretBox(["new-key", "old-key"]).rotate(ciphertext)
    assert info.value.field == "MAILDESK_SECRET_KEY"


def test_rotation_through_the_setting() -> None:
    # What an operator does: prepend a new key in MAILDESK_SECRET_KEY, rotate, drop the old.
    before = Settings.from_env({"MAILDESK_SECRET_KEY": "old-key"})
    stored = SecretBox(before.secret_keys).encrypt(TOKEN)
    during = Settings.from_env({"MAILDESK_SECRET_KEY": "new-key,old-key"})
    stored = SecretBox(during.secret_keys).rotate(stored)
    after = Settings.from_env({"MAILDESK_SECRET_KEY": "new-key"})
    assert SecretBox(after.secret_keys).decrypt(stored) == TOKEN


def test_rotating_a_non_ascii_value_names_maildesk_secret_key() -> None:
    with pytest.raises(ConfigError):
        SecretBox(["k"]).rotate("é")
