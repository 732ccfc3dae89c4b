"""Training data: lesson dialogues as JSONL, chat-template tokenization with label masks, and packing.

One line of the dataset file is one dialogue:

    {"id": "lesson-12", "messages": [
        {"role": "system", "content": "..."},
        {"role": "user", "content": "..."},                       # the student's turn
        {"role": "assistant", "content": "...", "train": true}]}  # the teacher's turn

Only assistant messages are learned from; `train` defaults to true for them, is
always false for the other roles, and a teacher turn the community voted down
carries `train: false` so it stays in the context without being imitated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
"""Label of a token that is context only (the value torch's cross_entropy skips)."""

ROLES = ("system", "user", "assistant")

Message = dict[str, Any]
Record = dict[str, Any]


@dataclass(frozen=True)
class Example:
    """One tokenized dialogue; `labels[i]` is `input_ids[i]` where that token is learned, else IGNORE.

    An anchor's learned tokens are learned differently: toward the distribution the model gave
    them before training (trainer.loop), not toward the text alone.
    """

    input_ids: list[int]
    labels: list[int]
    anchor: bool = False


@dataclass(frozen=True)
class PackedRow:
    """Several examples laid end to end in one sequence, kept apart by `seq_ids`."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]  # restart at 0 for every example, as if each ran alone
    seq_ids: list[int]  # which example of the row a token belongs to: 0, 0, ..., 1, 1, ...
    anchor: list[bool]  # per token: whether it belongs to an anchor example

    @property
    def bounds(self) -> list[int]:
        """Offsets where the examples start, plus the row length: [0, len0, len0 + len1, ..., len(row)]."""
        starts = [i for i, p in enumerate(self.position_ids) if p == 0]
        return [*starts, len(self.input_ids)]


class DatasetError(ValueError):
    """The dataset file or one of its records is malformed; the message names the line."""


# --- records -------------------------------------------------------------------------------------


def normalize_message(message: Message) -> Message:
    """Validate one message and make `train` explicit: a default for assistants, false for others."""
    if not isinstance(message, dict):
        raise DatasetError(f"a message must be an object, got {type(message).__name__}")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise DatasetError(f"message role must be one of {', '.join(ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise DatasetError(f"message content must be a string, got {type(content).__name__}")
    train = message.get("train", role == "assistant")
    if not isinstance(train, bool):
        raise DatasetError(f"message train must be true or false, got {train!r}")
    return {"role": role, "content": content, "train": bool(train) and role == "assistant"}


def normalize_record(record: Record) -> Record:
    """Validate one dataset record: `{"id": ..., "messages": [...]}` with every message normalized.

    `"anchor": true` marks the student's own answer to a general question (trainer/anchors.py):
    its tokens keep the model's distribution instead of teaching new text.
    """
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise DatasetError('a record must be an object with a "messages" list')
    if not record["messages"]:
        raise DatasetError("a record needs at least one message")
    anchor = record.get("anchor", False)
    if not isinstance(anchor, bool):
        raise DatasetError(f"record anchor must be true or false, got {anchor!r}")
    out = {"id": str(record.get("id", "")), "messages": [normalize_message(m) for m in record["messages"]]}
    if anchor:
        out["anchor"] = True
    return out


def load_jsonl(path: str | Path) -> list[Record]:
    """Read and normalize a dataset file; blank lines are skipped, a bad line raises DatasetError."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(normalize_record(json.loads(line)))
            except (json.JSONDecodeError, DatasetError) as e:
                raise DatasetError(f"{path}:{number}: {e}") from None
    return records


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def dedupe(records: Iterable[Record]) -> list[Record]:
    """Drop records whose messages repeat an earlier record's (ids may differ); order is kept.

    A dialogue exported twice would otherwise be learned twice as hard.
    """
    seen: set[str] = set()
    unique = []
    for record in records:
        key = _canonical(_content(record))
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


def data_hash(records: Iterable[Record]) -> str:
    """sha256 of the canonical JSON of the records' messages, in order.

    Ids are left out on purpose: they name database rows, and the same dialogues
    under new ids train the same adapter. Key order, whitespace and an implicit
    `train` default do not change the hash; marking a record as an anchor does.
    """
    canonical = [_content({**r, "messages": [normalize_message(m) for m in r["messages"]]}) for r in records]
    return hashlib.sha256(_canonical(canonical).encode("utf-8")).hexdigest()


def _content(record: Record) -> Any:
    """What a record trains: its messages, and whether it is an anchor (a plain record keeps its old hash)."""
    return {"anchor": True, "messages": record["messages"]} if record.get("anchor") else record["messages"]


# --- tokenization --------------------------------------------------------------------------------


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], generation_prompt: bool = False
) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt)


def render_with_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]
) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` with the chat template; also return the character spans to learn.

    The template is rendered one message longer at a time, so each message's text
    is the difference between two renderings; a template that rewrites earlier
    text (not a prefix of the next rendering) is refused rather than mislabelled.
    A learned span is an assistant message's content plus its end-of-turn token
    (the tokenizer's eos, `<|im_end|>` in ChatML) so the student learns to stop;
    the `<|im_start|>assistant\\n` header is not in it.
    """
    messages = [normalize_message(m) for m in messages]
    end_of_turn = tokenizer.eos_token or ""
    spans: list[tuple[int, int]] = []
    before = ""
    for i, message in enumerate(messages):
        text = _render(tokenizer, messages[: i + 1])
        if not text.startswith(before):
            raise ValueError(
                "the chat template rewrites earlier messages; cannot locate turns for the loss mask"
            )
        if message["train"]:
            spans.append(_assistant_span(tokenizer, messages, i, before, text, end_of_turn))
        before = text
    return before, spans


def _assistant_span(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    i: int,
    before: str,
    text: str,
    end_of_turn: str,
) -> tuple[int, int]:
    # The generation prompt is exactly the header the model sees before it answers at inference.
    content_from = len(before)
    if i > 0:
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        if prompt.startswith(before) and text.startswith(prompt):
            content_from = len(prompt)
    content = messages[i]["content"]
    if text.find(content, content_from) < 0:
        content = content.strip()  # some templates trim message content
    start = text.find(content, content_from)
    if start < 0:
        raise ValueError(f"message {i}: assistant content not found in the rendered chat template")
    end = start + len(content)
    rest = text[end:]
    stop = rest.find(end_of_turn) if end_of_turn else -1
    if stop >= 0 and not rest[:stop].strip():
        end += stop + len(end_of_turn)
    return start, end


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], max_seq_len: int
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered dialogue and its labels (IGNORE except on learned tokens).

    The text is tokenized in one piece, exactly as at inference, and each token
    takes the label of the character it starts on. Tokens after the last learned
    one are cut (they teach nothing), then the result is cut to `max_seq_len`; the
    labels may then be all IGNORE, which callers drop.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("a fast tokenizer (tokenizer.json) is needed for exact label masks")
    text, spans = render_with_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoded["input_ids"])
    labels = [IGNORE] * len(input_ids)
    span = 0
    for t, (start, _end) in enumerate(encoded["offset_mapping"]):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span < len(spans) and spans[span][0] <= start:
            labels[t] = input_ids[t]
    learned = [t for t, label in enumerate(labels) if label != IGNORE]
    keep = min(max_seq_len, learned[-1] + 1) if learned else min(max_seq_len, len(input_ids))
    return input_ids[:keep], labels[:keep]


def tokenize_dataset(
    tokenizer: PreTrainedTokenizerBase, records: Iterable[Record], max_seq_len: int
) -> tuple[list[Example], int]:
    """Tokenize every record; return the examples that still have a learned token, and how many were dropped."""
    examples, dropped = [], 0
    for record in records:
        input_ids, labels = tokenize_example(tokenizer, record["messages"], max_seq_len)
        if any(label != IGNORE for label in labels[1:]):
            examples.append(Example(input_ids, labels, bool(record.get("anchor"))))
        else:
            dropped += 1
    return examples, dropped


# --- packing -------------------------------------------------------------------------------------


def pack(examples: Sequence[Example], max_seq_len: int) -> list[PackedRow]:
    """Lay examples end to end in rows of at most `max_seq_len` tokens (first-fit decreasing).

    Packing instead of padding is where most of the speed comes from: every
    computed token is a real one. Each example's first label is masked, so no
    token is ever trained to follow the previous example's last one.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        if n > max_seq_len:
            raise ValueError(f"example of {n} tokens does not fit rows of {max_seq_len}")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_seq_len - n)
    return [_packed_row([examples[i] for i in sorted(row)]) for row in rows]


def _packed_row(examples: Sequence[Example]) -> PackedRow:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    seq_ids: list[int] = []
    anchor: list[bool] = []
    for k, ex in enumerate(examples):
        input_ids += ex.input_ids
        labels += [IGNORE, *ex.labels[1:]]
        position_ids += range(len(ex.input_ids))
        seq_ids += [k] * len(ex.input_ids)
        anchor += [ex.anchor] * len(ex.input_ids)
    return PackedRow(input_ids, labels, position_ids, seq_ids, anchor)


def block_causal_mask(seq_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """4D attention mask (batch, 1, L, L) for packed rows: causal, and blind across examples.

    `seq_ids` is (batch, L) with -1 for padding. The result is boolean (True =
    may attend), which sdpa takes, or additive (0 / dtype's min) when `dtype` is
    a float type, which eager attention needs. Padding attends to itself only, so
    no softmax row is empty.
    """
    import torch

    length = seq_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seq_ids.device).tril()
    same = seq_ids[:, :, None] == seq_ids[:, None, :]
    pad_self = (seq_ids[:, :, None] < 0) & torch.eye(length, dtype=torch.bool, device=seq_ids.device)
    allowed = ((same & (seq_ids[:, :, None] >= 0) & causal) | pad_self)[:, None]
    if dtype is None or dtype == torch.bool:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=seq_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
