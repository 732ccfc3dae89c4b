"""One chat completion with transformers, run on a model host's worker thread.

Text is watched token by token from a StoppingCriteria rather than a streamer:
it sees every step on every transformers version, and it is where the decision to
stop (a stop string, a cancelled request) has to be made anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)

from backends.base import GenParams, Message

# A byte-level tokenizer decodes half of a multi-byte character to this.
REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class Completion:
    """What one generation produced."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class PromptTooLong(ValueError):
    """The conversation does not fit the model's context window."""


def chat_input_ids(tokenizer: object, messages: Sequence[Message]) -> torch.Tensor:
    """Token ids (shape 1×n) of `messages` in the model's chat template, ready for the assistant's turn."""
    encoded = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [dict(m) for m in messages], add_generation_prompt=True, tokenize=True
    )
    # transformers 5 returns a BatchEncoding here; 4.x returned the bare ids.
    ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return torch.tensor([ids], dtype=torch.long)


class TextTracker:
    """Turns the growing list of generated ids into clean text and safe-to-show deltas.

    The whole completion is re-decoded each step, so a character split across tokens is
    never shown half-made. Deltas hold back trailing whitespace and anything that could
    be the start of a stop string, so that the joined deltas equal `final()` exactly.
    """

    def __init__(self, tokenizer: object, stop: Sequence[str] = ()):
        self._tokenizer = tokenizer
        self._stops = tuple(s for s in stop if s)
        self._text = ""
        # Text up to a finished line never changes, so only the ids after it are re-decoded.
        self._done_ids = 0
        self._done_text = ""
        self.emitted = ""
        self.stopped = False

    def update(self, ids: list[int]) -> str:
        """Take all ids generated so far; return the text newly safe to show (may be empty)."""
        if self.stopped:
            return ""
        tail = self._tokenizer.decode(ids[self._done_ids :], skip_special_tokens=True)  # type: ignore[attr-defined]
        raw = self._done_text + tail
        if tail.endswith("\n"):
            self._done_ids, self._done_text = len(ids), raw
        text = raw.lstrip()
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
            safe = text.rstrip()
        else:
            safe = text.rstrip(REPLACEMENT_CHAR)
            safe = safe[: len(safe) - self._stop_prefix_len(safe)].rstrip()
        self._text = text
        return self._advance(safe)

    def final(self) -> str:
        """The completion: stop strings cut off, end-of-turn token and surrounding whitespace removed."""
        return self._text.rstrip(REPLACEMENT_CHAR).strip()

    def flush(self) -> str:
        """The rest of `final()` not yet handed out as a delta."""
        return self._advance(self.final())

    def _advance(self, safe: str) -> str:
        # Re-decoding can in rare cases rewrite earlier text; never hand out text that contradicts a delta.
        if len(safe) <= len(self.emitted) or not safe.startswith(self.emitted):
            return ""
        delta = safe[len(self.emitted) :]
        self.emitted = safe
        return delta

    def _stop_prefix_len(self, text: str) -> int:
        longest = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest


class ReplyRepetitionPenalty(LogitsProcessor):
    """A repetition penalty over the reply's own tokens only, not the prompt's.

    transformers' penalty counts the prompt too, so a grounded teacher is pushed *away* from
    the names and numbers in the notes it was given (seen: the bundled 135M with notes answered
    3/17 questions on a pack with the prompt penalised). Penalising only what the reply already
    said still stops loops.
    """

    def __init__(self, penalty: float, prompt_len: int):
        self.penalty = penalty
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        reply = input_ids[:, self.prompt_len :]
        if reply.shape[1] == 0:
            return scores
        seen = torch.gather(scores, 1, reply)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, reply, seen)


class SeededSampler(LogitsProcessor):
    """Temperature + nucleus sampling from a private torch.Generator.

    generate()'s own sampling draws from torch's global RNG, which every model thread
    shares; a private generator keeps a seeded request reproducible. It returns scores
    that leave only the drawn token possible, so generate() runs greedy on top of it.
    """

    def __init__(self, temperature: float, top_p: float, seed: int | None, device: torch.device):
        self.temperature = temperature
        self.top_p = top_p
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            nucleus = self.nucleus(scores)
            scores = nucleus if nucleus is not None else self.nucleus_sorted(scores)
        drawn = torch.multinomial(scores.softmax(dim=-1), num_samples=1, generator=self.generator)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter(-1, drawn, 0.0)

    def nucleus_sorted(self, scores: torch.Tensor) -> torch.Tensor:
        """`scores` with every token outside the top_p nucleus set to -inf: each token is dropped when
        the tokens ranked above it already reach top_p (the best always stays)."""
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        outside = cumulative - sorted_scores.softmax(dim=-1) >= self.top_p
        return scores.scatter(-1, order, sorted_scores.masked_fill(outside, float("-inf")))

    def nucleus(self, scores: torch.Tensor) -> torch.Tensor | None:
        """`nucleus_sorted(scores)` bit for bit, for one row on the CPU, or None where it cannot say
        (then the caller sorts). torch.sort took 2.9 ms of a sampled token's 5 ms at the bundled
        model's 49,152 scores (2-core Xeon, one torch thread), numpy's sort of the values 0.12:
        the nucleus only needs the values in order (the same softmax and cumulative sums over them),
        not which token holds each, because its tokens are all those scoring at least its last
        value, whenever the next value is lower. A tie across that boundary (which of the tied
        tokens stays follows torch's order) or NaNs fall back to sorting."""
        if scores.device.type != "cpu" or scores.dim() != 2 or scores.shape[0] != 1:
            return None
        ranked = np.sort(scores[0].numpy())[::-1]
        if np.isnan(ranked[0]):  # NaNs sort last, so first once reversed
            return None
        ordered = torch.from_numpy(np.ascontiguousarray(ranked)).unsqueeze(0)
        probs = ordered.softmax(dim=-1)
        keep = (probs.cumsum(dim=-1) - probs < self.top_p)[0]
        n = int(keep.sum())
        if n == 0 or not bool(keep[:n].all()) or (n < len(ranked) and not ranked[n - 1] > ranked[n]):
            return None
        return scores.masked_fill(scores < float(ranked[n - 1]), float("-inf"))


class StepWatcher(StoppingCriteria):
    """Called after every generated token: hands out text deltas and says when to stop."""

    def __init__(
        self,
        prompt_len: int,
        tracker: TextTracker,
        should_stop: Callable[[], bool],
        on_delta: Callable[[str], None] | None,
    ):
        self.prompt_len = prompt_len
        self.tracker = tracker
        self.should_stop = should_stop
        self.on_delta = on_delta

    def __call__(self, input_ids: torch.LongTensor, scores: object, **kwargs: object) -> torch.BoolTensor:
        delta = self.tracker.update(input_ids[0, self.prompt_len :].tolist())
        if delta and self.on_delta is not None:
            self.on_delta(delta)
        stop = self.tracker.stopped or self.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def generate_completion(
    model: PreTrainedModel,
    tokenizer: object,
    messages: Sequence[Message],
    params: GenParams,
    *,
    cancel: threading.Event,
    on_delta: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Completion:
    """Generate the assistant's reply to `messages`. Blocking: call it on the model's worker thread."""
    device = model.device
    input_ids = chat_input_ids(tokenizer, messages).to(device)
    prompt_len = int(input_ids.shape[1])
    _check_context(model, prompt_len, params.max_new_tokens)
    if cancel.is_set():  # the caller gave up while the request waited for the worker
        return Completion("", prompt_len, 0)
    tracker = TextTracker(tokenizer, params.stop)
    stopper = StepWatcher(
        prompt_len, tracker, lambda: cancel.is_set() or bool(should_stop and should_stop()), on_delta
    )
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(ReplyRepetitionPenalty(params.repetition_penalty, prompt_len))
    if params.temperature > 0:
        processors.append(SeededSampler(params.temperature, params.top_p, params.seed, device))
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=_generation_config(model, tokenizer, params),
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([stopper]),
        )
    rest = tracker.flush()
    if rest and on_delta is not None:
        on_delta(rest)
    return Completion(tracker.final(), prompt_len, int(output.shape[1]) - prompt_len)


def _generation_config(model: PreTrainedModel, tokenizer: object, params: GenParams) -> GenerationConfig:
    # A fresh config on purpose: a hub model's own sampling defaults (top_k, do_sample, ...)
    # must not mix with GenParams, and sampling is done by SeededSampler.
    base = model.generation_config
    eos = base.eos_token_id if base.eos_token_id is not None else tokenizer.eos_token_id  # type: ignore[attr-defined]
    pad = tokenizer.pad_token_id  # type: ignore[attr-defined]
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=False,  # the penalty and the sampling are our logits processors
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=base.bos_token_id,
    )


def _check_context(model: PreTrainedModel, prompt_len: int, max_new_tokens: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and prompt_len + max_new_tokens > limit:
        raise PromptTooLong(
            f"the conversation is {prompt_len} tokens and {max_new_tokens} more were asked for, "
            f"but the model holds {limit}; shorten the lesson history or max_new_tokens"
        )
