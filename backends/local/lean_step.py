"""One decode step of a llama-architecture model, without transformers' per-layer machinery.

A decode step computes one new token for each row of a batch. At the bundled 135M model's size
transformers' forward spends as long around the arithmetic as in it: a one-row step took 25–29 ms,
of which 10–12 ms were the 211 matrix products and the rest module calls, mask building, some
3,000 small torch ops and attention at 30–200 µs a call (bench/README.md, session 13).
`LeanStep` runs the same layers itself:

- every linear layer is the model's own: GGUF block layers are called directly, and a peft LoRA
  layer's base layer too, its adapters' terms added for the rows that name them (kernels/decode.c
  `lora_add`; peft's per-call bookkeeping hooked ~200 layers a step); LoRA kinds other than plain
  (DoRA and the like) are peft's own module calls, with the batch's per-row adapter names;
- norms are the same torch ops transformers runs, and rotary embeddings one C call a layer that
  rounds as those ops do: the same bits;
- attention is one C call a layer (kernels/decode.c) instead of torch's scaled_dot_product_attention,
  its (row, kv head) pairs shared out on the kernels' thread pool.

Prefill stays with transformers. A step reads and extends the batch's KV cache through
`cache.update`, as transformers does, so the two may take turns on one cache.

It serves only what it was checked on (`LeanStep.load`): transformers' own Llama modules, fp32
on the CPU, no biases, and a model on which one step computed both ways agrees. Anything else
keeps transformers' forward, which gives the same answers, slower.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

import torch

from backends.local.gguf_weights import BlockLinear

log = logging.getLogger(__name__)

OFF_SWITCH = "CLASSROOM_LEAN_STEP"
"""Set to 0 to decode through transformers' forward instead (to compare, or to rule this out)."""


def _rms(norm: Any, h: torch.Tensor) -> torch.Tensor:
    # LlamaRMSNorm.forward for fp32 input, op for op
    variance = h.pow(2).mean(-1, keepdim=True)
    return norm.weight * (h * torch.rsqrt(variance + norm.variance_epsilon))


class LeanStep:
    """Decode steps of one llama-architecture model, with the C kernels of `lib` (attention, rotary
    embeddings, LoRA terms)."""

    def __init__(self, lib: ctypes.CDLL, config: Any):
        self.lib = lib
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.steps = 0  # decode steps computed (for tests and benchmarks)

    @classmethod
    def load(cls, model: Any, kernel_dir: Path) -> LeanStep | None:
        """A LeanStep for `model` (a base model, before any adapter), or None, logging why not."""
        if os.environ.get(OFF_SWITCH, "").strip() == "0":
            log.info("lean decode steps are off (%s=0)", OFF_SWITCH)
            return None
        reason = unsupported(model)
        if reason is None:
            from backends.local.kernels import KernelsUnavailable, load

            try:
                lib = load(kernel_dir)
            except KernelsUnavailable as e:
                reason = f"no attention kernel: {e}"
            else:
                step = cls(lib, model.config)
                reason = step.disagreement(model)
                if reason is None:
                    step.steps = 0  # the check's step is not one served
                    return step
        log.info("decode steps run through transformers' forward: %s", reason)
        return None

    def __call__(self, model: Any, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any,
                 adapter_names: list[str] | None = None) -> torch.Tensor:
        """Logits [rows, vocab] of the next token after `tokens` [rows, 1] at `positions` [rows, 1].

        `mask` [rows, cached + 1] (int64) marks each row's real tokens (0: left padding), the new
        one included; `cache` is the batch's KV cache, which this extends. On a PeftModel,
        `adapter_names` names each row's adapter (peft's mixed batch; "__base__" for none).
        """
        self.steps += 1
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner = base.model
        if adapter_names is None:
            def linear(module: Any, x: torch.Tensor) -> torch.Tensor:
                return module.decode(x) if type(module) is BlockLinear and x.is_contiguous() else module(x)
        else:
            lora_linear, tuned = _peft_layers()
            groups = _rows_by_adapter(adapter_names)

            def linear(module: Any, x: torch.Tensor) -> torch.Tensor:
                if type(module) is BlockLinear and x.is_contiguous():
                    return module.decode(x)
                if type(module) is lora_linear and _plain_lora(module, groups):
                    return _lora(module, x, groups, self.lib)
                # what peft's mixed-batch forward hooks hand these layers, without hooking ~200 modules a step
                return module(x, adapter_names=adapter_names) if isinstance(module, tuned) else module(x)

        rows, dim = tokens.shape[0], self.head_dim
        mask = mask if mask.dtype == torch.int64 and mask.is_contiguous() else mask.to(torch.int64).contiguous()
        h = linear(inner.embed_tokens, tokens)
        cos_t, sin_t = (t.contiguous() for t in inner.rotary_emb(h, position_ids=positions))  # [rows, 1, dim]
        cos, sin = cos_t.data_ptr(), sin_t.data_ptr()
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            x = _rms(layer.input_layernorm, h)
            q, k = linear(attn.q_proj, x).contiguous(), linear(attn.k_proj, x).contiguous()
            self.lib.rope_decode(q.data_ptr(), self.heads, k.data_ptr(), self.kv_heads, rows, dim, cos, sin)
            q, k = q.view(rows, 1, -1, dim).transpose(1, 2), k.view(rows, 1, -1, dim).transpose(1, 2)
            v = linear(attn.v_proj, x).view(rows, 1, -1, dim).transpose(1, 2)
            keys, values = cache.update(k, v, i)
            h = h + linear(attn.o_proj, self.attend(q, keys, values, mask, getattr(attn, "scaling", dim**-0.5)))
            x = _rms(layer.post_attention_layernorm, h)
            mlp = layer.mlp
            h = h + linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x))
        return linear(base.lm_head, _rms(inner.norm, h))[:, -1, :]

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
               scaling: float) -> torch.Tensor:
        """softmax(q kᵀ · scaling) v over each row's unmasked tokens: q [rows, heads, 1, dim],
        keys/values [rows, kv_heads, tokens, dim] (any strides but the last), mask [rows, tokens]
        int64; returns [rows, 1, heads · dim] as transformers hands it to o_proj."""
        rows, heads, _, dim = q.shape
        q = q.contiguous()
        keys = keys if keys.stride(-1) == 1 else keys.contiguous()
        values = values if values.stride(-1) == 1 else values.contiguous()
        tokens = keys.shape[2]
        if mask.shape != (rows, tokens):
            raise ValueError(f"attention mask {tuple(mask.shape)} does not fit {rows} rows of {tokens} cached tokens")
        out = torch.empty(rows, 1, heads * dim, dtype=torch.float32)
        done = self.lib.attend_decode(
            q.data_ptr(), rows, heads, keys.shape[1], dim, keys.data_ptr(), values.data_ptr(),
            *keys.stride()[:3], *values.stride()[:3], tokens, mask.data_ptr(), scaling, out.data_ptr(),
        )
        if not done:
            raise RuntimeError(f"the attention kernel failed on {heads} heads over {keys.shape[1]} of {dim} dimensions"
                               f" and {tokens} tokens (a shape it does not take, or no memory for its scores)")
        return out

    def disagreement(self, model: Any) -> str | None:
        """None when one step of `model` computed here agrees with transformers' forward, else how it differs.

        Both sides' products keep fp32 activations here: with 8-bit activations on, the last-bit
        differences the check allows (attention's sums, in another order) can round an activation the
        other way, and the logits then differ by more than an implementation that is right."""
        held = self.lib.qmm_hold_int8_off(1)
        try:
            return self._disagreement(model)
        finally:
            self.lib.qmm_hold_int8_off(held)

    def _disagreement(self, model: Any) -> str | None:
        vocab = model.config.vocab_size
        ids = (torch.arange(5, dtype=torch.long) * 7919 % vocab).view(1, 5)
        mask, positions = torch.ones(1, 5, dtype=torch.long), torch.tensor([[4]])
        with torch.inference_mode():
            theirs_cache, mine_cache = (cache_of(model(input_ids=ids[:, :4], use_cache=True)) for _ in range(2))
            theirs = model(input_ids=ids[:, 4:], attention_mask=mask, position_ids=positions, cache=theirs_cache,
                           use_cache=True).logits[:, -1, :]
            try:
                mine = self(model, ids[:, 4:], positions, mask, mine_cache)
            except Exception as e:  # a module this does not call the way it expects
                return f"a lean step failed on this model ({type(e).__name__}: {e})"
        gap = float((mine - theirs).abs().max())
        if not gap <= 1e-3 * max(1.0, float(theirs.abs().max())) or int(mine.argmax()) != int(theirs.argmax()):
            return f"a lean step differs from transformers' on this model (largest logit gap {gap:.2g})"
        return None


def _peft_layers() -> tuple[type, tuple[type, ...]]:
    """peft's LoRA linear layer, and the layer classes that take `adapter_names` (the ones its
    mixed-batch forward hooks)."""
    from peft.tuners.lora import Linear, LoraLayer

    try:
        from peft.utils.other import AuxiliaryTrainingWrapper as Wrapper
    except ImportError:  # peft before 0.15
        from peft.utils.other import ModulesToSaveWrapper as Wrapper
    return Linear, (LoraLayer, Wrapper)


def _rows_by_adapter(adapter_names: list[str]) -> list[tuple[str, torch.Tensor | None]]:
    """Each adapter named in the batch (not "__base__") with its rows; None when it has them all."""
    groups = []
    for name in dict.fromkeys(adapter_names):
        if name != "__base__":
            rows = [i for i, n in enumerate(adapter_names) if n == name]
            groups.append((name, None if len(rows) == len(adapter_names) else torch.tensor(rows)))
    return groups


def _plain_lora(module: Any, groups: list[tuple[str, torch.Tensor | None]]) -> bool:
    """Whether `module` (a peft LoRA Linear) is the plain kind `_lora` computes for these adapters:
    adapters on and not merged, in eval mode, and none of them a variant (DoRA and the like)."""
    if module.disable_adapters or module.merged or module.training:
        return False
    return not (module.lora_variant and any(name in module.lora_variant for name, _ in groups))


def _lora(module: Any, x: torch.Tensor, groups: list[tuple[str, torch.Tensor | None]], lib: Any = None) -> torch.Tensor:
    """A LoRA layer on a batch whose rows name their adapters, without peft's per-call bookkeeping.

    With `lib`, each adapter's addition is one C call (kernels/decode.c `lora_add`): peft's two
    tiny matrix products, multiply and add cost ~30 µs a layer at one row, ~200 layers a step.
    Without it, or for what the kernel does not take (a bias on B, another dtype), it is peft's
    mixed-batch forward op for op (the same bits)."""
    base = module.base_layer
    result = base.decode(x) if type(base) is BlockLinear and x.is_contiguous() else base(x)
    for name, rows in groups:
        lora_a = module.lora_A[name] if name in module.lora_A else None
        if lora_a is None:
            continue
        lora_b, scaling = module.lora_B[name], module.scaling[name]
        if lib is not None and _lora_in_c(lib, x, lora_a, lora_b, scaling, rows, result):
            continue
        if rows is None:
            result += lora_b(lora_a(x)) * scaling
        else:
            result[rows] += lora_b(lora_a(x[rows])) * scaling
    return result


def _lora_in_c(lib: Any, x: torch.Tensor, lora_a: Any, lora_b: Any, scaling: float, rows: torch.Tensor | None,
               result: torch.Tensor) -> bool:
    """result[rows] += scaling * B (A x[rows]) by the kernel; False (nothing done) where it does not apply."""
    a, b = lora_a.weight, lora_b.weight
    if not (type(lora_a) is torch.nn.Linear and type(lora_b) is torch.nn.Linear and lora_a.bias is None
            and lora_b.bias is None and a.dtype == b.dtype == x.dtype == result.dtype == torch.float32
            and a.is_contiguous() and b.is_contiguous() and x.is_contiguous() and result.is_contiguous()):
        return False
    k, n = a.shape[1], b.shape[0]
    return bool(lib.lora_add(x.data_ptr(), x.numel() // k, k, a.data_ptr(), a.shape[0], b.data_ptr(), n, scaling,
                             None if rows is None else rows.data_ptr(), 0 if rows is None else rows.numel(),
                             result.data_ptr()))


def cache_of(output: Any) -> Any:
    # transformers 5 names a forward's cache `cache`; 4.x named it `past_key_values`
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def unsupported(model: Any) -> str | None:
    """None when `model` has exactly the structure LeanStep computes, else why not."""
    from transformers.models.llama import modeling_llama as llama

    if type(model) is not llama.LlamaForCausalLM or type(model.model) is not llama.LlamaModel:
        return f"{type(model).__name__} is not transformers' LlamaForCausalLM"
    config = model.config
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "the model has biases"
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 8:
        return f"head size {head_dim} (the attention kernel takes multiples of 8)"
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        return "not fp32 on the CPU"
    parts = (llama.LlamaDecoderLayer, llama.LlamaAttention, llama.LlamaMLP, llama.LlamaRMSNorm)
    for layer in model.model.layers:
        for module in (layer, layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
            if type(module) not in parts:
                return f"{type(module).__name__} in a decoder layer"
    if type(model.model.norm) is not llama.LlamaRMSNorm:
        return f"{type(model.model.norm).__name__} as the final norm"
    return None
