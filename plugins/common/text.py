"""Fitting model text into Discord messages: clean splits at 2000 characters, code fences kept balanced."""

from __future__ import annotations

import re

MESSAGE_LIMIT = 2000
FENCE = "```"
_SENTENCE_END = re.compile(r"[.!?…][)\"'»]*\s")


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split `text` into chunks of at most `limit` characters.

    Cuts prefer a paragraph break, then a line break, then a sentence end, then a space,
    and only cut inside a word when nothing else fits. A chunk that ends inside a ``` code
    block closes it, and the next chunk reopens it with the same language, so every chunk
    renders on its own. Empty text gives no chunks.
    """
    if limit < 40:
        raise ValueError("limit too small to split sensibly")
    chunks: list[str] = []
    rest = text.strip("\n")
    opener: str | None = None  # the fence line in effect at the start of `rest`
    while rest.strip():
        prefix = f"{opener}\n" if opener else ""
        whole = prefix + rest
        if len(whole) <= limit and _fence_after(opener, rest) is None:
            chunks.append(whole)
            break
        if len(whole) <= limit - len(FENCE) - 1:
            chunks.append(f"{whole}\n{FENCE}")  # a fence the model never closed
            break
        budget = limit - len(prefix) - len(FENCE) - 1  # room to close a fence
        cut, resume = _keep_inline_backticks(rest, *_cut(rest, budget))
        piece = rest[:cut].rstrip()
        after = _fence_after(opener, piece)
        chunks.append(prefix + piece + (f"\n{FENCE}" if after else ""))
        rest = rest[resume:]
        if after is None:
            rest = rest.lstrip("\n")
        opener = after
    return chunks


def _cut(text: str, budget: int) -> tuple[int, int]:
    """Where to end this chunk and where the next one starts (skipping the separator)."""
    window = text[: budget + 1]
    floor = budget // 3  # never settle for a tiny chunk when a hard cut gives a full one
    para = window.rfind("\n\n", 0, budget)
    if para > floor:
        return para, para + 2
    line = window.rfind("\n", 0, budget)
    if line > floor:
        return line, line + 1
    sentence = None
    for m in _SENTENCE_END.finditer(window):
        if m.end() - 1 <= budget:
            sentence = m
    if sentence is not None and sentence.end() > floor:
        return sentence.end() - 1, sentence.end()
    space = window.rfind(" ", 0, budget)
    if space > floor:
        return space, space + 1
    return budget, budget


def _keep_inline_backticks(text: str, cut: int, resume: int) -> tuple[int, int]:
    """Move a cut inside a line so the next chunk doesn't start with ```: that would open a code block."""
    if text[cut : cut + 1] == "\n" or not text[resume:].lstrip(" \t").startswith("`"):
        return cut, resume
    p = resume
    while p > 0 and (text[p].isspace() or text[p] == "`"):
        p -= 1
    if p <= 0 or text[p] == "\n":
        return cut, resume
    return p, p


def _fence_after(opener: str | None, piece: str) -> str | None:
    """The fence line still open after `piece`, given the one open before it (None: outside code)."""
    current = opener
    for line in piece.split("\n"):
        stripped = line.strip()
        if stripped.startswith(FENCE):
            current = None if current is not None else stripped
    return current


def shorten(text: str, limit: int) -> str:
    """`text` on one line, cut with an ellipsis to at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
