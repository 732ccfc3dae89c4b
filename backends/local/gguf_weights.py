"""Serve a model converted from a GGUF file with the file's own 4-bit blocks (dtype "gguf").

The converted model's fp32 linear weights are the GGUF blocks dequantised, so the blocks hold
the same weights in a fifth of the bytes. `use_gguf_blocks` swaps each linear layer whose
blocks rebuild its fp32 weight exactly for a `BlockLinear`, which multiplies by the blocks with
the kernels in qmm.c, and frees the fp32 copy. A layer that does not match exactly keeps fp32.
peft still wraps the layers (a BlockLinear is an nn.Linear), so LoRA students work as before.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backends.cpus import usable_cpus
from backends.gguf_layout import rotary_row_order

log = logging.getLogger(__name__)

KERNEL_ROWS = 384
"""With a single kernel thread, products with more rows than this (prompts longer than this many
tokens) dequantise the layer and use torch's matmul; with more threads everything goes through
the kernels. Measured on a 2-core AVX2 CPU with one kernel thread, on the model's two largest
projection shapes: the kernels' panels took 8.9 ms against 9.1-11.8 ms dequantising at 296 rows,
and dequantising won at 678 rows (18.7-18.9 ms against 19.6-22.6 ms). With two kernel threads
the kernels won at every length measured (up to 1,650 tokens). With 8-bit activations
(kernels.INT8_SWITCH) every product stays on the kernels: they are 2.6 times the fp32 panels at 296
rows, and a prompt's rows must be rounded alike however long the batch they are prefilled in."""


def kernel_threads() -> int:
    """How many threads the kernels use: OMP_NUM_THREADS when set, else every CPU this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return usable_cpus()


@dataclass
class Blocks:
    """One weight [out, in] as GGUF blocks of 32: q (packed nibbles or int8), d (and m for Q4_1), as fp32."""

    kind: str  # "Q4_1" or "Q8_0"
    q: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor | None
    out_features: int
    in_features: int

    def rows(self, index: np.ndarray) -> Blocks:
        """The same weight with its output rows reordered."""
        idx = torch.from_numpy(index)
        m = None if self.m is None else self.m[idx].contiguous()
        return Blocks(self.kind, self.q[idx].contiguous(), self.d[idx].contiguous(), m, self.out_features, self.in_features)


class BlockLinear(nn.Linear):
    """A bias-free linear layer computed from GGUF blocks; `weight` is an empty placeholder."""

    def __init__(self, blocks: Blocks, lib: ctypes.CDLL, like: torch.Tensor, threads: int = 1):
        nn.Module.__init__(self)
        self.threads = threads  # the kernels' pool size (see KERNEL_ROWS)
        self.in_features, self.out_features = blocks.in_features, blocks.out_features
        self.blocks = blocks
        self._lib = lib
        # where the blocks live (they never move): a decode step calls the kernels 211 times
        self._pointers = (blocks.q.data_ptr(), blocks.d.data_ptr(), None if blocks.m is None else blocks.m.data_ptr())
        # peft reads the base layer's weight for its dtype and device only
        self.weight = nn.Parameter(torch.empty(0, dtype=like.dtype, device=like.device), requires_grad=False)
        self.register_parameter("bias", None)

    def dequantise(self) -> torch.Tensor:
        """The fp32 weight [out, in], rebuilt from the blocks."""
        b = self.blocks
        out = torch.empty(b.out_features, b.in_features, dtype=torch.float32)
        if b.kind == "Q4_1":
            assert b.m is not None
            self._lib.q4_1_dequant(b.q.data_ptr(), b.d.data_ptr(), b.m.data_ptr(), b.out_features, b.in_features, out.data_ptr())
        else:
            self._lib.q8_0_dequant(b.q.data_ptr(), b.d.data_ptr(), b.out_features, b.in_features, out.data_ptr())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a decode step calls this 211 times: keep the Python around the C call short
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != torch.float32 or not flat.is_contiguous():
            flat = flat.to(torch.float32).contiguous()
        rows = flat.shape[0]
        if rows > KERNEL_ROWS and self.threads == 1 and not self._lib.qmm_set_int8(-1):
            out = torch.nn.functional.linear(flat, self.dequantise())
        else:
            out = torch.empty(rows, self.out_features, dtype=torch.float32)
            self._product(flat.data_ptr(), rows, out.data_ptr())
        out = out.view(*x.shape[:-1], self.out_features)
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` for what a lean decode step hands it (contiguous fp32 [..., in_features]), without its checks."""
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=torch.float32)
        self._product(x.data_ptr(), x.numel() // self.in_features, out.data_ptr())
        return out

    def _product(self, x: int, rows: int, out: int) -> None:
        """out[rows, out_features] = x[rows, in_features] @ weight.T, by the kernels (pointers as ints)."""
        q, d, m = self._pointers
        if m is not None:
            self._lib.q4_1_mm(x, rows, self.in_features, q, d, m, self.out_features, out)
        else:
            self._lib.q8_0_mm(x, rows, self.in_features, q, d, self.out_features, out)


def read_blocks(gguf: Path | str) -> tuple[str, dict[str, Blocks]]:
    """The file's architecture and its Q4_1 / Q8_0 weights by GGUF tensor name (without '.weight')."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    found: dict[str, Blocks] = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in ("Q4_1", "Q8_0") or len(t.shape) != 2:
            continue
        n_in, n_out = int(t.shape[0]), int(t.shape[1])
        raw = np.asarray(t.data, dtype=np.uint8).reshape(n_out, -1)
        size = 20 if kind == "Q4_1" else 34
        blocks = raw.reshape(n_out, n_in // 32, size)
        d = blocks[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        if kind == "Q4_1":
            m = blocks[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
            q = blocks[:, :, 4:].reshape(n_out, n_in // 2)
            found[t.name.removesuffix(".weight")] = Blocks(kind, torch.from_numpy(q.copy()), torch.from_numpy(d),
                                                           torch.from_numpy(m), n_out, n_in)
        else:
            q = blocks[:, :, 2:].reshape(n_out, n_in).view(np.int8)
            found[t.name.removesuffix(".weight")] = Blocks(kind, torch.from_numpy(q.copy()), torch.from_numpy(d), None, n_out, n_in)
    return arch, found


def cached_blocks(gguf: Path | str, cache_dir: Path) -> tuple[str, dict[str, Blocks]]:
    """`read_blocks`, through a safetensors copy in `cache_dir`: the GGUF reader parses the whole
    vocabulary (~8 s for the bundled file), the copy loads in a fraction of a second."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from backends.bundled import converted_dir_name

    path = Path(cache_dir) / f"blocks-{converted_dir_name(Path(gguf))}.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        kinds = json.loads(meta["kinds"])
        return meta["arch"], {
            name: Blocks(kind, tensors[f"{name}.q"], tensors[f"{name}.d"], tensors.get(f"{name}.m"),
                         int(tensors[f"{name}.d"].shape[0]), int(tensors[f"{name}.d"].shape[1]) * 32)
            for name, kind in kinds.items()
        }
    arch, blocks = read_blocks(gguf)
    flat = {f"{n}.{part}": t for n, b in blocks.items() for part, t in (("q", b.q), ("d", b.d), ("m", b.m)) if t is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file(flat, str(partial), metadata={"arch": arch, "kinds": json.dumps({n: b.kind for n, b in blocks.items()})})
    partial.replace(path)
    return arch, blocks


def use_gguf_blocks(model: Any, gguf: Path | str, cache_dir: Path) -> str:
    """Swap the linear layers of a converted llama-architecture `model` for BlockLinear layers; returns a summary.

    Raises KernelsUnavailable (from the kernels) or ValueError (the model or file does not fit).
    """
    from gguf import MODEL_ARCH, get_tensor_name_map

    from backends.local.kernels import load

    lib = load(cache_dir)
    config = model.config
    if (config.architectures or [""])[0] != "LlamaForCausalLM":
        raise ValueError(f"GGUF blocks serve llama-architecture models only, not {config.architectures}")
    arch, blocks = cached_blocks(gguf, cache_dir)
    if arch != "llama":
        raise ValueError(f"{gguf} is a {arch} model; GGUF blocks serve llama models only")
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    swapped, kept = 0, []
    threads = _share_the_cores(lib)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.bias is not None:
                continue
            hf_name = f"{parent_name}.{child_name}" if parent_name else child_name
            gguf_name = names.get_name(hf_name)
            if gguf_name == "output" and "output" not in blocks and getattr(config, "tie_word_embeddings", False):
                gguf_name = "token_embd"
            found = blocks.get(gguf_name or "")
            if found is None:
                kept.append(hf_name)
                continue
            if gguf_name and gguf_name.endswith(".attn_q"):
                found = found.rows(rotary_row_order(found.out_features, n_head, to_gguf=False))
            elif gguf_name and gguf_name.endswith(".attn_k"):
                found = found.rows(rotary_row_order(found.out_features, n_kv, to_gguf=False))
            layer = BlockLinear(found, lib, child.weight, threads)
            if not torch.equal(layer.dequantise(), child.weight.detach().float().cpu()):
                kept.append(hf_name)  # not the weights this model was converted from: keep them
                continue
            setattr(parent, child_name, layer)
            swapped += 1
    if kept:
        log.info("kept fp32 for %d linear layers without matching GGUF blocks: %s", len(kept), ", ".join(kept[:5]))
    if not swapped:
        raise ValueError(f"no linear layer of the model matches the blocks in {gguf}")
    return f"{swapped} linear layers on GGUF blocks ({threads} kernel threads), {len(kept)} in fp32"


def _share_the_cores(lib: ctypes.CDLL) -> int:
    """Give the kernels' pool the cores and leave torch one thread; returns the pool's size.

    With blocks, the products are almost all of a step's work and the pool parallelises them;
    torch's remaining ops (norms, attention, rotary) are tiny at decode time. Both at once is far
    worse than either: torch's OpenMP threads and the pool's workers spin on the same cores
    (bench/generate.py on 2 cores: one request 7.6 tok/s with both at 2 threads; 25.7 tok/s and 8
    concurrent requests in 10.6 s with both at 1; 25.9 tok/s and 8.2 s with the pool at 2 and
    torch at 1). torch's setting holds for the calling thread and for threads started after it,
    so it can reach another CPU model the process serves; set OMP_NUM_THREADS to choose the
    pool's size.
    """
    threads = lib.qmm_set_threads(kernel_threads())
    if threads > 1 and torch.get_num_threads() != 1:
        log.info("GGUF kernels on %d threads; torch's own ops now run on one thread", threads)
        torch.set_num_threads(1)
    return threads
