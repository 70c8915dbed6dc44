"""Issue 27's memory rows: each loopback worker's peak RSS, and the host's, vs the plan's per-node estimate.

    python -m tools.bench_cluster_memory [--models smollm2-135m gemma3-270m] [--quants Q8_0 Q4_K_M]
                                         [--workers 2 3] [--ctx 2048] [--limit] [--out results/cluster_memory.json]

Per (model, quant, worker count): that many `edge-run worker --threads 1` processes on 127.0.0.1 (with --limit,
each under RLIMIT_AS: its own address space at idle + its share's reservations, see :func:`as_limit_mib`), then
one host process (``--side host``) that opens the split as `run --cluster` does (host.Cluster, the plan's
layers), prefills a ``n_batch``-token prompt (the batch the plan sizes the compute buffers for) and decodes
N_GEN tokens. Peak RSS is VmHWM (/proc/PID/status) of each worker after the host ends and of the host at its end.
The plan is plan.py's (node need = what the node is predicted to hold at its peak: its weights, its KV share,
its compute scratch, the process's own baseline; the host: the token embeddings, its scratch and baseline, the
load's staging copies). Error = (plan - measured) / measured; the goal is |error| <= 5 % on every node.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA = "edge-run-cluster-memory/1"
GOAL = 0.05
N_GEN = 16
START_TIMEOUT_S = 60.0
HOST_TIMEOUT_S = 600.0
PROFILE = "laptop-x86-8gb"  # the workers' profile: an x86-64 one, so the plan counts this machine's runtime
STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "VmPeak", "VmSize")


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """The memory lines of /proc/PID/status, in MiB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in STATUS_KEYS:
                out[key] = int(value.split()[0]) / 1024
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LimitedWorker:
    """`edge-run worker` on 127.0.0.1 in its own process, under RLIMIT_AS = ``limit_mib`` when given."""

    def __init__(self, threads: int = 1, limit_mib: float | None = None) -> None:
        self.port = _free_port()
        self.limit_mib = limit_mib
        cmd = [sys.executable, "-m", "edge_run.cli.main", "worker", "--port", str(self.port), "--threads",
               str(threads)]
        env = {k: v for k, v in os.environ.items() if k != "EDGE_RUN_DEBUG"}  # llama.cpp's log would fill the pipe
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     preexec_fn=self._limit if limit_mib else None)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        banner = self.proc.stdout.readline() if ready else ""
        if "listening on" not in banner:
            self.stop()
            raise RuntimeError(f"worker did not start: {banner!r}")
        self.idle = proc_status(self.proc.pid)

    def _limit(self) -> None:
        assert self.limit_mib is not None
        cap = int(self.limit_mib * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def status(self) -> dict[str, float]:
        return proc_status(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def workers(n: int, limits: list[float | None] | None = None) -> Iterator[list[LimitedWorker]]:
    started: list[LimitedWorker] = []
    try:
        for i in range(n):
            started.append(LimitedWorker(limit_mib=limits[i] if limits else None))
        yield started
    finally:
        for w in started:
            w.stop()


# --------------------------------------------------------------------------------------------- host side

def host_main(args: argparse.Namespace) -> int:
    """Open the split as `run --cluster` does, prefill one full batch, decode N_GEN tokens; one JSON line."""
    import llama_cpp  # noqa: F401  (the runtime's baseline, as `run` has it before it loads)

    from edge_run.runtime.backends import GenerationParams, LoadOptions
    from edge_run.runtime.bench import prompt_text
    from edge_run.runtime.cluster.host import Cluster
    from edge_run.runtime.cluster.spec import load_cluster

    base = proc_status()
    load = LoadOptions(n_ctx=args.ctx, n_threads=1, n_batch=args.n_batch)
    backend, placement = Cluster(load_cluster(args.cluster)).open(Path(args.model), load)
    loaded = proc_status()
    print("loaded", flush=True)  # the parent reads the workers' memory between load and run
    sys.stdin.readline()
    prompt = backend.tokenize(prompt_text())[: min(args.n_batch, args.ctx - N_GEN)]
    params = GenerationParams(max_tokens=N_GEN, temperature=0.0, ignore_eos=True)
    tokens = list(itertools.islice(backend.token_stream(prompt, params), N_GEN))
    print(json.dumps({"placement": placement.to_dict(), "base": base, "loaded": loaded, "end": proc_status(),
                      "n_prompt": len(prompt), "tokens": tokens}))
    return 0


# --------------------------------------------------------------------------------------------- parent

def run_host(model: Path, cluster: str, ctx: int, n_batch: int, ws: list[LimitedWorker]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tools.bench_cluster_memory", "--side", "host", "--model", str(model),
           "--cluster", cluster, "--ctx", str(ctx), "--n-batch", str(n_batch)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    line = proc.stdout.readline()
    at_load = [w.status() for w in ws] if line.strip() == "loaded" else []
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write("\n")
        proc.stdin.flush()
    out, err = proc.communicate(timeout=HOST_TIMEOUT_S)
    if proc.returncode or not at_load:
        raise RuntimeError(f"host side failed ({proc.returncode}): {(line + err)[-2000:]}")
    got: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    got["workers_at_load"] = at_load
    return got


LIMIT_SLACK_MIB = 64.0  # threads' stacks and malloc arenas: address space, barely resident


def as_limit_mib(idle_vm_mib: float, node: dict[str, Any], reserve_mib: float) -> float:
    """A worker's address-space cap: its idle address space + what the plan puts on it above its baseline +
    ``reserve_mib`` (the compute buffer llama.cpp reserves, larger than what a batch touches) + slack."""
    return idle_vm_mib + node["need_mib"] - node["baseline_mib"] + reserve_mib + LIMIT_SLACK_MIB


def caps(model: Path, n: int, ctx: int, n_batch: int) -> list[float | None]:
    """Each worker's RLIMIT_AS, from the plan over placeholder endpoints (before any worker exists)."""
    from edge_run.runtime.cluster.plan import MIB, plan_cluster
    from edge_run.runtime.cluster.spec import parse_inline
    from edge_run.runtime.estimate.gguf import compute_bytes, shape_from_gguf

    with workers(1) as (probe,):
        idle_vm = probe.idle["VmSize"]
    shape = shape_from_gguf(model)
    spec = parse_inline(",".join(f"{PROFILE}@127.0.0.1:{p}" for p in range(1, n + 1)))
    plan = plan_cluster(spec, shape, ctx, n_batch=n_batch).to_dict()
    n_ub = min(ctx, n_batch)
    reserve = compute_bytes(shape, ctx, n_ub) / MIB
    return [as_limit_mib(idle_vm, r, reserve + (4.0 * shape.n_vocab * n_ub / MIB if r["output_layer"] else 0.0))
            for r in plan[1:]]


def node_row(r: dict[str, Any], name: str, idle: dict[str, float], at_load: dict[str, float],
             end: dict[str, float]) -> dict[str, Any]:
    row = {"node": name, "layers": r["layers"], "output_layer": r["output_layer"],
           "plan_weight_mib": r["weight_mib"], "plan_kv_mib": r["kv_mib"], "plan_baseline_mib": r["baseline_mib"],
           "plan_compute_mib": r["compute_mib"], "plan_load_mib": r["load_mib"], "plan_cold_mib": r["cold_mib"],
           "plan_need_mib": r["need_mib"], "plan_mib": r["peak_rss_mib"], "peak_rss_mib": round(end["VmHWM"], 1),
           "idle_rss_mib": round(idle["VmRSS"], 1), "loaded_rss_mib": round(at_load["VmRSS"], 1),
           "loaded_peak_mib": round(at_load["VmHWM"], 1), "end_anon_mib": round(end["RssAnon"], 1),
           "peak_vm_mib": round(end["VmPeak"], 1)}
    row["error_pct"] = round(100 * (row["plan_mib"] - row["peak_rss_mib"]) / row["peak_rss_mib"], 2)
    row["within_goal"] = abs(row["error_pct"]) <= 100 * GOAL
    return row


def one_row(model: Path, n: int, ctx: int, n_batch: int, limit: bool) -> dict[str, Any]:
    limits = caps(model, n, ctx, n_batch) if limit else None
    with workers(n, limits) as ws:
        host = run_host(model, ",".join(f"{PROFILE}@{w.endpoint}" for w in ws), ctx, n_batch, ws)
        time.sleep(0.2)
        peaks = [w.status() for w in ws]
    nodes = [node_row(host["placement"]["nodes"][0], "host", host["base"], host["loaded"], host["end"])]
    for i, (r, w) in enumerate(zip(host["placement"]["nodes"][1:], ws, strict=True)):
        assert r["endpoint"] == w.endpoint
        nodes.append(node_row(r, f"worker {i + 1}", w.idle, host["workers_at_load"][i], peaks[i]))
        if limits:
            nodes[-1]["limit_as_mib"] = round(limits[i] or 0.0, 1)
    return {"model": model.name, "workers": n, "ctx": ctx, "n_batch": n_batch, "n_prompt": host["n_prompt"],
            "tokens": host["tokens"], "nodes": nodes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["host"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--cluster", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--quants", nargs="+", default=["Q8_0", "Q4_K_M"])
    ap.add_argument("--workers", nargs="+", type=int, default=[2, 3])
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--limit", action="store_true", help="run each worker under an RLIMIT_AS cap from the plan")
    ap.add_argument("--out", type=Path, default=Path("results/cluster_memory.json"))
    args = ap.parse_args(argv)
    if args.side == "host":
        return host_main(args)
    from edge_run.core.fsutil import atomic_write_text
    from edge_run.runtime.cluster.build import build_rpc_library
    from tools.bench_vs_llama import _zoo_files

    build_rpc_library()
    rows = []
    for name, quant, n in itertools.product(args.models, args.quants, args.workers):
        model = _zoo_files(name, quant.lower())[quant.upper()]
        row = one_row(model, n, args.ctx, args.n_batch, args.limit)
        rows.append(row)
        for node in row["nodes"]:
            print(f"{row['model']:28} {n}w {node['node']:9} plan {node['plan_mib']:7.1f}  peak "
                  f"{node['peak_rss_mib']:7.1f}  {node['error_pct']:+6.2f}%  {'ok' if node['within_goal'] else 'MISS'}",
                  flush=True)
    errors = [abs(node["error_pct"]) for row in rows for node in row["nodes"]]
    summary = {"nodes": len(errors), "within_goal": sum(e <= 100 * GOAL for e in errors),
               "max_abs_error_pct": max(errors, default=0.0)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"schema": SCHEMA, "goal_pct": 100 * GOAL, "machine": os.uname().machine,
                                            "load_avg": os.getloadavg(), "summary": summary, "rows": rows},
                                           indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
