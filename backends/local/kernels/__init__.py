"""The GGUF block kernels (qmm.c): built once with the machine's C compiler, loaded with ctypes.

`load()` returns the library, or raises KernelsUnavailable with the reason (not x86-64, no AVX2
or FMA, no compiler, a failed build); callers then keep fp32 weights. The same source builds for
AVX-512 (16 lanes) where the CPU has it and for AVX2 + FMA (8 lanes) elsewhere;
CLASSROOM_KERNELS_ISA=avx2 picks the AVX2 build on any CPU (to compare the two, or to rule one out).
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

SOURCE = Path(__file__).with_name("qmm.c")
COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-shared", "-fPIC", "-pthread"]
ISA_FLAGS = {"avx2": ["-mavx2", "-mfma"], "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw"]}
ISA_LANES = {"avx2": 8, "avx512": 16}
FLAGS = COMMON_FLAGS + ISA_FLAGS["avx2"]  # the build every supported CPU runs
_lock = threading.Lock()
_loaded: dict[Path, ctypes.CDLL] = {}


class KernelsUnavailable(RuntimeError):
    """The kernels cannot run here; the message says why."""


def _cpu_flags() -> set[str]:
    try:
        line = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def cpu_supported() -> str | None:
    """None when this CPU runs the kernels, else the reason it does not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the kernels need an x86-64 CPU, not {platform.machine()}"
    flags = _cpu_flags()
    if not flags:
        return "cannot read /proc/cpuinfo to check for AVX2"
    missing = [f for f in ("avx2", "fma") if f not in flags]
    return f"the CPU lacks {' and '.join(missing)}" if missing else None


def isas() -> list[str]:
    """The builds this CPU can run, fastest first (empty where `cpu_supported` gives a reason)."""
    if cpu_supported() is not None:
        return []
    flags = _cpu_flags()
    return (["avx512"] if {"avx512f", "avx512bw"} <= flags else []) + ["avx2"]


def default_isa() -> str | None:
    """The build `load` uses: the fastest this CPU runs, unless CLASSROOM_KERNELS_ISA names another it runs."""
    runs = isas()
    wanted = os.environ.get("CLASSROOM_KERNELS_ISA", "").strip().lower()
    if wanted in runs:
        return wanted
    return runs[0] if runs else None


def load(cache_dir: Path, isa: str | None = None) -> ctypes.CDLL:
    """The library built for `isa` (default: `default_isa()`), built into `cache_dir` on first use.

    Raises KernelsUnavailable."""
    reason = cpu_supported()
    if reason:
        raise KernelsUnavailable(reason)
    isa = isa or default_isa()
    if isa not in isas():
        raise KernelsUnavailable(f"this CPU cannot run the {isa} build (it runs: {', '.join(isas())})")
    flags = COMMON_FLAGS + ISA_FLAGS[isa]
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:12]
    target = Path(cache_dir) / f"qmm-{isa}-{key}.so"
    with _lock:
        if target in _loaded:
            return _loaded[target]
        if not target.is_file():
            _build(target, flags)
        lib = ctypes.CDLL(str(target))
        _declare(lib)
        if lib.qmm_lanes() != ISA_LANES[isa]:
            raise KernelsUnavailable(f"the {isa} build has {lib.qmm_lanes()} lanes, not {ISA_LANES[isa]}")
        _loaded[target] = lib
        return lib


def _build(target: Path, flags: list[str]) -> None:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise KernelsUnavailable("no C compiler (gcc or cc) to build them")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        try:
            done = subprocess.run([cc, *flags, "-o", str(partial), str(SOURCE)], capture_output=True, text=True)
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
    if hasattr(lib, "qmm_lanes"):  # older builds (bench/kernels.py --against) lack it
        lib.qmm_lanes.argtypes = []
        lib.qmm_lanes.restype = ctypes.c_int
    for fn in (lib.q4_1_mm, lib.q8_0_mm, lib.q4_1_dequant, lib.q8_0_dequant):
        fn.restype = None
