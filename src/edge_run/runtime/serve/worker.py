"""One model, one generating thread, a bounded FIFO of waiting requests.

    HTTP handlers (event loop)                     worker thread
    submit(job) ──> waiting deque (<= max_waiting) ──> pop oldest ──> backend.stream(..., cancel=job.cancelled)
        ^                                                                   │ each piece / the result / an error
        └──────── job.events (asyncio.Queue, filled via call_soon_threadsafe) ◄┘

A running generation is never interrupted by a new request; it stops early only when its own client goes
away (``cancel``: checked before every token) or the server shuts down. Cancelling a waiting job removes it
from the queue at once, so its place is free for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edge_run.core.errors import EdgeRunError
from edge_run.runtime.backends import Backend, GenerationParams, GenerationResult
from edge_run.runtime.serve.metrics import JobClock, Metrics

T = TypeVar("T")


class QueueFull(Exception):
    """No room in the waiting queue."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("queue full")
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    """The server is stopping and takes no new work."""


@dataclass
class Job:
    tokens: list[int]
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    metrics: Metrics | None = None
    clock: JobClock = field(default_factory=JobClock)
    token_events: bool = False  # the worker reports each token ("token"); else each text piece counts as one

    def emit(self, kind: str, value: Any) -> None:
        """Called from the worker thread: hand one event to the request's coroutine ("token" events only feed
        the metrics)."""
        metrics = self.metrics
        if metrics is not None:
            if kind == "token" or (kind == "text" and not self.token_events):
                metrics.token(self.clock)
            elif kind == "done":
                cancelled = value is None or value.finish_reason == "cancelled"
                metrics.ended(self.clock, "cancelled" if cancelled else "ok", value.completion_tokens if value else 0)
            elif kind == "error":
                metrics.ended(self.clock, "shutdown" if isinstance(value, ShuttingDown) else "error")
        if kind == "token":
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Worker:
    def __init__(self, backend: Backend, max_waiting: int) -> None:
        self.backend = backend
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self.active: Job | None = None
        self._closing = False
        self._job_seconds: deque[float] = deque(maxlen=16)
        self.completed = 0
        self._thread = threading.Thread(target=self._loop, name="edge-run-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self.active is not None

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closing:
                raise ShuttingDown
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(self._retry_after(len(self._waiting)))
            self._waiting.append(job)
            self._cond.notify()

    def _retry_after(self, ahead: int) -> int:
        mean = sum(self._job_seconds) / len(self._job_seconds) if self._job_seconds else 1.0
        return max(1, round(mean * (ahead + 1)))

    def cancel(self, job: Job) -> None:
        """The client went away: stop its generation at the next token, or drop it from the queue."""
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)

    def close(self) -> None:
        """Take no new work; waiting jobs end with an error, the running one stops at its next token."""
        with self._cond:
            self._closing = True
            waiting, self._waiting = list(self._waiting), deque()
            if self.active is not None:
                self.active.cancelled.set()
            self._cond.notify_all()
        for job in waiting:
            job.cancelled.set()
            job.emit("error", ShuttingDown())

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if self._closing and not self._waiting:
                    return
                job = self._waiting.popleft()
                self.active = job
            try:
                self._run(job)
            finally:
                with self._cond:
                    self.active = None

    def _run(self, job: Job) -> None:
        t0 = time.perf_counter()
        try:
            for piece in self.backend.stream(job.tokens, job.params, cancel=job.cancelled.is_set):
                job.emit("text", piece)
            result: GenerationResult | None = self.backend.last_result
            job.emit("done", result)
        except EdgeRunError as e:
            job.emit("error", e)
        except Exception as e:  # a bug in a backend must not kill the worker: the request gets a 500
            job.emit("error", e)
        finally:
            self._job_seconds.append(time.perf_counter() - t0)
            self.completed += 1


class Preparer:
    """Request preparation (JSON parsing, the chat template, tokenizing) on its own daemon threads, never on the
    event loop: at most ``threads`` run at once and ``max_waiting`` more wait (beyond that: QueueFull).

    A thread per call (~100 us next to milliseconds of work) and a daemon one: a render that never ends cannot
    keep the process alive. ``close`` fails every pending call at once with ShuttingDown."""

    def __init__(self, threads: int, max_waiting: int) -> None:
        self.threads, self.max_waiting = threads, max_waiting
        self._slots: asyncio.Semaphore | None = None
        self._pending = 0
        self._futures: set[asyncio.Future[Any]] = set()
        self._running: set[threading.Thread] = set()
        self.closing = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.closing:
            raise ShuttingDown
        if self._pending >= self.threads + self.max_waiting:
            raise QueueFull(1)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.threads)
        self._pending += 1
        try:
            async with self._slots:
                if self.closing:
                    raise ShuttingDown
                future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
                self._futures.add(future)
                thread = threading.Thread(target=self._call, args=(future, fn, args), daemon=True,
                                          name="edge-run-prepare")
                self._running.add(thread)
                thread.start()
                try:
                    return await future
                finally:
                    self._futures.discard(future)
        finally:
            self._pending -= 1

    def _call(self, future: asyncio.Future[T], fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        try:
            result = fn(*args)
        except BaseException as e:  # handed to the request's coroutine, which answers it
            _settle(future, None, e)
        else:
            _settle(future, result, None)
        finally:
            self._running.discard(threading.current_thread())

    def close(self) -> None:
        """Take no new work; every pending call fails with ShuttingDown (safe from a signal handler)."""
        self.closing = True
        for future in list(self._futures):
            _settle(future, None, ShuttingDown())

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds in all for running calls (they may still be using the model)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._running):
            thread.join(max(0.0, deadline - time.monotonic()))


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    """Complete ``future`` from any thread (a no-op when it is done already or its loop is closed)."""
    def done() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(done)
