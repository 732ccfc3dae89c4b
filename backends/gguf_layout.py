"""How llama.cpp's GGUF files order the rows of rotary projections, against Hugging Face's.

Within each head of a q or k projection, Hugging Face keeps the two rotary halves apart
([x0..x(d/2-1), y0..y(d/2-1)]); GGUF interleaves them ([x0, y0, x1, y1, ...]). Serving a model
from its GGUF blocks (backends/local/gguf_weights) reorders the file's rows into HF's order, and
exporting a LoRA adapter to GGUF (trainer/gguf_lora) reorders the adapter's rows into the file's.
numpy only, so both sides can use it without torch.
"""

from __future__ import annotations

import numpy as np


def rotary_row_order(n_rows: int, n_head: int, *, to_gguf: bool) -> np.ndarray:
    """Row index that reorders a q/k projection's rows from HF's layout to GGUF's (`to_gguf`) or back."""
    half = n_rows // n_head // 2
    split = (n_head, 2, half) if to_gguf else (n_head, half, 2)
    return np.arange(n_rows).reshape(split).swapaxes(1, 2).reshape(n_rows)
