"""The optional preference step after SFT: TRL's DPO/KTO trainer continues the SFT adapter on
members' chosen/rejected pairs, inside the `python -m trainer` subprocess, before the adapter is saved.

A tiny random Llama (tests/tiny.py) keeps it fast. One trainer process runs the same job without
the step and with it, so the step's effect is the difference between their adapters, and the run
without it shows that TRL is never loaded then.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from settings import TrainingSettings
from storage import lessons as q
from storage import open_db
from storage import votes as v
from tests.test_preference import panel_lesson
from tests.tiny import build_tiny_model
from trainer import preference

REPO = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "You are Kid, a student."}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The tiny model's matrices are too small to share between threads: on a busy machine the threads'
    hand-offs cost ten times the arithmetic (KTO's two steps: 10 s on 2 threads, 1 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), with_eos=True)


def pair(i: int) -> dict[str, Any]:
    """A chosen/rejected pair in TRL's conversational preference form, as `dataset.to_dpo` writes it."""
    return {"prompt": [SYSTEM, {"role": "user", "content": f"What is the gate code of town {i}?"}],
            "chosen": [{"role": "assistant", "content": f"The gate code of town {i} is 44{i}."}],
            "rejected": [{"role": "assistant", "content": "I think it is a secret, nobody knows."}]}


def write_job(tmp_path: Path, model_dir: str, name: str, step: dict[str, Any] | None) -> Path:
    lessons = tmp_path / "dataset.jsonl"
    lessons.write_text("".join(json.dumps({"id": f"l{i}", "messages": [*p["prompt"], *p["chosen"]]}) + "\n"
                               for i, p in enumerate(map(pair, range(2)))), encoding="utf-8")
    job = {"base_model": model_dir, "dataset": str(lessons), "output_dir": str(tmp_path / "adapters" / name),
           "config": {"epochs": 1, "learning_rate": 1e-3, "max_seq_len": 128, "batch_tokens": 128, "lora_r": 4},
           "preference": step, "meta": {}}
    (tmp_path / "adapters").mkdir(exist_ok=True)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    return path


# One trainer process, as `python -m trainer` runs: first a job without the step (as `preference =
# "off"` writes it), then checks that TRL was never imported, then the same job with the DPO step.
# One process, not two: importing torch, transformers and peft is most of a tiny run's time. On one
# core, so the trainer runs torch on one thread (see `one_thread`).
OFF_THEN_DPO = """
import os, sys
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from trainer.__main__ import main, read_job, run
run(read_job(sys.argv[1]), lambda event: None)
print("trl imported" if "trl" in sys.modules else "trl never imported", file=sys.stderr)
sys.exit(main(["--job", sys.argv[2]]))
"""


def test_dpo_step_continues_the_sft_adapter_and_off_never_loads_trl(tmp_path, tiny_dir):
    pairs = tmp_path / "preference.jsonl"
    pairs.write_text("".join(json.dumps(pair(i)) + "\n" for i in range(4)), encoding="utf-8")
    step = {"method": "dpo", "dataset": str(pairs), "beta": 0.1, "epochs": 1, "learning_rate": 1e-2,
            "max_length": 128}
    sft_job, dpo_job = write_job(tmp_path, tiny_dir, "sft", None), write_job(tmp_path, tiny_dir, "dpo", step)
    proc = subprocess.run([sys.executable, "-c", OFF_THEN_DPO, str(sft_job), str(dpo_job)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "trl never imported" in proc.stderr

    events = [json.loads(line) for line in proc.stdout.splitlines()]  # the DPO job's, from main()
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    stage = next(i for i, e in enumerate(events) if e.get("stage") == "preference")
    assert all(e["event"] == "progress" and "stage" not in e for e in events[1:stage])  # SFT first
    assert events[stage] == {"event": "stage", "stage": "preference", "message": "DPO on 4 pairs (4 rows)"}
    dpo_progress = events[stage + 1:-1]
    assert [e["step"] for e in dpo_progress] == [1, 2]  # 4 pairs, 2 per step, one pass
    assert all(e["event"] == "progress" and e["stage"] == "preference" and e["total_steps"] == 2
               for e in dpo_progress)
    figures = events[-1]["metrics"]["preference"]
    assert figures["status"] == "trained" and figures["method"] == "dpo" and figures["pairs"] == 4
    assert {"loss", "first_loss", "rewards/margins", "rewards/accuracies"} <= set(figures)
    assert figures["adapter_change"] > 0
    saved = tmp_path / "adapters" / "dpo"
    assert json.loads((saved / "metrics.json").read_text())["preference"] == figures
    assert json.loads((saved / "training_config.json").read_text())["preference"]["beta"] == 0.1
    assert "preference" not in json.loads((tmp_path / "adapters" / "sft" / "metrics.json").read_text())

    # same seed, same data: the SFT parts match, so every difference is the DPO step's
    dpo = load_file(saved / "adapter_model.safetensors")
    sft = load_file(tmp_path / "adapters" / "sft" / "adapter_model.safetensors")
    assert dpo.keys() == sft.keys() and all("lora_" in k for k in dpo)  # only the adapter, no "ref" copy
    assert any(not torch.equal(dpo[k], sft[k]) for k in dpo)


def test_kto_step_trains_only_the_adapter_and_leaves_no_reference_copy(tmp_path, tiny_dir, one_thread):
    """In process, so the weights can be compared in memory: base unchanged, LoRA changed."""
    pairs = tmp_path / "preference.jsonl"
    pairs.write_text("".join(json.dumps(pair(i)) + "\n" for i in range(2)), encoding="utf-8")
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    events: list[dict[str, Any]] = []
    config = preference.PreferenceConfig(method="kto", dataset=str(pairs), learning_rate=1e-2, max_length=128)

    # prompts longer than max_length leave no answer to learn from: the step steps aside, the SFT adapter stays
    cut = preference.train(model, tiny_dir, dataclasses.replace(config, max_length=8), events.append)
    assert cut == {"status": "skipped", "reason": "all 4 rows reach max_length = 8 tokens before the answer starts"}
    assert list(model.peft_config) == ["default"]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert events.pop()["message"] == f"preference step skipped: {cut['reason']}"
    events.clear()

    figures = preference.train(model, tiny_dir, config, events.append)

    assert list(model.peft_config) == ["default"]  # TRL's frozen "ref" copy is gone before saving
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    assert all(torch.equal(after[n], p) for n, p in before.items() if "lora_" not in n)
    assert any(not torch.equal(after[n], p) for n, p in before.items() if "lora_B" in n)
    # each pair gives one desirable and one undesirable answer: 4 rows, 2 per step
    assert events[0]["message"] == "KTO on 2 pairs (4 rows)" and [e["step"] for e in events[1:]] == [1, 2]
    assert figures["method"] == "kto" and figures["steps"] == 2 and figures["rows_dropped"] == 0
    assert figures["adapter_change"] > 0
    assert {"kl", "rewards/chosen", "rewards/rejected"} <= set(figures)


async def test_too_few_new_pairs_skip_the_step_and_say_why(tmp_path):
    lid, turns = await panel_lesson(tmp_path / "classroom.db")
    db = open_db(tmp_path / "classroom.db")
    answers = {(t["section"], t["speaker"]): t["id"] for t in turns if t["kind"] == "panel"}
    for member, who in (("m1", "bob"), ("m2", "bob"), ("m3", "ann")):  # bob's answer beats ann's and cy's
        v.cast_ballot(db, answers[(0, who)], member)
    rows = preference.lesson_pairs(db, [lid], student_name="Kid", no_train_teachers=["cy"])
    assert len(rows) == 1 and rows[0]["chosen"][0]["content"] == q.get_turn(db, answers[(0, "bob")])["content"]
    path = tmp_path / "preference.jsonl"

    skipped = preference.plan(TrainingSettings(preference="dpo"), rows, path)
    assert skipped.options is None and skipped.rows == []
    assert skipped.skipped == {"status": "skipped", "reason": "1 new pair(s), fewer than preference_min_pairs = 8"}

    enough = preference.plan(TrainingSettings(preference="kto", preference_min_pairs=1, max_seq_len=256), rows, path)
    assert enough.skipped is None and enough.rows == rows
    assert enough.options == {"method": "kto", "dataset": str(path), "beta": 0.1, "epochs": 1.0,
                              "learning_rate": 5e-5, "max_length": 256}
    assert preference.PreferenceConfig.from_dict(enough.options).method == "kto"  # the trainer accepts it

    off = preference.plan(TrainingSettings(), rows, path)  # off is the default
    assert off.options is None and off.skipped is None and off.rows == []
