"""The LoRA fine-tuning loop: packed rows in, a trained adapter (still in memory) and metrics out.

Read it top to bottom: config, model preparation, the loop, then the helpers
that make it fast. Speed on a 2-core CPU comes from four things, each measured:
no padding (rows are packed), attention computed per example instead of over
the whole packed row, logits only where a label is learned, and (in the
trainer process) an allocator that keeps memory instead of re-faulting it.
bf16 autocast is used where the hardware has bf16 units; on an AVX2-only CPU it
was 30x slower than float32, so there it is off.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel

from backends.cpus import usable_cpus
from trainer.config import TrainConfig
from trainer.data import IGNORE, PackedRow, block_causal_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """What the loop reports after each optimizer step."""

    step: int
    total_steps: int
    loss: float
    tokens_per_s: float
    eta_s: float
    epoch: float


@dataclass(frozen=True)
class TrainMetrics:
    """The outcome of a run, written to metrics.json."""

    steps: int
    tokens: int  # tokens run through the model (no padding exists to inflate it)
    label_tokens: int  # tokens the loss was taken on
    first_loss: float
    final_loss: float  # loss of the last step
    final_epoch_loss: float  # mean loss of the last pass over the rows: steadier than one step
    seconds: float
    tokens_per_s: float
    device: str
    autocast: str


# --- model ---------------------------------------------------------------------------------------


def use_all_cores() -> int:
    """Give torch every core this process may run on (its default can miss cgroup/affinity limits)."""
    cores = usable_cpus()
    torch.set_num_threads(cores)
    return cores


def tune_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel; True if applied.

    By default glibc gives each large buffer (over its mmap threshold, at most
    32 MB) its own mmap and unmaps it on free, so every step faults its
    activations back in, zero-filled: 1-15 s of system time per 2048-token step
    on 2 CPU cores. Tuned, the steady state has no page faults and the step is
    ~12% faster (129 -> 148 tok/s, SmolLM2-135M). Meant for a process that only trains: its
    memory stays at the peak until it exits.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    return bool(
        mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, 2**31 - 1) and mallopt(m_top_pad, 256 << 20)
    )


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if requested and requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base_model(model_dir: str, device: torch.device) -> PreTrainedModel:
    """Load the frozen base in the dtype that trains fastest on `device`: bf16 on bf16 GPUs, else float32."""
    bf16_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if bf16_gpu else torch.float32, attn_implementation="sdpa"
    )
    return model.to(device)


def seed_everything(seed: int) -> None:
    """Seed every generator the run touches, so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def lora_target_modules(model: torch.nn.Module, targets: str) -> str | list[str]:
    """peft's `target_modules` for `targets`: every linear layer but the output head ("all-linear"),
    or only those inside the blocks' MLPs or attention, found by module path (`…mlp.up_proj`,
    `…self_attn.q_proj`), so any architecture that names its blocks so works."""
    if targets == "all-linear":
        return "all-linear"
    part = "mlp" if targets == "mlp" else "attn"
    names = sorted({name for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and part in name.rsplit(".", 1)[0].rsplit(".", 1)[-1]})
    if not names:
        raise ValueError(f"lora_targets = {targets!r}: the model has no linear layers inside '{part}' blocks")
    return names


def prepare_model(base: PreTrainedModel, config: TrainConfig, init_adapter: str | None = None) -> PeftModel:
    """Wrap `base` with a fresh LoRA adapter, or with `init_adapter` loaded trainable to continue from it.

    By default LoRA goes on every linear layer of attention and MLP ("all-linear": q, k, v,
    o, gate, up, down for Llama) but not on the output head; `lora_targets` narrows it.
    """
    seed_everything(config.seed)  # the LoRA A matrices start random
    if init_adapter:
        model = PeftModel.from_pretrained(base, init_adapter, is_trainable=True)
        r = model.peft_config["default"].r
        if r != config.lora_r:
            log.warning(
                "init_adapter %s has rank %d; config lora_r=%d is ignored", init_adapter, r, config.lora_r
            )
        return model
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_modules(base, config.lora_targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora)


# --- the loop ------------------------------------------------------------------------------------


def train(
    model: PeftModel,
    rows: list[PackedRow],
    config: TrainConfig,
    on_progress: Callable[[Progress], None] | None = None,
) -> TrainMetrics:
    """Train the adapter of `model` on packed `rows`, one row per optimizer step; return the metrics.

    The loss is the mean over the learned tokens of the row of: cross-entropy for a lesson's
    tokens, and for an anchor's tokens (`anchor_kl` > 0) `anchor_kl` times the KL divergence from
    what the model predicted there before the first step (`reference_predictions`).
    """
    if not rows:
        raise ValueError("nothing to train on: no packed rows")
    device = next(model.parameters()).device
    amp = autocast_dtype(device, config.autocast)
    plan = step_plan(len(rows), config)
    batches = [_Batch.from_row(row, device) for row in rows]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, round(config.warmup_ratio * len(plan))) if config.warmup_ratio > 0 else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, len(plan), warmup, config.min_lr_ratio)
    )

    losses: list[float] = []
    tokens = label_tokens = 0
    started = time.perf_counter()
    with packed_attention(model) as per_example:
        references = reference_predictions(model, batches, amp, per_example) if config.anchor_kl > 0 else {}
        model.train()
        for step, (r, epoch) in enumerate(plan, 1):
            batch = batches[r]
            loss = _row_loss(model, batch, amp, per_example, references.get(r), config.anchor_kl)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)

            losses.append(loss.item())  # also waits for the GPU, so the timing below is honest
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(
                    f"loss became {losses[-1]} at step {step}; try a lower learning_rate"
                )
            tokens += batch.tokens
            label_tokens += batch.label_tokens
            elapsed = time.perf_counter() - started
            if on_progress is not None:
                eta = elapsed / step * (len(plan) - step)
                on_progress(Progress(step, len(plan), losses[-1], tokens / elapsed, eta, epoch))
    model.eval()

    seconds = time.perf_counter() - started
    last_pass = losses[-min(len(rows), len(losses)) :]
    return TrainMetrics(
        steps=len(plan),
        tokens=tokens,
        label_tokens=label_tokens,
        first_loss=losses[0],
        final_loss=losses[-1],
        final_epoch_loss=sum(last_pass) / len(last_pass),
        seconds=seconds,
        tokens_per_s=tokens / seconds,
        device=str(device),
        autocast=str(amp).removeprefix("torch.") if amp else "off",
    )


def step_plan(n_rows: int, config: TrainConfig) -> list[tuple[int, float]]:
    """(row index, epoch progress) for every step: each epoch visits every row once, in a seeded shuffle.

    As many steps as `epochs` passes, raised to `min_steps` for a small night, but by no more than
    `max_passes` passes: one pack's three lessons taken 22 times over recited their text and
    answered fewer questions asked in other words than at 12 passes (bench/README.md, session 17)."""
    repeat = config.min_steps
    if config.max_passes is not None:
        repeat = min(repeat, math.ceil(config.max_passes * n_rows))
    total = max(1, math.ceil(config.epochs * n_rows), repeat)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    rng = random.Random(config.seed)
    plan: list[tuple[int, float]] = []
    epoch = 0
    while len(plan) < total:
        order = list(range(n_rows))
        rng.shuffle(order)
        plan += [(r, epoch + (k + 1) / n_rows) for k, r in enumerate(order)]
        epoch += 1
    return plan[:total]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier before optimizer step `step` (0-based): linear warmup, then cosine decay."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup - 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast_dtype(device: torch.device, setting: str = "auto") -> torch.dtype | None:
    """bf16 when asked, or on "auto" where bf16 is native; None means plain float32."""
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bf16 (AMX or AVX512-BF16); without it autocast only adds conversions."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# --- one row -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    """A packed row as the tensors one step needs, built once before the loop."""

    input_ids: torch.Tensor  # (1, L)
    position_ids: torch.Tensor  # (1, L)
    seq_ids: torch.Tensor  # (1, L), for the 4D-mask fallback only
    predict: torch.Tensor  # (1, L) bool: positions whose next token is learned
    targets: torch.Tensor  # (n,) the learned tokens, in the order the True positions appear
    lengths: list[int]  # token count of each example of the row, in order
    anchor: torch.Tensor  # (n,) bool: which learned tokens belong to anchor examples

    @classmethod
    def from_row(cls, row: PackedRow, device: torch.device) -> _Batch:
        labels = torch.tensor(row.labels)
        # Position i predicts token i + 1, so the mask is the labels shifted left by one.
        predict = torch.cat([labels[1:] != IGNORE, torch.tensor([False])])
        anchor = torch.tensor(row.anchor, dtype=torch.bool)
        return cls(
            input_ids=torch.tensor([row.input_ids], device=device),
            position_ids=torch.tensor([row.position_ids], device=device),
            seq_ids=torch.tensor([row.seq_ids], device=device),
            predict=predict[None].to(device),
            targets=labels[1:][labels[1:] != IGNORE].to(device),
            lengths=[e - s for s, e in pairwise(row.bounds)],
            anchor=anchor[1:][labels[1:] != IGNORE].to(device),
        )

    @property
    def tokens(self) -> int:
        return self.input_ids.shape[1]

    @property
    def label_tokens(self) -> int:
        return self.targets.shape[0]


def _logits(model: PeftModel, batch: _Batch, amp: torch.dtype | None, per_example: bool) -> torch.Tensor:
    """(n, vocab) logits at the row's learned positions, in the order of `batch.targets`."""
    if per_example:
        attention: dict[str, Any] = {"segment_lengths": batch.lengths}
    else:
        attention = {"attention_mask": block_causal_mask(batch.seq_ids, _mask_dtype(model))}
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None):
        # logits_to_keep: the vocabulary projection (a fifth of the model's FLOPs) runs on learned positions only.
        out = model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            logits_to_keep=batch.predict,
            use_cache=False,
            **attention,
        )
    return out.logits.float().view(-1, out.logits.shape[-1])


REFERENCE_TOP_K = 64
"""How much of the starting model's distribution an anchor token keeps: its 64 likeliest tokens,
each with its own probability, and the rest as one bin. That is ~1 MB for a night's 40 anchors
where the whole distribution would be ~400 MB (49,152 floats per token for SmolLM2)."""


@dataclass(frozen=True)
class _Reference:
    """The starting model's prediction at a row's anchor tokens, coarsened to top-k + one bin."""

    top: torch.Tensor  # (a, k) token ids
    logp: torch.Tensor  # (a, k) their log-probabilities
    rest: torch.Tensor  # (a,) log-probability of every other token together


@torch.no_grad()
def reference_predictions(
    model: PeftModel, batches: list[_Batch], amp: torch.dtype | None, per_example: bool
) -> dict[int, _Reference]:
    """What the model predicts at every anchor token before training, by row index (one forward per row).

    Anchors are the student's own answers to general questions. Cross-entropy on their text
    keeps only the argmax of each prediction, and after a few dozen steps the student answered
    other general questions worse (the control set fell 12 -> 6 of 12); matching the whole
    distribution at weight 2 kept 12 of 12 and learnt more of the lesson (bench/README.md).
    The reference is the model as training starts: the base with a fresh adapter, or the
    live adapter a run continues from, which is what answered the anchors.
    """
    model.eval()
    out: dict[int, _Reference] = {}
    for r, batch in enumerate(batches):
        if not batch.anchor.any():
            continue
        logp = F.log_softmax(_logits(model, batch, amp, per_example)[batch.anchor], dim=-1)
        top = logp.topk(min(REFERENCE_TOP_K, logp.shape[-1]), dim=-1)
        out[r] = _Reference(top.indices, top.values, _rest_logp(logp, top.indices))
    return out


def _rest_logp(logp: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """log of the probability of every token outside `top`, per row, computed without cancellation."""
    return logp.scatter(-1, top, float("-inf")).logsumexp(-1)


def _row_loss(model: PeftModel, batch: _Batch, amp: torch.dtype | None, per_example: bool,
              reference: _Reference | None = None, anchor_kl: float = 0.0) -> torch.Tensor:
    logits = _logits(model, batch, amp, per_example)
    if reference is None or anchor_kl == 0:
        return F.cross_entropy(logits, batch.targets)
    lesson = ~batch.anchor
    total = F.cross_entropy(logits[lesson], batch.targets[lesson], reduction="sum") if lesson.any() else logits.sum() * 0
    logq = F.log_softmax(logits[batch.anchor], dim=-1)
    q_top, q_rest = logq.gather(-1, reference.top), _rest_logp(logq, reference.top)
    kl = (reference.logp.exp() * (reference.logp - q_top)).sum(-1) + reference.rest.exp() * (reference.rest - q_rest)
    return (total + anchor_kl * kl.sum()) / batch.targets.shape[0]


def _mask_dtype(model: PeftModel) -> torch.dtype:
    # sdpa takes a boolean mask; eager attention adds the mask to its scores, so it needs the additive form.
    if model.get_base_model().config._attn_implementation == "sdpa":
        return torch.bool
    return torch.float32


# --- attention per example -----------------------------------------------------------------------

PACKED_ATTENTION = "classroom_packed_sdpa"
"""Name under which `packed_sdpa_attention` is registered with transformers."""


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    segment_lengths: list[int] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal sdpa run separately on each packed example of a one-row batch.

    Same result as a block-diagonal causal mask over the row, but the blocks off
    the diagonal are never computed. On a 4096-token row of ten dialogues
    (SmolLM2-135M, 2 CPU cores) attention alone ran 7x faster than masked sdpa,
    and the whole training step 1.6x faster, to the same loss.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if segment_lengths is None:
        raise ValueError(f"{PACKED_ATTENTION} needs segment_lengths; switch the model back to sdpa to run it")
    kwargs.pop("is_causal", None)
    # split, not slicing: its backward joins the gradients once instead of zero-filling a full-size tensor per example.
    segments = zip(
        query.split(segment_lengths, 2),
        key.split(segment_lengths, 2),
        value.split(segment_lengths, 2),
        strict=True,
    )
    pieces = [
        sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0] for q, k, v in segments
    ]
    return torch.cat(pieces, dim=1), None  # sdpa_attention_forward returns (batch, seq, heads, dim)


@contextlib.contextmanager
def packed_attention(model: PeftModel) -> Iterator[bool]:
    """Switch the model to per-example attention for the loop; yield False where it cannot be.

    Only models that route attention through transformers' AttentionInterface
    honour it; the others get a 4D block-diagonal mask instead (slower, same result).
    The previous implementation is restored afterwards, so the model generates normally.
    """
    base = model.get_base_model()
    previous = base.config._attn_implementation
    if not getattr(base, "_supports_attention_backend", False) or previous not in ("sdpa", "eager"):
        yield False
        return
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    base.set_attn_implementation(PACKED_ATTENTION)
    try:
        yield True
    finally:
        base.set_attn_implementation(previous)
