"""What every command's `--cluster` option shares (run, chat, serve, bench, eval, pick): the option's help, opening
a model over the workers, and printing a cluster pick. Not a command module, so `edge-run run` imports it without
importing the `cluster` command group."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_run.cli._common import print_json
from edge_run.core.errors import ClusterError

CLUSTER_HELP = ("split the model over edge-run workers: a cluster FILE, a NAME in the config folder's clusters/, "
                "or profile@host:port,... inline")


def _end_on_lost_worker(error: ClusterError) -> None:
    """llama.cpp found a worker gone mid-run, in one of its threads: one line and the cluster exit code, now."""
    os.write(2, f"\nerror: {error.one_line()}\n".encode())
    os._exit(error.exit_code)


def ensure_library() -> None:
    from edge_run.runtime.cluster.build import cached_rpc_library

    if cached_rpc_library() is None:
        sys.stderr.write("building llama.cpp's RPC library for this llama-cpp-python (once, about half a minute)\n")


def cli_cluster(value: str) -> Any:
    """The host.Cluster of ``--cluster VALUE`` for a command that ends with its process: a worker lost or stalled
    later ends the process with one line and exit code 6."""
    from edge_run.runtime.cluster.host import Cluster
    from edge_run.runtime.cluster.spec import load_cluster

    spec = load_cluster(value)
    ensure_library()
    cluster = Cluster(spec)
    cluster.on_lost(_end_on_lost_worker)
    return cluster


def open_model(artifact: Path, options: Any, cluster: str | None) -> tuple[Any, dict[str, Any] | None]:
    """The backend for a command: session.open_session, or with ``cluster`` the split over its workers (and the
    placement as a dict for --json)."""
    from edge_run.runtime.session import open_session

    if cluster is None:
        return open_session(artifact, options), None
    from edge_run.runtime.cluster.host import open_cluster_session

    backend, placement = open_cluster_session(artifact, cli_cluster(cluster), options)
    return backend, placement.to_dict()


def cluster_opener(cluster: str | None) -> Callable[[Path, Any], Any] | None:
    """For `bench` / `eval`, which open models with their own LoadOptions: open_backend over the cluster."""
    if cluster is None:
        return None
    c = cli_cluster(cluster)
    return lambda path, load: c.open(path, load)[0]


def pick_over_cluster(cluster: str, models: Path, ctx: int, cache_type: str = "f16", as_json: bool = False,
                      link: Any = None) -> None:
    """`pick --cluster` and `cluster pick`: runtime/cluster/pick.py's answer, its reason and the split table."""
    from edge_run.runtime.cluster.pick import pick_cluster
    from edge_run.runtime.cluster.spec import load_cluster
    from edge_run.runtime.pick.picker import gather_candidates

    cache = "f16" if cache_type == "auto" else cache_type
    result = pick_cluster(load_cluster(cluster), gather_candidates(models), ctx, link, cache)
    if as_json:
        print_json(result.to_dict())
        return
    sys.stdout.write(result.why + "\n")
    if result.pick.plan is None:
        return
    heads = (("node", 40), ("layers", 6), ("weights", 9), ("KV", 8), ("other", 8), ("need", 8), ("budget", 8))
    sys.stdout.write(" ".join(f"{h:<{w}}" if h == "node" else f"{h:>{w}}" for h, w in heads) + "\n")
    for r in result.pick.plan.to_dict():
        budget = f"{r['budget_mib']:>4.0f} MiB" if r["budget_mib"] else "       -"
        sys.stdout.write(f"{r['node']:<40} {r['layers'] + r['output_layer']:>6} {r['weight_mib']:>5.0f} MiB "
                         f"{r['kv_mib']:>4.0f} MiB {r['other_mib']:>4.0f} MiB {r['need_mib']:>4.0f} MiB {budget}\n")
