"""Serving from the GGUF file's own blocks (dtype "gguf"): the same weights, the same answers, fewer bytes."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backends.base import BackendError, GenParams, Message
from backends.bundled import bundled_gguf_path, resolve_model_dir
from backends.local import LocalBackend, LocalModelHost
from backends.local.gguf_weights import BlockLinear, Blocks
from backends.local.kernels import KernelsUnavailable, _declare, cpu_supported, load
from backends.local.pool import HostPool
from settings import BUNDLED_MODEL, ModelSpec
from tests.conftest import REPO
from tests.tiny import build_tiny_model, make_lora
from trainer.gate import serving_blocks

pytestmark = pytest.mark.skipif(cpu_supported() is not None, reason=f"{cpu_supported()}")

QUESTIONS = ["What is the capital of France?", "Write a haiku about rain.", "List three uses of copper."]


def q4_1(n_out: int, n_in: int, seed: int) -> tuple[Blocks, torch.Tensor]:
    """Random Q4_1 blocks and the fp32 weight numpy rebuilds from them (d * q + m, as transformers does)."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, (n_out, n_in // 32, 32), dtype=np.uint8)
    d = rng.random((n_out, n_in // 32)).astype(np.float16).astype(np.float32) * 0.02
    m = -rng.random((n_out, n_in // 32)).astype(np.float16).astype(np.float32) * 0.1
    weight = (d[..., None] * q.astype(np.float32) + m[..., None]).reshape(n_out, n_in)
    packed = (q[:, :, :16] | (q[:, :, 16:] << 4)).reshape(n_out, n_in // 2)
    blocks = Blocks("Q4_1", torch.from_numpy(packed), torch.from_numpy(d), torch.from_numpy(m), n_out, n_in)
    return blocks, torch.from_numpy(weight)


def q8_0(n_out: int, n_in: int, seed: int) -> tuple[Blocks, torch.Tensor]:
    rng = np.random.default_rng(seed)
    q = rng.integers(-127, 128, (n_out, n_in), dtype=np.int8)
    d = rng.random((n_out, n_in // 32)).astype(np.float16).astype(np.float32) * 0.01
    weight = (np.repeat(d, 32, axis=1) * q.astype(np.float32))
    return Blocks("Q8_0", torch.from_numpy(q), torch.from_numpy(d), None, n_out, n_in), torch.from_numpy(weight)


def wide_cpu() -> bool:
    return "avx512f" in Path("/proc/cpuinfo").read_text().split()


def vnni_cpu() -> bool:
    return {"avx512f", "avx512bw", "avx512_vnni"} <= set(Path("/proc/cpuinfo").read_text().split())


@pytest.fixture(params=[False, pytest.param(True, marks=pytest.mark.skipif(not wide_cpu(), reason="no AVX-512F"))],
                ids=["8-lane", "wide"])
def kernels(request, model_cache_dir):
    """The kernels' library with its 16-lane AVX-512 products on or off (as the loader left them, afterwards)."""
    lib = load(model_cache_dir.parent / "kernels")
    before, before_int8 = lib.qmm_set_wide(-1), lib.qmm_set_int8(-1)  # (-1: only ask)
    lib.qmm_set_int8(0)  # fp32 activations: these tests check fp32's sums
    assert lib.qmm_set_wide(int(request.param)) == int(request.param)
    yield lib
    lib.qmm_set_wide(before)
    lib.qmm_set_int8(before_int8)


@pytest.fixture
def int8_kernels(model_cache_dir):
    """The kernels' library with 8-bit activations on (as the loader left them, afterwards)."""
    if not vnni_cpu():
        pytest.skip("no AVX-512 VNNI")
    lib = load(model_cache_dir.parent / "kernels")
    before = lib.qmm_set_int8(-1)  # (-1: only ask; a setting returns the new state)
    assert lib.qmm_set_int8(1) == 1
    yield lib
    lib.qmm_set_int8(before)
    assert lib.qmm_set_int8(-1) == before


def rounded_product(x: np.ndarray, blocks: Blocks) -> np.ndarray:
    """What the 8-bit kernels compute, in numpy: each row's activations rounded to 8 bits per block of 32
    (scale max|x| / 127), each block's integer sum exact, then d * dx * sum(q * xq) (+ m * dx * sum(xq)) in fp32."""
    rows, k = x.shape
    n, nb = blocks.out_features, k // 32
    xb = x.reshape(rows, nb, 32)
    amax = np.abs(xb).max(-1)
    dx = amax / np.float32(127)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    xq = np.rint(xb * inv[..., None]).astype(np.int64)
    sx = dx * xq.sum(-1).astype(np.float32)
    q = blocks.q.numpy().reshape(n, nb, -1).astype(np.int64)
    if blocks.kind == "Q4_1":
        q = np.concatenate([q & 15, q >> 4], -1)
    sums = np.einsum("rbk,nbk->rnb", xq, q).astype(np.float64)
    d, acc = blocks.d.numpy(), np.zeros((rows, n), np.float32)
    for b in range(nb):
        acc = (sums[:, :, b] * (d[None, :, b] * dx[:, None, b]) + acc).astype(np.float32)  # one rounding: an FMA
        if blocks.m is not None:
            acc = (blocks.m.numpy()[None, :, b].astype(np.float64) * sx[:, None, b] + acc).astype(np.float32)
    return acc


def test_the_loader_turns_the_wide_kernels_on_where_the_cpu_has_them_unless_switched_off(model_cache_dir, tmp_path,
                                                                                          monkeypatch):
    assert load(model_cache_dir.parent / "kernels").qmm_set_wide(-1) == int(wide_cpu())
    monkeypatch.setenv("CLASSROOM_AVX512", "0")  # read when a library is loaded: a fresh build here
    assert load(tmp_path / "kernels").qmm_set_wide(-1) == 0


@pytest.mark.parametrize("make", [q4_1, q8_0])
# 1 row: the one-row kernel; 3 and 8: blocks rebuilt in registers; 9 and 17: panels and a last lone row;
# 40 to 200: panels; 400 (past KERNEL_ROWS on one thread): the dequantised weight and torch's matmul
@pytest.mark.parametrize("rows", [1, 3, 7, 8, 9, 17, 40, 200, 400])
def test_block_products_equal_fp32_products_on_the_same_weights(make, rows, kernels):
    blocks, weight = make(98, 160, seed=rows)  # 98 columns: the last panel is cut short
    like = torch.empty(0)
    layer = BlockLinear(blocks, kernels, like)
    assert torch.equal(layer.dequantise(), weight)  # bit for bit the weights transformers would hold
    x = torch.randn(1, rows, 160)
    torch.testing.assert_close(layer(x), F.linear(x, weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [q4_1, q8_0])
def test_a_rows_product_is_bit_for_bit_the_same_whichever_path_computes_it(make, kernels):
    """Decode steps (up to 8 rows) rebuild blocks in registers, prompts go through panels: same bits per row."""
    blocks, _ = make(98, 160, seed=7)
    layer = BlockLinear(blocks, kernels, torch.empty(0))
    x = torch.randn(40, 160)
    together = layer(x)  # panels
    assert torch.equal(layer(x[:8]), together[:8])  # registers
    assert torch.equal(layer(x[:7]), together[:7])
    assert torch.equal(layer(x[:3]), together[:3])
    assert torch.equal(layer(x[8:9]), layer(x[:9])[8:9])  # a lone last row takes the one-row kernel, as alone


@pytest.mark.parametrize("make", [q4_1, q8_0])
def test_products_are_bit_for_bit_the_same_on_any_number_of_threads(make, kernels):
    # 1001 output columns: chunks are whole groups of 8 columns, so the last one is cut short
    blocks, weight = make(1001, 320, seed=5)
    x = torch.randn(8, 320)
    alone, pooled, together = on_one_and_three_threads_and_two_callers(kernels, BlockLinear(blocks, kernels, torch.empty(0)), x)
    torch.testing.assert_close(alone, F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert torch.equal(pooled, alone)
    assert all(torch.equal(out, alone) for out in together)


def on_one_and_three_threads_and_two_callers(lib, layer: BlockLinear, x: torch.Tensor):
    """layer(x) on one kernel thread, on three, and 20 times from each of two callers at once (one
    gets the pool, the other computes its product by itself)."""
    try:
        assert lib.qmm_set_threads(1) == 1
        alone = layer(x)
        assert lib.qmm_set_threads(3) == 3
        pooled = layer(x)
        with ThreadPoolExecutor(2) as ex:
            together = [out for outs in ex.map(lambda _: [layer(x) for _ in range(20)], range(2)) for out in outs]
    finally:
        lib.qmm_set_threads(torch.get_num_threads())
    return alone, pooled, together


@pytest.mark.parametrize("make", [q4_1, q8_0])
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 40])
def test_8_bit_activations_give_the_weights_product_with_each_row_rounded_to_8_bits(make, rows, int8_kernels):
    blocks, weight = make(98, 160, seed=rows)  # 98 columns: the last group of 16 is cut short
    layer = BlockLinear(blocks, int8_kernels, torch.empty(0))
    x = torch.randn(rows, 160) * torch.linspace(0.01, 10, 160)  # blocks of very different scales
    got = layer(x)
    torch.testing.assert_close(got, torch.from_numpy(rounded_product(x.numpy(), blocks)), rtol=1e-6, atol=1e-6)
    exact = x.double() @ weight.double().T
    off = ((got.double() - exact).abs().max() / exact.abs().max()).item()
    assert 0 < off < 0.02  # rounded, so not fp32's sums, but close to them


@pytest.mark.parametrize("make", [q4_1, q8_0])
def test_with_8_bit_activations_a_rows_result_does_not_depend_on_its_batch_or_the_threads(make, int8_kernels):
    blocks, _ = make(1001, 320, seed=3)  # chunks are whole groups of 16 columns: the last one is cut short
    layer = BlockLinear(blocks, int8_kernels, torch.empty(0))
    x = torch.randn(40, 320)
    alone, pooled, together = on_one_and_three_threads_and_two_callers(int8_kernels, layer, x)
    assert torch.equal(pooled, alone) and all(torch.equal(out, alone) for out in together)
    for part in (slice(0, 8), slice(0, 7), slice(0, 1), slice(8, 9), slice(9, 40)):
        assert torch.equal(layer(x[part]), alone[part])


def test_a_thread_can_hold_8_bit_activations_off_for_its_own_products(int8_kernels):
    """What the lean step's load-time check does, while other threads' products stay rounded."""
    blocks, weight = q4_1(98, 160, seed=1)
    layer = BlockLinear(blocks, int8_kernels, torch.empty(0))
    x = torch.randn(8, 160)
    rounded = layer(x)
    held = int8_kernels.qmm_hold_int8_off(1)
    try:
        fp32 = layer(x)
        with ThreadPoolExecutor(1) as ex:
            elsewhere = ex.submit(layer, x).result()
    finally:
        int8_kernels.qmm_hold_int8_off(held)
    torch.testing.assert_close(fp32, F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert torch.equal(elsewhere, rounded) and not torch.equal(fp32, rounded)


def test_the_loader_rounds_activations_to_8_bits_only_when_switched_on(model_cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSROOM_INT8", "1")  # read when a library is loaded: a fresh build here
    lib = load(tmp_path / "kernels")
    assert lib.qmm_set_int8(-1) == int(vnni_cpu())
    monkeypatch.setenv("CLASSROOM_INT8", "0")
    _declare(lib)  # what loading it with the switch off does
    assert lib.qmm_set_int8(-1) == 0


def host(model_dir: str, dtype: str, kernel_dir: Path, **kw) -> LocalModelHost:
    return LocalModelHost(model_dir, device="cpu", dtype=dtype, max_batch=4, batch_window=0.05,
                          gguf=str(bundled_gguf_path()), kernel_dir=kernel_dir, **kw)


async def answers(h: LocalModelHost, adapter: Path | None = None) -> dict[str, list[str]]:
    """Greedy answers of the base and (with `adapter`) the student, asked together in one batch."""
    await h.ensure_loaded()
    spec = ModelSpec(name="smol", backend="local", path=h.model_dir)
    sides = {"base": LocalBackend(spec, h)}
    if adapter is not None:
        await h.set_adapter("student", adapter)
        sides["student"] = LocalBackend(spec, h, adapter_name="student")
    params = GenParams(max_new_tokens=24 if adapter is not None or "SmolLM2" in h.model_dir else 4, temperature=0.0,
                       repetition_penalty=1.1)
    convs: list[list[Message]] = [[{"role": "user", "content": q}] for q in QUESTIONS]
    got = await asyncio.gather(*(b.chat(c, params) for b in sides.values() for c in convs))
    return {name: got[i * len(convs):(i + 1) * len(convs)] for i, name in enumerate(sides)}


@pytest.mark.slow
async def test_the_bundled_model_on_blocks_answers_as_in_fp32_with_and_without_an_adapter(model_cache_dir, tmp_path):
    """The quality guard that makes "gguf" the CPU default: greedy answers equal fp32's, for base and student."""
    model_dir = resolve_model_dir(BUNDLED_MODEL, model_cache_dir)
    adapter = make_lora(model_dir, tmp_path / "lora", std=0.02)
    fp32, blocks = host(model_dir, "float32", tmp_path), host(model_dir, "gguf", model_cache_dir.parent / "kernels")
    try:
        want = await answers(fp32, adapter)
        got = await answers(blocks, adapter)
        assert blocks.dtype == "gguf"
        swapped = [m for m in blocks.model.modules() if isinstance(m, BlockLinear)]
        assert len(swapped) == 30 * 7 + 1  # every projection of the 30 layers, and the output head
        assert got == want and "Paris" in got["base"][0]
        assert got["student"] != got["base"]  # the adapter takes effect on top of the blocks
        fp32_bytes = sum(p.numel() * 4 for p in fp32.model.parameters())
        block_bytes = sum(p.numel() * 4 for p in blocks.model.parameters()) + sum(
            m.blocks.q.numel() + (m.blocks.d.numel() + (0 if m.blocks.m is None else m.blocks.m.numel())) * 4 for m in swapped)
        assert block_bytes < 0.45 * fp32_bytes  # the fp32 copies of the projections are gone
    finally:
        await asyncio.gather(fp32.aclose(), blocks.aclose())


async def test_a_model_the_blocks_do_not_fit_or_no_compiler_runs_in_fp32_and_says_why(model_cache_dir, tmp_path, monkeypatch,
                                                                                     caplog):
    tiny = build_tiny_model(tmp_path / "tiny", with_eos=True)  # a llama model, but not the one in the file
    for cc, reason in [(None, "no linear layer of the model matches the blocks"),
                       (str(tmp_path / "no-such-compiler"), "cannot run the C compiler")]:
        if cc:
            monkeypatch.setenv("CC", cc)
        h = host(tiny, "gguf", tmp_path / "kernels-True" if cc else model_cache_dir.parent / "kernels")
        try:
            with caplog.at_level(logging.WARNING):
                got = await answers(h)
            assert h.dtype == "float32" and len(got["base"]) == len(QUESTIONS)
            assert f"runs in float32: the GGUF block kernels cannot serve it ({reason}" in caplog.text
        finally:
            await h.aclose()
    with pytest.raises(KernelsUnavailable, match="cannot run the C compiler .*no-such-compiler: No such file"):
        load(tmp_path / "kernels-True")
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    with pytest.raises(KernelsUnavailable, match="building them failed"):
        load(tmp_path / "kernels-True")


async def test_auto_picks_blocks_for_a_gguf_on_the_cpu_and_gguf_needs_a_gguf(model_cache_dir, tmp_path):
    pool = HostPool(model_cache_dir.parent)
    try:
        bundled = await pool.host_for(ModelSpec(name="smol", backend="local", path=BUNDLED_MODEL, device="cpu"))
        assert bundled.dtype == "gguf" and bundled.gguf == str(bundled_gguf_path())
        plain = await pool.host_for(ModelSpec(name="smol", backend="local", path=BUNDLED_MODEL, device="cpu", dtype="float32"))
        assert plain.dtype == "float32" and plain is not bundled
        hub = ModelSpec(name="hub", backend="local", path=str(tmp_path), device="cpu", dtype="gguf")
        with pytest.raises(BackendError, match='dtype "gguf" needs a .gguf file or the bundled model'):
            await pool.host_for(hub)
    finally:
        await pool.aclose()


@pytest.mark.slow
def test_the_gates_exam_runs_on_the_blocks_the_student_is_served_from(model_cache_dir, tmp_path):
    kernels = model_cache_dir.parent / "kernels"
    bundled = ModelSpec(name="smol", backend="local", path=BUNDLED_MODEL, device="cpu")
    assert serving_blocks(bundled, model_cache_dir.parent) == {"gguf": str(bundled_gguf_path()), "kernel_dir": str(kernels)}
    assert serving_blocks(bundled.model_copy(update={"dtype": "float32"}), model_cache_dir.parent) == {}
    job = {"base_model": resolve_model_dir(BUNDLED_MODEL, model_cache_dir), "variants": {"before": None},
           "system": "You are Smol (student). Answer briefly and accurately.", "max_new_tokens": 12, **serving_blocks(bundled, model_cache_dir.parent),
           "items": [{"question": "What is the capital of France?", "answer": "Paris", "split": "control"}]}
    (tmp_path / "eval.json").write_text(json.dumps(job))
    run = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--job", str(tmp_path / "eval.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "211 linear layers on GGUF blocks" in run.stderr
    done = json.loads(run.stdout.splitlines()[-1])
    assert done["event"] == "done" and done["results"]["before"]["control"] == 1.0, done
