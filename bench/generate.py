"""Generation benchmark on the bundled SmolLM2-135M: our batching host against a plain transformers loop.

In one run, interleaved so both sides see the same machine load:
  * plain: `model.generate` (fp32, greedy, KV cache), one request after another;
  * ours:  LocalModelHost (the decode loop the bot uses), requests sent concurrently.
It reports time to first token, single-stream tokens/s, and the wall time of N concurrent
requests against the time of one. With `--llamacpp` a third side runs in the same loop: llama.cpp
(llama-cpp-python, built from source) on the same GGUF file, one request after another, the CPU
reference the issue names. `--memory` instead measures peak RSS of the default bot setup
(teacher and student on the bundled model, the student with a LoRA adapter) against one plain
loaded model, each in a fresh subprocess.

    .venv/bin/python bench/generate.py --new-tokens 100 --concurrent 8 --repeats 2
    .venv/bin/python bench/generate.py --new-tokens 100 --concurrent 8 --repeats 2 --student   # with a LoRA adapter
    .venv/bin/python bench/generate.py --temperature 0.3 --top-p 0.9   # sampled, as models other than the bundled ones answer
    .venv/bin/python bench/generate.py --memory
    .venv/bin/python bench/generate.py --llamacpp   # needs llama-cpp-python: see bench/README.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backends.base import GenParams, Message, Usage  # noqa: E402
from backends.bundled import bundled_gguf_path, resolve_model_dir  # noqa: E402
from backends.local import LocalBackend, LocalModelHost  # noqa: E402
from settings import BUNDLED_MODEL, ModelSpec  # noqa: E402

QUESTIONS = [
    "Explain photosynthesis to a child.",
    "Why do we have seasons on Earth?",
    "Describe how a bicycle works.",
    "What are the causes of rain?",
    "Tell me about the history of paper.",
    "How do vaccines help the body?",
    "Why is the ocean salty?",
    "What does a volcano do?",
]


def asks(n: int) -> list[list[Message]]:
    """N /ask-sized single-question conversations."""
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(n)]


def plain_run(model: object, tokenizer: object, messages: list[Message], new_tokens: int, threads: int,
              temperature: float = 0.0, top_p: float = 1.0) -> tuple[float, int]:
    """One plain transformers.generate call on `threads` torch threads: (seconds, new tokens).

    Our host gives the cores to its kernels and leaves torch one thread, so plain sets its own
    count around each call."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)  # type: ignore[attr-defined]
    host_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        with torch.inference_mode():
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
                "do_sample": False}
            out = model.generate(  # type: ignore[attr-defined]
                **ids, max_new_tokens=new_tokens, repetition_penalty=1.1, **sampling
            )
        return time.perf_counter() - started, int(out.shape[1] - ids["input_ids"].shape[1])
    finally:
        torch.set_num_threads(host_threads)


async def ours_run(backend: LocalBackend, messages: list[Message], params: GenParams) -> tuple[float, float, int]:
    """One streamed request through the host: (seconds to first delta, seconds, new tokens)."""
    usage = Usage()
    started = time.perf_counter()
    first = 0.0
    async for _ in backend.stream(messages, params, usage):
        first = first or time.perf_counter() - started
    return first, time.perf_counter() - started, usage.completion_tokens


def llamacpp_model(threads: int) -> Any:
    """llama.cpp on the bundled GGUF itself (the 4-bit file our host dequantises to fp32)."""
    from llama_cpp import Llama

    return Llama(str(bundled_gguf_path()), n_ctx=2048, n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)


def llamacpp_run(llm: Any, messages: list[Message], new_tokens: int) -> tuple[float, int]:
    """One greedy llama.cpp chat completion with the same repetition penalty: (seconds, new tokens)."""
    llm.reset()  # no prompt reuse from the previous request: plain and ours prefill every prompt too
    started = time.perf_counter()
    out = llm.create_chat_completion(messages, max_tokens=new_tokens, temperature=0.0, top_k=1, repeat_penalty=1.1)
    return time.perf_counter() - started, int(out["usage"]["completion_tokens"])


async def llamacpp_side(llm: Any, convs: list[list[Message]], new_tokens: int, rows: dict[str, list[float]]) -> None:
    """llama.cpp's figures, measured like plain's: llama-cpp-python serves one request at a time."""
    rows.setdefault("llamacpp_ttft", []).append((await asyncio.to_thread(llamacpp_run, llm, convs[0], 1))[0])
    secs, n = await asyncio.to_thread(llamacpp_run, llm, convs[0], new_tokens)
    rows.setdefault("llamacpp_tps", []).append(n / secs)
    rows.setdefault("llamacpp_one", []).append(secs)
    started = time.perf_counter()
    for c in convs:
        await asyncio.to_thread(llamacpp_run, llm, c, new_tokens)
    rows.setdefault("llamacpp_all", []).append(time.perf_counter() - started)


async def bench(args: argparse.Namespace) -> dict[str, object]:
    model_dir = resolve_model_dir(BUNDLED_MODEL, REPO / ".cache" / "models")
    host = LocalModelHost(model_dir, device="cpu", dtype=args.dtype, max_batch=args.concurrent, batch_window=0.005,
                          gguf=str(bundled_gguf_path()), kernel_dir=REPO / ".cache" / "kernels")
    spec = ModelSpec(name="smol", backend="local", path=model_dir, device="cpu")
    await host.ensure_loaded()
    # plain is the fp32 model as transformers loads it (our host may serve from the GGUF blocks)
    from transformers import AutoModelForCausalLM

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), host.tokenizer
    adapter_dir = tempfile.TemporaryDirectory() if args.student else None
    if adapter_dir is not None:  # both sides serve the student: the base model and a LoRA adapter
        from peft import PeftModel

        adapter = student_adapter(model_dir, Path(adapter_dir.name))
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
        await host.set_adapter("student", adapter)
    backend = LocalBackend(spec, host, "student" if args.student else None)
    params = GenParams(max_new_tokens=args.new_tokens, temperature=args.temperature, top_p=args.top_p,
                       repetition_penalty=1.1, seed=0)
    convs = asks(args.concurrent)
    sampling = (args.temperature, args.top_p)
    # warm both paths first: the host's first request also pays one-off imports (peft), ~0.3 s
    await host.run(lambda: plain_run(model, tokenizer, convs[0], 1, args.threads))
    await ours_run(backend, convs[0], GenParams(max_new_tokens=1, temperature=0.0))
    rows: dict[str, list[float]] = {k: [] for k in ("plain_ttft", "plain_tps", "plain_one", "plain_all", "ours_ttft", "ours_tps", "ours_one", "ours_all")}
    llm = llamacpp_model(args.threads) if args.llamacpp else None
    if llm is not None:
        await asyncio.to_thread(llamacpp_run, llm, convs[0], 1)
    for _ in range(args.repeats):
        # plain: time to first token is a 1-token generate; the concurrent load runs one after another
        rows["plain_ttft"].append(await host.run(lambda: plain_run(model, tokenizer, convs[0], 1, args.threads)[0]))
        secs, n = await host.run(lambda: plain_run(model, tokenizer, convs[0], args.new_tokens, args.threads, *sampling))
        rows["plain_tps"].append(n / secs)
        rows["plain_one"].append(secs)
        started = time.perf_counter()
        for c in convs:
            await host.run(lambda c=c: plain_run(model, tokenizer, c, args.new_tokens, args.threads, *sampling))
        rows["plain_all"].append(time.perf_counter() - started)
        # ours
        # time to first token the same way as plain: a whole 1-token request
        first, secs, n = await ours_run(backend, convs[0], GenParams(max_new_tokens=1, temperature=0.0))
        rows["ours_ttft"].append(secs)
        first, secs, n = await ours_run(backend, convs[0], params)
        rows["ours_tps"].append(n / secs)
        rows["ours_one"].append(secs)
        started = time.perf_counter()
        await asyncio.gather(*(ours_run(backend, c, params) for c in convs))
        rows["ours_all"].append(time.perf_counter() - started)
        if llm is not None:
            await llamacpp_side(llm, convs, args.new_tokens, rows)
    decode_steps = "lean" if host.lean_step is not None else "transformers forward"
    await host.aclose()
    if adapter_dir is not None:
        adapter_dir.cleanup()
    best = {k: (max(v) if k.endswith("tps") else min(v)) for k, v in rows.items()}
    sides = ("plain", "ours", "llamacpp") if llm is not None else ("plain", "ours")
    return {
        "new_tokens": args.new_tokens,
        "concurrent": args.concurrent,
        "dtype": host.dtype,
        "threads": args.threads,
        "torch_threads_ours": torch.get_num_threads(),
        "best": {k: round(v, 3) for k, v in best.items()},
        "all": {k: [round(x, 3) for x in v] for k, v in rows.items()},
        "ratio_all_over_one": {side: round(best[f"{side}_all"] / best[f"{side}_one"], 2) for side in sides},
        "single_stream_speedup": {side: round(best[f"{side}_tps"] / best["plain_tps"], 2) for side in sides[1:]},
        "student_adapter": "LoRA r=16 on every linear layer (as training makes it)" if args.student else None,
        "sampling": {"temperature": args.temperature, "top_p": args.top_p} if args.temperature > 0 else "greedy",
        "peak_batch": host.peak_batch,
        "decode_steps": decode_steps,
    }


def student_adapter(model_dir: str, out: Path) -> Path:
    """A random LoRA adapter shaped as the nightly training makes one (rank 16, alpha 32, every
    linear layer but the head), with non-zero B so it changes the answers."""
    from tests.tiny import make_lora

    return make_lora(model_dir, out, std=0.01, r=16, alpha=32, targets="all-linear")


MEMORY_PLAIN = """
import resource, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained({d!r}).eval(); t = AutoTokenizer.from_pretrained({d!r})
ids = t.apply_chat_template([{{"role": "user", "content": "Hi"}}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
with torch.inference_mode(): m.generate(**ids, max_new_tokens=8, do_sample=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

MEMORY_BOT = """
import asyncio, resource, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from backends.registry import ModelRegistry
from settings import ModelSpec
from tests.tiny import make_lora
async def main():
    specs = {{"teacher": ModelSpec(name="teacher", backend="local", path={path!r}, device="cpu"),
             "smol": ModelSpec(name="smol", backend="local", path={path!r}, device="cpu", trainable=True)}}
    reg = ModelRegistry(specs, cache_dir=Path({models!r}))
    teacher, student = await reg.backend("teacher"), await reg.backend("smol")
    await reg.set_adapter("smol", make_lora({d!r}, Path({cache!r}) / "lora", std=0.05))
    hi = [{{"role": "user", "content": "Hi"}}]
    await asyncio.gather(teacher.chat(hi), student.chat(hi))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    await reg.aclose()
asyncio.run(main())
"""


def memory() -> dict[str, object]:
    """Peak RSS (MiB) of one plain loaded model, and of a teacher + adapted student on the bundled model
    as the bot sets them up (dtype auto: the GGUF blocks on an AVX2 CPU)."""
    model_dir = resolve_model_dir(BUNDLED_MODEL, REPO / ".cache" / "models")
    with tempfile.TemporaryDirectory() as cache:
        out = {}
        for name, code in (("one_model", MEMORY_PLAIN), ("teacher_and_student", MEMORY_BOT)):
            src = code.format(d=model_dir, repo=str(REPO), cache=cache, path=BUNDLED_MODEL, models=str(REPO / ".cache" / "models"))
            done = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, check=True)
            out[name] = round(int(done.stdout.split()[-1]) / 1024, 1)
    out["ratio"] = round(out["teacher_and_student"] / out["one_model"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="gguf", choices=["gguf", "float32", "bfloat16"],
                        help="our host's weights (plain stays fp32): gguf, the bot's CPU default, multiplies by the file's blocks")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sample at this temperature (0: greedy, as the bundled models answer; other models' default is 0.3)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling's top_p with --temperature (default 1.0)")
    parser.add_argument("--student", action="store_true",
                        help="serve the student on both sides: the model with a LoRA adapter as training makes it")
    parser.add_argument("--memory", action="store_true", help="measure peak RSS instead")
    parser.add_argument("--llamacpp", action="store_true", help="also run llama.cpp (llama-cpp-python) on the same GGUF")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the GGUF kernels' pool (torch read it at import)
    result = memory() if args.memory else asyncio.run(bench(args))
    result["cpu_seconds"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_utime, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
