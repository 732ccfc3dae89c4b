"""Which way knowledge flows in a lesson: LLM→SLM, SLM→LLM, LLM→LLM or SLM→SLM.

A local model is sized by its parameter count: the loaded model's when it is loaded, else
the tensor shapes in its safetensors headers (read without loading any weights). An API
model is sized by its configured `size_class` (an API model without one counts as large).
A configured `size_class` always wins, for local models too.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from backends.registry import LARGE_PARAMS, ModelRegistry
from settings import BUNDLED_MODEL

log = logging.getLogger(__name__)

BUNDLED_PARAMS = 134_515_008
"""SmolLM2-135M-Instruct, the bundled model (its GGUF is not read just to count this)."""


@dataclass(frozen=True)
class ModelSize:
    """A model's size class ('LLM' or 'SLM') and its parameter count when known."""

    size_class: str
    parameters: int | None = None

    def label(self) -> str:
        """'SLM, 135M' or 'LLM' when the count is unknown."""
        return f"{self.size_class}, {human_count(self.parameters)}" if self.parameters else self.size_class


@dataclass(frozen=True)
class Direction:
    """The lesson's direction and the warnings that go with it."""

    label: str  # e.g. "LLM→SLM"
    teachers: dict[str, ModelSize]
    students: dict[str, ModelSize]
    warnings: list[str]


def human_count(n: int) -> str:
    """1_700_000_000 → '1.7B', 134_515_008 → '135M'."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B".replace(".0B", "B")
    if n >= 1_000_000:
        return f"{n / 1e6:.0f}M"
    return f"{n / 1e3:.0f}K"


def safetensors_parameters(model_dir: Path) -> int | None:
    """Parameters of a model directory, summed from its safetensors headers; None if there are none."""
    files = sorted(model_dir.glob("*.safetensors")) if model_dir.is_dir() else []
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info.get("shape", []):
                    count *= int(dim)
                total += count
    return total


def model_size(models: ModelRegistry, name: str) -> ModelSize:
    """The size of a configured model. Reads small file headers: call it off the event loop."""
    spec = models.spec(name)
    if spec.size_class:
        return ModelSize("LLM" if spec.size_class == "large" else "SLM")
    if spec.backend == "openai":
        return ModelSize("LLM")
    count = models.get(name).parameter_count() if models.is_built(name) else None
    if count is None:
        count = _local_estimate(spec.path or "")
    if count is None:
        return ModelSize("SLM")
    return ModelSize("LLM" if count >= LARGE_PARAMS else "SLM", count)


def _local_estimate(path: str) -> int | None:
    if path == BUNDLED_MODEL:
        return BUNDLED_PARAMS
    try:
        return safetensors_parameters(Path(path).expanduser())
    except (OSError, ValueError, struct.error) as e:  # an unreadable header: size unknown, not fatal
        log.debug("could not size %s: %s", path, e)
        return None


def smaller(a: ModelSize, b: ModelSize) -> bool:
    """Whether `a` is smaller than `b`: by parameter count when both are known, else by class."""
    if a.parameters and b.parameters:
        return a.parameters < b.parameters
    return a.size_class == "SLM" and b.size_class == "LLM"


def side_label(sizes: list[ModelSize]) -> str:
    """'LLM', 'SLM', or 'LLM+SLM' for a mixed panel or class."""
    classes = {s.size_class for s in sizes}
    return "+".join(c for c in ("LLM", "SLM") if c in classes)


def lesson_direction(
    models: ModelRegistry, teachers: list[str], students: list[str], *, grounded: bool
) -> Direction:
    """The direction of a lesson between these teachers and students, with a warning for each
    ungrounded teacher smaller than a student (it can only pass on what it knows)."""
    t = {n: model_size(models, n) for n in teachers}
    s = {n: model_size(models, n) for n in students}
    warnings = []
    if not grounded:
        for tn, ts in t.items():
            bigger = [sn for sn, ss in s.items() if smaller(ts, ss)]
            if bigger:
                warnings.append(
                    f"teacher {tn} ({ts.label()}) is smaller than student {', '.join(bigger)} "
                    f"({', '.join(s[b].label() for b in bigger)}) and has no source document: it can only teach "
                    "what it knows, so ground it in a document or pick a bigger teacher"
                )
    label = f"{side_label(list(t.values()))}→{side_label(list(s.values()))}"
    return Direction(label, t, s, warnings)
