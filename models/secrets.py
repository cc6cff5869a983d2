"""The wire form of a secret: a Fernet token, never plain text.

Kafka messages are replicated, retained for days, copied to dead-letter topics and shown in
consumer-lag tooling, so any credential inside a payload is encrypted by the producer with
``PAYLOAD_ENCRYPTION_KEY`` (see :mod:`app.crypto`) and only decrypted by the worker that uses it.
The model holds only the token, so no dump can leak the plain text; ``repr`` also elides the token,
keeping log lines free of material an attacker could decrypt with a leaked key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import Field, field_validator

from models.common import ContractModel

# A Fernet token is urlsafe-base64 of: version 0x80 | timestamp (8) | IV (16) | AES-CBC blocks | HMAC (32).
_FERNET_VERSION = 0x80
_FERNET_OVERHEAD = 1 + 8 + 16 + 32
_AES_BLOCK = 16
FERNET_TOKEN_PATTERN = r"^gA[A-Za-z0-9_-]+={0,2}$"
MAX_TOKEN_LENGTH = 16_384


class EncryptedSecret(ContractModel):
    """A secret encrypted with the platform payload key (PAYLOAD_ENCRYPTION_KEY) as a Fernet token.

    Fernet (https://github.com/fernet/spec) is AES-128-CBC + HMAC-SHA256 with a timestamp;
    libraries exist for most languages (Python: app.crypto.encrypt_secret). Structured credentials
    (username and password, client id and secret) are JSON-encoded before encryption.
    """

    ciphertext: Annotated[
        str,
        Field(
            min_length=100,
            max_length=MAX_TOKEN_LENGTH,
            pattern=FERNET_TOKEN_PATTERN,
            description="Fernet token (urlsafe base64, starts with 'gA') produced by encrypt_secret.",
        ),
    ]

    @field_validator("ciphertext")
    @classmethod
    def _looks_like_fernet(cls, value: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(value)
        except (binascii.Error, ValueError):
            raw = b""
        body = len(raw) - _FERNET_OVERHEAD
        if not raw or raw[0] != _FERNET_VERSION or body < _AES_BLOCK or body % _AES_BLOCK:
            raise ValueError("ciphertext is not a Fernet token; encrypt secrets with the payload key")
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Used by repr(), str() and rich/devtools pretty-printing alike.
        yield "ciphertext", "<redacted>"
