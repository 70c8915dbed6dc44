"""A cluster description: the nodes (device profile, address) a model is split over; the host may be one of them.

Inline (``--cluster``)::

    pi4-4gb@10.0.0.2:50052,pi4-4gb@10.0.0.3:50052          two workers; the host keeps no layers
    laptop-x86-16gb,pi4-4gb@10.0.0.2:50052                 an item without an address is the host itself

A TOML file (``--cluster FILE``, or ``NAME`` for ``clusters/NAME.toml`` in edge-run's config folder)::

    [host]                      # optional: the host keeps its share of the layers on its own CPU
    profile = "laptop-x86-16gb"
    memory_mb = 2000            # optional: this node's budget instead of its profile's available memory

    [[worker]]
    profile = "pi4-4gb"
    address = "10.0.0.2:50052"
    memory_mb = 3000            # optional

Every defect is one line naming the file (or the inline text) and the node: an unknown profile, a bad address,
a duplicate address, NaN / infinite / non-positive memory, no worker at all.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_run.core.errors import InputError, UsageError
from edge_run.core.fsutil import read_regular_file
from edge_run.profiles.devices import DeviceProfile, get_profile

MAX_SPEC_BYTES = 1 << 20
MAX_NODES = 16  # GGML_RPC_MAX_SERVERS in ggml-rpc.h
HOST_KEYS = frozenset({"profile", "memory_mb"})
WORKER_KEYS = frozenset({"profile", "address", "memory_mb"})


@dataclass(frozen=True)
class Node:
    profile: DeviceProfile | None  # None: the host, not declared (it keeps no layer, only the token embeddings)
    endpoint: str | None  # host:port of its worker; None for the host itself
    memory_mb: float  # the budget the plan may fill (MiB)

    @property
    def is_host(self) -> bool:
        return self.endpoint is None

    @property
    def takes_layers(self) -> bool:
        return self.profile is not None

    @property
    def name(self) -> str:
        return self.profile.name if self.profile else "-"

    @property
    def label(self) -> str:
        return f"{self.name}@{self.endpoint}" if self.endpoint else f"{self.name} (host)" if self.profile else "host"


@dataclass(frozen=True)
class ClusterSpec:
    nodes: tuple[Node, ...]  # the host first (declared or not), then the workers in the order given
    origin: str

    @property
    def workers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if not n.is_host)

    @property
    def endpoints(self) -> list[str]:
        return [n.endpoint for n in self.nodes if n.endpoint]


def clusters_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edge-run" / "clusters"


def parse_endpoint(text: str, origin: str) -> str:
    """``host:port`` (``[v6]:port`` for IPv6), normalised; UsageError for anything else."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip()
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise UsageError(f"{origin}: {text.strip()!r} is not an address host:port", "e.g. 10.0.0.2:50052")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise UsageError(f"{origin}: write the IPv6 address {host!r} in brackets", f"e.g. [{host}]:{port}")
    return f"{host.lower()}:{int(port)}"


def _memory(value: Any, profile: DeviceProfile, where: str) -> float:
    if value is None:
        return float(profile.available_mb)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{where}: memory_mb must be a positive number of MiB, not {value!r}",
                         "remove it to use the profile's available memory")
    return float(value)


def _node(profile_name: Any, endpoint: str | None, memory: Any, where: str) -> Node:
    if not isinstance(profile_name, str) or not profile_name.strip():
        raise InputError(f"{where}: profile must be a profile name", "see `edge-run profiles list`")
    profile = get_profile(profile_name.strip())
    return Node(profile, endpoint, _memory(memory, profile, where))


def _check(nodes: list[Node], origin: str) -> ClusterSpec:
    if not any(not n.is_host for n in nodes):
        raise UsageError(f"{origin}: no worker (profile@host:port)",
                         "list at least one worker, or name an existing cluster file")
    if sum(n.is_host for n in nodes) > 1:
        raise UsageError(f"{origin}: the host is listed twice", "give the host (an item without @address) once")
    if len(nodes) - 1 > MAX_NODES:
        raise UsageError(f"{origin}: {len(nodes)} workers; llama.cpp's RPC backend takes at most {MAX_NODES}")
    seen: set[str] = set()
    for n in nodes:
        if n.endpoint in seen:
            raise UsageError(f"{origin}: the worker {n.endpoint} is listed twice",
                             "each worker serves one share; remove the duplicate")
        if n.endpoint:
            seen.add(n.endpoint)
    host = next((n for n in nodes if n.is_host), Node(None, None, 0.0))
    return ClusterSpec((host, *(n for n in nodes if not n.is_host)), origin)


def parse_inline(text: str) -> ClusterSpec:
    origin = f"--cluster {text!r}"
    nodes = []
    for i, item in enumerate(p.strip() for p in text.split(",")):
        if not item:
            raise UsageError(f"{origin}: item {i + 1} is empty", "write profile@host:port,profile@host:port")
        name, at, address = item.partition("@")
        endpoint = parse_endpoint(address, origin) if at else None
        nodes.append(_node(name, endpoint, None, f"{origin} item {i + 1}"))
    return _check(nodes, origin)


def parse_file(path: Path) -> ClusterSpec:
    origin = str(path)
    raw = read_regular_file(path, "cluster file", MAX_SPEC_BYTES, InputError)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{origin} is not valid UTF-8 TOML ({e})", "fix the syntax") from e
    unknown = sorted(set(data) - {"host", "worker"})
    if unknown:
        raise InputError(f"{origin}: unknown key(s) {', '.join(unknown)}", "a cluster file has [host] and [[worker]]")
    nodes = []
    host = data.get("host")
    if host is not None:
        if not isinstance(host, dict) or set(host) - HOST_KEYS:
            raise InputError(f"{origin}: [host] takes only {', '.join(sorted(HOST_KEYS))}")
        nodes.append(_node(host.get("profile"), None, host.get("memory_mb"), f"{origin} [host]"))
    workers = data.get("worker", [])
    if not isinstance(workers, list) or not all(isinstance(w, dict) for w in workers):
        raise InputError(f"{origin}: workers are [[worker]] tables")
    for i, w in enumerate(workers):
        where = f"{origin} worker {i + 1}"
        if set(w) - WORKER_KEYS:
            raise InputError(f"{where}: unknown key(s) {', '.join(sorted(set(w) - WORKER_KEYS))}",
                             f"a worker takes {', '.join(sorted(WORKER_KEYS))}")
        if not isinstance(w.get("address"), str):
            raise InputError(f"{where}: address must be a string host:port")
        nodes.append(_node(w.get("profile"), parse_endpoint(w["address"], where), w.get("memory_mb"), where))
    return _check(nodes, origin)


def load_cluster(value: str) -> ClusterSpec:
    """``--cluster VALUE``: a TOML file, a name in clusters_dir(), or the inline node list."""
    path = Path(value)
    if value.endswith(".toml") or os.sep in value:
        return parse_file(path)
    named = clusters_dir() / f"{value}.toml"
    if "@" not in value and "," not in value and named.is_file():
        return parse_file(named)
    return parse_inline(value)
