"""Dynamic batching: many chat requests share one decode loop on a model host's worker thread.

Requests taken together are prefilled together: prompts of similar length share one left-padded
forward pass (`prefill_groups`), the first tokens they have in common computed once for all of them
(`shared_prefix`), and their cache is then left-padded into the batch's KV cache.
Every decode step runs one forward pass for all rows, writing its keys and values into spare room
at the end of the cache (`RoomyLayer`) rather than copying the whole cache to append them. A row
leaves the batch as soon as it stops (end of turn, stop string, token limit, cancelled), so a
short answer never waits for a long one and a cancelled request frees its slot for the next.

Rows on a PEFT model name their adapter per row (peft's mixed-batch `adapter_names`, with
"__base__" for the base weights), so a teacher and a student share one forward pass.
Worker thread only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessorList
from transformers.cache_utils import DynamicLayer

from backends.base import GenParams, Message
from backends.local.generation import (
    Completion,
    ReplyRepetitionPenalty,
    SeededSampler,
    TextTracker,
    _check_context,
    _generation_config,
    chat_input_ids,
)
from backends.local.lean_step import LeanStep, cache_of

BASE = "__base__"
"""peft's name for 'no adapter' in a mixed batch."""


class ShutDown(RuntimeError):
    """The host closed while the request was running."""


@dataclass(frozen=True)
class Answer:
    """A finished request: what it produced and which adapter directory produced it (None: base weights)."""

    completion: Completion
    adapter_path: str | None


@dataclass
class GenRequest:
    """One chat completion waiting for, or running in, a batch."""

    messages: Sequence[Message]
    params: GenParams
    adapter_name: str | None
    cancel: threading.Event
    on_delta: Callable[[str], None] | None = None
    future: Future[Answer] = field(default_factory=Future)
    # bound on the worker when the request is taken off the host's queue
    adapter_internal: str = BASE
    adapter_path: str | None = None


@dataclass(frozen=True)
class Prompt:
    """A request's prompt, tokenized and checked, waiting to be prefilled."""

    request: GenRequest
    ids: torch.Tensor  # [1, n]

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])


PAD_SLACK = 1.25
"""Prompts share a prefill while the padded group costs at most this much more than its prompts
alone (a 40-token /ask beside a 600-token lesson history is prefilled on its own)."""
GROUP_TOKENS = 4096
"""At most this many (padded) tokens in one prefill, which bounds its activations' memory."""


SHARED_PREFIX_MIN = 16
"""Prompts prefilled together that begin with at least this many of the same tokens (the chat
template's system prompt, a persona, a lesson's notes), with the same adapter, compute those tokens
once, for one row, and prefill only the rest of each prompt on top of a copy of them."""


def shared_prefix(prompts: Sequence[Prompt]) -> int:
    """How many leading tokens `prompts` share and compute once (0: none worth it). Each prompt keeps
    at least one token of its own, whose logits give its first reply token."""
    if len(prompts) < 2 or len({p.request.adapter_internal for p in prompts}) != 1:
        return 0
    n = _begun_by(prompts[0].ids[0], prompts)
    return n if n >= SHARED_PREFIX_MIN else 0


def _begun_by(ids: torch.Tensor, prompts: Sequence[Prompt]) -> int:
    """How many leading tokens of `ids` [n] every one of `prompts` begins with, each prompt keeping at
    least one token of its own (whose logits give its first reply token)."""
    return min(min(_common(ids, p.ids[0]) for p in prompts), min(p.length for p in prompts) - 1)


def _common(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading ids the 1-D `a` and `b` share."""
    n = min(int(a.shape[0]), int(b.shape[0]))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if differ.numel() else n


def _grows(cache: Any) -> bool:
    """Whether every layer of `cache` is a plain growing one (which batches pad, merge and keep)."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def prefill_groups(prompts: Sequence[Prompt]) -> list[list[Prompt]]:
    """`prompts` in groups to prefill together: close in length, shortest first."""
    groups: list[list[Prompt]] = []
    for p in sorted(prompts, key=lambda p: p.length):
        group = groups[-1] if groups else None
        if group is not None:
            n, longest, tokens = len(group) + 1, max(p.length, group[-1].length), sum(q.length for q in group) + p.length
            if n * longest <= PAD_SLACK * tokens and n * longest <= GROUP_TOKENS:
                group.append(p)
                continue
        groups.append([p])
    return groups


PREFIX_CACHE_BYTES = 64 * 2**20
"""Memory for prompts' keys and values kept after their prefill (`PrefixStore`): ~1,400 tokens of
the bundled 135M model (46 KB a token), some ten lesson turns' prompts."""


@dataclass(eq=False)  # found and removed by identity
class _Prefix:
    adapter: str
    ids: torch.Tensor  # [n]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # each layer's keys and values [1, kv heads, n, dim]
    nbytes: int


class PrefixStore:
    """Prompts' keys and values kept after their prefill, so that a later prompt beginning with the
    same tokens computes only the rest: the next turn of a lesson begins with the same system
    prompt and section notes as the last one (86% of a lesson's prompt tokens were a previous
    prompt's, session 20), a retried turn with its whole prompt. Least recently used first out,
    within `budget` bytes; entries are per adapter, since an adapter changes the keys and values.
    Worker thread only."""

    def __init__(self, budget: int = PREFIX_CACHE_BYTES):
        self.budget = budget
        self.nbytes = 0
        self.reused_tokens = 0  # prompt tokens taken from here instead of computed (for tests and benchmarks)
        self._entries: list[_Prefix] = []  # least recently used first

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, prompts: Sequence[Prompt]) -> tuple[int, _Prefix | None]:
        """The entry sharing the most leading tokens with every one of `prompts` (one adapter), and
        how many (each prompt keeps one of its own, whose logits give its first token); (0, None)
        below SHARED_PREFIX_MIN."""
        adapters = {p.request.adapter_internal for p in prompts}
        if len(adapters) != 1:
            return 0, None
        (adapter,) = adapters
        best, found = 0, None
        for entry in self._entries:
            if entry.adapter == adapter:
                n = _begun_by(entry.ids, prompts)
                if n > best:
                    best, found = n, entry
        if found is None or best < SHARED_PREFIX_MIN:
            return 0, None
        self._entries.remove(found)
        self._entries.append(found)
        return best, found

    def add(self, adapter: str, ids: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep a prompt's keys and values (ids [n], each layer's [1, kv heads, n, dim]), unless an
        entry holds it already; entries it extends are dropped (it holds them)."""
        n = int(ids.shape[0])
        if n < SHARED_PREFIX_MIN:
            return
        for entry in self._entries:
            if entry.adapter == adapter and entry.ids.shape[0] >= n and _common(entry.ids, ids) == n:
                return
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if nbytes > self.budget:
            return
        for entry in [e for e in self._entries if e.adapter == adapter and _common(e.ids, ids) == e.ids.shape[0]]:
            self._drop(entry)
        self._entries.append(_Prefix(adapter, ids, layers, nbytes))
        self.nbytes += nbytes
        while self.nbytes > self.budget:
            self._drop(self._entries[0])

    def forget(self, adapter: str) -> None:
        """Drop the entries of an adapter that is gone."""
        for entry in [e for e in self._entries if e.adapter == adapter]:
            self._drop(entry)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, entry: _Prefix) -> None:
        self._entries.remove(entry)
        self.nbytes -= entry.nbytes


@dataclass
class _Row:
    request: GenRequest
    prompt_len: int
    tracker: TextTracker
    processors: LogitsProcessorList
    eos: frozenset[int]
    ids: list[int]  # generated so far; the last one is the next input
    prompt: torch.Tensor  # the prompt's ids [1, n]: processors see prompt + reply, as in generate()
    position: int  # position of the next input token


KV_ROOM = 128
"""Tokens of spare room a cache layer grows by. transformers' DynamicLayer appends a step's keys
and values by concatenation, copying the whole cache every step; at 8 rows that was 12 ms of a
decode step's 29 ms outside the matrix products (bench/README.md, session 12)."""


class RoomyLayer(DynamicLayer):
    """A growing KV cache layer that appends into spare room: a step copies its own tokens only.

    `keys` and `values` stay what transformers expects ([rows, heads, tokens, dim]), as views of a
    buffer with KV_ROOM tokens to spare; a full buffer is replaced by one with room again. Anything
    that assigns `keys`/`values` directly (merging rows in, dropping rows) is simply taken as the
    new content: the next update copies it into a fresh buffer.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.is_initialized = True
        self.device = keys.device
        self.keys, self.values = keys, values
        self._room: tuple[torch.Tensor, torch.Tensor] | None = None
        self._appended: torch.Tensor | None = None  # the view of the room `update` last returned as keys

    def _in_room(self) -> bool:
        """Whether `keys` is still the view of the room this layer made (nobody assigned new content)."""
        return self._room is not None and self.keys is self._appended

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.keys is not None and self.values is not None
        cached, new = self.keys.shape[-2], key_states.shape[-2]
        if not self._in_room() or cached + new > self._room[0].shape[-2]:  # type: ignore[index]
            keys = self.keys.new_empty((*key_states.shape[:2], cached + new + KV_ROOM, key_states.shape[-1]))
            values = self.values.new_empty((*value_states.shape[:2], cached + new + KV_ROOM, value_states.shape[-1]))
            keys[:, :, :cached] = self.keys
            values[:, :, :cached] = self.values
            self._room = (keys, values)
        keys, values = self._room
        keys[:, :, cached:cached + new] = key_states
        values[:, :, cached:cached + new] = value_states
        self.keys, self.values = keys[:, :, :cached + new], values[:, :, :cached + new]
        self._appended = self.keys
        return self.keys, self.values


def _processors(params: GenParams, device: torch.device, prompt_len: int) -> LogitsProcessorList:
    out = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        out.append(ReplyRepetitionPenalty(params.repetition_penalty, prompt_len))
    if params.temperature > 0:
        out.append(SeededSampler(params.temperature, params.top_p, params.seed, device))
    return out


def _eos_ids(config: Any) -> frozenset[int]:
    eos = config.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset(eos if isinstance(eos, list) else [eos])


class DecodeBatch:
    """The rows decoding together, their shared left-padded KV cache and attention mask."""

    def __init__(self, model: Any, tokenizer: Any, *, peft: bool, lean: LeanStep | None = None,
                 prefixes: PrefixStore | None = None, helper: Executor | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.peft = peft
        self.lean = lean  # computes decode steps in place of the model's forward (see lean_step)
        self.prefixes = prefixes  # earlier prompts' keys and values, reused by prompts that begin alike
        self.helper = helper  # a thread that draws some of a step's sampled rows' tokens (`_choose_all`)
        self.helper_draws = 0  # tokens it drew (for tests and benchmarks)
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, cached length]; 0 marks left padding
        # Only plain growing caches are padded and merged; a model with another cache (sliding
        # windows, recurrent state) still streams through this loop, one request at a time.
        # Known before the first prefill, since a wave of requests is prefilled together.
        self.mergeable = getattr(model.generation_config, "cache_implementation", None) in (None, "dynamic") and _grows(
            DynamicCache(config=model.config))

    def __len__(self) -> int:
        return len(self.rows)

    def capacity(self, max_batch: int) -> int:
        """How many rows this batch may hold."""
        return max_batch if self.mergeable else 1

    def adapters_in_use(self) -> set[str]:
        """Internal adapter names the running rows were bound to."""
        return {r.request.adapter_internal for r in self.rows}

    def prepare(self, request: GenRequest) -> Prompt:
        """The request's prompt ids, checked against the context window. Raises PromptTooLong."""
        input_ids = chat_input_ids(self.tokenizer, request.messages).to(self.model.device)
        _check_context(self.model, int(input_ids.shape[1]), request.params.max_new_tokens)
        return Prompt(request, input_ids)

    def admit(self, prompts: Sequence[Prompt]) -> int:
        """Prefill `prompts` together, left-padded into one forward pass, and add them to the batch;
        returns how many leading tokens they shared (computed once: `shared_prefix`). Leading tokens
        an earlier prompt's keys and values hold (`prefixes`) are not computed at all.

        Raises on a torch error; then none of them was added.
        """
        device = self.model.device
        config = _generation_config(self.model, self.tokenizer, prompts[0].request.params)
        config.max_new_tokens = 1
        config.return_dict_in_generate = True
        config.output_logits = True  # raw: each row picks its first token with its own sampler below
        eos = _eos_ids(config)
        # Each row: the shared tokens (if any), left padding, then the rest of its prompt; positions
        # follow the mask (generate counts them over the unmasked tokens), so padding in the middle is
        # as invisible to attention as on the left.
        shared = shared_prefix(prompts) if self.mergeable else 0
        reused, kept = self.prefixes.longest(prompts) if self.prefixes is not None and self.mergeable else (0, None)
        if kept is not None and reused >= shared:
            shared = reused
        else:
            reused, kept = 0, None
        width = shared + max(p.length - shared for p in prompts)
        pad = config.pad_token_id if config.pad_token_id is not None else 0  # masked out: any id would do
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            input_ids[i, :shared] = p.ids[0, :shared]
            mask[i, :shared] = 1
            input_ids[i, width - (p.length - shared) :] = p.ids[0, shared:]
            mask[i, width - (p.length - shared) :] = 1
        extra = {"adapter_names": [p.request.adapter_internal for p in prompts]} if self.peft else {}
        with torch.inference_mode():
            if kept is not None:
                prefix = DynamicCache(config=self.model.config)
                for i, (keys, values) in enumerate(kept.layers):  # copied out: the rows' cache grows
                    prefix.update(keys[:, :, :shared].expand(len(prompts), -1, -1, -1),
                                  values[:, :, :shared].expand(len(prompts), -1, -1, -1), i)
                extra["cache"] = prefix
            elif shared:
                one = {"adapter_names": extra["adapter_names"][:1]} if self.peft else {}
                # logits of the last token only: all 24 of a system prompt's cost a tenth of its forward
                prefix = cache_of(self.model(input_ids=input_ids[:1, :shared], use_cache=True, logits_to_keep=1, **one))
                for layer in prefix.layers:  # the same keys and values for every row
                    layer.keys = layer.keys.expand(len(prompts), -1, -1, -1).contiguous()
                    layer.values = layer.values.expand(len(prompts), -1, -1, -1).contiguous()
                extra["cache"] = prefix
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config, **extra)
            logits = out.logits[0].float()
            rows = []
            for i, p in enumerate(prompts):
                params = p.request.params
                processors = _processors(params, device, p.length)
                scores = logits[i : i + 1]
                for sampler in (x for x in processors if isinstance(x, SeededSampler)):
                    scores = sampler(p.ids, scores)  # the reply is empty: the penalty has nothing to see yet
                tracker = TextTracker(self.tokenizer, params.stop)
                rows.append(_Row(p.request, p.length, tracker, processors, eos, ids=best_tokens(scores),
                                 prompt=p.ids, position=p.length))
        if self.prefixes is not None and self.mergeable and _grows(out.past_key_values):
            self._keep_prompts(prompts, out.past_key_values, mask)
            self.prefixes.reused_tokens += reused * len(prompts)
        self._merge(out.past_key_values, mask)
        self.rows.extend(rows)
        return 0 if kept is not None else shared

    def _keep_prompts(self, prompts: Sequence[Prompt], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Each prompt's keys and values into `prefixes`: for a prompt prefilled alone, the prefill's
        own tensors (no step writes into them: `RoomyLayer` copies them out first)."""
        assert self.prefixes is not None
        for i, p in enumerate(prompts):
            real = mask[i].nonzero().squeeze(1)
            whole = len(prompts) == 1 and int(real.shape[0]) == mask.shape[1]  # else a copy of the row alone
            layers = [(layer.keys[i : i + 1] if whole else layer.keys[i : i + 1].index_select(2, real),
                       layer.values[i : i + 1] if whole else layer.values[i : i + 1].index_select(2, real))
                      for layer in cache.layers]
            self.prefixes.add(p.request.adapter_internal, p.ids[0], layers)

    def step(self) -> None:
        """One forward pass for every row; each row's next token is chosen by its own processors."""
        assert self.cache is not None and self.mask is not None
        device = self.model.device
        tokens = torch.tensor([[r.ids[-1]] for r in self.rows], dtype=torch.long, device=device)
        positions = torch.tensor([[r.position] for r in self.rows], dtype=torch.long, device=device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        names = [r.request.adapter_internal for r in self.rows] if self.peft else None
        with torch.inference_mode():
            if self.lean is not None and self.mergeable:
                logits = self.lean(self.model, tokens, positions, self.mask, self.cache, names)
            else:
                extra = {"adapter_names": names} if names is not None else {}
                logits = self.model(
                    input_ids=tokens, attention_mask=self.mask, position_ids=positions, cache=self.cache, use_cache=True,
                    **extra,
                ).logits[:, -1, :]
            if logits.device.type == "cpu":  # each row's choice in numpy, from its own scores
                chosen = self._choose_all(logits, logits.float().numpy())
            else:  # on an accelerator: one argmax for the batch, then the rows with processors
                chosen = best_tokens(logits)
                for i, row in enumerate(self.rows):
                    if row.processors:
                        chosen[i] = self._choose(i, row, logits, None)
        for row, token in zip(self.rows, chosen, strict=True):
            row.position += 1
            row.ids.append(token)

    def _choose_all(self, logits: torch.Tensor, scores: np.ndarray) -> list[int]:
        """Every row's next token, on the CPU. A sampled row's draw takes ~1.9 ms at the bundled
        model's 49,152 scores (a seeded exponential variate for each, the nucleus's sort), where a
        greedy row's choice takes 10 µs; with a `helper`, every other sampled row is drawn there
        meanwhile (torch and numpy let go of the GIL while they compute). Each row has its own
        generator, so where its token is drawn changes nothing."""
        rows = self.rows
        aside = [i for i, row in enumerate(rows) if _samples(row)][1::2] if self.helper is not None else []
        drawn = None
        if aside and self.helper is not None:
            drawn = self.helper.submit(lambda: [self._choose(i, rows[i], logits, scores) for i in aside])
        skip = set(aside)
        chosen = [0 if i in skip else self._choose(i, row, logits, scores) for i, row in enumerate(rows)]
        if drawn is not None:
            for i, token in zip(aside, drawn.result(), strict=True):
                chosen[i] = token
            self.helper_draws += len(aside)
        return chosen

    @staticmethod
    def _choose(i: int, row: _Row, logits: torch.Tensor, scores: np.ndarray | None) -> int:
        """Row i's next token from its logits (`scores`: the same, as fp32 numpy, on the CPU): the
        plain argmax, the numpy repetition penalty, or the row's processors as generate() runs them."""
        if scores is not None and not row.processors:
            return int(scores[i].argmax())
        penalty = _penalty_only(row.processors)
        if penalty is not None and scores is not None:
            return penalised_best(scores[i], row.ids, penalty)
        generated = torch.tensor([row.ids], dtype=torch.long, device=logits.device)
        seen = torch.cat([row.prompt, generated], dim=1)
        return best_tokens(row.processors(seen, logits[i : i + 1].float()))[0]

    def finished(self, closing: bool) -> list[tuple[_Row, BaseException | None]]:
        """Take out the rows that are done, delivering their text deltas first; returns them with any error."""
        done: list[tuple[_Row, BaseException | None]] = []
        keep: list[int] = []
        for i, row in enumerate(self.rows):
            ended = row.ids[-1] in row.eos
            text_ids = row.ids[:-1] if ended else row.ids
            delta = row.tracker.update(text_ids)
            if delta and row.request.on_delta is not None:
                row.request.on_delta(delta)
            if closing:
                done.append((row, ShutDown("the model shut down before the answer was finished")))
            elif ended or row.tracker.stopped or row.request.cancel.is_set() or (
                len(row.ids) >= row.request.params.max_new_tokens
            ):
                done.append((row, None))
            else:
                keep.append(i)
        if done:
            self._keep(keep)
        return done

    def fail_all(self) -> list[_Row]:
        """Empty the batch (after a torch error) and return its rows."""
        rows, self.rows = self.rows, []
        self.cache = self.mask = None
        return rows

    @staticmethod
    def answer(row: _Row) -> Answer:
        """The finished row's completion, after handing out the rest of its text."""
        rest = row.tracker.flush()
        if rest and row.request.on_delta is not None:
            row.request.on_delta(rest)
        completion = Completion(row.tracker.final(), row.prompt_len, len(row.ids))
        return Answer(completion, row.request.adapter_path)

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None or self.mask is None:
            self.cache, self.mask = cache, mask
            # generate() made another cache after all: serve these rows, merge no one into them
            self.mergeable = self.mergeable and _grows(cache)
            if self.mergeable:
                cache.layers[:] = [RoomyLayer(layer.keys, layer.values) for layer in cache.layers]
            return
        total = max(mask.shape[1], self.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, total), _left_pad(theirs.keys, total)], dim=0)
            mine.values = torch.cat([_left_pad(mine.values, total), _left_pad(theirs.values, total)], dim=0)
        self.mask = torch.cat([_left_pad(self.mask, total), _left_pad(mask, total)], dim=0)

    def _keep(self, keep: list[int]) -> None:
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        assert self.cache is not None and self.mask is not None
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        # Columns that are padding in every remaining row can go: they cost attention for nothing.
        start = int((mask.sum(dim=0) > 0).nonzero()[0])
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.rows = [self.rows[i] for i in keep]


def _samples(row: _Row) -> bool:
    """Whether the row draws its tokens (a SeededSampler among its processors)."""
    return any(type(p) is SeededSampler for p in row.processors)


def _penalty_only(processors: LogitsProcessorList) -> float | None:
    """The penalty when a row's only processor is the reply repetition penalty (greedy with a penalty), else None."""
    if len(processors) == 1 and type(processors[0]) is ReplyRepetitionPenalty:
        return processors[0].penalty
    return None


def penalised_best(scores: np.ndarray, reply: list[int], penalty: float) -> int:
    """best_tokens of ReplyRepetitionPenalty(penalty) applied to one row's fp32 scores [vocab], given
    the reply's ids so far, bit for bit, in numpy: the torch path (a tensor of the ids, gather,
    where, scatter, argmax) took ~0.13 ms a row and step, a tenth of an eight-row step's time
    outside the model. The penalised scores are written into `scores` for the argmax and the
    originals put back after (a copy of the row cost as much as the argmax)."""
    if not reply:
        return int(scores.argmax())
    ids = np.asarray(reply, dtype=np.int64)
    seen = scores[ids]
    p = np.float32(penalty)
    scores[ids] = np.where(seen < 0, seen * p, seen / p)
    try:
        return int(scores.argmax())
    finally:
        scores[ids] = seen


def best_tokens(scores: torch.Tensor) -> list[int]:
    """Each row's highest-scoring token id (the first of equals), for scores [rows, vocab].

    On the CPU through numpy: torch's argmax took 70 µs for one row of the bundled model's 49,152
    scores and 530 µs for eight, numpy's 3.5 and 30 (2-core Xeon, torch 2.13); a decode step
    calls it once for the batch and once for each row with its own logits processors."""
    if scores.device.type == "cpu":
        return scores.float().numpy().argmax(axis=-1).tolist()
    return scores.argmax(dim=-1).tolist()


def _left_pad(t: torch.Tensor, total: int) -> torch.Tensor:
    """Pad a cache tensor [b, h, t, d] or a mask [b, t] with zeros on the left up to length `total`."""
    dim = 2 if t.dim() == 4 else 1
    missing = total - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
