"""Planning what a lesson covers. With a source document, its sections *are* the syllabus,
so every part of it gets taught; without one, the teacher's own plan is parsed."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

MAX_SECTIONS = 12
SECTION_CHARS = 900  # long enough for a point, short enough for a 135M model's attention
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+)$")
GENERIC_POINTS = ["What it is, in plain words", "Why it matters", "A worked example", "Common mistakes"]


@dataclass(frozen=True)
class Section:
    """One point to teach: a title and, when grounded, the notes it comes from."""

    title: str
    text: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def sections_from_source(text: str, max_chars: int = SECTION_CHARS) -> list[Section]:
    """Split a document into teachable sections by its Markdown headings, else by paragraphs."""
    text = text.replace("\r\n", "\n").strip()
    if not text:
        return []
    blocks: list[tuple[str, list[str]]] = []
    title, lines = "", []
    for line in text.split("\n"):
        m = _HEADING.match(line)
        if m:
            if any(s.strip() for s in lines) or (title and not blocks):
                blocks.append((title, lines))
            title, lines = m.group(1).strip(), []
        else:
            lines.append(line)
    blocks.append((title, lines))
    sections: list[Section] = []
    for title, body_lines in blocks:
        body = "\n".join(body_lines).strip()
        if not body and not title:
            continue
        for i, chunk in enumerate(_chunks(body, max_chars) or [""]):
            name = title or _first_words(chunk)
            if i:
                name = f"{name} (part {i + 1})"
            sections.append(Section(title=name, text=chunk or title))
    # No cap here: every part of the document is on the syllabus; the turn limit decides how far a lesson gets.
    return _merge_tiny(sections)


def sections_from_plan(plan: str, topic: str, minimum: int = 3) -> list[Section]:
    """Parse a teacher's numbered or bulleted plan; pad with generic points so a lesson has enough."""
    points: list[str] = []
    for line in plan.splitlines():
        m = _LIST_ITEM.match(line)
        if m:
            point = re.sub(r"[*_`#]", "", m.group(1)).strip(" .:-")
            head = point.split(":", 1)[0].strip()
            point = head if len(head) >= 3 else point  # "Basics: a long gloss…" → "Basics"
            point = point if len(point) <= 80 else point[:80].rsplit(" ", 1)[0] + "…"
            if len(point) >= 3 and point.lower() not in (p.lower() for p in points):
                points.append(point)
    for generic in GENERIC_POINTS:
        if len(points) >= minimum:
            break
        points.append(f"{topic}: {generic.lower()}")
    return [Section(title=p) for p in points[:MAX_SECTIONS]]


def _chunks(body: str, max_chars: int) -> list[str]:
    if len(body) <= max_chars:
        return [body] if body else []
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
    chunks: list[str] = []
    current = ""
    for para in paragraphs:
        for piece in _split_long(para, max_chars):
            if current and len(current) + len(piece) + 2 > max_chars:
                chunks.append(current)
                current = piece
            else:
                current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def _split_long(para: str, max_chars: int) -> list[str]:
    if len(para) <= max_chars:
        return [para]
    sentences = re.split(r"(?<=[.!?])\s+", para)
    out, current = [], ""
    for s in sentences:
        while len(s) > max_chars:  # a "sentence" with no full stop: cut it hard
            out.append(s[:max_chars])
            s = s[max_chars:]
        if current and len(current) + len(s) + 1 > max_chars:
            out.append(current)
            current = s
        else:
            current = f"{current} {s}".strip()
    if current:
        out.append(current)
    return out


def _merge_tiny(sections: list[Section], min_chars: int = 60) -> list[Section]:
    """Fold sections with almost no text into the next one, so no turn is spent on a bare heading."""
    merged: list[Section] = []
    carry: Section | None = None
    for s in sections:
        if carry is not None:
            s = Section(title=f"{carry.title} / {s.title}", text=f"{carry.text}\n\n{s.text}".strip())
            carry = None
        if len(s.text) < min_chars and s is not sections[-1]:
            carry = s
            continue
        merged.append(s)
    if carry is not None:
        merged.append(carry)
    return merged


def _first_words(text: str, n: int = 8) -> str:
    words = re.sub(r"\s+", " ", text).strip().split(" ")
    head = " ".join(words[:n])
    return head + ("…" if len(words) > n else "")
