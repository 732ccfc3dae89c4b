"""A training run's knobs (`TrainConfig`), without torch: the nightly job in the bot's process builds
one from the settings, and the training subprocess runs it (trainer/loop.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer import check_known_keys

LORA_TARGETS = ("all-linear", "mlp", "attention")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; saved as is next to the adapter."""

    epochs: float = 3.0  # passes over the data; a fraction stops part-way through the last one
    learning_rate: float = 2e-4  # peak AdamW learning rate, reached after warmup
    lora_r: int = 16  # LoRA rank (ignored with init_adapter: the adapter keeps its own)
    lora_alpha: int = 32  # LoRA scale is alpha / r
    lora_dropout: float = 0.0  # dropout on the LoRA input; 0 lets peft skip the op entirely
    lora_targets: str = "all-linear"  # which linear layers get LoRA: "all-linear", "mlp" or "attention"
    max_seq_len: int = 1024  # longest example in tokens; longer dialogues are cut at the end
    batch_tokens: int = 4096  # tokens per optimizer step: one packed row of up to this many
    seed: int = 0  # seeds torch, random and numpy: same data and config give the same adapter
    min_steps: int = 0  # at least this many steps: a small night's data gets more passes (facts need repetition)
    max_passes: float | None = None  # ...but min_steps adds no more than this many passes over the rows
    max_steps: int | None = None  # hard cap on optimizer steps (smoke runs, tests)
    warmup_ratio: float = 0.05  # share of steps spent ramping the learning rate up (at least 1 step)
    min_lr_ratio: float = 0.1  # cosine decay ends at this share of the peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay on the LoRA weights
    max_grad_norm: float = 1.0  # gradient clipping; a few odd dialogues cannot blow the adapter up
    autocast: str = "auto"  # "auto", "bf16" or "off"; auto = bf16 on CUDA and on CPUs with bf16 units
    anchor_kl: float = 3.0  # weight of the pull toward the starting model on anchor tokens; 0 = plain SFT on their text

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a job's `config` object; unknown keys are an error, so a typo cannot pass silently."""
        check_known_keys(cls, values, "config")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError on values the loop cannot run with."""
        if self.epochs <= 0 or self.learning_rate <= 0 or self.lora_r < 1 or self.lora_alpha < 1:
            raise ValueError("epochs, learning_rate, lora_r and lora_alpha must be positive")
        if not 0 <= self.lora_dropout < 1 or self.max_seq_len < 8 or self.batch_tokens < 8:
            raise ValueError("lora_dropout must be in [0, 1); max_seq_len and batch_tokens at least 8")
        if self.min_steps < 0:
            raise ValueError("min_steps must be 0 or more")
        if self.max_passes is not None and self.max_passes <= 0:
            raise ValueError("max_passes must be positive")
        if self.anchor_kl < 0:
            raise ValueError("anchor_kl must be 0 or more")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"lora_targets must be one of {', '.join(LORA_TARGETS)}")
        if self.autocast not in ("auto", "bf16", "off"):
            raise ValueError('autocast must be "auto", "bf16" or "off"')

    @property
    def row_tokens(self) -> int:
        """Capacity of a packed row: the token budget, or one whole example if that is longer."""
        return max(self.batch_tokens, self.max_seq_len)
