"""Write a student's LoRA adapter as a GGUF LoRA file, so llama.cpp or Ollama can serve the student.

llama.cpp runs the 4-bit GGUF base several times faster on a CPU than transformers runs the
same weights in fp32. A GGUF LoRA file puts the trained student on that path:
`llama-server -m base.gguf --lora student.gguf`, or `ADAPTER student.gguf` in an Ollama Modelfile.

What the file holds, as llama.cpp's adapter loader reads it:
  * metadata `general.type = adapter`, `adapter.type = lora`, the base's architecture, and
    `adapter.lora.alpha`, from which llama.cpp takes the scale alpha / rank (peft's scaling);
  * for every adapted linear, `<gguf tensor name>.lora_a` (peft's lora_A, [rank, in]) and
    `.lora_b` (peft's lora_B, [out, rank]), float32.

Llama-family GGUFs store the query and key projections with their rows reordered for
llama.cpp's rotary layout, so lora_B of q_proj and k_proj (its rows are the output rows) is
reordered the same way. Only llama-architecture bases are written (SmolLM2, Llama, and
others that transformers loads as LlamaForCausalLM); anything else is refused with a reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from backends.gguf_layout import rotary_row_order

_PREFIX = "base_model.model."
_SUPPORTED_ARCHS = {"LlamaForCausalLM": "llama"}


class GgufExportError(RuntimeError):
    """The adapter cannot be written as a GGUF LoRA file; the message says why."""


def rope_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the output rows of a q/k projection from the Hugging Face rotary layout to llama.cpp's."""
    return rows[rotary_row_order(rows.shape[0], n_head, to_gguf=True)]


def adapter_tensors(adapter_dir: Path, base_config: dict[str, Any]) -> tuple[dict[str, np.ndarray], float]:
    """The GGUF tensors ({name: array}) and alpha for a peft LoRA adapter on a llama-architecture base."""
    from gguf import MODEL_ARCH, get_tensor_name_map
    from safetensors.numpy import load_file

    config = _adapter_config(adapter_dir)
    _check_base(base_config)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    n_layers = int(base_config["num_hidden_layers"])
    n_head = int(base_config["num_attention_heads"])
    n_head_kv = int(base_config.get("num_key_value_heads") or n_head)
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, n_layers)
    tensors: dict[str, np.ndarray] = {}
    ranks: set[int] = set()
    for key in sorted(weights):
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise GgufExportError(f"{adapter_dir}: tensor {key} is not a LoRA A/B matrix; llama.cpp cannot apply it")
            continue
        module = key[: -len(".lora_A.weight")]
        hf_name = module.removeprefix(_PREFIX)
        gguf_name = names.get_name(hf_name)
        if gguf_name is None:
            raise GgufExportError(f"{adapter_dir}: no GGUF tensor for the adapted module {hf_name}")
        a = weights[key].astype(np.float32)
        b = weights[f"{module}.lora_B.weight"].astype(np.float32)
        if gguf_name.endswith(".attn_q"):
            b = rope_permute(b, n_head)
        elif gguf_name.endswith(".attn_k"):
            b = rope_permute(b, n_head_kv)
        tensors[f"{gguf_name}.weight.lora_a"] = np.ascontiguousarray(a)
        tensors[f"{gguf_name}.weight.lora_b"] = np.ascontiguousarray(b)
        ranks.add(a.shape[0])
    if not tensors:
        raise GgufExportError(f"{adapter_dir}: the adapter holds no LoRA matrices")
    rank = int(config["r"])
    if ranks != {rank}:
        raise GgufExportError(f"{adapter_dir}: LoRA ranks {sorted(ranks)} differ from the configured r={rank}")
    # llama.cpp scales by alpha / rank; with rsLoRA peft scales by alpha / sqrt(rank).
    scaling = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    return tensors, scaling * rank


def base_config(model: str) -> dict[str, Any]:
    """The config of a base model (a directory or a hub id) as a plain dict."""
    from transformers import AutoConfig

    config: dict[str, Any] = AutoConfig.from_pretrained(model).to_dict()
    return config


def write_gguf_lora(adapter_dir: Path | str, base_config: dict[str, Any], out: Path | str, *, name: str) -> Path:
    """Write `adapter_dir` (a peft LoRA directory) as a GGUF LoRA file at `out`; returns `out`."""
    from gguf import GGUFType, GGUFWriter, Keys

    adapter_dir, out = Path(adapter_dir), Path(out)
    tensors, alpha = adapter_tensors(adapter_dir, base_config)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = GGUFWriter(str(partial), _SUPPORTED_ARCHS[base_config["architectures"][0]])
    writer.add_type(GGUFType.ADAPTER)
    writer.add_string(Keys.Adapter.TYPE, "lora")
    writer.add_float32(Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(name)
    for tensor_name, array in tensors.items():
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)  # a reader never sees half a file
    return out


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file() or not (adapter_dir / "adapter_model.safetensors").is_file():
        raise GgufExportError(f"{adapter_dir} is not a PEFT adapter directory (adapter_config.json and adapter_model.safetensors)")
    config: dict[str, Any] = json.loads(path.read_text())
    if config.get("peft_type") != "LORA":
        raise GgufExportError(f"{adapter_dir}: a {config.get('peft_type')} adapter; only LoRA adapters can be written")
    if config.get("use_dora"):
        raise GgufExportError(f"{adapter_dir}: a DoRA adapter; llama.cpp applies plain LoRA only")
    if config.get("modules_to_save"):
        raise GgufExportError(f"{adapter_dir}: the adapter also trains whole modules ({config['modules_to_save']}); llama.cpp applies LoRA matrices only")
    if config.get("bias", "none") != "none":
        raise GgufExportError(f"{adapter_dir}: the adapter trains biases; llama.cpp applies LoRA matrices only")
    return config


def _check_base(base_config: dict[str, Any]) -> None:
    archs = base_config.get("architectures") or []
    if not archs or archs[0] not in _SUPPORTED_ARCHS:
        raise GgufExportError(
            f"the base model is {archs[0] if archs else 'of an unknown architecture'}; GGUF LoRA export supports "
            + ", ".join(sorted(_SUPPORTED_ARCHS))
        )
