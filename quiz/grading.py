"""Grading an answer against a reference, with no model: normalised keywords and numbers.

Small students answer in their own words, so the grader compares meaning-bearing tokens
(numbers, names, content words) after normalising case, punctuation, accents and numbers
written in words ("twelve" = "12").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from backends.base import ChatBackend, GenParams

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if w != "_"}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_ORDINALS = {"first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5", "sixth": "6", "seventh": "7",
             "eighth": "8", "ninth": "9", "tenth": "10", "twelfth": "12", "twentieth": "20"}
STOPWORDS = set(
    "a an the is are was were be been being of to in on at by for with and or but not no it its this that these "
    "those there their they them he she his her we our you your i me my as from into than then so if do does did "
    "has have had can could will would should may might must what which who whom whose when where why how also "
    "about just only very more most some any each all every both either neither one".split()
)


@dataclass(frozen=True)
class Grade:
    """A verdict and which grader gave it; `correct` is None when there was nothing to compare with."""

    correct: bool | None
    score: float
    grader: str


def normalise(text: str) -> list[str]:
    """Lower-case tokens without accents or punctuation, numbers in digits, light plural stemming."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text)  # 3rd -> 3
    tokens = re.findall(r"\d+(?:\.\d+)?|[a-z]+", text.replace("-", " "))
    return [_stem(t) for t in _words_to_numbers(tokens)]


def _stem(token: str) -> str:
    if token.isdigit() or len(token) <= 3:
        return token
    for suffix in ("ies", "es", "s"):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3:
            return token[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return token


def _words_to_numbers(tokens: list[str]) -> list[str]:
    out: list[str] = []
    value: int | None = None
    current = 0
    previous = ""
    for tok in tokens:
        if tok in _UNITS or tok in _TENS:
            current += _UNITS.get(tok, 0) + _TENS.get(tok, 0)
            value = 0 if value is None else value
        elif tok in _SCALES and value is not None:
            current = max(current, 1) * _SCALES[tok]
            if _SCALES[tok] >= 1000:
                value += current
                current = 0
        elif tok == "and" and value is not None and previous in _SCALES:
            pass  # "one hundred and five" is one number; "twenty and five" is two
        else:
            if value is not None:
                out.append(str(value + current))
                value, current = None, 0
            out.append(_ORDINALS.get(tok, tok))
        previous = tok
    if value is not None:
        out.append(str(value + current))
    return out


def key_tokens(reference: str) -> list[str]:
    """The tokens of a reference answer that carry its meaning."""
    return [t for t in dict.fromkeys(normalise(reference)) if t.isdigit() or "." in t or (t not in STOPWORDS and len(t) > 1)]


def grade_reference(answer: str, reference: str | None = None, keywords: list[str] | None = None) -> Grade:
    """Correct when every number of the reference and enough of its content words appear in the answer.

    With `keywords`, each must appear (a keyword may list alternatives as "a|b"). With
    neither a reference nor keywords, the verdict is None.
    """
    got = set(normalise(answer))
    if keywords:
        hits = sum(any(set(normalise(alt)) <= got for alt in k.split("|") if alt.strip()) for k in keywords)
        score = hits / len(keywords)
        return Grade(correct=hits == len(keywords), score=score, grader="keywords")
    if not reference or not key_tokens(reference):
        return Grade(correct=None, score=0.0, grader="none")
    keys = key_tokens(reference)
    numbers = [k for k in keys if k.replace(".", "").isdigit()]
    words = [k for k in keys if k not in numbers]
    if numbers and not all(n in got for n in numbers):
        return Grade(correct=False, score=sum(n in got for n in numbers) / len(keys), grader="reference")
    recall = sum(w in got for w in words) / len(words) if words else 1.0
    # short references ("Ada Quill") must match entirely; longer ones need half their content words
    needed = 1.0 if len(words) <= 2 and not numbers else 0.5
    score = (len(numbers) + recall * len(words)) / len(keys)
    return Grade(correct=recall >= needed - 1e-9, score=score, grader="reference")


async def grade_with_judge(judge: ChatBackend, question: str, answer: str, reference: str) -> Grade:
    """Ask a capable teacher whether the answer means the same as the reference."""
    prompt = (
        f"Question: {question}\nReference answer: {reference}\nStudent answer: {answer}\n\n"
        "Does the student answer state the same fact as the reference answer? Reply with one word: yes or no."
    )
    verdict = await judge.chat([{"role": "user", "content": prompt}], GenParams(max_new_tokens=3, temperature=0.0))
    yes = verdict.strip().lower().startswith("yes")
    return Grade(correct=yes, score=1.0 if yes else 0.0, grader=f"judge:{judge.name}")
