"""Checking a source document (a FAQ, course notes) before a teacher is grounded in it."""

from __future__ import annotations

from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ""}


class SourceError(Exception):
    """The document can't be used; the message says why in a member's words."""


def decode_source(name: str, data: bytes, max_bytes: int = 1_000_000) -> str:
    """The text of an uploaded or local document, or SourceError: too big, binary, or not UTF-8 text."""
    if len(data) > max_bytes:
        raise SourceError(f"{name} is {len(data):,} bytes; the limit is {max_bytes:,} bytes (1 MB)")
    if Path(name).suffix.lower() not in TEXT_SUFFIXES:
        raise SourceError(f"{name} is not a text or markdown file (.txt or .md)")
    if b"\x00" in data:
        raise SourceError(f"{name} looks binary, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(f"{name} is not UTF-8 text") from None
    if not text.strip():
        raise SourceError(f"{name} is empty")
    return text


def read_source(path: str | Path, max_bytes: int = 1_000_000) -> tuple[str, str]:
    """(name, text) of a local file, checked like an upload."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"{p}: no such file")
    if p.stat().st_size > max_bytes:
        raise SourceError(f"{p.name} is {p.stat().st_size:,} bytes; the limit is {max_bytes:,} bytes (1 MB)")
    return p.name, decode_source(p.name, p.read_bytes(), max_bytes)
