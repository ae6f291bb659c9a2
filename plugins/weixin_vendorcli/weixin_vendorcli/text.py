"""Splitting a long reply into messages the platform accepts.

The vendor plugin declares `textChunkLimit: 4000`; its host counts JavaScript
string length, i.e. UTF-16 code units, so that is what we count too (an emoji
outside the BMP is two). A cut prefers a paragraph break, then a line break,
then a space, in the second half of the window; otherwise it falls between two
code points. Joining the chunks gives back the original text exactly.
"""

from __future__ import annotations

_SEPARATORS = ("\n\n", "\n", " ")
TRUNCATED = "\n…(message truncated)"  # the end of the last part of a reply cut to the part limit


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = 4000) -> list[str]:
    if limit < 2:
        raise ValueError("the chunk limit must be at least 2")
    chunks: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        window = _prefix(rest, limit)
        cut = len(window)
        for separator in _SEPARATORS:
            at = window.rfind(separator, len(window) // 2)
            if at > 0:
                cut = at + len(separator)
                break
        chunks.append(rest[:cut])
        rest = rest[cut:]
    if rest or not chunks:
        chunks.append(rest)
    return chunks


def split_reply(text: str, limit: int, max_parts: int) -> list[str]:
    """`split_text`, then at most `max_parts` parts: the rest is cut, and the last part says so."""
    chunks = split_text(text, limit)
    if len(chunks) <= max_parts:
        return chunks
    kept = chunks[:max_parts]
    room = limit - utf16_len(TRUNCATED)
    kept[-1] = _prefix(kept[-1], max(room, 0)) + TRUNCATED
    return kept


def _prefix(text: str, limit: int) -> str:
    """The longest prefix of `text` of at most `limit` UTF-16 code units."""
    if text.isascii():
        return text[:limit]
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return text[:index]
    return text
