"""Training throughput: our packed LoRA loop against TRL's SFTTrainer, same data, model, LoRA and tokens.

    python bench/train_throughput.py [--model DIR] [--tokens 8192] [--repeats 1]

Both train one pass over the same synthetic lesson sections (shaped like the
ones trainer/dataset.py builds; the first that add up to --tokens), from the
same base model, with LoRA r=16 / alpha=32 on all linear layers and lr 2e-4.
TRL keeps the defaults a user gets from `SFTConfig` (batches of 8 padded
dialogues, gradient checkpointing, linear decay), with assistant-only loss when
TRL supports the model's chat template (it does not support SmolLM2's, so it
falls back to its default, loss on every token). Its one other change: it
trains in the precision ours picks for this machine, since TRL's default bf16
autocast is about 30x slower on a CPU without bf16 units. The glibc allocator
tuning our trainer applies (loop.tune_allocator) holds for the whole process,
so TRL runs with it too: the ratio measures the training loops alone.

tokens/s counts real tokens only (no padding) over the training call alone.
As the two losses may be taken over different tokens, both adapters are also
scored the same way: mean loss on the assistant tokens of held-out dialogues.
On a shared machine, --repeats alternates the two and keeps each one's fastest run.

Prints a markdown table row for bench/README.md; needs the bench extra (trl, datasets).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer import data, loop  # noqa: E402

log = logging.getLogger("bench")

TOPICS = ["fractions", "gravity", "photosynthesis", "the water cycle", "prime numbers", "volcanoes"]
TEACHER = [
    "{t} is easier once you draw it on paper first.",
    "the key idea of {t} is that small parts add up to a whole.",
    "people studied {t} for centuries before the rules were clear.",
    "a good example of {t} is something you can see at home every day.",
    "the most common mistake with {t} is to skip the first step.",
    "every rule about {t} comes with an exception worth remembering.",
    "you can check your answer about {t} by working backwards.",
    "not quite: that is close, but the order of the steps matters.",
]
STUDENT = [
    "so {t} is about small parts?",
    "I think I understand {t} now.",
    "I do not understand the second step.",
    "can you give me an example?",
    "is it always true, or only sometimes?",
    "{t} sounds hard but interesting.",
]


def _say(rng: random.Random, sentences: list[str], topic: str, low: int, high: int) -> str:
    picked = [rng.choice(sentences).format(t=topic) for _ in range(rng.randint(low, high))]
    return " ".join(s[0].upper() + s[1:] for s in picked)


def synthetic_dialogues(n: int, seed: int) -> list[list[dict[str, Any]]]:
    """`n` lesson sections shaped like trainer/dataset.py builds them, of varied length.

    System prompt, the opening "Teach me about ..." request, the teacher's
    explanation (2-12 sentences), then 0-3 rounds of a student reply (1-6
    sentences) and a teacher correction (1-8 sentences): 70 to 800 tokens.
    """
    rng = random.Random(seed)
    dialogues = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        messages = [
            {"role": "system", "content": "You are Smol. Answer briefly and accurately."},
            {"role": "user", "content": f"Teach me about {topic}."},
            {"role": "assistant", "content": _say(rng, TEACHER, topic, 2, 12)},
        ]
        for _ in range(rng.randint(0, 3)):
            messages.append({"role": "user", "content": _say(rng, STUDENT, topic, 1, 6)})
            messages.append({"role": "assistant", "content": _say(rng, TEACHER, topic, 1, 8)})
        dialogues.append(messages)
    return dialogues


def resolve_model(path: str | None) -> str:
    """--model as given, else the bundled SmolLM2 converted into the test cache."""
    if path:
        return path
    try:
        from backends.bundled import resolve_model_dir
        from settings import BUNDLED_MODEL
    except ImportError as e:
        sys.exit(f"cannot resolve the bundled model ({e}); pass --model DIR (a plain HF model dir)")
    return resolve_model_dir(BUNDLED_MODEL, REPO / ".cache" / "models")


def eval_loss(model: Any, examples: list[data.Example]) -> float:
    """Mean cross-entropy over the learned tokens of `examples`, each run alone (no packing involved)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            logits = model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0, :-1]
            labels = torch.tensor(ex.labels[1:])
            total += F.cross_entropy(logits.float(), labels, ignore_index=data.IGNORE, reduction="sum").item()
            count += int((labels != data.IGNORE).sum())
    return total / count


def _last_half(losses: list[float]) -> float:
    # Both trainers report the same statistic: mean step loss over the second half of the run.
    tail = losses[len(losses) // 2 :] or [float("nan")]
    return sum(tail) / len(tail)


def run_ours(
    model_dir: str, examples: list[data.Example], cfg: loop.TrainConfig, held_out: list[data.Example] | None
) -> dict[str, Any]:
    """Train with trainer.loop; return tokens, steps, seconds, tokens/s, final loss (and held-out loss)."""
    rows = data.pack(examples, cfg.row_tokens)
    model = loop.prepare_model(loop.load_base_model(model_dir, torch.device("cpu")), cfg)
    result: dict[str, Any] = {}
    if held_out:
        result["eval_loss_before"] = eval_loss(model, held_out)  # LoRA B starts at zero: the base model
    losses: list[float] = []

    def on_progress(p: loop.Progress) -> None:
        losses.append(p.loss)
        log.info("ours step %d/%d loss %.3f %.1f tok/s", p.step, p.total_steps, p.loss, p.tokens_per_s)

    cpu, wall = time.process_time(), time.perf_counter()
    metrics = loop.train(model, rows, cfg, on_progress=on_progress)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result |= {
        "tokens": metrics.tokens,
        "steps": metrics.steps,
        "seconds": wall,
        "tokens_per_s": metrics.tokens / wall,
        "tokens_per_cpu_s": metrics.tokens / cpu,
        "final_loss": _last_half(losses),
        "loss_on": "assistant tokens",
    }
    if held_out:
        result["eval_loss"] = eval_loss(model, held_out)
    return result


def run_trl(
    model_dir: str, dialogues: list[list[dict]], cfg: loop.TrainConfig, held_out: list[data.Example] | None
) -> dict[str, Any]:
    """Train with TRL's SFTTrainer on the same dialogues; same measurements as `run_ours`."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_list(
        [{"messages": [{k: m[k] for k in ("role", "content")} for m in d]} for d in dialogues]
    )
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    out = tempfile.mkdtemp(prefix="bench-trl-")

    def make(assistant_only: bool) -> SFTTrainer:
        args = SFTConfig(
            output_dir=out,
            num_train_epochs=1,
            learning_rate=cfg.learning_rate,
            max_length=cfg.max_seq_len,
            assistant_only_loss=assistant_only,
            bf16=loop.autocast_dtype(torch.device("cpu")) is not None,
            use_cpu=True,
            seed=cfg.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
        )
        base = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="sdpa"
        )
        return SFTTrainer(
            model=base, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
        )

    try:
        trainer, loss_on = make(assistant_only=True), "assistant tokens"
    except (ValueError, RuntimeError) as e:  # TRL has no training template for this chat template
        log.warning("TRL assistant_only_loss unavailable (%s); training on all tokens", e)
        trainer, loss_on = make(assistant_only=False), "all tokens"
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.train()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result: dict[str, Any] = {
        "tokens": tokens,
        "steps": trainer.state.global_step,
        "seconds": wall,
        "tokens_per_s": tokens / wall,
        "tokens_per_cpu_s": tokens / cpu,
        "final_loss": _last_half([h["loss"] for h in trainer.state.log_history if "loss" in h]),
        "loss_on": loss_on,
    }
    if held_out:
        result["eval_loss"] = eval_loss(trainer.model, held_out)
    return result


def main() -> None:
    """Parse arguments, run both trainers (alternating, --repeats times), print the table row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="plain HF model dir (default: the bundled SmolLM2-135M, converted)")
    parser.add_argument("--tokens", type=int, default=8192, help="training tokens for each trainer")
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=2048,
        help="our tokens per step; 2048 is near TRL's default batch of 8 dialogues here, so both take "
        "about as many optimizer steps and their losses compare",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="train each way this many times, alternating, and keep each one's fastest run "
        "(the runs are identical; the fastest is the one least disturbed by other load)",
    )
    parser.add_argument("--dialogues", type=int, default=200, help="synthetic dialogues to generate")
    parser.add_argument(
        "--held-out", type=int, default=12, help="dialogues kept back for the common eval loss"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    threads = loop.use_all_cores()
    # What `python -m trainer` does on a CPU; applied to the whole process, so TRL gains from it as well.
    tuned = loop.tune_allocator()

    from transformers import AutoTokenizer

    model_dir = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The production defaults (r=16, alpha=32, lr 2e-4, max_seq_len 1024), one pass over the data.
    cfg = loop.TrainConfig(epochs=1, batch_tokens=args.batch_tokens, seed=args.seed)
    dialogues = synthetic_dialogues(args.dialogues, args.seed)
    pool, held = dialogues[: -args.held_out], dialogues[-args.held_out :]
    held_out = [data.Example(*data.tokenize_example(tokenizer, d, cfg.max_seq_len)) for d in held]
    train_dialogues, examples, tokens = [], [], 0
    for d in pool:
        if tokens >= args.tokens:
            break
        ex = data.Example(*data.tokenize_example(tokenizer, d, cfg.max_seq_len))
        train_dialogues.append(d)
        examples.append(ex)
        tokens += len(ex.input_ids)
    log.info("%d dialogues, %d tokens, %d threads, model %s", len(examples), tokens, threads, model_dir)

    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    with contextlib.redirect_stdout(sys.stderr):  # TRL prints its logs; stdout keeps the table only
        for i in range(args.repeats):
            evaluate = held_out if i == 0 else None
            runs["ours"].append(run_ours(model_dir, examples, cfg, evaluate))
            log.info("ours: %s", runs["ours"][-1])
            runs["trl"].append(run_trl(model_dir, train_dialogues, cfg, evaluate))
            log.info("trl: %s", runs["trl"][-1])
    ours, trl = ({**r[0], **max(r, key=lambda x: x["tokens_per_s"])} for r in (runs["ours"], runs["trl"]))

    ratio = ours["tokens_per_s"] / trl["tokens_per_s"]
    cpu_ratio = ours["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"]
    print(
        "| tokens ours / TRL | steps ours / TRL | tok/s ours / TRL | speed-up (wall) | speed-up (CPU time) "
        "| train loss, 2nd half, ours / TRL | held-out loss ours / TRL (untrained) |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {ours['tokens']} / {trl['tokens']} | {ours['steps']} / {trl['steps']} "
        f"| {ours['tokens_per_s']:.1f} / {trl['tokens_per_s']:.1f} | {ratio:.2f}x | {cpu_ratio:.2f}x "
        f"| {ours['final_loss']:.3f} / {trl['final_loss']:.3f} ({trl['loss_on']}) "
        f"| {ours['eval_loss']:.3f} / {trl['eval_loss']:.3f} ({ours['eval_loss_before']:.3f}) |"
    )
    if args.json:
        results = {
            "runs": runs,
            "ratio": ratio,
            "cpu_ratio": cpu_ratio,
            "threads": threads,
            "malloc_tuned": tuned,
        }
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
