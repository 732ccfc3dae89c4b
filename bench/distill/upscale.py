"""A larger student for the small-teacher → larger-student run: the bundled model, depth up-scaled.

No model larger than the bundled SmolLM2-135M is available offline, and a random-init model
would only show the plumbing: it can't answer anything before or after a night of training.
Depth up-scaling (repeating a run of a model's middle decoder layers, as SOLAR 10.7B was built
from Mistral 7B) gives a larger model that still writes sensible English: repeating layers 8–19
of the 30 makes a 42-layer, 177M-parameter model. It answers general questions about as the
135M one does (checked by hand on a few: "The capital of France is Paris. It's located in the
heart of Europe…") and, like it, knows nothing of the packs.

Run on its own to build it (the bench calls it):

    .venv/bin/python bench/distill/upscale.py .cache/models/smollm2-upscaled-42L
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

REPEAT = (8, 20)
"""The decoder layers [start, stop) that appear twice: early layers stay first and the last ones last."""


def upscaled_model(out_dir: Path, cache_dir: Path) -> Path:
    """Build the up-scaled model into `out_dir` once (safetensors + tokenizer); returns `out_dir`."""
    if (out_dir / "model.safetensors").is_file():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backends.bundled import resolve_model_dir
    from settings import BUNDLED_MODEL

    source = resolve_model_dir(BUNDLED_MODEL, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    layers = list(model.model.layers)
    start, stop = REPEAT
    stacked = layers[:stop] + [copy.deepcopy(layer) for layer in layers[start:stop]] + layers[stop:]
    for index, layer in enumerate(stacked):
        layer.self_attn.layer_idx = index  # each layer owns its slot in the KV cache
    model.model.layers = torch.nn.ModuleList(stacked)
    model.config.num_hidden_layers = len(stacked)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[0]] * len(stacked)
    partial = out_dir.with_name(out_dir.name + ".partial")
    model.save_pretrained(partial, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(partial)
    partial.rename(out_dir)
    return out_dir


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / ".cache" / "models" / "smollm2-upscaled-42L")
    print(upscaled_model(target.resolve(), REPO / ".cache" / "models"))
