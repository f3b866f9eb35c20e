"""Dynamic batching: concurrent requests gathered into batches for one worker thread.

:class:`DynamicBatcher` takes items from coroutines (``await batcher.submit(item)``), gathers up
to ``max_batch_size`` of them — waiting at most ``max_wait_s`` after the first one for others to
join — and runs each batch with ``run_batch`` in its own single worker thread, one batch at a time.
``run_batch`` returns one outcome per item, in order: a result, or an exception instance that
:meth:`~DynamicBatcher.submit` raises for that item alone, so a bad item fails only its own request.

A submitter that stops waiting (its request timed out or was cancelled) leaves its item in the
queue marked as abandoned: the worker skips it when it forms a batch. A batch already running
cannot be interrupted; its abandoned items' results are dropped.

The worker is an asyncio task that exists only while there is work: it starts with the first
submission of an event loop and ends when that loop's queue is empty, so the batcher holds no
task between bursts and works under any event loop (uvicorn's, a test client's).
:meth:`~DynamicBatcher.drain` refuses new items, waits for the queued and running ones, then stops
the worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from emomix.errors import ConfigError

log = logging.getLogger("emomix.serve")

T = TypeVar("T")


class BatcherClosed(RuntimeError):
    """Raised by :meth:`DynamicBatcher.submit` once :meth:`DynamicBatcher.drain` has begun."""


@dataclass
class _Entry(Generic[T]):
    item: T
    future: asyncio.Future[Any]


@dataclass
class _LoopQueue(Generic[T]):
    """The waiting items of one event loop, the event that wakes its worker, and the worker."""

    waiting: deque[_Entry[T]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None


class DynamicBatcher(Generic[T]):
    """Gather concurrent :meth:`submit` calls into batches of at most ``max_batch_size`` items.

    ``run_batch(items)`` runs in the batcher's worker thread and returns one outcome per item (a
    result or an exception instance). ``max_wait_s``: how long a batch stays open for more items
    after its first one (0: only the items already waiting join). ``max_batch_size=1`` predicts
    every item alone, in arrival order, without waiting.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[Any]],
        max_batch_size: int,
        max_wait_s: float,
        thread_name: str = "emomix-batch",
    ):
        if int(max_batch_size) < 1:
            raise ConfigError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if not max_wait_s >= 0:
            raise ConfigError(f"max_wait_s must be 0 or more, got {max_wait_s}")
        self.run_batch = run_batch
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_s)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.closed = False
        self.running = 0
        """Items in the batch running now."""
        self.batch_sizes: Counter[int] = Counter()
        """How many batches of each size have run (abandoned items not counted)."""
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue[T]] = weakref.WeakKeyDictionary()

    @property
    def queued(self) -> int:
        """Items waiting for a batch (in every event loop), abandoned ones included until skipped."""
        return sum(len(queue.waiting) for queue in list(self._queues.values()))

    async def submit(self, item: T) -> Any:
        """Queue ``item``, wait for its batch and return its result (or raise its exception)."""
        if self.closed:
            raise BatcherClosed("the batcher is shutting down")
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue()
        entry: _Entry[T] = _Entry(item, loop.create_future())
        queue.waiting.append(entry)
        queue.wake.set()
        if queue.worker is None or queue.worker.done():
            queue.worker = loop.create_task(self._work(queue), name="emomix-batcher")
        try:
            return await entry.future
        finally:
            if not entry.future.done():  # the submitter gave up (timeout, disconnect): skip the item
                entry.future.cancel()

    async def drain(self, timeout: float | None = None) -> None:
        """Refuse new items, wait (at most ``timeout`` s) for the queued and running batches of the
        current loop to finish, then stop the worker thread."""
        self.closed = True
        queue = self._queues.get(asyncio.get_running_loop())
        if queue is not None and queue.worker is not None and not queue.worker.done():
            done, _ = await asyncio.wait({queue.worker}, timeout=timeout)
            if not done:
                log.warning("the batcher did not drain within %s s; stopping it", timeout)
                queue.worker.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _work(self, queue: _LoopQueue[T]) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Entry[T]] = []
        try:
            while True:
                batch = await self._gather(queue, loop)
                if not batch:
                    return
                self.batch_sizes[len(batch)] += 1
                self.running = len(batch)
                try:
                    outcomes = list(await loop.run_in_executor(self.executor, self.run_batch, [e.item for e in batch]))
                    if len(outcomes) != len(batch):
                        raise RuntimeError(f"run_batch gave {len(outcomes)} outcomes for {len(batch)} items")
                except Exception as exc:  # every item of the batch gets the error; the worker goes on
                    outcomes = [exc] * len(batch)
                finally:
                    self.running = 0
                for entry, outcome in zip(batch, outcomes):
                    if entry.future.done():  # abandoned while its batch ran
                        continue
                    if isinstance(outcome, BaseException):
                        entry.future.set_exception(outcome)
                    else:
                        entry.future.set_result(outcome)
                batch = []
        finally:  # cancelled (loop shutdown, drain timeout): nobody may wait forever
            for entry in [*batch, *queue.waiting]:
                if not entry.future.done():
                    entry.future.set_exception(BatcherClosed("the batcher stopped before predicting this item"))
            queue.waiting.clear()

    async def _gather(self, queue: _LoopQueue[T], loop: asyncio.AbstractEventLoop) -> list[_Entry[T]]:
        """The next batch: the first live item, then others until the batch is full or
        ``max_wait_s`` has passed since the first was taken; empty when nothing is waiting."""
        batch = self._take(queue, self.max_batch_size)
        if not batch:
            return batch
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            queue.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(queue.wake.wait(), remaining)
            batch.extend(self._take(queue, self.max_batch_size - len(batch)))
        return batch

    @staticmethod
    def _take(queue: _LoopQueue[T], count: int) -> list[_Entry[T]]:
        taken: list[_Entry[T]] = []
        while queue.waiting and len(taken) < count:
            entry = queue.waiting.popleft()
            if not entry.future.done():  # abandoned items are dropped here
                taken.append(entry)
        return taken
