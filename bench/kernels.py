"""The GGUF block kernels (backends/local/kernels/qmm.c) against an earlier version of them, side by side.

Builds this checkout's qmm.c and the one at git revision REV into a temporary directory, then, in
one process and alternating, times every product of one decode step of the bundled model's shape
(30 layers of 7 Q4_1 projections and the Q8_0 output head, each its own random blocks, 96 MB in
all as in the model) at each row count, and checks that both libraries give the same bits.
With --int8 this checkout's library rounds the activations to 8 bits (qmm_set_int8), and the
last column gives the largest difference from the other library's outputs, relative to the
largest output, instead.

    .venv/bin/python bench/kernels.py --against 1785d03~2 --rows 4,8,16,37,296 --threads 2
    .venv/bin/python bench/kernels.py --against HEAD --int8 --rows 1,8,296 --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backends.local.kernels import FLAGS, _declare  # noqa: E402

SOURCE = "backends/local/kernels/qmm.c"
# SmolLM2-135M: q, k, v, o, gate, up, down per layer (out, in); the tied output head is Q8_0
LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
LAYERS, HEAD = 30, (49152, 576)


def build(source: str, out: Path) -> ctypes.CDLL:
    src = out.with_suffix(".c")
    src.write_text(source)
    # the kernels' headers (simd.h) are this checkout's, whichever revision the source is from
    subprocess.run(["gcc", *FLAGS, f"-I{REPO / 'backends/local/kernels'}", "-o", str(out), str(src)], check=True)
    lib = ctypes.CDLL(str(out))
    _declare(lib)  # the argument types the app declares
    return lib


def weights(rng: np.random.Generator) -> list[tuple[str, int, int, tuple[np.ndarray, ...]]]:
    """Every projection of the model, each its own blocks (so a step reads them all from memory, as decoding does)."""
    out = []
    for n, k in LAYER * LAYERS:
        out.append(("Q4_1", n, k, (rng.integers(0, 256, (n, k // 2), dtype=np.uint8),
                                   (rng.random((n, k // 32)) * 0.02).astype(np.float32),
                                   (-rng.random((n, k // 32)) * 0.1).astype(np.float32))))
    n, k = HEAD
    out.append(("Q8_0", n, k, (rng.integers(-127, 128, (n, k), dtype=np.int8), (rng.random((n, k // 32)) * 0.01).astype(np.float32))))
    return out


def step(lib: ctypes.CDLL, ws: list, x: dict[int, np.ndarray], rows: int) -> list[np.ndarray]:
    """Every product of one step, in the model's order; their outputs."""
    outs = []
    for kind, n, k, w in ws:
        out = np.empty((rows, n), np.float32)
        if kind == "Q4_1":
            lib.q4_1_mm(x[k].ctypes.data, rows, k, w[0].ctypes.data, w[1].ctypes.data, w[2].ctypes.data, n, out.ctypes.data)
        else:
            lib.q8_0_mm(x[k].ctypes.data, rows, k, w[0].ctypes.data, w[1].ctypes.data, n, out.ctypes.data)
        outs.append(out)
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="git revision of the kernels to compare with")
    ap.add_argument("--rows", default="1,4,8,16,37,296")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--int8", action="store_true", help="8-bit activations in this checkout's library")
    args = ap.parse_args()
    old_source = subprocess.run(["git", "show", f"{args.against}:{SOURCE}"], cwd=REPO, check=True, capture_output=True,
                                text=True).stdout
    rng = np.random.default_rng(0)
    ws = weights(rng)
    with tempfile.TemporaryDirectory() as tmp:
        libs = {"old": build(old_source, Path(tmp) / "old.so"), "new": build((REPO / SOURCE).read_text(), Path(tmp) / "new.so")}
        for lib in libs.values():
            lib.qmm_set_threads(args.threads)
            if hasattr(lib, "qmm_set_int8"):
                lib.qmm_set_int8(0)
        if args.int8 and libs["new"].qmm_set_int8(1) != 1:
            sys.exit("this CPU has no AVX-512 VNNI: no 8-bit activations")
        last = "largest difference" if args.int8 else "same bits"
        print(f"| rows | {args.against} | this checkout | speed-up | {last} |\n|---|---|---|---|---|")
        for rows in (int(r) for r in args.rows.split(",")):
            x = {k: rng.standard_normal((rows, k)).astype(np.float32) for k in (576, 1536)}
            pairs = list(zip(step(libs["old"], ws, x, rows), step(libs["new"], ws, x, rows), strict=True))
            if args.int8:
                same = f"{max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in pairs):.1e}"
            else:
                same = all(np.array_equal(a, b) for a, b in pairs)
            best = {"old": float("inf"), "new": float("inf")}
            for _ in range(max(1, args.repeats if rows <= 64 else args.repeats // 5)):
                for name, lib in libs.items():
                    started = time.perf_counter()
                    step(lib, ws, x, rows)
                    best[name] = min(best[name], time.perf_counter() - started)
            print(f"| {rows} | {best['old'] * 1000:.1f} ms | {best['new'] * 1000:.1f} ms | {best['old'] / best['new']:.2f}× | {same} |",
                  flush=True)


if __name__ == "__main__":
    main()
