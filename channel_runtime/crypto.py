"""Credentials at rest: Fernet (AES-128-CBC + HMAC-SHA256), key from the environment or `<home>`.

`CHANNEL_RUNTIME_SECRET_KEY` holds one key or a comma-separated list (rotation:
the first key encrypts, every key decrypts). Each item is either a Fernet key
(32 url-safe base64 bytes) or any other text, from which a Fernet key is derived
with HKDF-SHA256. HKDF does not stretch: a passphrase must be long and random
(for example `python -c "import secrets; print(secrets.token_urlsafe(32))"`).
When the variable is unset, a Fernet key is generated once into
`<home>/secret-key` (mode 0600) and reused.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_KEY_ENV = "CHANNEL_RUNTIME_SECRET_KEY"
SECRET_KEY_FILE = "secret-key"
_HKDF_SALT = b"channel-runtime/credentials"
_HKDF_INFO = b"fernet-key-v1"


class CredentialDecryptError(Exception):
    """Stored credentials cannot be decrypted with the configured key(s)."""


def _is_fernet_key(text: str) -> bool:
    try:
        raw = base64.b64decode(text.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return False
    return len(raw) == 32


def fernet_key(secret: str) -> bytes:
    """`secret` itself when it is a Fernet key, else a Fernet key derived from it with HKDF-SHA256."""
    secret = secret.strip()
    if not secret:
        raise ValueError(f"{SECRET_KEY_ENV} contains an empty key")
    if _is_fernet_key(secret):
        return secret.encode("ascii")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO).derive(
        secret.encode("utf-8")
    )
    return base64.urlsafe_b64encode(derived)


class CredentialCipher:
    """Encrypts credential dicts; the first key encrypts, all keys decrypt.

    `secret` is the text of `CHANNEL_RUNTIME_SECRET_KEY` (one key or passphrase,
    or a comma-separated list of them), e.g. as `load_or_create_key` returns it.
    """

    def __init__(self, secret: str) -> None:
        keys = [fernet_key(part) for part in secret.split(",")]
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    @classmethod
    def ephemeral(cls) -> CredentialCipher:
        """A cipher with a fresh random key kept only in memory (tests, `memory://` runtimes)."""
        return cls(Fernet.generate_key().decode("ascii"))

    def encrypt(self, credentials: Mapping[str, Any]) -> bytes:
        return self._fernet.encrypt(msgspec.json.encode(dict(credentials)))

    def decrypt(self, token: bytes) -> dict[str, Any]:
        try:
            plain = self._fernet.decrypt(token)
        except InvalidToken:
            raise CredentialDecryptError(
                f"stored credentials cannot be decrypted: {SECRET_KEY_ENV} (or <home>/{SECRET_KEY_FILE}) "
                "is not the key they were encrypted with; restore the old key, or list it after the new "
                "one (comma-separated) to rotate"
            ) from None
        value = msgspec.json.decode(plain)
        if not isinstance(value, dict):
            raise CredentialDecryptError("stored credentials are not an object")
        return value

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt `token` with the first key (it may have been made with any listed key)."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken:
            raise CredentialDecryptError("stored credentials cannot be decrypted with any configured key") from None

    def __repr__(self) -> str:
        return "CredentialCipher(<keys masked>)"


def load_or_create_key(home: Path, env: Mapping[str, str] | None = None) -> str:
    """The secret key text: `CHANNEL_RUNTIME_SECRET_KEY` if set, else `<home>/secret-key`, created if missing."""
    env = os.environ if env is None else env
    configured = env.get(SECRET_KEY_ENV, "").strip()
    if configured:
        return configured
    path = Path(home) / SECRET_KEY_FILE
    try:
        return path.read_text("ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # write a private temp file, then link it into place: two starting processes agree on one key
    tmp = path.with_name(f".{SECRET_KEY_FILE}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(Fernet.generate_key().decode("ascii") + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text("ascii").strip()


def load_cipher(home: Path, env: Mapping[str, str] | None = None) -> CredentialCipher:
    """The runtime's cipher, keyed as `load_or_create_key` says."""
    return CredentialCipher(load_or_create_key(home, env))
