"""Dynamic batching on a local model host: concurrent requests share decode steps without changing answers.

All on the tiny random model (no end-of-turn token, so every request runs to its token limit
unless stopped), so each test runs in seconds and depends on step counts, not wall-clock speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends.base import BackendError, GenParams, Message
from backends.local import LocalBackend, LocalModelHost
from backends.local.generation import generate_completion
from backends.local.kernels import cpu_supported
from settings import ModelSpec
from tests.tiny import build_tiny_model, make_lora

PROMPTS: list[list[Message]] = [
    [{"role": "user", "content": "Say hello in three languages."}],
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "Name a long river in Africa and tell me where it starts."}],
]


def greedy(n: int) -> GenParams:
    return GenParams(max_new_tokens=n, temperature=0.0)


def spec(name: str, path: str) -> ModelSpec:
    return ModelSpec(name=name, backend="local", path=path, device="cpu", generation={"temperature": 0.0})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
async def host(tiny_dir: str) -> AsyncIterator[LocalModelHost]:
    """A host that batches up to 4 requests and waits 50 ms for company when idle."""
    host = LocalModelHost(tiny_dir, device="cpu", max_batch=4, batch_window=0.05)
    await host.ensure_loaded()
    yield host
    await host.aclose()


async def batched(host: LocalModelHost, rows: int) -> None:
    """Wait (up to a minute on a loaded machine) until `rows` requests have shared a decode step."""
    for _ in range(1200):
        if host.peak_batch >= rows:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw {rows} requests in one batch")


def backend(host: LocalModelHost, adapter: str | None = None, name: str = "m") -> LocalBackend:
    return LocalBackend(spec(name, host.model_dir), host, adapter)


async def test_batched_greedy_answers_equal_unbatched_and_plain_generate(host: LocalModelHost) -> None:
    model = backend(host)
    lengths = [30, 7, 19, 41]  # different prompt lengths and token limits, so rows pad and leave at different steps
    together = await asyncio.gather(*(model.chat(p, greedy(n)) for p, n in zip(PROMPTS, lengths, strict=True)))
    assert host.peak_batch == 4
    alone = [await model.chat(p, greedy(n)) for p, n in zip(PROMPTS, lengths, strict=True)]
    assert together == alone

    def plain() -> list[str]:
        import threading

        return [
            generate_completion(host.model, host.tokenizer, p, greedy(n), cancel=threading.Event()).text
            for p, n in zip(PROMPTS, lengths, strict=True)
        ]

    assert await host.run(plain) == together
    assert len(set(together)) == 4


async def test_a_short_request_returns_while_a_long_one_in_the_same_batch_runs_on(host: LocalModelHost) -> None:
    model = backend(host)
    long = asyncio.create_task(model.chat(PROMPTS[0], greedy(3000)))
    short = await asyncio.wait_for(model.chat(PROMPTS[1], greedy(5)), timeout=60)
    assert short and not long.done()
    assert host.peak_batch == 2
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long


async def test_cancelling_a_running_request_frees_its_slot_for_a_waiting_one(tiny_dir: str) -> None:
    host = LocalModelHost(tiny_dir, device="cpu", max_batch=2)
    model = backend(host)
    try:
        first = asyncio.create_task(model.chat(PROMPTS[0], greedy(3000)))
        second = asyncio.create_task(model.chat(PROMPTS[1], greedy(3000)))
        waiting = asyncio.create_task(model.chat(PROMPTS[2], greedy(4)))
        await batched(host, 2)
        await asyncio.sleep(0.2)
        assert not waiting.done()  # both slots are taken by endless requests
        first.cancel()
        assert await asyncio.wait_for(waiting, timeout=60)
        assert not second.done()
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
    finally:
        await host.aclose()


async def test_a_request_cancelled_while_waiting_never_starts(tiny_dir: str) -> None:
    host = LocalModelHost(tiny_dir, device="cpu", max_batch=1)
    model = backend(host)
    try:
        running = asyncio.create_task(model.chat(PROMPTS[0], greedy(3000)))
        deltas: list[str] = []

        async def listen() -> None:
            async for d in model.stream(PROMPTS[1], greedy(3000)):
                deltas.append(d)

        queued = asyncio.create_task(listen())
        await asyncio.sleep(0.3)
        queued.cancel()
        running.cancel()
        await asyncio.gather(running, queued, return_exceptions=True)
        assert await asyncio.wait_for(model.chat(PROMPTS[2], greedy(3)), timeout=60)
        assert deltas == [] and host.peak_batch == 1
    finally:
        await host.aclose()


async def test_teacher_rows_never_see_the_adapter_and_student_rows_always_do(
    host: LocalModelHost, tmp_path: Path
) -> None:
    teacher, student = backend(host, None, "teacher"), backend(host, "student", "student")
    base = [await teacher.chat(p, greedy(24)) for p in PROMPTS[:2]]
    await host.set_adapter("student", make_lora(host.model_dir, tmp_path / "a1", std=0.5))
    tuned = [await student.chat(p, greedy(24)) for p in PROMPTS[:2]]
    assert tuned != base
    mixed = await asyncio.gather(
        teacher.chat(PROMPTS[0], greedy(24)),
        student.chat(PROMPTS[0], greedy(24)),
        teacher.chat(PROMPTS[1], greedy(24)),
        student.chat(PROMPTS[1], greedy(24)),
    )
    assert host.peak_batch == 4
    assert mixed == [base[0], tuned[0], base[1], tuned[1]]


async def test_an_adapter_swap_during_a_batch_changes_only_requests_that_start_after_it(
    host: LocalModelHost, tmp_path: Path
) -> None:
    student = backend(host, "student")
    a1 = make_lora(host.model_dir, tmp_path / "a1", std=0.5)
    a2 = make_lora(host.model_dir, tmp_path / "a2", seed=1, std=0.5)
    await host.set_adapter("student", a1)
    on_a1 = await student.chat(PROMPTS[0], greedy(60))
    await host.set_adapter("student", a2)
    on_a2 = await student.chat(PROMPTS[0], greedy(60))
    assert on_a1 != on_a2
    await host.set_adapter("student", a1)

    stream = student.stream(PROMPTS[0], greedy(60))
    first = await anext(stream)  # the request is running on a1
    await host.set_adapter("student", a2)
    after = await student.chat(PROMPTS[0], greedy(60))
    rest = [d async for d in stream]
    assert first + "".join(rest) == on_a1
    assert after == on_a2
    assert list(host.model.peft_config) == [next(iter(host.model.peft_config))]  # a1 went once unused


async def test_closing_a_batching_host_drops_queued_requests_and_ends_running_ones(tiny_dir: str) -> None:
    host = LocalModelHost(tiny_dir, device="cpu", max_batch=2)
    model = backend(host)
    running = [asyncio.create_task(model.chat(p, greedy(3000))) for p in PROMPTS[:2]]
    queued = asyncio.create_task(model.chat(PROMPTS[2], greedy(3000)))
    await batched(host, 2)
    await host.aclose()
    for task in running:
        with pytest.raises(BackendError, match="before the answer was finished"):
            await task
    with pytest.raises(BackendError, match="dropped"):
        await queued


@pytest.mark.slow
async def test_smol_batched_answers_equal_plain_generate(model_cache_dir: Path) -> None:
    """The quality guard for the faster path: on the real model, batched greedy answers are plain generate's."""
    import threading

    from backends.bundled import resolve_model_dir
    from settings import BUNDLED_MODEL

    smol = LocalModelHost(resolve_model_dir(BUNDLED_MODEL, model_cache_dir), device="cpu", max_batch=4, batch_window=0.05)
    try:
        await smol.ensure_loaded()
        model = backend(smol)
        questions = ["What is the capital of France?", "Write a haiku about rain.", "List three uses of copper."]
        convs: list[list[Message]] = [[{"role": "user", "content": q}] for q in questions]
        params = GenParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.1)
        together = await asyncio.gather(*(model.chat(c, params) for c in convs))
        assert smol.peak_batch == 3
        plain = await smol.run(
            lambda: [generate_completion(smol.model, smol.tokenizer, c, params, cancel=threading.Event()).text for c in convs]
        )
        assert together == plain and "Paris" in together[0]
        assert cpu_supported() is not None or smol.lean_step.steps > 0  # the lean steps are what was checked
        assert smol.shared_prompt_tokens > 0  # and the prefill that computed the template's system prompt once
    finally:
        await smol.aclose()


def test_prompts_of_close_lengths_share_a_prefill_and_a_long_one_goes_alone() -> None:
    import torch

    from backends.local.batching import GROUP_TOKENS, GenRequest, Prompt, prefill_groups

    def prompt(n: int) -> Prompt:
        return Prompt(GenRequest([], greedy(1), None, None), torch.zeros((1, n), dtype=torch.long))  # type: ignore[arg-type]

    groups = prefill_groups([prompt(n) for n in (40, 38, 600, 41, 36)])
    assert [[p.length for p in g] for g in groups] == [[36, 38, 40, 41], [600]]
    # a group's padded size is bounded, however alike its prompts
    big = prefill_groups([prompt(GROUP_TOKENS // 2)] * 3)
    assert [len(g) for g in big] == [2, 1]


def test_prompts_share_their_common_first_tokens_when_there_are_enough_and_one_adapter() -> None:
    import torch

    from backends.local.batching import SHARED_PREFIX_MIN, GenRequest, Prompt, shared_prefix

    def prompt(ids: list[int], adapter: str = "__base__") -> Prompt:
        request = GenRequest([], greedy(1), None, None)  # type: ignore[arg-type]
        request.adapter_internal = adapter
        return Prompt(request, torch.tensor([ids]))

    head = list(range(100, 100 + SHARED_PREFIX_MIN + 4))
    assert shared_prefix([prompt(head + [1, 2]), prompt(head + [3]), prompt(head + [1, 5, 6])]) == len(head)
    assert shared_prefix([prompt(head + [1, 2]), prompt(head + [1, 3])]) == len(head) + 1
    assert shared_prefix([prompt(head), prompt(head + [7])]) == len(head) - 1  # each row keeps a token of its own
    assert shared_prefix([prompt(head + [1])]) == 0  # nobody to share with
    assert shared_prefix([prompt(head[:SHARED_PREFIX_MIN - 1] + [1]), prompt(head[:SHARED_PREFIX_MIN - 1] + [2])]) == 0
    assert shared_prefix([prompt(head + [1]), prompt(head + [2], adapter="student")]) == 0  # keys differ by adapter


@pytest.mark.parametrize("adapter", [None, "student"], ids=["base", "student"])
async def test_prompts_that_begin_alike_compute_their_common_tokens_once_with_the_same_answers(
        host: LocalModelHost, tmp_path: Path, adapter: str | None) -> None:
    from backends.local.batching import SHARED_PREFIX_MIN

    if adapter is not None:  # the shared tokens' keys and values are the adapter's (peft's mixed batch, one row)
        await host.set_adapter(adapter, make_lora(host.model_dir, tmp_path / "lora", std=0.5))
    model = backend(host, adapter)
    system: Message = {"role": "system", "content": "You are Smol, a student in a lesson about rivers and lakes."}
    asks = ["Say hello in three languages.", "Why is the sky blue?", "Name a long river in Africa.", "What is 2+2 then?"]
    questions = [[system, {"role": "user", "content": ask}] for ask in asks]
    # one sampled row: its first token comes from its own seeded sampler, not from the shared pass
    params = [greedy(9), greedy(9), greedy(9), GenParams(max_new_tokens=9, temperature=0.8, seed=3)]
    before, shared = host.prefills, host.shared_prompt_tokens
    together = await asyncio.gather(*(model.chat(q, p) for q, p in zip(questions, params, strict=True)))
    assert host.prefills == before + 1 and host.peak_batch == 4
    assert host.shared_prompt_tokens - shared >= 3 * SHARED_PREFIX_MIN  # the system prompt, once instead of four times
    alone = [await model.chat(q, p) for q, p in zip(questions, params, strict=True)]
    assert together == alone and len(set(together)) == 4
    if adapter is not None:
        assert together != [await backend(host).chat(q, p) for q, p in zip(questions, params, strict=True)]


async def test_a_shared_prefill_leaves_each_row_the_keys_values_and_first_token_of_its_prompt_alone(
        host: LocalModelHost) -> None:
    import threading

    import torch

    from backends.local.batching import DecodeBatch, GenRequest

    system: Message = {"role": "system", "content": "You are Smol, a student in a lesson about rivers and lakes."}
    asks = ["Say hello in three languages.", "Why is the sky blue?", "Name a long river in Africa.", "What is 2+2 then?"]

    def prefilled(convs: list[list[Message]]) -> tuple[DecodeBatch, int]:
        batch = DecodeBatch(host.model, host.tokenizer, peft=False)
        shared = batch.admit([batch.prepare(GenRequest(c, greedy(1), None, threading.Event())) for c in convs])
        return batch, shared

    def run() -> None:
        together, shared = prefilled([[system, {"role": "user", "content": a}] for a in asks])
        assert shared >= 16 and together.mask is not None and together.cache is not None
        for i, ask in enumerate(asks):
            alone, none = prefilled([[system, {"role": "user", "content": ask}]])
            assert none == 0 and alone.mask is not None and alone.cache is not None
            assert together.rows[i].ids == alone.rows[0].ids and together.rows[i].position == alone.rows[0].position
            real = together.mask[i].bool()
            assert int(real.sum()) == alone.mask.shape[1]
            for mine, theirs in zip(together.cache.layers, alone.cache.layers, strict=True):
                torch.testing.assert_close(mine.keys[i][:, real], theirs.keys[0], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(mine.values[i][:, real], theirs.values[0], rtol=1e-5, atol=1e-6)

    await host.run(run)


async def test_requests_arriving_together_are_prefilled_in_one_pass_with_the_same_answers(host: LocalModelHost) -> None:
    model = backend(host)
    questions = [[{"role": "user", "content": f"Tell me about the number {n}."}] for n in (7, 12, 305, 4000)]
    # one sampled row: its first token comes from its own seeded sampler, not from the shared pass
    params = [greedy(9), greedy(9), greedy(9), GenParams(max_new_tokens=9, temperature=0.8, seed=3)]
    before = host.prefills
    together = await asyncio.gather(*(model.chat(q, p) for q, p in zip(questions, params, strict=True)))
    assert host.prefills == before + 1 and host.peak_batch == 4
    alone = [await model.chat(q, p) for q, p in zip(questions, params, strict=True)]
    assert host.prefills == before + 5
    assert together == alone and len(set(together)) == 4


async def test_a_prompt_too_long_fails_alone_while_the_others_in_its_wave_answer(host: LocalModelHost) -> None:
    model = backend(host)
    limit = host.model.config.max_position_embeddings
    too_long = [{"role": "user", "content": "word " * limit}]
    results = await asyncio.gather(model.chat(PROMPTS[1], greedy(5)), model.chat(too_long, greedy(5)),
                                   model.chat(PROMPTS[3], greedy(5)), return_exceptions=True)
    assert isinstance(results[0], str) and isinstance(results[2], str) and results[0] and results[2]
    assert isinstance(results[1], BackendError) and "but the model holds" in str(results[1]), results[1]


async def test_a_model_with_a_sliding_window_cache_serves_one_request_at_a_time(tiny_dir: str, tmp_path: Path) -> None:
    """Its cache cannot be padded and merged, so concurrent requests take turns instead of sharing a prefill."""
    import shutil

    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    llama = AutoTokenizer.from_pretrained(tiny_dir)
    out = tmp_path / "mistral"
    shutil.copytree(tiny_dir, out)
    for weights in out.glob("*.safetensors"):
        weights.unlink()
    config = MistralConfig(vocab_size=len(llama), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
                           pad_token_id=llama.pad_token_id, bos_token_id=llama.bos_token_id)
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(out)
    host = LocalModelHost(str(out), device="cpu", max_batch=4, batch_window=0.05)
    try:
        model = backend(host)
        together = await asyncio.gather(*(model.chat(p, greedy(6)) for p in PROMPTS[:3]))
        assert host.peak_batch == 1 and host.prefills == 3
        assert together == [await model.chat(p, greedy(6)) for p in PROMPTS[:3]]
    finally:
        await host.aclose()


@pytest.mark.parametrize("lean", [False, True], ids=["transformers-forward", "lean-step"])
async def test_the_kv_cache_appends_into_spare_room_without_changing_answers(host: LocalModelHost, monkeypatch,
                                                                             lean: bool) -> None:
    """A decode step writes its keys and values into room at the end of the cache, not into a whole new copy;
    a full buffer, rows joining and rows leaving all move it to a new one, and answers stay plain generate's."""
    import threading

    import torch

    from backends.local import batching
    from backends.local.batching import DecodeBatch, GenRequest, RoomyLayer

    if lean and cpu_supported() is not None:
        pytest.skip(f"no lean steps here: {cpu_supported()}")
    monkeypatch.setattr(batching, "KV_ROOM", 3)  # a new buffer every few steps, and at every join and leave
    lengths = [12, 5, 9]

    def run() -> tuple[list[str], list[str], list[bool]]:
        assert host.lean_step is not None or cpu_supported() is not None
        batch = DecodeBatch(host.model, host.tokenizer, peft=False, lean=host.lean_step if lean else None)
        requests = [GenRequest(p, greedy(n), None, threading.Event()) for p, n in zip(PROMPTS[:3], lengths, strict=True)]
        answers: dict[int, str] = {}
        in_place: list[bool] = []
        batch.admit([batch.prepare(requests[0])])
        step = 0
        while batch.rows:
            if step == 2:  # a row joins two steps in: its cache is left-padded into the running one
                batch.admit([batch.prepare(requests[1]), batch.prepare(requests[2])])
            assert batch.cache is not None
            layer = batch.cache.layers[0]
            assert isinstance(layer, RoomyLayer)
            before = layer.keys.data_ptr()
            had_room = layer._in_room() and layer.keys.shape[-2] < layer._room[0].shape[-2]  # type: ignore[index]
            batch.step()
            in_place.append(had_room == (layer.keys.data_ptr() == before))
            for row, error in batch.finished(closing=False):
                assert error is None
                answers[requests.index(row.request)] = DecodeBatch.answer(row).completion.text
            step += 1
        plain = [generate_completion(host.model, host.tokenizer, p, greedy(n), cancel=threading.Event()).text
                 for p, n in zip(PROMPTS[:3], lengths, strict=True)]
        return [answers[i] for i in range(3)], plain, in_place

    with torch.inference_mode():
        got, plain, in_place = await host.run(run)
    assert got == plain and len(set(got)) == 3
    # every step with room left wrote in place, and every step without it moved to a new buffer
    assert all(in_place) and len(in_place) == max(lengths[0], 2 + max(lengths[1:])) - 1  # the first token is the prefill's


# ---------------------------------------------------------------- prompts' keys and values kept for the next prompt

LESSON_SYSTEM: Message = {"role": "system", "content": "You are Professor Smol. Teach from these notes: the lake is 40 m deep."}


def test_the_prompt_store_keeps_recent_prompts_per_adapter_within_its_budget() -> None:
    import torch

    from backends.local.batching import SHARED_PREFIX_MIN, GenRequest, PrefixStore, Prompt

    def kv(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(1, 1, n, 4), torch.zeros(1, 1, n, 4))]  # 32 bytes a token

    def prompt(ids: list[int], adapter: str = "__base__") -> Prompt:
        request = GenRequest([], greedy(1), None, None)  # type: ignore[arg-type]
        request.adapter_internal = adapter
        return Prompt(request, torch.tensor([ids]))

    head = list(range(100, 100 + SHARED_PREFIX_MIN + 4))
    store = PrefixStore(budget=32 * 100)
    store.add("__base__", torch.tensor(head), kv(len(head)))
    assert store.longest([prompt(head + [1, 2])]) == (len(head), store._entries[0])
    assert store.longest([prompt(head)])[0] == len(head) - 1  # a prompt keeps one token of its own
    assert store.longest([prompt(head + [1], adapter="student")]) == (0, None)  # keys differ by adapter
    assert store.longest([prompt(head[:SHARED_PREFIX_MIN - 1] + [9, 9])]) == (0, None)  # too few to be worth it
    both = store.longest([prompt(head + [1, 2]), prompt(head[:-2] + [5, 6, 7])])
    assert both[0] == len(head) - 2  # what every prompt of a group shares
    store.add("__base__", torch.tensor(head + [1, 2, 3]), kv(len(head) + 3))  # extends the first: replaces it
    assert len(store) == 1 and store.nbytes == 32 * (len(head) + 3)
    store.add("__base__", torch.tensor(head + [1]), kv(len(head) + 1))  # held already by the longer one
    assert len(store) == 1
    store.add("student", torch.tensor(head), kv(len(head)))
    other = [7] * (SHARED_PREFIX_MIN + 60)
    store.add("__base__", torch.tensor(other), kv(len(other)))  # over budget: the least recently used goes
    assert [e.adapter for e in store._entries] == ["student", "__base__"] and store.nbytes <= store.budget
    store.forget("student")
    assert [e.ids.shape[0] for e in store._entries] == [len(other)]
    store.add("__base__", torch.tensor(list(range(200))), kv(200))  # larger than the whole budget: not kept
    assert len(store) == 1


async def test_a_prompt_that_begins_with_an_earlier_one_takes_its_keys_and_values_instead_of_computing_them(
        host: LocalModelHost) -> None:
    import threading

    import torch

    from backends.local.batching import DecodeBatch, GenRequest, PrefixStore

    first = [LESSON_SYSTEM, {"role": "user", "content": "What is the lake like?"}]
    second = [*first, {"role": "assistant", "content": "It is deep."}, {"role": "user", "content": "How deep?"}]

    def run() -> None:
        store = PrefixStore()
        kept = DecodeBatch(host.model, host.tokenizer, peft=False, prefixes=store)
        kept.admit([kept.prepare(GenRequest(first, greedy(1), None, threading.Event()))])
        reuse = kept.prepare(GenRequest(second, greedy(1), None, threading.Event()))
        kept.admit([reuse])
        computed = DecodeBatch(host.model, host.tokenizer, peft=False)
        computed.admit([computed.prepare(GenRequest(second, greedy(1), None, threading.Event()))])
        first_len = int(host.tokenizer.apply_chat_template(first, add_generation_prompt=True, return_dict=True,
                                                           return_tensors="pt")["input_ids"].shape[1])
        assert store.reused_tokens >= first_len - 1 > 16
        assert kept.cache is not None and computed.cache is not None and kept.mask is not None
        assert kept.rows[1].ids == computed.rows[0].ids and kept.rows[1].position == computed.rows[0].position
        real = kept.mask[1].bool()
        for mine, theirs in zip(kept.cache.layers, computed.cache.layers, strict=True):
            torch.testing.assert_close(mine.keys[1][:, real], theirs.keys[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(mine.values[1][:, real], theirs.values[0], rtol=1e-5, atol=1e-6)

    await host.run(run)


async def test_lesson_turns_and_retries_reuse_earlier_prompts_with_plain_generates_answers(host: LocalModelHost,
                                                                                          tmp_path: Path) -> None:
    import threading

    model = backend(host)
    first = [LESSON_SYSTEM, {"role": "user", "content": "What is the lake like?"}]
    reply = await model.chat(first, greedy(12))
    second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "How deep?"}]
    before = host.reused_prompt_tokens
    again = await model.chat(second, greedy(12))
    turn = host.reused_prompt_tokens - before
    retried = await model.chat(second, greedy(12))  # the whole prompt is held now: all but its last token
    assert turn > 16 and host.reused_prompt_tokens - before - turn > turn
    plain = await host.run(lambda: generate_completion(host.model, host.tokenizer, second, greedy(12),
                                                       cancel=threading.Event()).text)
    assert again == retried == plain
    # a student's adapter changes the keys and values: the base's prompts are not its
    await host.set_adapter("student", make_lora(host.model_dir, tmp_path / "lora", std=0.5))
    before = host.reused_prompt_tokens
    student = await backend(host, "student").chat(second, greedy(12))
    assert host.reused_prompt_tokens == before and student != again
    assert await backend(host, "student").chat(second, greedy(12)) == student  # its own entry, on the PeftModel
    assert host.reused_prompt_tokens > before


async def test_sampled_rows_drawn_on_the_helper_thread_get_the_tokens_they_get_on_the_worker(host: LocalModelHost) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from backends.local.batching import DecodeBatch, GenRequest

    sampled = [GenParams(max_new_tokens=12, temperature=0.9, top_p=0.9, repetition_penalty=1.1, seed=s) for s in (1, 2, 3)]
    params = [*sampled, greedy(12)]  # and a greedy row between them

    def tokens(helper: ThreadPoolExecutor | None) -> tuple[list[list[int]], int]:
        batch = DecodeBatch(host.model, host.tokenizer, peft=False, lean=host.lean_step, helper=helper)
        batch.admit([batch.prepare(GenRequest(p, q, None, threading.Event())) for p, q in zip(PROMPTS, params, strict=True)])
        for _ in range(11):
            batch.step()
        return [row.ids for row in batch.rows], batch.helper_draws

    with ThreadPoolExecutor(max_workers=1) as helper:
        beside, drawn = await host.run(lambda: tokens(helper))
    alone, none = await host.run(lambda: tokens(None))
    assert beside == alone and none == 0
    assert drawn == 11  # one of each step's three sampled rows (every other one) went to the helper
    assert len({tuple(t) for t in beside}) == 4


async def test_a_model_entrys_prompt_cache_mb_sizes_its_hosts_store_and_0_keeps_nothing(tiny_dir: str,
                                                                                       tmp_path: Path) -> None:
    from backends.local import HostPool

    conv = [LESSON_SYSTEM, {"role": "user", "content": "What is the lake like?"}]
    for mb, reuses in ((0, False), (0.5, True)):
        pool = HostPool(tmp_path / str(mb))
        entry = ModelSpec(name="m", backend="local", path=tiny_dir, device="cpu", prompt_cache_mb=mb,
                          generation={"temperature": 0.0})
        model = await pool.backend_for(entry)
        try:
            first, again = await model.chat(conv, greedy(6)), await model.chat(conv, greedy(6))
            assert first == again and (model.host.reused_prompt_tokens > 0) is reuses
            assert model.host._prefixes.budget == int(mb * 2**20)
        finally:
            await pool.aclose()
