"""`edge-run cluster`: build llama.cpp's RPC library, check a cluster's workers; `--cluster` for the other commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from edge_run.cli._cluster_open import ensure_library, pick_over_cluster
from edge_run.cli._common import print_json
from edge_run.core.errors import ClusterError

app = typer.Typer(help="Clusters of boards serving one model through llama.cpp's RPC backend.", no_args_is_help=True)


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
    ensure_library()
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
