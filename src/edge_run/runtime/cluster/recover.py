"""`serve --cluster`: a worker lost mid-request fails that request, not the server; the next request reconnects.

llama.cpp cannot survive a lost RPC peer inside a call: its dispatcher thread aborts (GGML_ABORT), and the thread
that called llama_decode waits on that dispatcher for ever. So every call that may touch the network runs on a
helper thread, and the caller waits for either its result or the loss:

    serve's worker thread ── stream() ──▶ helper thread: inner.stream(...) ──▶ llama.cpp ──▶ workers
          ▲  pieces via a queue                                                  │ a worker dies / stalls
          └── ClusterError (503) ◀── the loss, recorded ◀── abort handler (dispatcher thread): record, cut the
                                                            other connections, park this thread for ever

The helper and the dispatcher stay parked, and the old model is never freed (freeing it would talk to the dead
dispatcher): each loss leaks the host's share of one load (the token embeddings, mmap'd, plus the host-side
buffers). The workers free theirs when their connection is cut. Before the next request the workers are probed
again and the model is loaded over a new generation of connections (host.py).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edge_run.core.errors import ClusterError
from edge_run.runtime.backends import Backend, GenerationParams, LoadOptions
from edge_run.runtime.backends.base import Cancel
from edge_run.runtime.cluster import native
from edge_run.runtime.cluster.host import Cluster
from edge_run.runtime.cluster.probe import DEFAULT_TIMEOUT_S, probe

T = TypeVar("T")
POLL_S = 0.05
HEALTH_PROBE_S = 1.0  # /health's look at a lost cluster's workers: each probe's timeout
_forgotten: list[Any] = []  # backends abandoned to a loss: kept referenced, their finalizers removed


def forget(backend: Backend) -> None:
    """Never free ``backend`` (its llama.cpp objects belong to a parked thread now): drop llama-cpp-python's
    pending frees and keep a reference for the process's life."""
    llm = getattr(backend, "llm", None)
    for owner in (llm, getattr(llm, "_model", None), getattr(llm, "_ctx", None), getattr(llm, "_batch", None)):
        for name in ("_stack", "_exit_stack"):
            stack = getattr(owner, name, None)
            if isinstance(stack, contextlib.ExitStack):
                stack.pop_all()
    _forgotten.append(backend)


class RecoveringBackend(Backend):
    """A Backend over a cluster that outlives its workers (module docstring). ``health()`` says which node is
    gone while the cluster is down."""

    def __init__(self, artifact: Path, cluster: Cluster, load: LoadOptions) -> None:
        self.artifact, self.cluster, self.load = Path(artifact), cluster, load
        self._lost: ClusterError | None = None
        self._lost_event = threading.Event()
        self._state = threading.Lock()
        self._reload = threading.Lock()
        self.reloads = 0
        self._nodes: dict[str, str | None] = {}  # while lost: endpoint -> the latest probe's error (None: answers)
        self._probed_at = 0.0
        self._probing = threading.Lock()
        cluster.on_lost(self._on_lost)
        cluster.watchdog.on_hang_up = self._on_hang_up
        self.inner, self.placement = self._call(cluster.open, self.artifact, load)
        self._adopt()

    def _adopt(self) -> None:
        self.n_ctx = self.inner.n_ctx
        self.n_vocab = getattr(self.inner, "n_vocab", 0)
        self.load_seconds = self.inner.load_seconds

    # -- the loss ------------------------------------------------------------------------------------------
    def _on_lost(self, error: ClusterError) -> None:
        """(a llama.cpp thread) Record the loss once, close the other workers' connections, then never return."""
        with self._state:
            first = self._lost is None
            if first:
                self._lost = error
        if first:
            self.cluster.cut()
            self._lost_event.set()
        threading.Event().wait()

    def _on_hang_up(self, endpoint: str) -> None:
        """(the watchdog) A worker closed its connection while the server was idle: lost, without a parked call."""
        with self._state:
            if self._lost is not None:
                return
            self._lost = ClusterError(f"the worker at {endpoint} is gone (it closed the connection)",
                                      "restart it (edge-run worker); the next request reconnects")
        self.cluster.cut()
        self._lost_event.set()

    @property
    def lost(self) -> ClusterError | None:
        return self._lost

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a helper thread; the loss, if one comes first, as ClusterError here."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # handed to the caller
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=run, name="edge-run-cluster-call", daemon=True).start()
        while not done.wait(POLL_S):
            if self._lost_event.is_set() and self._lost is not None:
                raise self._lost
        if "error" in box:
            raise box["error"]
        return box["value"]

    def ready(self) -> None:
        """Before a request: after a loss, probe every worker (ClusterError naming one still down) and load again
        over new connections."""
        with self._reload:
            if self._lost is None:
                return
            self.cluster.check_workers(DEFAULT_TIMEOUT_S)
            forget(self.inner)
            self.cluster.watchdog.reset()
            with self._state:
                self._lost_event.clear()
                self._lost = None
            self.inner, self.placement = self._call(self.cluster.open, self.artifact, self.load)
            self._adopt()
            self.reloads += 1

    def cluster_health(self) -> dict[str, Any]:
        """/health's cluster part: each worker ok, or (while lost) what the latest probe of it said; a probe
        older than HEALTH_PROBE_S is redone on a thread of its own (the caller never waits for the network)."""
        lost = self._lost
        if lost is not None and time.monotonic() - self._probed_at > HEALTH_PROBE_S and not self._probing.locked():
            threading.Thread(target=self._probe_nodes, name="edge-run-cluster-health", daemon=True).start()
        nodes = [{"endpoint": e, "ok": lost is None or self._nodes.get(e) is None,
                  **({"error": self._nodes[e]} if lost is not None and self._nodes.get(e) else {})}
                 for e in self.cluster.spec.endpoints]
        return {"status": "degraded" if lost else "ok", "lost": lost.one_line() if lost else None,
                "reloads": self.reloads, "nodes": nodes}

    def _probe_nodes(self) -> None:
        if not self._probing.acquire(blocking=False):
            return
        try:
            protocol = native.load_rpc().protocol
            found: dict[str, str | None] = {}
            for endpoint in self.cluster.spec.endpoints:
                try:
                    probe(endpoint, protocol, HEALTH_PROBE_S, rounds=1)
                    found[endpoint] = None
                except ClusterError as e:
                    found[endpoint] = e.one_line()
            self._nodes, self._probed_at = found, time.monotonic()
        finally:
            self._probing.release()

    # -- generation, relayed from the helper thread ------------------------------------------------------
    def _relay(self, start: Callable[[Cancel], Iterator[T]], cancel: Cancel | None) -> Iterator[T]:
        self.ready()
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()

        def cancelled() -> bool:
            return stop.is_set() or bool(cancel and cancel())

        def produce() -> None:
            try:
                for item in start(cancelled):
                    events.put(("item", item))
                events.put(("done", None))
            except BaseException as e:  # handed to the consumer
                events.put(("error", e))

        helper = threading.Thread(target=produce, name="edge-run-cluster-stream", daemon=True)
        finished = False
        with self.cluster.watchdog.watching():
            helper.start()
            try:
                while True:
                    try:
                        kind, value = events.get(timeout=POLL_S)
                    except queue.Empty:
                        if self._lost_event.is_set() and self._lost is not None:
                            finished = True  # the helper is parked with llama.cpp: nothing to wait for
                            raise self._lost from None
                        continue
                    if kind == "item":
                        yield value
                    elif kind == "done":
                        finished = True
                        self.last_result = getattr(self.inner, "last_result", None)
                        return
                    else:
                        finished = True
                        raise value
            finally:
                if not finished:  # the consumer left early: the helper stops at its next token, then we go on
                    stop.set()
                    while helper.is_alive() and not self._lost_event.is_set():
                        helper.join(POLL_S)

    def stream(self, prompt_tokens: list[int], params: GenerationParams,
               cancel: Cancel | None = None) -> Iterator[str]:
        return self._relay(lambda c: self.inner.stream(prompt_tokens, params, cancel=c), cancel)

    def token_stream(self, prompt_tokens: list[int], params: GenerationParams) -> Iterator[int]:
        return self._relay(lambda c: self.inner.token_stream(prompt_tokens, params), None)

    def eval_logits(self, tokens: list[int]) -> np.ndarray:
        self.ready()
        with self.cluster.watchdog.watching():
            return self._call(self.inner.eval_logits, tokens)

    # -- no network: the host's tokenizer and template -----------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.inner.tokenize(text, add_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self.inner.detokenize(tokens)

    def bos_token_id(self) -> int | None:
        return self.inner.bos_token_id()

    def token_piece(self, token: int) -> bytes:
        return self.inner.token_piece(token)

    def tokenize_plain(self, text: str) -> list[int]:
        return self.inner.tokenize_plain(text)

    def is_eog(self, token: int) -> bool:
        return self.inner.is_eog(token)

    def is_control(self, token: int) -> bool:
        return self.inner.is_control(token)

    def chat_template(self) -> str | None:
        return self.inner.chat_template()

    def template_tokens(self) -> dict[str, str]:
        return self.inner.template_tokens()

    def render_messages(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        return self.inner.render_messages(messages, add_generation_prompt)

    def chat_prompt(self, user_message: str) -> str:
        return self.inner.chat_prompt(user_message)

    def chat_render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> Any:
        return self.inner.chat_render(messages, add_generation_prompt)

    def chat_prompt_messages(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.inner.chat_prompt_messages(messages)

    def close(self) -> None:
        self.cluster.watchdog.stop()
        if self._lost is None:
            self.inner.close()
        else:
            forget(self.inner)



def open_recovering(artifact: Path, cluster: str, options: Any) -> RecoveringBackend:
    """session.open_session for `serve --cluster VALUE` (``options``: a session.SessionOptions)."""
    from edge_run.runtime import session
    from edge_run.runtime.backends.base import physical_cores
    from edge_run.runtime.cluster.spec import load_cluster

    spec = load_cluster(cluster)
    session.verify(artifact)
    ctx = session.resolve_context(artifact, options.ctx)
    load = LoadOptions(n_ctx=ctx, n_threads=options.threads or physical_cores(), n_batch=options.n_batch,
                       seed=options.seed, cache_type=options.cache_type, flash_attn=options.flash_attn)
    return RecoveringBackend(Path(artifact), Cluster(spec, watch_always=False), load)
