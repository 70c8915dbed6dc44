"""Issue 27's speed rows: edge-run's layer split over 2 loopback workers vs llama.cpp's own `llama-bench --rpc`
against the same two servers and the same split; each split vs its single process; bytes crossing the network.

    python -m tools.bench_rpc [--rounds 5] [--repeats 3] [--model smollm2-135m] [--quant Q4_K_M]
                              [--threads N] [--worker-threads 1] [--out results/rpc_bench.json]

    edge-run worker --port P1 --threads W        edge-run worker --port P2 --threads W
        (loopback: llama.cpp's RPC server on the port itself, no relay; up for the whole run)

Each round runs four processes, one at a time, in alternating order (A B C D, then D C B A):

    edge-run split     python -m tools.bench_rpc --side edge-split   cluster/host.place + bench.measure
    llama.cpp split    llama-bench-rpc --rpc P1,P2 -ngl N -ts a/b    the split edge-run's plan chose
    edge-run single    python -m tools.bench_rpc --side edge-single  bench.BackendRunner (`edge-run bench`)
    llama.cpp single   llama-bench

pp512 and tg128 tokens/s as src/edge_run/runtime/bench.py and llama-bench measure them, ``--repeats`` each per
process (median). A ratio is the median over rounds of the two sides' ratio within the round. llama-bench-rpc is
llama-bench of the vendored source with the RPC backend edge-run builds (tools/llama_tools.py), so both split
sides run the same client library against the same servers.

Bytes: after the rounds, one more edge-run split run goes through a counting relay in this process (one per
worker, bytes per direction); the child marks its phases over stdin/stdout: load, a warm-up, a 512-token
prefill, a 128-token decode (1-token prompt). Per decoded token = the decode phase's bytes / 128.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_run.runtime.bench import BackendRunner, BenchConfig, machine_info, measure, prompt_text, summarize

SCHEMA = "edge-run-rpc-bench/1"
GOAL = 0.97
SIDES = ("edge_split", "llama_split", "edge_single", "llama_single")
N_PROMPT, N_GEN = 512, 128
START_TIMEOUT_S = 120.0
SIDE_TIMEOUT_S = 900.0


# --------------------------------------------------------------------------------------------- children

class ClusterRunner(BackendRunner):
    """bench.BackendRunner over a --cluster, opened as `run --cluster` opens it (host.Cluster: probe, plan, the
    workers' devices, the stall watchdog)."""

    def __init__(self, path: Path, config: BenchConfig, spec: str) -> None:
        from edge_run.runtime.backends import LoadOptions
        from edge_run.runtime.cluster.host import Cluster
        from edge_run.runtime.cluster.spec import load_cluster

        self.backend, self.placement = Cluster(load_cluster(spec)).open(path, LoadOptions(
            n_ctx=config.n_ctx, n_threads=config.n_threads, n_batch=config.n_batch, flash_attn=config.flash_attn,
            reuse_prefix=False))
        self.load_seconds = self.backend.load_seconds


def _mark(phase: str) -> None:
    """Tell the parent a phase ended and wait until it has read its byte counters."""
    print(f"phase {phase}", flush=True)
    sys.stdin.readline()


def side_main(args: argparse.Namespace) -> int:
    config = BenchConfig(n_prompt=N_PROMPT, n_gen=N_GEN, repeats=args.repeats, threads=args.threads)
    model = Path(args.model)
    if args.side == "edge-single":
        runner: BackendRunner = BackendRunner(model, config)
    else:
        runner = ClusterRunner(model, config, args.cluster)
    try:
        if args.side == "edge-bytes":
            _mark("load")
            tokens = runner.tokenize(prompt_text())
            runner.generate(tokens[:N_PROMPT], 2)
            _mark("warmup")
            runner.generate(tokens[:N_PROMPT], 1)
            _mark("prefill")
            done = runner.generate(tokens[:1], N_GEN)
            _mark("decode")
            print(json.dumps({"decoded": done.generated}), flush=True)
            return 0
        result = summarize(measure(runner, config, prompt_text()), config)
    finally:
        runner.close()
    if isinstance(runner, ClusterRunner):
        p = runner.placement
        result["placement"] = {"n_gpu_layers": p.n_gpu_layers, "tensor_split": list(p.tensor_split),
                               "nodes": p.plan.to_dict()}
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------- workers, relay

@dataclass
class Worker:
    port: int
    proc: subprocess.Popen[str]
    banner: str = ""

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def workers(n: int, threads: int) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for _ in range(n):
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "edge_run.cli.main", "worker", "--port", str(port),
                                     "--threads", str(threads)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
            started.append(Worker(port, proc))
        for w in started:
            assert w.proc.stdout is not None
            ready, _, _ = select.select([w.proc.stdout], [], [], START_TIMEOUT_S)
            w.banner = w.proc.stdout.readline().strip() if ready else ""
            if "listening on" not in w.banner:
                raise SystemExit(f"error: the worker on port {w.port} did not start: {w.banner or 'no output'}")
        yield started
    finally:
        for w in started:
            w.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(10)
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()


@dataclass
class CountingRelay:
    """127.0.0.1:<port> relayed to ``target``; counts the bytes each way (``up``: host to worker)."""
    target: int
    up: int = 0
    down: int = 0
    listener: socket.socket = field(default_factory=socket.socket)

    def __post_init__(self) -> None:
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            back = socket.create_connection(("127.0.0.1", self.target))
            for s in (conn, back):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(conn, back, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(back, conn, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        buf = memoryview(bytearray(1 << 20))
        try:
            while n := src.recv_into(buf):
                setattr(self, way, getattr(self, way) + n)  # one thread per direction: no lost update
                dst.sendall(buf[:n])
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


# --------------------------------------------------------------------------------------------- sides

def _child(side: str, model: Path, args: argparse.Namespace, cluster: str = "") -> list[str]:
    return [sys.executable, "-m", "tools.bench_rpc", "--side", side, "--model", str(model), "--cluster", cluster,
            "--repeats", str(args.repeats), "--threads", str(args.threads)]


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SIDE_TIMEOUT_S)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)[:200]} failed (exit {proc.returncode}): "
                         f"{(proc.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
    return proc.stdout


def _edge(cmd: list[str]) -> dict[str, Any]:
    out = json.loads(_run(cmd).strip().splitlines()[-1])
    return {"prefill_tps": out["prefill"]["tokens_per_s"]["median"],
            "decode_tps": out["decode"]["tokens_per_s"]["median"], "raw": out}


def _llama(cmd: list[str]) -> dict[str, Any]:
    tests = json.loads(_run(cmd))
    pp = next(t for t in tests if t["n_prompt"] > 0 and t["n_gen"] == 0)
    tg = next(t for t in tests if t["n_gen"] > 0 and t["n_prompt"] == 0)
    return {"prefill_tps": round(statistics.median(pp["samples_ts"]), 2),
            "decode_tps": round(statistics.median(tg["samples_ts"]), 2),
            **{k: tg.get(k) for k in ("backends", "n_gpu_layers", "tensor_split")}}  # the split it ran


def count_bytes(model: Path, args: argparse.Namespace, targets: list[Worker]) -> dict[str, Any]:
    """One edge-run split through counting relays: bytes per phase, summed over the workers."""
    relays = [CountingRelay(w.port) for w in targets]
    cluster = ",".join(f"{args.profile}@{r.endpoint}" for r in relays)
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(_child("edge-bytes", model, args, cluster), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    phases: dict[str, dict[str, int]] = {}
    last = (0, 0)
    decoded = 0
    try:
        for line in proc.stdout:
            if not line.startswith("phase "):
                decoded = json.loads(line)["decoded"]
                continue
            now = (sum(r.up for r in relays), sum(r.down for r in relays))
            phases[line.split()[1]] = {"up": now[0] - last[0], "down": now[1] - last[1]}
            last = now
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.wait(SIDE_TIMEOUT_S)
        for r in relays:
            r.close()
    err.seek(0)
    tail = err.read().decode("utf-8", "replace").strip()[-300:]
    err.close()
    if proc.returncode != 0 or "decode" not in phases or not decoded:
        raise SystemExit(f"error: the bytes run failed (exit {proc.returncode}): {tail}")

    def total(phase: str) -> int:
        return phases[phase]["up"] + phases[phase]["down"]

    return {"phases": phases, "load_mib": round(total("load") / 2**20, 2),
            "prefill_bytes_per_prompt_token": round(total("prefill") / N_PROMPT),
            "decode_bytes_per_token": round(total("decode") / decoded),
            "decode_up_bytes_per_token": round(phases["decode"]["up"] / decoded),
            "decode_down_bytes_per_token": round(phases["decode"]["down"] / decoded), "decoded": decoded}


# --------------------------------------------------------------------------------------------- main

def _ratio(rounds: list[dict[str, dict[str, Any]]], a: str, b: str, metric: str) -> float:
    return round(statistics.median(r[a][metric] / r[b][metric] for r in rounds), 4)


def bench_main(args: argparse.Namespace) -> int:
    from tools.bench_vs_llama import _zoo_files
    from tools.llama_tools import llama_bench_rpc, llama_tools

    model = _zoo_files(args.model, args.quant.lower())[args.quant.upper()]
    plain_bench, rpc_bench = llama_tools().binary("llama-bench"), llama_bench_rpc()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with workers(2, args.worker_threads) as ws:
        cluster = ",".join(f"{args.profile}@{w.endpoint}" for w in ws)
        first = _edge(_child("edge-split", model, args, cluster))  # also gives the split llama-bench is told
        placement = first["raw"]["placement"]
        split = ["-ngl", str(placement["n_gpu_layers"]), "-ts", "/".join(f"{x:g}" for x in placement["tensor_split"])]
        common = ["-m", str(model), "-p", str(N_PROMPT), "-n", str(N_GEN), "-r", str(args.repeats), "-t",
                  str(args.threads), "-o", "json"]
        run = {"edge_split": lambda: _edge(_child("edge-split", model, args, cluster)),
               "llama_split": lambda: _llama([str(rpc_bench), *common, "--rpc", ",".join(w.endpoint for w in ws),
                                              *split]),
               "edge_single": lambda: _edge(_child("edge-single", model, args)),
               "llama_single": lambda: _llama([str(plain_bench), *common])}
        rounds: list[dict[str, dict[str, Any]]] = []
        for i in range(args.rounds):
            order = SIDES if i % 2 == 0 else tuple(reversed(SIDES))
            got = {side: run[side]() for side in order}
            for side in SIDES:
                got[side].pop("raw", None)
            rounds.append(got)
            print(f"round {i + 1}/{args.rounds}: " + "  ".join(
                f"{s} pp {got[s]['prefill_tps']:.1f} tg {got[s]['decode_tps']:.1f}" for s in SIDES), file=sys.stderr,
                flush=True)
        traffic = count_bytes(model, args, ws)
        banners = [w.banner for w in ws]
    ratios = {name: {m: _ratio(rounds, a, b, f"{m}_tps") for m in ("prefill", "decode")}
              for name, a, b in (("edge_split_over_llama_split", "edge_split", "llama_split"),
                                 ("edge_split_over_edge_single", "edge_split", "edge_single"),
                                 ("llama_split_over_llama_single", "llama_split", "llama_single"))}
    doc = {
        "schema": SCHEMA, "goal": f"edge_split_over_llama_split >= {GOAL} (prefill and decode)",
        "model": model.name, "threads": args.threads, "worker_threads": args.worker_threads, "rounds": args.rounds,
        "repeats_per_process": args.repeats, "n_prompt": N_PROMPT, "n_gen": N_GEN, "workers": banners,
        "split": placement, "medians": {s: {m: round(statistics.median(r[s][f"{m}_tps"] for r in rounds), 2)
                                            for m in ("prefill", "decode")} for s in SIDES},
        "ratios": ratios, "meets_goal": all(v >= GOAL for v in ratios["edge_split_over_llama_split"].values()),
        "network": traffic, "per_round": rounds, "machine": machine_info(),
        "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - t0, 1),
        "note": "a shared machine's numbers are ratios of interleaved runs, not absolutes; loopback only",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(json.dumps({"medians": doc["medians"], "ratios": ratios, "network": {k: v for k, v in traffic.items()
                                                                               if k != "phases"}}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    from edge_run.runtime.backends.base import physical_cores

    ap = argparse.ArgumentParser(prog="python -m tools.bench_rpc", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="repetitions per process (both tools), median")
    ap.add_argument("--model", default="smollm2-135m", help="zoo model (tools/zoo.py)")
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--threads", type=int, default=physical_cores(), help="host / single-process threads")
    ap.add_argument("--worker-threads", type=int, default=1)
    ap.add_argument("--profile", default="pi4-4gb", help="the workers' profile in the cluster spec (budgets)")
    ap.add_argument("--out", type=Path, default=Path("results/rpc_bench.json"))
    ap.add_argument("--side", choices=("edge-split", "edge-single", "edge-bytes"), help=argparse.SUPPRESS)
    ap.add_argument("--cluster", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.rounds, args.repeats, args.threads, args.worker_threads) < 1:
        print("error: --rounds, --repeats, --threads and --worker-threads must be at least 1", file=sys.stderr)
        return 2
    return side_main(args) if args.side else bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
