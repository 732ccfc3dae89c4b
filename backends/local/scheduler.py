"""The host's decode loop: takes queued chat requests and adapter swaps in order, batches the requests.

A mixin of LocalModelHost, kept apart so each module reads on its own: the host owns the
weights, adapters and worker; this owns what the worker does with queued requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backends.local.batching import BASE, Answer, DecodeBatch, GenRequest, PrefixStore, Prompt, prefill_groups
from backends.local.generation import Completion
from backends.local.lean_step import LeanStep

log = logging.getLogger(__name__)

_EMPTY = Completion("", 0, 0)


class BatchScheduler:
    """Queue and decode loop of a LocalModelHost (see there). Everything but `_enqueue` runs on the worker."""

    model_dir: str
    max_batch: int
    batch_window: float
    peak_batch: int
    prefills: int
    shared_prompt_tokens: int
    _executor: ThreadPoolExecutor
    _closing: threading.Event
    _queue: deque[GenRequest | Callable[[], None]]
    _queue_lock: threading.Lock
    _serving: bool
    _bound: Counter[str]
    _retired: list[str]
    _adapters: dict[str, Any]
    _model: Any
    _tokenizer: Any
    _lean: LeanStep | None
    _prefixes: PrefixStore
    _sampler: ThreadPoolExecutor

    def load(self) -> None:  # provided by LocalModelHost
        raise NotImplementedError

    def _drop_retired(self) -> None:  # provided by LocalModelHost
        raise NotImplementedError

    def _enqueue(self, item: GenRequest | Callable[[], None]) -> None:
        with self._queue_lock:
            if self._closing.is_set():
                raise _closed(self)
            self._queue.append(item)
            start = not self._serving
            self._serving = True
        if start:
            try:
                self._executor.submit(self._serve)
            except RuntimeError as e:  # the executor shut down between the check and here
                raise _closed(self) from e

    def _take(self, waiting: deque[GenRequest], batch: DecodeBatch) -> bool:
        """Move the queue into `waiting`, binding each request to the adapter of the moment and
        running swaps in order. False (and the loop must end) once nothing is left anywhere."""
        while True:
            with self._queue_lock:
                if not self._queue:
                    if not waiting and not batch.rows:
                        self._serving = False
                        return False
                    return True
                item = self._queue.popleft()
            if isinstance(item, GenRequest):
                self._bind(item)
                waiting.append(item)
            else:
                item()

    def _serve(self) -> None:
        """The decode loop: runs while requests are waiting or running, admitting new ones between steps."""
        try:
            self.load()
        except Exception as e:
            self._fail_queue(e)
            return
        waiting: deque[GenRequest] = deque()
        batch = DecodeBatch(self._model, self._tokenizer, peft=False, lean=self._lean, prefixes=self._prefixes,
                            helper=self._sampler)
        slept = False
        while self._take(waiting, batch):
            if self._closing.is_set():
                self._stop(waiting, batch)
                return
            if not batch.rows and self.batch_window > 0 and not slept:
                slept = True  # an idle host waits once for company before starting a batch
                time.sleep(self.batch_window)
                continue
            self._admit(waiting, batch)
            for row, error in batch.finished(closing=False):
                self._finish(row.request, error, lambda row=row: DecodeBatch.answer(row))
            if not batch.rows:
                slept = False
                continue
            try:
                self._refresh(batch)
                self.peak_batch = max(self.peak_batch, len(batch))
                batch.step()
            except Exception as e:
                log.exception("a decode step of %s failed for %d requests", self.model_dir, len(batch))
                for row in batch.fail_all():
                    self._finish(row.request, e, None)

    def _refresh(self, batch: DecodeBatch) -> None:
        # A swap may have wrapped the model in a PeftModel, or unloaded it back to the base.
        from peft import PeftModel

        batch.model = self._model
        batch.peft = isinstance(self._model, PeftModel)

    def _admit(self, waiting: deque[GenRequest], batch: DecodeBatch) -> None:
        prompts: list[Prompt] = []
        while waiting and len(batch) + len(prompts) < batch.capacity(self.max_batch):
            request = waiting.popleft()
            if not request.future.set_running_or_notify_cancel():  # its caller gave up while it waited
                self._release(request)
                continue
            if request.cancel.is_set():
                self._finish(request, None, lambda: Answer(_EMPTY, None))
                continue
            try:
                self._refresh(batch)
                prompts.append(batch.prepare(request))
            except Exception as e:
                self._finish(request, e, None)
        for group in prefill_groups(prompts):
            try:
                shared = batch.admit(group)
                self.prefills += 1
                self.shared_prompt_tokens += shared * (len(group) - 1)
            except Exception as e:
                if len(group) == 1:
                    self._finish(group[0].request, e, None)
                    continue
                for prompt in group:  # one at a time, so an error stays with the request that caused it
                    try:
                        batch.admit([prompt])
                        self.prefills += 1
                    except Exception as alone:
                        self._finish(prompt.request, alone, None)

    def _finish(self, request: GenRequest, error: BaseException | None, answer: Callable[[], Answer] | None) -> None:
        self._release(request)
        if error is not None or answer is None:
            request.future.set_exception(error or RuntimeError("no answer"))
        else:
            request.future.set_result(answer())

    def _stop(self, waiting: deque[GenRequest], batch: DecodeBatch) -> None:
        for request in waiting:
            request.future.cancel()  # never started: the caller reports it as dropped
        for row, error in batch.finished(closing=True):
            self._finish(row.request, error, None)
        with self._queue_lock:
            self._serving = False

    def _fail_queue(self, error: Exception) -> None:
        with self._queue_lock:
            items, self._queue, self._serving = list(self._queue), deque(), False
        for item in items:
            if isinstance(item, GenRequest):
                if item.future.set_running_or_notify_cancel():
                    item.future.set_exception(error)
            else:
                item()  # a swap loads the model itself and reports the same error

    def _bind(self, request: GenRequest) -> None:
        from peft import PeftModel

        adapter = self._adapters.get(request.adapter_name) if request.adapter_name else None
        if adapter is not None:
            request.adapter_internal, request.adapter_path = adapter.internal_name, adapter.path
        elif isinstance(self._model, PeftModel):
            request.adapter_internal = BASE
        self._bound[request.adapter_internal] += 1

    def _release(self, request: GenRequest) -> None:
        self._bound[request.adapter_internal] -= 1
        if self._retired:
            self._drop_retired()


def _closed(host: object) -> Exception:
    from backends.local.host import HostClosed

    return HostClosed(f"{host!r} is closed")
