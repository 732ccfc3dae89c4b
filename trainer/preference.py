"""The optional preference step: after SFT, TRL's DPO (or KTO) trainer moves the same LoRA adapter
toward the panel answers members preferred and away from the ones they ranked lower.

SFT only learns from the winning answer; the ranking itself (ballots, then net 👍/👎, see
`dataset.preference_examples`) says more: which of two plausible answers is better. The step uses
TRL's trainers rather than a hand-written DPO loss: TRL keeps the reference model, the chat-template
tokenization of prompt/completion pairs, the loss variants and the logged rewards correct and
maintained, and the step is small next to SFT, so the nanoGPT-style speed work of `trainer.loop`
is not needed here.

Two halves. The parent (the nightly job) calls `plan`: which pairs, and whether there are enough.
The trainer subprocess calls `train` after SFT, on the adapter still in memory, before the adapter
dir is written, so the atomic write and the gate see only the final adapter. TRL and datasets are
imported inside `train` only: a run with the step off or skipped never loads them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import check_known_keys

METHODS = ("dpo", "kto")
Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class PreferenceConfig:
    """The job file's `preference` object; saved with the adapter in training_config.json."""

    method: str  # "dpo": chosen vs rejected pairs; "kto": each answer alone, marked good or bad
    dataset: str  # JSONL of TRL conversational preference rows (`dataset.to_dpo`)
    beta: float = 0.1  # how far the adapter may drift from the SFT adapter it starts from (higher: less)
    epochs: float = 1.0  # passes over the pairs
    learning_rate: float = 5e-5  # constant AdamW rate; small, since the adapter is already trained
    batch_size: int = 2  # pairs (DPO) or answers (KTO, which needs 2+ to estimate its KL term) per step
    max_length: int = 1024  # prompt + answer tokens; longer ones are cut at the end

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PreferenceConfig:
        """Build from a job's `preference` object; unknown keys and bad values are errors."""
        check_known_keys(cls, values, "preference")
        config = cls(**values)
        if config.method not in METHODS:
            raise ValueError(f"preference method must be one of {', '.join(METHODS)}, not {config.method!r}")
        if config.beta <= 0 or config.epochs <= 0 or config.learning_rate <= 0:
            raise ValueError("preference beta, epochs and learning_rate must be positive")
        if config.batch_size < (2 if config.method == "kto" else 1) or config.max_length < 8:
            raise ValueError("preference batch_size must be at least 1 (2 for kto); max_length at least 8")
        return config


# --- the parent: which pairs, and whether the step runs ------------------------------------------


def lesson_pairs(db: Any, lesson_ids: Iterable[int], *, student_name: str,
                 no_train_teachers: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The lessons' chosen/rejected pairs as `dataset.to_dpo` rows, in lesson order."""
    from trainer import dataset  # here, so the trainer subprocess does not load the lesson code

    blocked = list(no_train_teachers)
    return [dataset.to_dpo(pair) for lesson_id in lesson_ids
            for pair in dataset.preference_examples(db, lesson_id, student_name=student_name,
                                                    no_train_teachers=blocked)]


@dataclass(frozen=True)
class Plan:
    """What a run does about preference pairs: the job's `preference` object and the rows to write, or why not."""

    options: dict[str, Any] | None  # the job file's `preference` object; None: no step
    rows: list[dict[str, Any]]  # what to write to `options["dataset"]`; empty without a step
    reason: str  # why a step that is on does not run; "" when it runs or is off

    @property
    def skipped(self) -> dict[str, Any] | None:
        """The metrics entry of a step that was on but did not run, else None."""
        return {"status": "skipped", "reason": self.reason} if self.reason else None


def plan(training: Any, rows: list[dict[str, Any]], path: Path) -> Plan:
    """Decide the step from the training settings and the run's pairs; `path` is where they will be written."""
    if training.preference == "off":
        return Plan(None, [], "")
    if len(rows) < training.preference_min_pairs:
        return Plan(None, [], f"{len(rows)} new pair(s), fewer than preference_min_pairs = {training.preference_min_pairs}")
    options = {"method": training.preference, "dataset": str(path), "beta": training.preference_beta,
               "epochs": training.preference_epochs, "learning_rate": training.preference_learning_rate,
               "max_length": training.max_seq_len}
    return Plan(options, rows, "")


# --- the trainer subprocess: continue the adapter with TRL ---------------------------------------


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """The JSONL rows of prompt/chosen/rejected message lists; ValueError names a bad line."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not all(isinstance(row.get(k), list) and row[k]
                                                for k in ("prompt", "chosen", "rejected")):
            raise ValueError(f"{path}:{n}: a preference row needs prompt, chosen and rejected message lists")
        rows.append({k: row[k] for k in ("prompt", "chosen", "rejected")})
    if not rows:
        raise ValueError(f"{path} holds no preference pairs")
    return rows


def kto_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO's unpaired form: each pair gives its chosen answer as desirable and its rejected one as not."""
    return [row for p in pairs for row in ({"prompt": p["prompt"], "completion": p["chosen"], "label": True},
                                           {"prompt": p["prompt"], "completion": p["rejected"], "label": False})]


def train(model: Any, tokenizer_dir: str, config: PreferenceConfig, emit: Emit, *, seed: int = 0) -> dict[str, Any]:
    """Continue training the "default" LoRA adapter of peft `model` on the pairs; return the step's metrics.

    TRL copies the adapter into a frozen "ref" adapter as the reference (the SFT result), so the
    step moves the adapter relative to what SFT just learned; "ref" is deleted afterwards and only
    the trained adapter is saved.
    """
    import datasets
    import trl
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()  # stderr's tail is the reason shown when a run dies without one
    pairs = read_pairs(config.dataset)
    rows = kto_rows(pairs) if config.method == "kto" else pairs
    trainer_cls = trl.KTOTrainer if config.method == "kto" else trl.DPOTrainer
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    report = _progress_reporter(emit)
    emit({"event": "stage", "stage": "preference",
          "message": f"{config.method.upper()} on {len(pairs)} pairs ({len(rows)} rows)"})
    with tempfile.TemporaryDirectory(prefix="preference-") as scratch:  # TRL wants an output_dir; nothing is saved
        trainer = trainer_cls(
            model=model, ref_model=None, args=_trainer_args(config, model, seed, scratch),
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(tokenizer_dir), callbacks=[report],
        )
        # TRL drops the rows whose answer max_length cuts off entirely
        kept = len(trainer.train_dataset) if isinstance(trainer.train_dataset, datasets.Dataset) else len(rows)
        if kept:
            trainer.train()
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    model.eval()
    if not kept:  # the SFT adapter is still good: keep it rather than fail the night
        reason = f"all {len(rows)} rows reach max_length = {config.max_length} tokens before the answer starts"
        emit({"event": "stage", "stage": "preference", "message": f"preference step skipped: {reason}"})
        return {"status": "skipped", "reason": reason}
    logged = report.logged
    if not logged or not all(math.isfinite(x["loss"]) for x in logged):
        raise FloatingPointError(f"the preference step logged no finite loss: {logged[-1:] or 'no steps'}")
    return {
        "status": "trained",
        "method": config.method,
        "pairs": len(pairs),
        "rows_dropped": len(rows) - kept,  # too long for max_length
        "steps": len(logged),
        "first_loss": logged[0]["loss"],
        "loss": logged[-1]["loss"],
        **{k: v for k, v in logged[-1].items() if k.startswith("rewards/") or k == "kl"},
        "adapter_change": _relative_change(before, model),
        "seconds": round(time.perf_counter() - report.started, 2),
        "trl": trl.__version__,
    }


def _trainer_args(config: PreferenceConfig, model: Any, seed: int, output_dir: str) -> Any:
    """TRL's config for a small step on a machine that may be a CPU: no checkpoints, workers or reports."""
    import torch
    import trl

    config_cls = trl.KTOConfig if config.method == "kto" else trl.DPOConfig
    weights = next(model.parameters())
    args: dict[str, Any] = {
        "output_dir": output_dir, "beta": config.beta, "num_train_epochs": config.epochs,
        "learning_rate": config.learning_rate, "lr_scheduler_type": "constant",
        "per_device_train_batch_size": config.batch_size, "max_length": config.max_length,
        "logging_steps": 1, "save_strategy": "no", "report_to": [], "disable_tqdm": True,
        "dataloader_num_workers": 0, "dataloader_pin_memory": False, "seed": seed,
        "use_cpu": weights.device.type == "cpu", "bf16": weights.dtype == torch.bfloat16,  # else fp32
    }
    # TRL turns checkpointing on by default; transformers 5.24 renamed it, older versions know the old name only
    renamed = "activation_checkpointing" in {f.name for f in dataclasses.fields(config_cls)}
    args["activation_checkpointing" if renamed else "gradient_checkpointing"] = False
    return config_cls(**args)


def _progress_reporter(emit: Emit) -> Any:
    """A TRL callback that turns each logged step into the trainer's progress event and keeps the logs."""
    from transformers import TrainerCallback

    class Report(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.logged: list[dict[str, float]] = []
            self.started = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return  # the closing summary (train_runtime, ...) is not a step
            self.logged.append(logs)
            elapsed = time.perf_counter() - self.started
            emit({"event": "progress", "stage": "preference", "step": state.global_step,
                  "total_steps": state.max_steps, "loss": round(float(logs["loss"]), 5),
                  "tokens_per_s": round(float(logs.get("num_tokens", 0)) / elapsed, 1),
                  "eta_s": round(elapsed / max(1, state.global_step) * (state.max_steps - state.global_step), 1),
                  "epoch": round(float(state.epoch or 0), 3)})

    return Report()


def _relative_change(before: dict[str, Any], model: Any) -> float:
    """How far the step moved the adapter: ||after - before|| / ||before|| over its trainable weights."""
    after = dict(model.named_parameters())
    delta = sum(float((after[n].detach() - b).pow(2).sum()) for n, b in before.items())
    norm = sum(float(b.pow(2).sum()) for b in before.values())
    return round(math.sqrt(delta / norm), 6) if norm else 0.0
