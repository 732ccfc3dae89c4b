"""The lean decode step (backends/local/lean_step.py): its kernels against torch, its steps against
transformers' forward, and the models it must leave to transformers."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backends.base import GenParams, Message
from backends.local import LocalBackend, LocalModelHost, lean_step
from backends.local.batching import DecodeBatch, GenRequest, best_tokens, penalised_best
from backends.local.generation import ReplyRepetitionPenalty
from backends.local.kernels import cpu_supported, load
from backends.local.lean_step import LeanStep
from settings import ModelSpec
from tests.tiny import build_tiny_model, make_lora

pytestmark = pytest.mark.skipif(cpu_supported() is not None, reason=f"no kernels here: {cpu_supported()}")

PROMPTS: list[list[Message]] = [
    [{"role": "user", "content": "Say hello in three languages."}],
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}],
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory):
    return load(tmp_path_factory.mktemp("kernels"))


def step_for(kernels, heads: int, kv_heads: int, dim: int) -> LeanStep:
    class Config:
        num_attention_heads, num_key_value_heads, head_dim, hidden_size = heads, kv_heads, dim, heads * dim

    return LeanStep(kernels, Config())


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 2, 16), (2, 2, 24)])
@pytest.mark.parametrize("tokens", [1, 7, 8, 37])
def test_the_attention_kernel_computes_torchs_attention_over_each_rows_real_tokens(kernels, heads, kv_heads, dim, tokens):
    g = torch.Generator().manual_seed(tokens)
    rows = 3
    q = torch.randn(rows, heads, 1, dim, generator=g)
    # keys and values as the KV cache holds them: views into buffers with room to spare
    room_k, room_v = (torch.randn(rows, kv_heads, tokens + 5, dim, generator=g) * 2 for _ in range(2))
    keys, values = room_k[:, :, :tokens], room_v[:, :, :tokens]
    mask = torch.ones(rows, tokens, dtype=torch.long)
    mask[0, : tokens - 1] = 0  # left padding: only its newest token is real
    mask[1, : tokens // 2] = 0
    expected = F.scaled_dot_product_attention(
        q, keys.repeat_interleave(heads // kv_heads, 1), values.repeat_interleave(heads // kv_heads, 1),
        attn_mask=mask.bool()[:, None, None, :], scale=0.3,
    ).transpose(1, 2).reshape(rows, 1, heads * dim)
    got = step_for(kernels, heads, kv_heads, dim).attend(q, keys, values, mask, 0.3)
    assert got.shape == (rows, 1, heads * dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # a padded row's answer does not depend on what its padding holds
    room_k[0, :, : tokens - 1] = 1e4
    assert torch.equal(step_for(kernels, heads, kv_heads, dim).attend(q, keys, values, mask, 0.3)[0], got[0])


def test_attention_shared_out_on_the_pool_gives_the_same_bits_as_one_thread(kernels):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(8, 9, 1, 64, generator=g)
    keys, values = (torch.randn(8, 3, 150, 64, generator=g) for _ in range(2))
    mask = torch.ones(8, 150, dtype=torch.long)
    mask[::3, :40] = 0
    step = step_for(kernels, 9, 3, 64)
    try:
        kernels.qmm_set_threads(1)
        alone = step.attend(q, keys, values, mask, 0.125)
        assert kernels.qmm_set_threads(2) == 2
        for _ in range(20):  # the pool's threads take the (row, kv head) pairs in whatever order they come
            assert torch.equal(step.attend(q, keys, values, mask, 0.125), alone)
    finally:
        kernels.qmm_set_threads(1)


def test_a_row_with_every_token_masked_gets_zeros_not_nans(kernels):
    q, kv = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 5, 16)
    out = step_for(kernels, 4, 2, 16).attend(q, kv, kv, torch.zeros(1, 5, dtype=torch.long), 0.25)
    assert torch.equal(out, torch.zeros(1, 1, 64))


def test_the_attention_kernel_refuses_a_mask_of_another_length(kernels):
    q, kv = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match="does not fit"):
        step_for(kernels, 4, 2, 16).attend(q, kv, kv, torch.ones(1, 4, dtype=torch.long), 0.25)


@pytest.mark.parametrize("dim", [64, 16, 24])
def test_the_rotary_kernel_gives_transformers_bits(kernels, dim):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    rows, heads, kv_heads = 3, 4, 2
    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=heads * dim, num_attention_heads=heads, head_dim=dim))
    q, k = torch.randn(rows, 1, heads * dim) * 3, torch.randn(rows, 1, kv_heads * dim) * 3
    cos, sin = rotary(q, torch.tensor([[5], [130], [2047]]))
    want_q, want_k = apply_rotary_pos_emb(q.view(rows, 1, heads, dim).transpose(1, 2),
                                          k.view(rows, 1, kv_heads, dim).transpose(1, 2), cos, sin)
    kernels.rope_decode(q.data_ptr(), heads, k.data_ptr(), kv_heads, rows, dim, cos.contiguous().data_ptr(),
                        sin.contiguous().data_ptr())
    assert torch.equal(q.view(rows, 1, heads, dim).transpose(1, 2), want_q)
    assert torch.equal(k.view(rows, 1, kv_heads, dim).transpose(1, 2), want_k)


def test_best_tokens_picks_the_first_of_equal_scores_as_torch_does():
    scores = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, -1.0, 5.0, 5.0], [-2.0, -1.0, float("-inf"), -1.0]])
    assert best_tokens(scores) == scores.argmax(dim=-1).tolist() == [1, 0, 1]
    assert best_tokens(scores[2:].to(torch.bfloat16)) == [1]


@pytest.mark.parametrize("penalty", [1.1, 1.3, 0.9])
def test_the_penalty_in_numpy_picks_the_token_the_penalty_processor_does(penalty):
    gen = torch.Generator().manual_seed(int(penalty * 10))
    for trial in range(50):
        scores = (torch.randn(1, 500, generator=gen) * 4).round()  # whole numbers: ties and zeros are common
        reply = torch.randint(0, 500, (1, trial % 7 * 30), generator=gen)  # repeats, and once no reply at all
        want = best_tokens(ReplyRepetitionPenalty(penalty, 3)(torch.cat([torch.zeros(1, 3, dtype=torch.long), reply], 1),
                                                               scores))
        row = scores[0].numpy()
        before = row.copy()
        assert penalised_best(row, reply[0].tolist(), penalty) == want[0]
        assert np.array_equal(row, before)  # penalised in place for the argmax, then put back
    scores = torch.tensor([[1.0, 5.0, 4.9, -3.0]])  # 5.0 said already: 5 / 1.1 < 4.9
    assert penalised_best(scores[0].numpy(), [1, 1], 1.1) == 2 and best_tokens(scores) == [1]


def decode(host: LocalModelHost, lean: LeanStep | None, prompts, steps: int, adapters=None) -> list[list[int]]:
    """Greedy tokens of `prompts` decoded together for `steps` steps (worker thread)."""
    batch = DecodeBatch(host.model, host.tokenizer, peft=adapters is not None, lean=lean)
    requests = []
    for i, p in enumerate(prompts):
        request = GenRequest(p, GenParams(max_new_tokens=steps + 1, temperature=0.0), None, threading.Event())
        if adapters is not None:
            request.adapter_internal = adapters[i]
        requests.append(request)
    with torch.inference_mode():
        batch.admit([batch.prepare(r) for r in requests])
        for _ in range(steps):
            batch.step()
    return [r.ids for r in batch.rows]


async def test_lean_steps_give_the_tokens_of_transformers_forward_with_per_row_adapters(tiny_dir, tmp_path):
    host = LocalModelHost(tiny_dir, device="cpu", max_batch=4)
    try:
        await host.ensure_loaded()
        lean = host.lean_step
        assert isinstance(lean, LeanStep)
        base = await host.run(lambda: decode(host, lean, PROMPTS, 30))
        assert base == await host.run(lambda: decode(host, None, PROMPTS, 30))
        assert lean.steps == 30

        await host.set_adapter("student", make_lora(tiny_dir, tmp_path / "a", std=0.5))
        internal = next(iter(host.model.peft_config))
        mixed = ["__base__", internal, internal]
        with_adapter = await host.run(lambda: decode(host, lean, PROMPTS, 30, mixed))
        assert with_adapter == await host.run(lambda: decode(host, None, PROMPTS, 30, mixed))
        assert with_adapter[0] == base[0] and with_adapter[1:] != base[1:]  # the adapter rows, and only they, changed
    finally:
        await host.aclose()


async def test_the_host_decodes_through_lean_steps_and_answers_as_plain_generate(tiny_dir):
    from backends.local.generation import generate_completion

    host = LocalModelHost(tiny_dir, device="cpu", max_batch=4, batch_window=0.05)
    try:
        model = LocalBackend(ModelSpec(name="m", backend="local", path=tiny_dir, device="cpu"), host)
        params = GenParams(max_new_tokens=25, temperature=0.0)
        together = await asyncio.gather(*(model.chat(p, params) for p in PROMPTS))
        assert host.peak_batch == 3 and host.lean_step.steps > 0
        plain = await host.run(
            lambda: [generate_completion(host.model, host.tokenizer, p, params, cancel=threading.Event()).text for p in PROMPTS]
        )
        assert together == plain
    finally:
        await host.aclose()


async def test_a_lean_step_that_disagrees_with_transformers_is_not_used(tiny_dir, monkeypatch, caplog):
    def off_by_a_little(norm, h):
        variance = h.pow(2).mean(-1, keepdim=True)
        return norm.weight * (h * torch.rsqrt(variance + norm.variance_epsilon)) * 1.01

    monkeypatch.setattr(lean_step, "_rms", off_by_a_little)
    host = LocalModelHost(tiny_dir, device="cpu")
    try:
        with caplog.at_level(logging.INFO, logger="backends.local.lean_step"):
            await host.ensure_loaded()
        assert host.lean_step is None
        assert "differs from transformers'" in caplog.text
        answer = await LocalBackend(ModelSpec(name="m", backend="local", path=tiny_dir, device="cpu"), host).chat(
            PROMPTS[0], GenParams(max_new_tokens=5, temperature=0.0))
        assert answer  # transformers' forward serves it
    finally:
        await host.aclose()


async def test_the_off_switch_and_models_it_does_not_know_keep_transformers_forward(tiny_dir, tmp_path, monkeypatch, caplog):
    from transformers import MistralConfig, MistralForCausalLM

    monkeypatch.setenv(lean_step.OFF_SWITCH, "0")
    host = LocalModelHost(tiny_dir, device="cpu")
    with caplog.at_level(logging.INFO, logger="backends.local.lean_step"):
        await host.ensure_loaded()
        await host.aclose()
        assert host.lean_step is None and "are off" in caplog.text
        monkeypatch.delenv(lean_step.OFF_SWITCH)

        config = MistralConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
        assert "is not transformers' LlamaForCausalLM" in lean_step.unsupported(MistralForCausalLM(config))
        assert LeanStep.load(MistralForCausalLM(config), tmp_path) is None
        assert "is not transformers' LlamaForCausalLM" in caplog.text
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama(**extra) -> LlamaForCausalLM:
        return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2, **extra))

    assert lean_step.unsupported(llama()) is None
    assert lean_step.unsupported(llama(attention_bias=True)) == "the model has biases"
    assert "not fp32" in lean_step.unsupported(llama().to(torch.bfloat16))
    assert "head size 20" in lean_step.unsupported(llama(head_dim=20))


@pytest.mark.slow
async def test_the_bundled_model_on_blocks_decodes_lean_with_the_same_answers(model_cache_dir: Path):
    """The quality guard for making lean steps the default: on the real model (GGUF blocks, as
    served), a batch's greedy tokens through lean steps are those of transformers' forward."""
    from backends.bundled import bundled_gguf_path, resolve_model_dir
    from settings import BUNDLED_MODEL

    host = LocalModelHost(resolve_model_dir(BUNDLED_MODEL, model_cache_dir), device="cpu", dtype="gguf",
                          gguf=str(bundled_gguf_path()), kernel_dir=model_cache_dir.parent / "kernels")
    try:
        await host.ensure_loaded()
        assert host.lean_step is not None
        questions = ["What is the capital of France?", "Write a haiku about rain.", "List three uses of copper."]
        prompts = [[{"role": "user", "content": q}] for q in questions]
        lean = await host.run(lambda: decode(host, host.lean_step, prompts, 40))
        assert lean == await host.run(lambda: decode(host, None, prompts, 40))
    finally:
        await host.aclose()


def test_lora_layers_give_peft_mixed_batch_results_and_variants_are_left_to_peft(kernels):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]), adapter_name="one")
    model.add_adapter("two", LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"]))
    model.add_adapter("dora", LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    for name, p in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.3)
    model.eval()
    layer = model.get_base_model().model.layers[0]
    lora_linear, _ = lean_step._peft_layers()
    q, up = layer.self_attn.q_proj, layer.mlp.up_proj
    assert type(q) is lora_linear
    x = torch.randn(4, 1, 64)
    with torch.inference_mode():
        for names in (["one"] * 4, ["one", "__base__", "two", "one"], ["__base__"] * 4, ["two"] * 4):
            groups = lean_step._rows_by_adapter(names)
            assert lean_step._plain_lora(q, groups)
            for module in (q, up):  # up_proj has no adapter "two": its rows get the base weights
                peft = module(x, adapter_names=names)
                assert torch.equal(lean_step._lora(module, x, groups), peft), names  # torch ops: peft's bits
                torch.testing.assert_close(lean_step._lora(module, x, groups, kernels), peft, rtol=1e-5, atol=1e-5)
        assert not torch.equal(lean_step._lora(q, x, lean_step._rows_by_adapter(["one"] * 4)), q.base_layer(x))
        # the kernel, not a fallback to torch, computed those
        assert lean_step._lora_in_c(kernels, x, q.lora_A["one"], q.lora_B["one"], q.scaling["one"], None, q.base_layer(x))
    # DoRA is a variant: rows that use it leave the whole layer to peft
    assert not lean_step._plain_lora(q, lean_step._rows_by_adapter(["one", "dora"]))
    model.train()
    assert not lean_step._plain_lora(q, lean_step._rows_by_adapter(["one"]))
