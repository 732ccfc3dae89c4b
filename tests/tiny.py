"""Tiny real models built from a config (no downloads), and random LoRA adapters, for fast tests."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(out: Path, *, with_eos: bool = False) -> str:
    """A 2-layer random Llama over a byte-level tokenizer with a ChatML template.

    Without `with_eos` it has no end-of-turn token, so generation always runs to max_new_tokens.
    """
    raw = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|im_start|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_end|>"],
        **({"eos_token": "<|im_end|>"} if with_eos else {}),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>") if with_eos else None,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return str(out)


def make_lora(model_dir: str, out: Path, *, seed: int = 0, std: float = 0.05, r: int = 4, alpha: int = 8,
              targets: str | tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A random LoRA adapter for the model in `model_dir`, built without materialising the base weights."""
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    modules = targets if isinstance(targets, str) else list(targets)  # a str is peft's keyword, as "all-linear"
    peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=modules))
    peft_model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_" in name:  # lora_B starts at zero; random values make the adapter change the output
            with torch.no_grad():
                p.normal_(0.0, std, generator=g)
    peft_model.save_pretrained(out)
    return out
