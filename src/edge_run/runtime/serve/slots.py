"""`serve --parallel N` (GGUF): N requests generate together, one batched llama.cpp step at a time.

    HTTP handlers (event loop)                     worker thread (one; it alone touches the engine)
    submit(job) ──> waiting deque (<= max_waiting) ──> free slot? admit ──> BatchEngine.step() ... (backends/batch.py)
        ^                                                                        │ tokens, text, result, error
        └──────── job.events (asyncio.Queue, filled via call_soon_threadsafe) ◄──┘

The interface is Worker's (worker.py): ``submit`` refuses with QueueFull / ShuttingDown, ``cancel`` drops a
waiting job at once or ends a running one at the next step (its slot is free again), ``close`` fails waiting jobs
and ends running ones at the next step. A request waits only while every slot is busy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from edge_run.runtime.backends.batch import BatchEngine, SlotRequest
from edge_run.runtime.serve.worker import Job, QueueFull, ShuttingDown

if TYPE_CHECKING:
    from edge_run.runtime.backends.gguf import GGUFBackend


class BatchWorker:
    def __init__(self, backend: GGUFBackend, max_waiting: int) -> None:
        self.engine = BatchEngine(backend)
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: dict[int, Job] = {}  # id(job) -> job (a Job compares by value: no set)
        self._closing = False
        self._job_seconds: deque[float] = deque(maxlen=16)
        self.completed = 0
        self._thread = threading.Thread(target=self._loop, name="edge-run-slots", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def busy(self) -> bool:
        return bool(self._running)

    @property
    def slots(self) -> tuple[int, int]:
        """(active, total)"""
        return len(self._running), len(self.engine.slots)

    def draft_counts(self) -> tuple[int, int]:
        return self.engine.drafted, self.engine.accepted

    def submit(self, job: Job) -> None:
        job.token_events = True
        with self._cond:
            if self._closing:
                raise ShuttingDown
            if len(self._waiting) >= self.max_waiting and len(self._running) + len(self._waiting) >= \
                    len(self.engine.slots):
                mean = sum(self._job_seconds) / len(self._job_seconds) if self._job_seconds else 1.0
                raise QueueFull(max(1, round(mean * (len(self._waiting) // len(self.engine.slots) + 1))))
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            waiting, self._waiting = list(self._waiting), deque()
            for job in self._running.values():
                job.cancelled.set()
            self._cond.notify_all()
        for job in waiting:
            job.cancelled.set()
            job.emit("error", ShuttingDown())

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _emit(self, job: Job, started: float, kind: str, value: Any) -> None:
        if kind in ("done", "error"):
            with self._cond:
                self._running.pop(id(job), None)
                self.completed += 1
            self._job_seconds.append(time.perf_counter() - started)
        job.emit(kind, value)

    def _loop(self) -> None:
        engine = self.engine
        try:
            while True:
                with self._cond:
                    while not self._waiting and not self._running and not self._closing:
                        self._cond.wait()
                    if self._closing and not self._waiting and not self._running:
                        return
                    admitted: list[Job] = []
                    while self._waiting and engine.free() > len(admitted):
                        job = self._waiting.popleft()
                        self._running[id(job)] = job
                        admitted.append(job)
                for job in admitted:
                    engine.admit(SlotRequest(job.tokens, job.params, partial(self._emit, job, time.perf_counter()),
                                             job.cancelled.is_set))
                try:
                    engine.step()
                except Exception as e:  # a bug must not kill the worker: every running request gets a 500
                    engine.fail_all(e)
        finally:
            engine.close()
