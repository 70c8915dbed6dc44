"""The host side of a cluster: check every worker, plan the split, make the workers llama.cpp devices, load.

    load_cluster(SPEC)                      spec.py: nodes (profile, address), budgets
      -> probe every worker                 probe.py: TCP connect + HELLO in Python (timeout, protocol version)
      -> plan_cluster(shape, ctx)           plan.py: slots per node, each within its budget
      -> register_endpoint(each worker)     native.py: llama.cpp's RPC devices
      -> open the GGUF with n_gpu_layers = the workers' slots and tensor_split = their counts

`run`, `chat`, `serve`, `bench` and `eval` call :func:`open_cluster_session` instead of session.open_session.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_run.core.errors import ClusterError, UsageError
from edge_run.runtime.backends import Backend, LoadOptions, open_backend
from edge_run.runtime.backends.base import physical_cores
from edge_run.runtime.cluster import native
from edge_run.runtime.cluster.plan import ClusterPlan, plan_cluster
from edge_run.runtime.cluster.probe import DEFAULT_TIMEOUT_S, WorkerInfo, probe, split_endpoint
from edge_run.runtime.cluster.spec import ClusterSpec

DOWN_CHECK_S = 0.5
DOWN_LOOKS = 5
DOWN_PAUSE_S = 0.2


@dataclass(frozen=True)
class Placement:
    spec: ClusterSpec
    plan: ClusterPlan
    workers: tuple[WorkerInfo, ...]
    n_gpu_layers: int
    tensor_split: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        info = {w.endpoint: w for w in self.workers}
        rows = self.plan.to_dict()
        for row in rows:
            w = info.get(row["endpoint"] or "")
            if w is not None:
                row.update(rtt_ms=round(w.rtt_ms, 3), free_mib=round(w.free_bytes / 2**20, 1))
        return {"origin": self.spec.origin, "n_ctx": self.plan.n_ctx, "n_gpu_layers": self.n_gpu_layers,
                "nodes": rows}


def check_workers(spec: ClusterSpec, timeout: float = DEFAULT_TIMEOUT_S) -> list[WorkerInfo]:
    """Every worker answers HELLO with this host's protocol; ClusterError naming the first that does not."""
    protocol = native.load_rpc().protocol
    return [probe(endpoint, protocol, timeout) for endpoint in spec.endpoints]


def place(spec: ClusterSpec, artifact: Path, n_ctx: int, cache_type: str = "f16",
          timeout: float = DEFAULT_TIMEOUT_S) -> Placement:
    """Check the workers, plan the split of ``artifact`` and register the workers with llama.cpp."""
    from edge_run.core.formats import artifact_format
    from edge_run.runtime.estimate.gguf import shape_from_gguf

    if artifact_format(Path(artifact)) != "gguf":
        raise UsageError("--cluster splits GGUF models only (llama.cpp's RPC backend)", "pass a .gguf artifact")
    shape = shape_from_gguf(Path(artifact))
    plan = plan_cluster(spec, shape, n_ctx, cache_type)
    workers = check_workers(spec, timeout)
    for endpoint in spec.endpoints:
        native.register_endpoint(endpoint)
    registry = native.registered_endpoints()
    devices = native.device_names()
    if len(devices) != 1 + len(registry):
        raise ClusterError(f"llama.cpp lists {len(devices)} devices ({', '.join(devices)}); expected the CPU and "
                           f"{len(registry)} RPC workers", "edge-run splits over CPU-only llama.cpp builds")
    return Placement(spec, plan, tuple(workers), plan.n_gpu_layers, tuple(plan.tensor_split(registry)))


def open_cluster_session(artifact: Path, spec: ClusterSpec, options: Any,
                         timeout: float = DEFAULT_TIMEOUT_S) -> tuple[Backend, Placement]:
    """session.open_session for a cluster (``options``: a session.SessionOptions): integrity, context, the
    placement, then the backend. The memory check is the plan's, per node."""
    from edge_run.runtime import session

    session.verify(artifact)
    ctx = session.resolve_context(artifact, options.ctx)
    placement = place(spec, Path(artifact), ctx, options.cache_type, timeout)
    # mmap: the workers' weights pass through the host's page cache once, on their way out
    load = LoadOptions(n_ctx=ctx, n_threads=options.threads or physical_cores(), n_batch=options.n_batch,
                       seed=options.seed, cache_type=options.cache_type, flash_attn=options.flash_attn, mmap="on",
                       n_gpu_layers=placement.n_gpu_layers, tensor_split=placement.tensor_split)
    return open_backend(Path(artifact), load), placement


def unreachable(endpoints: list[str], timeout: float = DOWN_CHECK_S) -> list[str]:
    """The endpoints that refuse or ignore a TCP connection now (a quick look, for the lost-worker message)."""
    down = []
    for endpoint in endpoints:
        try:
            with contextlib.closing(socket.create_connection(split_endpoint(endpoint), timeout=timeout)):
                pass
        except OSError:
            down.append(endpoint)
    return down


def lost_worker_error(reason: str) -> ClusterError:
    """The error for llama.cpp's abort when a worker fails mid-run, naming the workers that are gone (a dying
    process closes its connections a moment before its listening socket: a few looks, DOWN_LOOKS apart)."""
    endpoints = native.registered_endpoints()
    down: list[str] = []
    for _ in range(DOWN_LOOKS):
        down = unreachable(endpoints)
        if down:
            break
        time.sleep(DOWN_PAUSE_S)
    who = f"the worker at {', '.join(down)} is gone" if down else "a worker stopped answering"
    return ClusterError(f"{who} ({reason.rstrip('.')})", "restart it (edge-run worker) and run again")


def exit_on_lost_worker(end: Callable[[ClusterError], None]) -> None:
    """From now on, llama.cpp's RPC abort calls ``end(error)`` (which must end the process) instead of abort()."""
    native.on_rpc_abort(lambda message: end(lost_worker_error(message)))
