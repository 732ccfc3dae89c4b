"""`classroom gguf`: write a student's adapter as a GGUF LoRA file for llama.cpp or Ollama."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from app import open_app
from cli import CliError
from settings import BUNDLED_MODEL, ModelSpec, Settings
from storage import training as tq


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `gguf` on the CLI's subcommand parser."""
    s = sub.add_parser("gguf", help="write a student's adapter as a GGUF LoRA file, to serve it with llama.cpp or Ollama")
    s.add_argument("--student", default=None, help="a trainable local student (default: the default student)")
    s.add_argument("--version", default=None, help="an adapter version such as 3 or v3 (default: the live one)")
    s.add_argument("--out", default=".", help="the folder to write into (default: the current one)")


async def cmd_gguf(settings: Settings, args: argparse.Namespace) -> int:
    """Write the chosen adapter as <student>-v<N>.lora.gguf and print how to serve it."""
    student = args.student or settings.default_student
    spec = settings.models.get(student)
    if spec is None or spec.backend != "local":
        raise CliError(f"{student} is not a local student; GGUF export needs a local transformers model")
    async with open_app(settings) as app:
        row = await app.store.call(_pick_adapter, student, args.version)
    out = await asyncio.to_thread(_write, row, spec, settings.cache_dir, args.out, student)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB): {student} adapter v{row['version']} ({row['status']})")
    base = _base_gguf(spec)
    if base is None:
        print("its base is not a GGUF file: convert it first with llama.cpp's convert_hf_to_gguf.py, then:")
        base = Path("BASE.gguf")
    print(f"  llama.cpp: llama-server -m {base} --lora {out}")
    print(f"  Ollama:    a Modelfile with the lines  FROM {base}  and  ADAPTER {out}")
    return 0


def _write(row: dict[str, Any], spec: ModelSpec, cache_dir: Path, out_dir: str, student: str) -> Path:
    """Write the adapter of `row` into `out_dir`; blocking (it may convert the bundled model first)."""
    from trainer.gguf_lora import GgufExportError, write_gguf_lora

    if not Path(row["path"]).is_dir():
        raise CliError(f"{student} adapter v{row['version']} is no longer on disk ({row['path']})")
    out = Path(out_dir).expanduser() / f"{student}-v{row['version']}.lora.gguf"
    try:
        return write_gguf_lora(row["path"], _base_config(spec, cache_dir), out, name=f"{student} v{row['version']}")
    except (GgufExportError, OSError) as e:
        raise CliError(str(e)) from None


def _pick_adapter(db: Any, student: str, version: str | None) -> dict[str, Any]:
    if version is None:
        row = tq.active_adapter(db, student)
        if row is None:
            raise CliError(f"{student} has no live adapter (it speaks with its base weights); pass --version to pick one")
        return row
    try:
        number = int(version.lstrip("vV"))
    except ValueError:
        raise CliError(f"--version takes a number such as 3 or v3, not {version!r}") from None
    row = tq.adapter_by_version(db, student, number)
    if row is None or row["status"] == "deleted":
        raise CliError(f"{student} has no adapter v{number}; `classroom versions --student {student}` lists them")
    return row


def _base_config(spec: ModelSpec, cache_dir: Path) -> dict[str, Any]:
    """The student's base model config (the bundled model is converted once if it was not yet)."""
    from backends.bundled import resolve_model_dir
    from trainer.gguf_lora import base_config

    return base_config(resolve_model_dir(spec.path, cache_dir))


def _base_gguf(spec: ModelSpec) -> Path | None:
    from backends.bundled import bundled_gguf_path

    if spec.path == BUNDLED_MODEL:
        return bundled_gguf_path()
    if spec.path.endswith(".gguf"):
        return Path(spec.path).expanduser()
    return None
