"""Caption text at ingest: raw bytes or strings from any source -> safe, normalised text.

The pool keeps the raw caption (later stages score and mix it), so only what makes text unsafe
or inconsistent is changed: bytes that are not UTF-8 are decoded by a best guess (never an
exception), control characters go, runs of whitespace become one space, the text is put in
Unicode NFC, and it is cut at `max_chars`. Each change a user may want to know about is returned
as a warning, which the ingest stores in the row's `warnings` column.
"""
from __future__ import annotations

import unicodedata
from typing import Optional

# Categories removed: control characters (Cc: NUL, ESC, DEL, C1 controls), surrogates left by
# broken decoders (Cs). Format characters (Cf: ZWJ in emoji, RTL marks) are meaningful and kept.
_REMOVED_CATEGORIES = {"Cc", "Cs"}
_NONCHARACTERS = {"\ufffe", "\uffff"}


def decode_bytes(data: bytes) -> tuple[str, Optional[str]]:
    """Bytes -> (text, warning or None). UTF-8 (with or without BOM) decodes silently;
    anything else is decoded by ftfy's guess (UTF-16 with BOM, Windows-1252, MacRoman), and
    failing that as UTF-8 with U+FFFD for each bad byte."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    try:
        import ftfy

        text, encoding = ftfy.guess_bytes(data)
        if encoding and encoding != "utf-8":
            return text, f"caption not UTF-8: decoded as {encoding}"
    except Exception:  # ftfy gives up on some byte soups; the fallback below always works
        pass
    return data.decode("utf-8", errors="replace"), \
        "caption not UTF-8: undecodable bytes replaced with U+FFFD"


def _strip_controls(text: str) -> tuple[str, int]:
    kept: list[str] = []
    removed = 0
    for ch in text:
        if ch in "\t\n\r\f\v":
            kept.append(" ")  # whitespace controls separate words: keep them as a space
        elif unicodedata.category(ch) in _REMOVED_CATEGORIES or ch in _NONCHARACTERS:
            removed += 1
        else:
            kept.append(ch)
    return "".join(kept), removed


def clean_caption(raw: bytes | str | None, max_chars: int) -> tuple[Optional[str], list[str]]:
    """(normalised caption or None, warnings). Never raises on any input.

    None stays None (a missing caption); a caption that is empty after cleaning becomes None
    with a warning, so `text IS NULL` finds every sample without usable text."""
    warnings: list[str] = []
    if raw is None:
        return None, warnings
    if isinstance(raw, (bytes, bytearray, memoryview)):
        text, warning = decode_bytes(bytes(raw))
        if warning:
            warnings.append(warning)
    else:
        text = str(raw)
    text, removed = _strip_controls(text)
    if removed:
        warnings.append(f"caption had {removed} control character(s), removed")
    text = unicodedata.normalize("NFC", " ".join(text.split()))
    if not text:
        warnings.append("caption empty")
        return None, warnings
    if len(text) > max_chars:
        warnings.append(f"caption truncated from {len(text):,} to {max_chars:,} characters")
        text = text[:max_chars].rstrip()
    return text, warnings


def read_limit(max_chars: int) -> int:
    """Bytes worth reading for a caption of at most `max_chars` characters (UTF-8 uses up to 4
    bytes a character, and whitespace collapses): a 2 GB .txt member never reaches memory."""
    return max(1 << 20, 16 * max_chars)
