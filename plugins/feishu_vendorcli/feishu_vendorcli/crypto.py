"""Webhook cryptography of the Open Platform: the `X-Lark-Signature` check and AES-256-CBC.

- signature = sha256_hex((timestamp + nonce + encrypt_key).encode() + raw_body)
- encrypted body = {"encrypt": base64(iv16 || AES-256-CBC(PKCS7(plaintext)))},
  key = sha256(encrypt_key) (32 raw bytes)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_BLOCK = 16
MAX_CIPHERTEXT_BYTES = 4 * 1024 * 1024  # the host caps webhook bodies far below this


class DecryptError(ValueError):
    """The `encrypt` field is not valid base64, AES-256-CBC or PKCS7 under this key."""


def aes_key(encrypt_key: str) -> bytes:
    return hashlib.sha256(encrypt_key.encode("utf-8")).digest()


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode("utf-8") + body).hexdigest()


def signature_matches(expected: str, given: str) -> bool:
    """Constant-time comparison of two hex signatures (case-insensitive, as hex is)."""
    return hmac.compare_digest(expected.encode("ascii"), given.strip().lower().encode("ascii", "replace"))


class EventCipher:
    """AES-256-CBC of one Encrypt Key; the key is derived once."""

    __slots__ = ("_key",)

    def __init__(self, encrypt_key: str) -> None:
        self._key = aes_key(encrypt_key)

    def decrypt(self, encrypted: str) -> bytes:
        if len(encrypted) > MAX_CIPHERTEXT_BYTES:
            raise DecryptError("the encrypted body is too large")
        try:
            raw = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError):
            raise DecryptError("the encrypt field is not base64") from None
        if len(raw) < 2 * _BLOCK or len(raw) % _BLOCK:
            raise DecryptError("the ciphertext has an invalid length")
        decryptor = Cipher(algorithms.AES(self._key), modes.CBC(raw[:_BLOCK])).decryptor()
        padded = decryptor.update(raw[_BLOCK:]) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            raise DecryptError("the plaintext has invalid padding (wrong encrypt key?)") from None

    def encrypt(self, plaintext: bytes, iv: bytes | None = None) -> str:
        """What the platform sends; used by tests, the benchmark and the fake platform."""
        iv = os.urandom(_BLOCK) if iv is None else iv
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plaintext) + padder.finalize()
        encryptor = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode("ascii")
