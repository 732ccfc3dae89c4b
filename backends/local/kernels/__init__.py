"""The CPU kernels: GGUF block products (qmm.c) and the lean decode step's attention, rotary
embeddings and LoRA terms (decode.c), built once into one library with the machine's C compiler
and loaded with ctypes.

`load()` returns the library, or raises KernelsUnavailable with the reason (not x86-64, no AVX2
or FMA, no compiler, a failed build); callers then keep fp32 weights.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCES = (Path(__file__).with_name("qmm.c"), Path(__file__).with_name("decode.c"))
HEADERS = (Path(__file__).with_name("simd.h"),)  # included by the sources: part of what a build is keyed on
FLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-shared", "-fPIC", "-pthread"]
WIDE_SWITCH = "CLASSROOM_AVX512"
"""Set to 0 to keep the 8-lane kernels on a CPU with AVX-512 (to compare, or to rule the wide ones out)."""
INT8_SWITCH = "CLASSROOM_INT8"
"""Set to 1 to round activations to 8 bits (AVX-512 VNNI CPUs only): faster, and answers can differ."""
_lock = threading.Lock()
_loaded: dict[Path, ctypes.CDLL] = {}


class KernelsUnavailable(RuntimeError):
    """The kernels cannot run here; the message says why."""


def cpu_supported() -> str | None:
    """None when this CPU runs the kernels, else the reason it does not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the kernels need an x86-64 CPU, not {platform.machine()}"
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return "cannot read /proc/cpuinfo to check for AVX2"
    missing = [f for f in ("avx2", "fma") if f not in flags.split()]
    return f"the CPU lacks {' and '.join(missing)}" if missing else None


def load(cache_dir: Path) -> ctypes.CDLL:
    """The built library (built into `cache_dir` on first use). Raises KernelsUnavailable."""
    reason = cpu_supported()
    if reason:
        raise KernelsUnavailable(reason)
    source = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    key = hashlib.sha256(source + " ".join(FLAGS).encode()).hexdigest()[:12]
    target = Path(cache_dir) / f"qmm-{key}.so"
    with _lock:
        if target in _loaded:
            return _loaded[target]
        if not target.is_file():
            _build(target)
        lib = ctypes.CDLL(str(target))
        _declare(lib)
        _loaded[target] = lib
        return lib


def _build(target: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise KernelsUnavailable("no C compiler (gcc or cc) to build them")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        try:
            done = subprocess.run([cc, *FLAGS, "-o", str(partial), *map(str, SOURCES), "-lm"], capture_output=True,
                                  text=True)
        except OSError as e:
            raise KernelsUnavailable(f"cannot run the C compiler {cc}: {e.strerror}") from e
        if done.returncode != 0:
            raise KernelsUnavailable(f"building them failed: {done.stderr.strip()[-300:]}")
        partial.replace(target)  # another process may build the same file: each rename is whole


def _declare(lib: ctypes.CDLL) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.q4_1_mm.argtypes = [p, i, i, p, p, p, i, p]
    lib.q8_0_mm.argtypes = [p, i, i, p, p, i, p]
    lib.q4_1_dequant.argtypes = [p, p, p, i, i, p]
    lib.q8_0_dequant.argtypes = [p, p, i, i, p]
    lib.qmm_set_threads.argtypes = [ctypes.c_int]
    lib.qmm_set_threads.restype = ctypes.c_int
    if hasattr(lib, "qmm_set_wide"):  # bench/kernels.py also loads earlier builds, from before it
        lib.qmm_set_wide.argtypes = [ctypes.c_int]
        lib.qmm_set_wide.restype = ctypes.c_int
        lib.qmm_set_wide(os.environ.get(WIDE_SWITCH, "").strip() != "0")
    if hasattr(lib, "qmm_set_int8"):
        lib.qmm_set_int8.argtypes = [ctypes.c_int]
        lib.qmm_set_int8.restype = ctypes.c_int
        lib.qmm_set_int8(os.environ.get(INT8_SWITCH, "").strip() == "1")
        lib.qmm_hold_int8_off.argtypes = [ctypes.c_int]
        lib.qmm_hold_int8_off.restype = ctypes.c_int
    for fn in (lib.q4_1_mm, lib.q8_0_mm, lib.q4_1_dequant, lib.q8_0_dequant):
        fn.restype = None
    if hasattr(lib, "attend_decode"):  # bench/kernels.py also loads builds of qmm.c alone
        lib.attend_decode.argtypes = [p, i, i, i, i, p, p, i, i, i, i, i, i, i, p, ctypes.c_float, p]
        lib.attend_decode.restype = ctypes.c_int
        lib.rope_decode.argtypes = [p, i, p, i, i, i, p, p]
        lib.rope_decode.restype = ctypes.c_int
        lib.lora_add.argtypes = [p, i, i, p, i, p, i, ctypes.c_float, p, i, p]
        lib.lora_add.restype = ctypes.c_int
