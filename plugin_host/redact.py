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
# long random-looking strings: at least 32 chars of token alphabet with both letters and digits
# (starting with a letter or digit, so an absolute path like /tmp/pytest-of-root/... is left alone)
_TOKENISH = re.compile(
    r"(?<![\w/.-])(?=[A-Za-z0-9_+/=-]*\d)(?=[A-Za-z0-9_+/=-]*[A-Za-z])[A-Za-z0-9][A-Za-z0-9_+/=-]{31,}(?![\w/.-])"
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask known secrets and anything shaped like a token."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _JWT.sub(MASK, text)
    text = _KEYED.sub(lambda m: f"{m.group('key')}{m.group('sep')}{MASK}", text)
    text = _TOKENISH.sub(MASK, text)
    return text


class Redactor:
    """`redact` bound to a growing set of known secrets (tokens, credentials)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = {s for s in secrets if s}

    def add(self, *secrets: str) -> None:
        self._secrets.update(s for s in secrets if s and len(s) >= 4)

    def __call__(self, text: str) -> str:
        # longest first so a secret containing another is masked whole
        return redact(text, sorted(self._secrets, key=len, reverse=True))
