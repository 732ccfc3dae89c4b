"""A local model in memory, its named LoRA adapters, and the one worker thread that runs all its torch work."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from backends.local.batching import PREFIX_CACHE_BYTES, Answer, GenRequest, PrefixStore
from backends.local.lean_step import LeanStep
from backends.local.scheduler import BatchScheduler

log = logging.getLogger(__name__)

T = TypeVar("T")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "gguf": torch.float32}


class ModelLoadError(RuntimeError):
    """The model or its tokenizer could not be loaded."""


class AdapterError(RuntimeError):
    """A LoRA adapter directory could not be loaded onto the model."""


class HostClosed(RuntimeError):
    """The host was closed; it takes no more requests."""


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' when a GPU is usable, else 'cpu'; anything else is kept."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto' becomes bfloat16 on a CUDA device that supports it, else float32.

    float16 is never picked by itself: small models overflow in it more often than not.
    """
    if dtype != "auto":
        return dtype
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


@dataclass(frozen=True)
class ModelView:
    """What one request runs on: the model, its tokenizer and the adapter directory in use (None: base weights)."""

    model: Any
    tokenizer: Any
    adapter_path: str | None


@dataclass(frozen=True)
class _Adapter:
    internal_name: str
    path: str


class LocalModelHost(BatchScheduler):
    """One model (with its tokenizer) in memory, shared by every backend that uses the same weights.

    All torch work runs on the host's single worker thread, so requests never race each
    other and the event loop never waits on torch. Chat requests (`generate`) share one
    decode loop there, up to `max_batch` at a time; a request arriving at an idle host waits
    `batch_window` seconds for company; the keys and values of recent prompts are kept, within
    `prompt_cache_bytes`, for later prompts that begin alike. The model loads lazily, on the
    worker, on first use.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 1,
        batch_window: float = 0.0,
        gguf: str | None = None,
        kernel_dir: Path | None = None,
        prompt_cache_bytes: int = PREFIX_CACHE_BYTES,
    ):
        self.model_dir = model_dir
        # dtype "gguf": the file the model was converted from, whose blocks the linear layers then use
        self.gguf = gguf
        self.kernel_dir = kernel_dir or Path(model_dir).parent / "kernels"
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{Path(model_dir).name}")
        # draws half of a decode step's sampled tokens beside the worker (batching.DecodeBatch._choose_all)
        self._sampler = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sampler-{Path(model_dir).name}")
        self._model: Any = None  # a PreTrainedModel, or a PeftModel around it once an adapter is set
        self._lean: LeanStep | None = None  # computes its decode steps, when it can take this model
        self._tokenizer: Any = None
        self._parameter_count: int | None = None
        self._adapters: dict[str, _Adapter] = {}
        self._serial = itertools.count(1)
        self._closing = threading.Event()
        self.max_batch = max(1, max_batch)
        self.batch_window = max(0.0, batch_window)
        # Chat requests and adapter swaps, in arrival order, waiting for the decode loop.
        self._queue: deque[GenRequest | Callable[[], None]] = deque()
        self._queue_lock = threading.Lock()
        self._serving = False
        self.peak_batch = 0  # the most requests that have shared one decode step (for tests and benchmarks)
        self.prefills = 0  # prefill passes run; requests prefilled together count once (likewise)
        self.shared_prompt_tokens = 0  # prompt tokens not computed because prompts prefilled together shared them
        self._bound: Counter[str] = Counter()  # internal adapter name → requests bound to it
        self._retired: list[str] = []  # swapped-out adapters kept until no bound request needs them
        self._prefixes = PrefixStore(prompt_cache_bytes)  # recent prompts' keys and values, for prompts that begin alike

    def __repr__(self) -> str:
        return f"LocalModelHost({self.model_dir!r}, device={self.device!r}, dtype={self.dtype!r})"

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._model is not None

    @property
    def closing(self) -> bool:
        """Set once aclose() has begun; running generations check it to stop early."""
        return self._closing.is_set()

    @property
    def model(self) -> Any:
        """The loaded model (a PeftModel once adapters are set), or None. Run torch on it only via `submit`."""
        return self._model

    @property
    def lean_step(self) -> LeanStep | None:
        """The lean_step.LeanStep computing this model's decode steps, or None (transformers' forward does)."""
        return self._lean

    @property
    def reused_prompt_tokens(self) -> int:
        """Prompt tokens whose keys and values an earlier prompt's prefill had computed (not computed again)."""
        return self._prefixes.reused_tokens

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer, or None."""
        return self._tokenizer

    @property
    def parameter_count(self) -> int | None:
        """Parameters of the base model (adapters not counted), or None before it is loaded."""
        return self._parameter_count

    @property
    def adapters(self) -> dict[str, str]:
        """The adapters now loaded: name → directory."""
        # Copy first: the worker may swap an adapter while the event loop reads this.
        return {name: a.path for name, a in dict(self._adapters).items()}

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Queue `job` on the worker thread; a job that needs the weights calls `load()` first."""
        if self._closing.is_set():
            raise HostClosed(f"{self!r} is closed")
        return self._executor.submit(job)

    async def run(self, job: Callable[[], T]) -> T:
        """Run `job` on the worker thread and wait for it without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(job))

    async def ensure_loaded(self) -> None:
        """Load the model now rather than on the first request. Raises ModelLoadError."""
        await self.run(self.load)

    async def set_adapter(self, name: str, path: str | Path | None) -> None:
        """Load the PEFT adapter directory `path` as `name`, replacing the one of that name; None removes it.

        The swap runs on the worker between two requests, so a request in flight
        finishes on the old weights and the next one uses the new. Raises AdapterError.
        """
        future: Future[None] = Future()

        def swap() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    self._swap_adapter(name, None if path is None else str(path))
                except BaseException as e:
                    future.set_exception(e)
                else:
                    future.set_result(None)

        # Through the request queue, so requests queued before the swap keep the old adapter
        # and a running batch swaps between two decode steps instead of after its last row.
        self._enqueue(swap)
        await asyncio.wrap_future(future)

    def generate(self, request: GenRequest) -> Future[Answer]:
        """Queue a chat request for the decode loop; its future holds the Answer.

        Cancelling the future before the request starts drops it; after, set `request.cancel`.
        Raises HostClosed. Errors in the future: the torch error, or batching.ShutDown.
        """
        self._enqueue(request)
        return request.future

    async def aclose(self) -> None:
        """Stop running generations, drop queued ones, end the worker and free the weights."""
        if self._closing.is_set():
            return
        self._closing.set()
        # Drop the queue now, before the running job notices `closing` and the worker takes the next one.
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._queue_lock:
            dropped, self._queue = list(self._queue), deque()
        for item in dropped:
            if isinstance(item, GenRequest):
                item.future.cancel()
        await asyncio.to_thread(self._shut_down)

    # Everything below runs on the worker thread only.

    @contextmanager
    def use_adapter(self, name: str | None) -> Iterator[ModelView]:
        """The model with adapter `name` active, or with no adapter when `name` is None or not loaded.

        Worker thread only, after `load()`: the active adapter is model state that the next request changes.
        """
        model = self._model
        adapter = self._adapters.get(name) if name is not None else None
        if not self._adapters:
            yield ModelView(model, self._tokenizer, None)
        elif adapter is None:
            with model.disable_adapter():
                yield ModelView(model, self._tokenizer, None)
        else:
            model.set_adapter(adapter.internal_name)
            yield ModelView(model, self._tokenizer, adapter.path)

    def load(self) -> None:
        """Load tokenizer and weights if not yet loaded. Worker thread only. Raises ModelLoadError."""
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.monotonic()
        if self.model_dir.startswith(("/", ".", "~")) and not Path(self.model_dir).expanduser().is_dir():
            # A path, not a hub id: say so instead of letting transformers try the hub.
            raise ModelLoadError(f"could not load the model: no directory {self.model_dir}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=_DTYPES[self.dtype])
            model.to(self.device).eval()
        except Exception as e:
            raise ModelLoadError(f"could not load the model from {self.model_dir}: {e}") from e
        self._parameter_count = sum(p.numel() for p in model.parameters())
        if self.dtype == "gguf":
            self._use_blocks(model)
        if self.device == "cpu":
            self._lean = LeanStep.load(model, self.kernel_dir)
        self._tokenizer = tokenizer
        self._model = model
        log.info(
            "loaded %s on %s as %s (%d parameters) in %.1f s",
            self.model_dir,
            self.device,
            self.dtype,
            self._parameter_count,
            time.monotonic() - started,
        )

    def _use_blocks(self, model: Any) -> None:
        """Serve from the GGUF file's blocks; on any misfit keep fp32, which gives the same answers, slower."""
        from backends.local.gguf_weights import use_gguf_blocks
        from backends.local.kernels import KernelsUnavailable

        if self.gguf is None or self.device != "cpu":
            log.warning("dtype gguf needs a GGUF source on the CPU; %s runs in float32", self.model_dir)
            self.dtype = "float32"
            return
        try:
            log.info("%s: %s", self.model_dir, use_gguf_blocks(model, self.gguf, self.kernel_dir))
        except (KernelsUnavailable, ValueError, OSError) as e:
            log.warning("%s runs in float32: the GGUF block kernels cannot serve it (%s)", self.model_dir, e)
            self.dtype = "float32"

    def _swap_adapter(self, name: str, path: str | None) -> None:
        self.load()
        old = self._adapters.get(name)
        if path is not None:
            self._adapters[name] = _Adapter(self._load_adapter(name, path), path)
        elif old is not None:
            del self._adapters[name]
        if old is not None:
            self._retired.append(old.internal_name)
        self._drop_retired()
        log.info("adapter %r of %s is now %s", name, self.model_dir, path)

    def _load_adapter(self, name: str, path: str) -> str:
        from peft import PeftModel

        if not (Path(path) / "adapter_config.json").is_file():
            raise AdapterError(
                f"adapter '{name}': {path} is not a PEFT adapter directory (no adapter_config.json)"
            )
        # A fresh internal name lets the old adapter of the same name stay usable until the new one is in.
        internal = f"adapter_{next(self._serial)}"
        try:
            if isinstance(self._model, PeftModel):
                self._model.load_adapter(path, adapter_name=internal)
            else:
                self._model = PeftModel.from_pretrained(self._model, path, adapter_name=internal)
        except Exception as e:
            if isinstance(self._model, PeftModel) and internal in self._model.peft_config:
                self._model.delete_adapter(internal)  # leave no half-loaded adapter behind
            raise AdapterError(f"adapter '{name}': could not load {path}: {e}") from e
        self._model.eval()
        return internal

    def _drop_retired(self) -> None:
        """Delete swapped-out adapters that no running or waiting request is bound to."""
        for internal in [r for r in self._retired if not self._bound[r]]:
            self._retired.remove(internal)
            self._prefixes.forget(internal)
            living = [a.internal_name for a in self._adapters.values()] + self._retired
            if living:
                if self._model.active_adapter == internal:
                    self._model.set_adapter(living[0])
                self._model.delete_adapter(internal)
            else:
                # peft cannot delete its last adapter; unloading gives back the untouched base model.
                self._model = self._model.unload()

    def _shut_down(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._sampler.shutdown(wait=True)
        self._model = self._tokenizer = self._lean = None
        self._adapters.clear()
        self._prefixes.clear()
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
