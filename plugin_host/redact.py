"""The one redaction function, and the one rule of what is secret.

Every log line, stored output and API answer passes `redact` (or a `Redactor`
holding the secrets the host knows). Secrets are (1) what the host knows to be
secret — credentials, secret config values, its own tokens — and (2) a narrow set
of token shapes: bearer/basic headers, JWTs, `key=value` pairs whose key names a
secret, well-known API-key prefixes, and long high-entropy runs. Identifiers stay
readable: a run that starts with a lower-case id prefix (`out_`, `conn_`, `ou_`,
`oc_`, `om_`...), a UUID, or a 32/64-digit hex digest is not a token shape.

Values of `VERBATIM_FIELDS` (a session's `qrCode`, `qrImage`) are masked only where
they hold a known secret: a QR payload is shown to be scanned, whatever it looks like.

A field is secret (`is_secret_field`) when its JSON Schema says so (`writeOnly`,
`format: password`, `x-secret`/`secret: true`) or its name names a secret
(token, secret, password, key, credential...): config forms, answers and logs use
that one rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

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
# API keys with a well-known prefix (GitHub, OpenAI-style, Stripe-style, Slack, Feishu/Lark tokens)
_PREFIXED = re.compile(
    r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|sk-[\w-]{20,}|[spr]k_(?:live|test)_\w{16,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|[tu]-[A-Za-z0-9_-]{20,})"
)
# long runs of the token alphabet, starting with a letter or digit (so an absolute
# path like /tmp/pytest-of-root/... is left alone); masked when they mix letters and digits
_LONG_RUN = re.compile(r"(?<![\w/.-])[A-Za-z0-9][A-Za-z0-9_+/=-]{31,}(?![\w/.-])")
_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[A-Za-z]")
# identifiers, not tokens: `prefix_...` ids, UUIDs, md5/sha256 hex digests
_ID_SHAPE = re.compile(
    r"[a-z][a-z0-9]{0,11}_[\w:-]*|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}|[0-9a-f]{64}"
)
_SCHEMA_SECRET_FLAGS = ("secret", "x-secret")
# cheap prefilter (substring search): the keyed pattern only runs on text naming a secret
_KEY_WORDS = ("token", "secret", "passw", "key", "credential", "authorization", "cookie")


def is_secret_name(name: str) -> bool:
    """Whether a field or option called `name` holds a secret (appSecret, api_key, password, ...)."""
    lowered = name.lower()
    return any(word in lowered for word in _KEY_WORDS)


def is_secret_field(name: str, schema: Any = None) -> bool:
    """Whether the field `name`, described by the JSON Schema `schema` (if any), holds a secret."""
    if isinstance(schema, Mapping) and (
        schema.get("writeOnly") is True
        or schema.get("format") == "password"
        or any(schema.get(flag) is True for flag in _SCHEMA_SECRET_FLAGS)
    ):
        return True
    return is_secret_name(name)


def secret_strings(value: Any) -> list[str]:
    """Every string inside `value` (nested mappings and lists included): all of a secret's parts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for item in value.values() for s in secret_strings(item)]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in secret_strings(item)]
    if value is None or isinstance(value, bool):
        return []
    return [str(value)]


def _properties(schema: Any) -> Mapping[str, Any]:
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    return props if isinstance(props, Mapping) else {}


def secret_values(config: Any, schema: Any = None) -> list[str]:
    """The strings of `config` held by secret fields (`is_secret_field`), at any depth."""
    found: list[str] = []
    if isinstance(config, Mapping):
        props = _properties(schema)
        for key, value in config.items():
            sub = props.get(key)
            if is_secret_field(str(key), sub):
                found += secret_strings(value)
            else:
                found += secret_values(value, sub)
    elif isinstance(config, (list, tuple)):
        items = schema.get("items") if isinstance(schema, Mapping) else None
        for item in config:
            found += secret_values(item, items)
    return found


def credential_secrets(credentials: Any, *, public: Iterable[str] = ()) -> list[str]:
    """The strings of a connection's credentials the host masks in everything a plugin says.

    Secret fields (`secret_values`, whatever their shape), plus any other value of 8+
    characters mixing letters and digits (an unnamed token). Plain words and URLs
    (`"domain": "feishu"`, a base URL), identifiers (the id shapes: an `appId` like
    `cli_…`) and what the host shows anyway (`public`: the account id, the display name)
    stay readable, or every answer naming them would be masked.
    """
    shown = set(public)
    named = secret_values(credentials)
    tokenish = [
        v
        for v in secret_strings(credentials)
        if len(v) >= 8
        and _DIGIT.search(v)
        and _LETTER.search(v)
        and "://" not in v
        and v not in shown
        and not _ID_SHAPE.fullmatch(v)
    ]
    return list(dict.fromkeys(named + tokenish))


def mask_secret_fields(config: Any, schema: Any = None) -> Any:
    """`config` with the value of every secret field (`is_secret_field`) replaced by the mask."""
    if isinstance(config, Mapping):
        props = _properties(schema)
        out: dict[str, Any] = {}
        for key, value in config.items():
            sub = props.get(key)
            if is_secret_field(str(key), sub) and value not in (None, "", {}, []):
                out[key] = MASK
            else:
                out[key] = mask_secret_fields(value, sub)
        return out
    if isinstance(config, list):
        items = schema.get("items") if isinstance(schema, Mapping) else None
        return [mask_secret_fields(item, items) for item in config]
    return config


def mark_secret_fields(schema: Any) -> Any:
    """`schema` (a JSON Schema) with `writeOnly: true` on every property `is_secret_field` holds secret,
    at any depth: what a form built from it (the admin page) reads, so there is one rule of what is secret."""
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    props = _properties(schema)
    if props:
        marked = {}
        for key, sub in props.items():
            sub = mark_secret_fields(sub)
            if is_secret_field(str(key), sub) and isinstance(sub, Mapping) and sub.get("writeOnly") is not True:
                sub = {**sub, "writeOnly": True}
            marked[key] = sub
        out["properties"] = marked
    if isinstance(schema.get("items"), Mapping):
        out["items"] = mark_secret_fields(schema["items"])
    return out


def _mask_tokenish(match: re.Match[str]) -> str:
    run = match.group()
    if not (_DIGIT.search(run) and _LETTER.search(run)) or _ID_SHAPE.fullmatch(run):
        return run
    return MASK


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
    if "-" in text or "_" in text:
        text = _PREFIXED.sub(MASK, text)
    return _LONG_RUN.sub(_mask_tokenish, text)


def redact_value(value: Any, secrets: Iterable[str] = ()) -> Any:
    """`value` (JSON-like: mappings, lists, strings...) with every string inside through `redact`."""
    known = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    return _walk(value, known)


# what a person must act on as it is (a QR code to scan, its rendering): only known secrets are
# masked there; a token shape inside a QR payload is the payload, and masking it breaks the code
VERBATIM_FIELDS = frozenset({"qrCode", "qrImage"})


def _known_only(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
    return value


def _walk(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {k: _known_only(v, secrets) if k in VERBATIM_FIELDS else _walk(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk(v, secrets) for v in value]
    return value


_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def log_safe(text: str) -> str:
    """`text` with control characters (ESC, CR, NUL... but not tab) written as `\\xNN`, for one log line.

    A plugin's words reach the host's log: raw ESC sequences would drive the operator's
    terminal and a CR would overwrite what the line seems to say.
    """
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text) if _CONTROLS.search(text) else text


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

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(self._ordered)

    def value(self, value: Any) -> Any:
        """`redact_value` with the known secrets."""
        return _walk(value, self._ordered)
