"""The one redaction function: every log line, stored output and API answer passes here."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[REDACTED]"

# key=value / "key": "value" pairs whose key names a secret
_KEYED = re.compile(
    r"""(?ix)
    (?P<key>["']?\b[\w-]*(?:token|secret|password|passwd|api[_-]?key|private[_-]?key|credential|encrypt[_-]?key|authorization|cookie|session[_-]?key)["']?)
    (?P<sep>\s*[:=]\s*["']?)
    (?P<val>(?:bearer\s+)?[^\s"',;&}]{3,})
    """
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]+)?")
# long runs of the token alphabet, starting with a letter or digit (so an absolute
# path like /tmp/pytest-of-root/... is left alone); masked when they mix letters and digits
_LONG_RUN = re.compile(r"(?<![\w/.-])[A-Za-z0-9][A-Za-z0-9_+/=-]{31,}(?![\w/.-])")
_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[A-Za-z]")
# cheap prefilter (substring search): the keyed pattern only runs on text naming a secret
_KEY_WORDS = ("token", "secret", "passw", "key", "credential", "authorization", "cookie")


def is_secret_name(name: str) -> bool:
    """Whether a field or option called `name` holds a secret (appSecret, api_key, password, ...)."""
    lowered = name.lower()
    return any(word in lowered for word in _KEY_WORDS)


def _mask_tokenish(match: re.Match[str]) -> str:
    run = match.group()
    return MASK if _DIGIT.search(run) and _LETTER.search(run) else run


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask known secrets and anything shaped like a token."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, MASK)
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    if "eyJ" in text:
        text = _JWT.sub(MASK, text)
    if any(word in lowered for word in _KEY_WORDS):
        text = _KEYED.sub(lambda m: f"{m.group('key')}{m.group('sep')}{MASK}", text)
    return _LONG_RUN.sub(_mask_tokenish, text)


class Redactor:
    """`redact` bound to a growing set of known secrets (tokens, credentials)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        fresh = {s for s in secrets if s and len(s) >= 4} - self._secrets
        if fresh:
            self._secrets |= fresh
            # longest first so a secret containing another is masked whole
            self._ordered = sorted(self._secrets, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        return redact(text, self._ordered)
