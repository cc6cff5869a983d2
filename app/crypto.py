"""Encryption of secrets carried inside job payloads (Fernet, key from ``PAYLOAD_ENCRYPTION_KEY``).

``PAYLOAD_ENCRYPTION_KEY`` holds one Fernet key, or several separated by commas for rotation:
the first key encrypts, every key decrypts (``MultiFernet``). To rotate, prepend the new key
everywhere, wait until no message encrypted with the old key can still be retried or replayed
from a dead-letter topic, then drop the old key.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.config import get_settings
from models.secrets import EncryptedSecret

KeyMaterial = str | bytes


class MissingEncryptionKeyError(RuntimeError):
    """No key was passed and ``PAYLOAD_ENCRYPTION_KEY`` is empty."""


class SecretDecryptionError(ValueError):
    """The token was not produced by any configured key, was tampered with, or has expired."""


def generate_key() -> str:
    """A fresh Fernet key, suitable for ``PAYLOAD_ENCRYPTION_KEY``."""
    return Fernet.generate_key().decode("ascii")


def _fernet(key: KeyMaterial | None) -> MultiFernet:
    if key is None:
        key = get_settings().payload_encryption_key
    text = key.decode("ascii") if isinstance(key, bytes) else key
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise MissingEncryptionKeyError("PAYLOAD_ENCRYPTION_KEY is not set")
    try:
        return MultiFernet([Fernet(part) for part in parts])
    except ValueError:
        # Never echo the key material in the message.
        raise ValueError(
            "PAYLOAD_ENCRYPTION_KEY is not a valid Fernet key (32 urlsafe-base64 bytes)"
        ) from None


def encrypt_secret(plain: str, key: KeyMaterial | None = None) -> EncryptedSecret:
    """Encrypt ``plain`` for a payload; ``key`` defaults to ``PAYLOAD_ENCRYPTION_KEY``."""
    token = _fernet(key).encrypt(plain.encode("utf-8"))
    return EncryptedSecret(ciphertext=token.decode("ascii"))


def decrypt_secret(
    value: EncryptedSecret | str, key: KeyMaterial | None = None, *, ttl: int | None = None
) -> str:
    """Return the plain text of ``value`` (an ``EncryptedSecret`` or its bare token).

    ``ttl`` (seconds) rejects tokens older than that; off by default because retries and
    dead-letter replays legitimately reuse old messages.
    """
    token = value.ciphertext if isinstance(value, EncryptedSecret) else value
    try:
        return _fernet(key).decrypt(token.encode("ascii"), ttl=ttl).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise SecretDecryptionError("secret cannot be decrypted with the configured key(s)") from None
