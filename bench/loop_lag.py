"""Event-loop lag while the local model is busy: does the bot's loop stay responsive?

A probe sleeps 10 ms at a time on the event loop and records how late each wake-up is, while
on the same loop: one lesson turn streams, N /ask-sized requests are in flight (all on the
bundled SmolLM2 through the batching host the bot uses) and 100 vote clicks are written through
the real AsyncStore, and a training job runs as the nightly job runs it: `python -m trainer` in a
subprocess whose JSON progress lines the loop reads (`trainer.process.run_module`), stopped
when the rest is done. Prints p50/p99/max lag in ms.

    .venv/bin/python bench/loop_lag.py --new-tokens 100 --asks 8
    .venv/bin/python bench/loop_lag.py --no-training      # without the training job
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backends.base import GenParams  # noqa: E402
from backends.bundled import resolve_model_dir  # noqa: E402
from backends.local import LocalBackend  # noqa: E402
from backends.local.pool import HostPool  # noqa: E402
from settings import BUNDLED_MODEL, ModelSpec  # noqa: E402
from storage.db import AsyncStore, migrate, open_db  # noqa: E402
from storage.votes import toggle_vote  # noqa: E402
from trainer.process import run_module  # noqa: E402


async def probe(lags: list[float], stop: asyncio.Event) -> None:
    """Sleep 10 ms at a time and record how late each wake-up was (seconds)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + 0.01
        await asyncio.sleep(0.01)
        lags.append(max(0.0, loop.time() - due))


async def votes(store: AsyncStore, count: int, acks: list[float]) -> None:
    """`count` vote clicks, 50 ms apart, each timed from click to stored (the moment a button is acknowledged)."""
    for i in range(count):
        started = time.perf_counter()
        await store.call(toggle_vote, "turn", 1 + i % 5, f"member{i}", 1)
        acks.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)


def training_job(tmp: Path, model_dir: Path | str) -> Path:
    """A trainer job on the bundled model with enough steps to outlast the rest of the bench."""
    rows = [{"messages": [{"role": "user", "content": f"Tell me fact {i} about the water cycle."},
                          {"role": "assistant", "content": f"Fact {i}: water evaporates, condenses and falls as rain. " * 4}]}
            for i in range(32)]
    dataset = tmp / "train.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = tmp / "job.json"
    job.write_text(json.dumps({"base_model": str(model_dir), "dataset": str(dataset), "output_dir": str(tmp / "adapter"),
                               "config": {"epochs": 1000, "max_steps": 100000, "batch_tokens": 512, "max_seq_len": 256}}))
    return job


async def run(args: argparse.Namespace) -> dict[str, object]:
    model_dir = resolve_model_dir(BUNDLED_MODEL, REPO / ".cache" / "models")
    # the host as the bot builds it (dtype auto: the GGUF blocks and their thread pool on an AVX2 CPU)
    pool = HostPool(REPO / ".cache")
    spec = ModelSpec(name="smol", backend="local", path=BUNDLED_MODEL, device="cpu", max_batch=args.max_batch,
                     batch_window_ms=5)
    host = await pool.host_for(spec)
    backend = LocalBackend(spec, host)
    await host.ensure_loaded()
    params = GenParams(max_new_tokens=args.new_tokens, temperature=args.temperature, top_p=args.top_p, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "lag.db")
        migrate(db)
        store = AsyncStore(db)
        lags: list[float] = []
        acks: list[float] = []
        stop = asyncio.Event()
        prober = asyncio.create_task(probe(lags, stop))
        steps: list[dict[str, object]] = []
        trainer = None
        if args.training:
            job = training_job(Path(tmp), model_dir)
            trainer = asyncio.create_task(run_module("trainer", ["--job", str(job)], steps.append))
            while not any(e.get("event") == "progress" for e in steps):  # measure once it is really training
                if trainer.done():
                    raise SystemExit(f"the training job ended early: {trainer.result().failure_reason()}")
                await asyncio.sleep(0.1)
            lags.clear()

        async def lesson_turn() -> None:
            async for _ in backend.stream([{"role": "user", "content": "Teach me about the water cycle."}], params):
                pass

        asks = [backend.chat([{"role": "user", "content": f"Question {i}: why is the sky blue?"}], params) for i in range(args.asks)]
        started = time.perf_counter()
        await asyncio.gather(lesson_turn(), *asks, votes(store, args.votes, acks))
        wall = time.perf_counter() - started
        stop.set()
        await prober
        if trainer is not None:
            trainer.cancel()  # run_module kills the subprocess's process group
            await asyncio.gather(trainer, return_exceptions=True)
        await asyncio.to_thread(store.close)
    await pool.aclose()
    ms = sorted(x * 1000 for x in lags)
    return {
        "samples": len(ms),
        "lag_ms": {
            "p50": round(statistics.median(ms), 1),
            "p99": round(ms[int(len(ms) * 0.99) - 1], 1),
            "max": round(ms[-1], 1),
        },
        "vote_ack_ms": {"p50": round(statistics.median(acks) * 1000, 1), "max": round(max(acks) * 1000, 1)},
        "wall_s": round(wall, 1),
        "asks": args.asks,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "sampling": {"temperature": args.temperature, "top_p": args.top_p} if args.temperature > 0 else "greedy",
        "dtype": host.dtype,
        "training_steps_during_run": sum(1 for e in steps if e.get("event") == "progress"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--asks", type=int, default=8)
    parser.add_argument("--votes", type=int, default=100)
    parser.add_argument("--max-batch", type=int, default=9)
    parser.add_argument("--temperature", type=float, default=0.0, help="sample the turn and the asks (0: greedy)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-training", dest="training", action="store_false", help="leave out the training job")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the GGUF kernels' pool (torch read it at import)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
