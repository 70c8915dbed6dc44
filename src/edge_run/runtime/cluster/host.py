"""The host side of a cluster: check every worker, plan the split, hand llama.cpp the workers' devices, load.

    Cluster(SPEC).open(artifact, LoadOptions)
      -> probe every worker                 probe.py: TCP connect + HELLO in Python (timeout, protocol version)
      -> plan_cluster(shape, ctx, n_batch)  plan.py: slots per node, each within its budget (n_batch as loaded)
      -> rpc_devices(each worker)           native.py: llama.cpp's RPC devices, passed as the model's devices
      -> open the GGUF with n_gpu_layers = the workers' slots and tensor_split = their counts

A worker lost later (llama.cpp's RPC client aborts) or stalled (links.Watchdog cuts it, and llama.cpp aborts) is
one ClusterError handed to the handler given to :meth:`Cluster.on_lost`: the CLI ends the process with it,
`serve` (recover.py) answers 503 and reconnects. llama.cpp keeps a connection per endpoint text for the process's
life, so each reconnection is a new *generation* of texts for the same workers: ``host:0port``, ``host:00port``
(its port parser reads the zeros away).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_run.core.errors import ArtifactError, ClusterError, InsufficientMemoryError, UsageError
from edge_run.runtime.artifacts.formats import open_backend
from edge_run.runtime.backends import Backend, LoadOptions
from edge_run.runtime.backends.base import physical_cores
from edge_run.runtime.cluster import native
from edge_run.runtime.cluster.links import Watchdog, cut_all, stall_seconds
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
    tensor_split: tuple[float, ...]  # slots per device in ``devices``
    devices: tuple[int, ...]  # llama.cpp's device handles of the workers, in spec order
    n_batch: int

    def to_dict(self) -> dict[str, Any]:
        info = {w.endpoint: w for w in self.workers}
        rows = self.plan.to_dict()
        for row in rows:
            w = info.get(row["endpoint"] or "")
            if w is not None:
                row.update(rtt_ms=round(w.rtt_ms, 3), free_mib=round(w.free_bytes / 2**20, 1))
        return {"origin": self.spec.origin, "n_ctx": self.plan.n_ctx, "n_batch": self.n_batch,
                "n_gpu_layers": self.n_gpu_layers, "nodes": rows}


def check_workers(spec: ClusterSpec, timeout: float = DEFAULT_TIMEOUT_S) -> list[WorkerInfo]:
    """Every worker answers HELLO with this host's protocol; ClusterError naming the first that does not."""
    protocol = native.load_rpc().protocol
    return [probe(endpoint, protocol, timeout) for endpoint in spec.endpoints]


def own_addresses() -> set[str]:
    """This machine's non-loopback interface addresses."""
    import psutil

    found = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                ip = a.address.split("%")[0]
                if not ip.startswith("127.") and ip != "::1":
                    found.add(ip)
    return found


def check_distinct(spec: ClusterSpec) -> None:
    """Before any connection: two workers that are one (names resolving to the same address and port), and a
    worker at one of this machine's own LAN addresses (the host listed as its own worker: one board's memory
    counted twice) are usage errors. Loopback workers are allowed on purpose (local tests, one board per
    process)."""
    from edge_run.runtime.cluster.links import resolve

    seen: dict[tuple[str, int], str] = {}
    own = own_addresses()
    for endpoint in spec.endpoints:
        for peer in resolve([endpoint]):
            if peer in seen and seen[peer] != endpoint:
                raise UsageError(f"{spec.origin}: {seen[peer]} and {endpoint} are the same worker "
                                 f"({peer[0]}:{peer[1]})", "each worker serves one share; list it once")
            seen[peer] = endpoint
            if peer[0] in own:
                raise UsageError(f"{spec.origin}: {endpoint} is this machine, the host, listed as its own worker",
                                 "give the host's share as an item without @address (e.g. pi5-8gb,pi4-4gb@HOST:PORT)")


def connection_text(endpoint: str, generation: int) -> str:
    """The endpoint text of ``generation`` (0: as written)."""
    host, _, port = endpoint.rpartition(":")
    return f"{host}:{'0' * generation}{port}"


class Cluster:
    """One host's cluster for the process's life: its spec, the current generation of connections, the watchdog.

    ``watch_always``: the watchdog looks for stalls at all times (a CLI command that is always loading or
    generating); otherwise only inside :meth:`Watchdog.watching` blocks (serve: between requests a worker may be
    silent for as long as it likes)."""

    def __init__(self, spec: ClusterSpec, timeout: float = DEFAULT_TIMEOUT_S, stall_s: float | None = None,
                 watch_always: bool = True, on_hang_up: Callable[[str], None] | None = None) -> None:
        check_distinct(spec)
        self.spec = spec
        self.timeout = timeout
        self.generation = 0
        self.stalls: dict[str, float] = {}
        self.watchdog = Watchdog(spec.endpoints, stall_s or stall_seconds(), self._stalled, on_hang_up,
                                 always=watch_always)

    def _stalled(self, endpoint: str, seconds: float) -> None:
        self.stalls[endpoint] = seconds

    def on_lost(self, handler: Callable[[ClusterError], None]) -> None:
        """From now on, a lost or stalled worker calls ``handler(error)`` on the thread that found it (one of
        llama.cpp's); ``handler`` must end the process or never return (llama.cpp aborts when it returns)."""
        native.on_rpc_abort(lambda message: handler(self.lost_error(message)))

    def lost_error(self, reason: str) -> ClusterError:
        """The error for a worker that failed mid-run: a stalled one by the watchdog's record, else those that
        refuse a connection now (a dying process closes its connections a moment before its listening socket:
        a few looks, DOWN_PAUSE_S apart)."""
        if self.stalls:
            endpoint, seconds = max(self.stalls.items(), key=lambda kv: kv[1])
            return ClusterError(f"the worker at {endpoint} stopped answering (nothing for {seconds:.0f} s while a "
                                "reply was due)", "is the board hung or overloaded? restart its worker and retry")
        down: list[str] = []
        for _ in range(DOWN_LOOKS):
            down = unreachable(self.spec.endpoints)
            if down:
                break
            time.sleep(DOWN_PAUSE_S)
        who = f"the worker at {', '.join(down)} is gone" if down else "a worker stopped answering"
        return ClusterError(f"{who} ({reason.rstrip('.')})", "restart it (edge-run worker) and run again")

    def cut(self) -> int:
        """Close every connection of this generation (their workers free the old model's memory and accept a new
        host); the next :meth:`place` uses a new generation."""
        self.generation += 1
        self.stalls.clear()
        self.watchdog.reset()
        return cut_all(self.watchdog.peers)

    def check_workers(self, timeout: float | None = None) -> list[WorkerInfo]:
        """Every worker answers HELLO with this host's protocol; ClusterError naming the first that does not."""
        protocol = native.load_rpc().protocol
        return [probe(endpoint, protocol, timeout or self.timeout) for endpoint in self.spec.endpoints]

    def place(self, artifact: Path, n_ctx: int, cache_type: str = "f16", n_batch: int = 512,
              logits_all: bool = False) -> Placement:
        """Check the workers, plan the split of ``artifact`` (compute scratch for ``n_batch``-token batches, as
        loaded, with every token's logits when ``logits_all``) and get the workers' llama.cpp devices."""
        from edge_run.core.formats import artifact_format
        from edge_run.runtime.estimate.gguf import shape_from_gguf

        if artifact_format(Path(artifact)) != "gguf":
            raise UsageError("--cluster splits GGUF models only (llama.cpp's RPC backend)", "pass a .gguf artifact")
        shape = shape_from_gguf(Path(artifact))
        plan = plan_cluster(self.spec, shape, n_ctx, cache_type, n_batch=n_batch,
                            n_outputs=n_batch if logits_all else 1, file_bytes=Path(artifact).stat().st_size)
        workers = self.check_workers()
        counts = {s.node.endpoint: s.count for s in plan.shares if s.node.endpoint}
        devices: list[int] = []
        split: list[float] = []
        for endpoint in self.spec.endpoints:
            found = native.rpc_devices(connection_text(endpoint, self.generation))
            devices += found
            split += [float(counts.get(endpoint, 0))] + [0.0] * (len(found) - 1)  # a worker serves its first device
        return Placement(self.spec, plan, tuple(workers), plan.n_gpu_layers, tuple(split), tuple(devices), n_batch)

    def open(self, artifact: Path, load: LoadOptions) -> tuple[Backend, Placement]:
        """``open_backend`` over the cluster: ``load`` with the placement's layers and devices (mmap on: the
        workers' weights pass through the host's page cache once, on their way out, and a model abandoned to a
        lost worker (recover.py) keeps only reclaimable file pages of its embeddings)."""
        placement = self.place(Path(artifact), load.n_ctx, load.cache_type, load.n_batch, load.logits_all)
        options = replace(load, n_gpu_layers=placement.n_gpu_layers, tensor_split=placement.tensor_split,
                          mmap="on")
        with self.watchdog.watching(), native.model_devices(list(placement.devices)):
            try:
                return open_backend(Path(artifact), options), placement
            except ArtifactError as e:  # the file passed its checks: what failed is a worker's allocation
                raise InsufficientMemoryError(
                    f"llama.cpp could not load {Path(artifact).name} over the cluster: a worker refused the memory "
                    "of its share (a memory limit below the plan, or the board is short of memory)",
                    "`edge-run cluster check` shows each worker's free memory; add a node or lower --ctx "
                    "(EDGE_RUN_DEBUG=1 shows llama.cpp's log)") from e


def open_cluster_session(artifact: Path, cluster: Cluster, options: Any) -> tuple[Backend, Placement]:
    """session.open_session for a cluster (``options``: a session.SessionOptions): integrity, context, the
    placement, then the backend. The memory check is the plan's, per node."""
    from edge_run.runtime import session

    session.verify(artifact)
    ctx = session.resolve_context(artifact, options.ctx)
    load = LoadOptions(n_ctx=ctx, n_threads=options.threads or physical_cores(), n_batch=options.n_batch,
                       seed=options.seed, cache_type=options.cache_type, flash_attn=options.flash_attn)
    return cluster.open(Path(artifact), load)


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
