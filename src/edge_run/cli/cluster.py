"""`edge-run cluster`: build llama.cpp's RPC library, check a cluster's workers; `--cluster` for the other commands."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from edge_run.cli._common import print_json
from edge_run.core.errors import ClusterError

CLUSTER_HELP = ("split the model over edge-run workers: a cluster FILE, a NAME in the config folder's clusters/, "
                "or profile@host:port,... inline")
app = typer.Typer(help="Clusters of boards serving one model through llama.cpp's RPC backend.", no_args_is_help=True)


def _end_on_lost_worker(error: ClusterError) -> None:
    """llama.cpp found a worker gone mid-run, in one of its threads: one line and the cluster exit code, now."""
    os.write(2, f"\nerror: {error.one_line()}\n".encode())
    os._exit(error.exit_code)


def _ensure_library() -> None:
    from edge_run.runtime.cluster.build import cached_rpc_library

    if cached_rpc_library() is None:
        sys.stderr.write("building llama.cpp's RPC library for this llama-cpp-python (once, about half a minute)\n")


def cli_cluster(value: str) -> Any:
    """The host.Cluster of ``--cluster VALUE`` for a command that ends with its process: a worker lost or stalled
    later ends the process with one line and exit code 6."""
    from edge_run.runtime.cluster.host import Cluster
    from edge_run.runtime.cluster.spec import load_cluster

    spec = load_cluster(value)
    _ensure_library()
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


@app.command("build")
def build(force: bool = typer.Option(False, "--force", help="build again even if it is cached")) -> None:
    """Build llama.cpp's RPC library (libggml-rpc.so) for the installed llama-cpp-python (once; cached)."""
    from edge_run.runtime.cluster.build import build_rpc_library, cached_rpc_library

    if force or cached_rpc_library() is None:
        sys.stderr.write("building llama.cpp's RPC library (about half a minute)\n")
    done = build_rpc_library(force=force)
    sys.stdout.write(f"{done.path}  llama-cpp-python {done.llama_cpp_python}, ggml {done.ggml_version}, "
                     f"RPC protocol {done.protocol_text}, built in {done.seconds:g} s\n")


@app.command("check")
def check(
    cluster: str = typer.Argument(..., help="cluster FILE, NAME, or profile@host:port,... inline"),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="seconds to wait for each worker"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON"),
) -> None:
    """Connect to every worker: reachable, protocol, free memory, round-trip time; one row per node."""
    from edge_run.runtime.cluster import native
    from edge_run.runtime.cluster.host import check_distinct
    from edge_run.runtime.cluster.probe import probe
    from edge_run.runtime.cluster.spec import load_cluster

    spec = load_cluster(cluster)
    check_distinct(spec)
    _ensure_library()
    protocol = native.load_rpc().protocol
    rows: list[dict[str, Any]] = []
    for node in spec.workers:
        assert node.endpoint is not None
        try:
            info = probe(node.endpoint, protocol, timeout).to_dict()
            rows.append({"node": node.label, "ok": True, **info, "budget_mib": round(node.memory_mb, 1)})
        except ClusterError as e:
            rows.append({"node": node.label, "ok": False, "endpoint": node.endpoint, "error": e.one_line()})
    if as_json:
        print_json({"cluster": spec.origin, "protocol": ".".join(map(str, protocol)), "nodes": rows})
    else:
        for r in rows:
            if r["ok"]:
                sys.stdout.write(f"{r['node']:<40} ok    protocol {r['protocol']}  free {r['free_mib']:>9.0f} MiB  "
                                 f"budget {r['budget_mib']:>7.0f} MiB  rtt {r['rtt_ms']:.3f} ms\n")
            else:
                sys.stdout.write(f"{r['node']:<40} FAIL  {r['error']}\n")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise ClusterError(f"{len(bad)} of {len(rows)} workers failed the check", "see the rows above")


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


@app.command("pick")
def pick(
    cluster: str = typer.Argument(..., help="cluster FILE, NAME, or profile@host:port,... inline"),
    models: Path = typer.Option(..., "--models", help="folder of artifacts / checkpoints to pick from"),
    ctx: int = typer.Option(2048, "--ctx", "-c", min=16, help="context length"),
    rtt_ms: float = typer.Option(0.3, "--rtt-ms", min=0.0, help="round trip between boards (cluster check)"),
    bandwidth: float = typer.Option(110.0, "--bandwidth-mbs", min=0.1, help="link bandwidth, MB/s (1 GbE: 110)"),
    as_json: bool = typer.Option(False, "--json", help="print the pick, the split and every candidate as JSON"),
) -> None:
    """The best pairing the cluster can serve: on one board when it fits one, else split (with the table)."""
    from edge_run.runtime.cluster.pick import Link

    pick_over_cluster(cluster, models, ctx, "f16", as_json, Link(bandwidth, rtt_ms))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cluster")
