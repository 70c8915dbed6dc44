"""Clusters over llama.cpp's RPC backend (issue 27): loopback workers only (127.0.0.1).

Each split runs in its own process: llama.cpp's RPC device registry is process-wide, and a worker a test stopped
would stay a device of the pytest process.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_run.core.errors import ClusterError
from edge_run.runtime.cluster.build import build_rpc_library

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"
TOKENS_SCRIPT = """
import itertools, json, sys
from pathlib import Path
from edge_run.runtime.backends import GenerationParams
from edge_run.runtime.session import SessionOptions, open_session
model, cluster, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = SessionOptions(ctx=512, threads=1)
if cluster:
    from edge_run.runtime.cluster.host import Cluster, open_cluster_session
    from edge_run.runtime.cluster.spec import load_cluster
    backend, placement = open_cluster_session(Path(model), Cluster(load_cluster(cluster)), options)
    print(json.dumps(placement.to_dict()))
else:
    backend = open_session(Path(model), options)
    print("{}")
params = GenerationParams(max_tokens=n, temperature=0.0, ignore_eos=True)
print(json.dumps(list(itertools.islice(backend.token_stream(backend.tokenize(prompt), params), n))))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProc:
    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        cmd = [sys.executable, "-m", "edge_run.cli.main", "worker", "--port", str(self.port), "--threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = self.read_line(60.0)
        assert "listening on" in self.banner, self.banner + (self.proc.stderr.read() if self.proc.stderr else "")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def rpc_library() -> Path:
    """The README-installed environment builds llama.cpp's RPC library itself (cached per llama-cpp-python)."""
    return build_rpc_library().path


@pytest.fixture
def workers(rpc_library: Path) -> Iterator[Callable[..., WorkerProc]]:
    started: list[WorkerProc] = []

    def start(*args: str) -> WorkerProc:
        w = WorkerProc(*args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def greedy_tokens(model: Path, cluster: str, n: int = 16) -> tuple[dict[str, object], list[int]]:
    proc = subprocess.run([sys.executable, "-c", TOKENS_SCRIPT, str(model), cluster, PROMPT, str(n)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    head, tokens = proc.stdout.strip().splitlines()[-2:]
    return json.loads(head), json.loads(tokens)


def edge_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_run.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------- same answer


@pytest.mark.zoo
@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_split_over_two_workers_says_what_one_process_says(zoo_gguf_dir: Callable[[str, str], Path],
                                                           workers: Callable[..., WorkerProc], quant: str) -> None:
    model = zoo_gguf_dir("smollm2-135m", quant)
    a, b = workers(), workers()
    _, local = greedy_tokens(model, "")
    placement, split = greedy_tokens(model, f"pi4-4gb@{a.endpoint},pi4-2gb@{b.endpoint}")
    assert split == local and len(local) == 16
    nodes = placement["nodes"]
    assert [n["endpoint"] for n in nodes] == [None, a.endpoint, b.endpoint]  # type: ignore[index]
    layers = [n["layers"] for n in nodes]  # type: ignore[index]
    assert layers[0] == 0 and sum(layers) == 30 and layers[1] > layers[2] > 0  # 4 GB board takes more
    assert nodes[2]["output_layer"] and all(n["weight_mib"] > 0 for n in nodes[1:])  # type: ignore[index]


@pytest.mark.zoo
def test_host_keeps_its_share_and_run_json_shows_the_split(zoo_gguf_dir: Callable[[str, str], Path],
                                                           workers: Callable[..., WorkerProc]) -> None:
    model = zoo_gguf_dir("smollm2-135m", "Q8_0")
    a, b = workers(), workers()
    local = edge_run("run", str(model), "-p", PROMPT, "-n", "12", "--threads", "1", "--json")
    split = edge_run("run", str(model), "-p", PROMPT, "-n", "12", "--threads", "1", "--json", "--cluster",
                     f"pi4-4gb,pi4-4gb@{a.endpoint},pi4-4gb@{b.endpoint}")
    assert local.returncode == 0 and split.returncode == 0, split.stderr
    got = json.loads(split.stdout)
    assert got["text"] == json.loads(local.stdout)["text"]
    rows = got["cluster"]["nodes"]
    assert [r["layers"] + r["output_layer"] for r in rows] == [11, 10, 10]  # 31 slots over 3 equal budgets
    assert got["cluster"]["n_gpu_layers"] == 20 and all(r["kv_mib"] > 0 for r in rows)


# ---------------------------------------------------------------------------------------------- the worker


def test_worker_states_versions_and_ends_cleanly_on_sigterm(workers: Callable[..., WorkerProc]) -> None:
    w = workers()
    assert "edge-run" in w.banner and "RPC protocol 7.0.0" in w.banner and "1 threads" in w.banner
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(10) == 0
    assert "worker stopped" in w.read_line(5.0)


def test_worker_refuses_an_address_outside_allow(workers: Callable[..., WorkerProc]) -> None:
    from edge_run.runtime.cluster.probe import probe

    w = workers("--allow", "10.0.0.0/8")
    with pytest.raises(ClusterError, match="closed the connection without an RPC hello reply"):
        probe(w.endpoint, (7, 0, 0), timeout=5.0)
    assert "refused 127.0.0.1: not in --allow" in w.read_line(5.0)


def test_worker_behind_allow_serves_and_says_busy_to_a_second_host(workers: Callable[..., WorkerProc]) -> None:
    from edge_run.runtime.cluster.probe import connect, hello, probe

    w = workers("--allow", "127.0.0.1")
    assert probe(w.endpoint, (7, 0, 0)).devices == 1
    with contextlib.closing(connect(w.endpoint, 5.0)) as first:
        hello(first, w.endpoint, (7, 0, 0))
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match="busy serving another host"):
            probe(w.endpoint, (7, 0, 0), timeout=10.0)
        assert time.monotonic() - t0 < 5.0


def test_worker_on_a_lan_address_needs_allow(cli: Callable[..., object]) -> None:
    r = cli("worker", "--host", "0.0.0.0")
    assert r.code == 2 and "--allow" in r.stderr and "Traceback" not in r.stderr  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- faults


@pytest.mark.zoo
def test_killing_a_worker_mid_generation_ends_run_with_the_cluster_error(
        zoo_gguf_dir: Callable[[str, str], Path], workers: Callable[..., WorkerProc]) -> None:
    model = zoo_gguf_dir("smollm2-135m", "Q8_0")
    a, b = workers(), workers()
    run = subprocess.Popen([sys.executable, "-m", "edge_run.cli.main", "run", str(model), "-p", "1, 2, 3, 4, 5,",
                            "-n", "1500", "--ctx", "2048", "--threads", "1", "--cluster",
                            f"pi4-4gb@{a.endpoint},pi4-4gb@{b.endpoint}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.stdout is not None
    assert run.stdout.read(8)  # generating
    b.proc.kill()
    t0 = time.monotonic()
    code = run.wait(30)
    err = run.stderr.read().decode() if run.stderr else ""
    assert code == ClusterError.exit_code, err
    assert time.monotonic() - t0 < 10.0
    assert f"error: the worker at {b.endpoint} is gone" in err and "Traceback" not in err


def _serve_once(reply: Callable[[socket.socket], None]) -> tuple[str, threading.Thread]:
    """A one-connection TCP server on loopback that runs ``reply`` on the accepted socket."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        with srv, contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                reply(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return f"127.0.0.1:{srv.getsockname()[1]}", t


def _check(cli: Callable[..., object], endpoint: str, *extra: str) -> object:
    return cli("cluster", "check", f"pi4-4gb@{endpoint}", "--timeout", "1", *extra)


def test_unreachable_port_is_a_cluster_error(cli: Callable[..., object], rpc_library: Path) -> None:
    r = _check(cli, f"127.0.0.1:{free_port()}")
    assert r.code == 6 and "cannot connect to the worker at 127.0.0.1:" in r.stdout  # type: ignore[attr-defined]


def test_a_stalled_server_hits_the_timeout(cli: Callable[..., object], rpc_library: Path) -> None:
    endpoint, _ = _serve_once(lambda conn: time.sleep(4))
    t0 = time.monotonic()
    r = _check(cli, endpoint)
    assert r.code == 6 and "sent no hello reply within 1 s" in r.stdout  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 3.5


def test_a_server_of_another_protocol_is_named(cli: Callable[..., object], rpc_library: Path) -> None:
    def old_worker(conn: socket.socket) -> None:
        conn.recv(64)
        conn.sendall(struct.pack("<Q", 28) + bytes([6, 1, 0, 0]) + bytes(24))

    endpoint, _ = _serve_once(old_worker)
    r = _check(cli, endpoint)
    assert r.code == 6 and "speaks RPC protocol 6.1.0, this host 7.0.0" in r.stdout  # type: ignore[attr-defined]


def test_an_http_server_is_not_a_worker(cli: Callable[..., object], rpc_library: Path) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        r = _check(cli, f"127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
    assert r.code == 6 and "FAIL" in r.stdout  # type: ignore[attr-defined]


def test_a_banner_server_is_not_a_worker(cli: Callable[..., object], rpc_library: Path) -> None:
    endpoint, _ = _serve_once(lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n"))
    r = _check(cli, endpoint)
    assert r.code == 6 and "is not an llama.cpp RPC worker" in r.stdout  # type: ignore[attr-defined]
    assert "SSH-2.0-" in r.stdout  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- bad cluster input


@pytest.mark.parametrize(("spec", "code", "words"), [
    ("pi4-4gb@127.0.0.1:50052,pi4-4gb@127.0.0.1:50052", 2, "listed twice"),
    ("no-such-board@127.0.0.1:50052", 3, "no profile named 'no-such-board'"),
    ("pi4-4gb@127.0.0.1", 2, "is not an address host:port"),
    ("pi4-4gb@127.0.0.1:99999", 2, "is not an address host:port"),
    ("pi4-4gb", 2, "no worker"),
    ("pi4-4gb,pi4-4gb,pi4-2gb@127.0.0.1:1", 2, "the host is listed twice"),
])
def test_bad_inline_cluster(cli: Callable[..., object], tiny_gguf: Path, spec: str, code: int, words: str) -> None:
    r = cli("run", str(tiny_gguf), "-p", "hi", "-n", "2", "--cluster", spec)
    assert r.code == code and words in r.stderr, r.stderr  # type: ignore[attr-defined]
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr  # type: ignore[attr-defined]


@pytest.mark.parametrize(("memory", "words"), [("nan", "nan"), ("-512", "-512"), ("0", "0"), ("inf", "inf"),
                                               ('"lots"', "'lots'")])
def test_cluster_file_with_impossible_memory(cli: Callable[..., object], tiny_gguf: Path, tmp_path: Path,
                                            memory: str, words: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(f'[[worker]]\nprofile = "pi4-4gb"\naddress = "127.0.0.1:50052"\nmemory_mb = {memory}\n')
    r = cli("run", str(tiny_gguf), "-p", "hi", "-n", "2", "--cluster", str(f))
    assert r.code == 3 and "memory_mb must be a positive number" in r.stderr  # type: ignore[attr-defined]
    assert words in r.stderr and "worker 1" in r.stderr  # type: ignore[attr-defined]


def test_more_nodes_than_layers(cli: Callable[..., object], tiny_gguf: Path) -> None:
    from edge_run.runtime.estimate.gguf import shape_from_gguf

    n = shape_from_gguf(tiny_gguf).n_layer + 2
    spec = ",".join(f"pi4-4gb@127.0.0.1:{50100 + i}" for i in range(n))
    r = cli("run", str(tiny_gguf), "-p", "hi", "-n", "2", "--cluster", spec)
    assert r.code == 2 and f"{n} nodes but the model has only {n - 1} layers" in r.stderr  # type: ignore[attr-defined]


def test_a_named_cluster_file_from_the_config_folder(tiny_gguf: Path) -> None:
    from edge_run.runtime.cluster.spec import clusters_dir, load_cluster

    clusters_dir().mkdir(parents=True)
    (clusters_dir() / "shelf.toml").write_text('[host]\nprofile = "pi5-8gb"\nmemory_mb = 1000\n\n'
                                               '[[worker]]\nprofile = "pi4-4gb"\naddress = "10.0.0.2:50052"\n')
    spec = load_cluster("shelf")
    assert [n.label for n in spec.nodes] == ["pi5-8gb (host)", "pi4-4gb@10.0.0.2:50052"]
    assert spec.nodes[0].memory_mb == 1000 and spec.nodes[1].memory_mb == 4096 - 300


def test_plan_refuses_a_node_over_its_budget(tiny_gguf: Path) -> None:
    from edge_run.core.errors import InsufficientMemoryError
    from edge_run.runtime.cluster.plan import plan_cluster
    from edge_run.runtime.cluster.spec import parse_inline
    from edge_run.runtime.estimate.gguf import shape_from_gguf

    f = parse_inline("pi4-4gb@127.0.0.1:1,pi4-4gb@127.0.0.1:2")
    tight = type(f)((f.nodes[0], f.nodes[1], type(f.nodes[2])(f.nodes[2].profile, f.nodes[2].endpoint, 1.0)), "t")
    with pytest.raises(InsufficientMemoryError, match=r"pi4-4gb@127.0.0.1:2 would need \d+ MiB"):
        plan_cluster(tight, shape_from_gguf(tiny_gguf), 512)


def test_the_library_is_a_same_version_build(rpc_library: Path) -> None:
    from edge_run.runtime.bundle.elf import read_elf
    from edge_run.runtime.cluster.build import cached_rpc_library, installed_llama_version

    built = cached_rpc_library()
    assert built is not None and built.path.resolve() == rpc_library.resolve()
    assert built.llama_cpp_python == installed_llama_version()
    needed = read_elf(rpc_library).needed
    assert any(n.startswith("libggml-base.so") for n in needed) and not any("ggml-cpu" in n for n in needed)
    assert os.path.getsize(rpc_library) < 2 << 20


# ---------------------------------------------------------------------------------------------- cluster pick


def _tight_cluster(tmp_path: Path, memory_mb: int) -> Path:
    f = tmp_path / "tight.toml"
    f.write_text("".join(f'[[worker]]\nprofile = "pi4-4gb"\naddress = "10.0.0.{i}:50052"\nmemory_mb = {memory_mb}\n'
                         for i in (2, 3)))
    return f


@pytest.mark.zoo
def test_cluster_pick_prefers_one_board_and_splits_only_what_fits_no_board(
        cli: Callable[..., object], zoo_gguf_dir: Callable[[str, str], Path], tmp_path: Path) -> None:
    models = zoo_gguf_dir("smollm2-135m", "Q8_0").parent
    assert zoo_gguf_dir("smollm2-135m", "Q4_K_M").parent == models  # the smaller pairing fits one tight board
    roomy = cli("cluster", "pick", "pi4-4gb@10.0.0.2:50052,pi4-4gb@10.0.0.3:50052", "--models", models, "--json")
    assert roomy.code == 0, roomy.stderr  # type: ignore[attr-defined]
    got = json.loads(roomy.stdout)  # type: ignore[attr-defined]
    assert got["pick"]["runs_on"] == "pi4-4gb@10.0.0.2:50052" and "fits one board" in got["why"]
    assert got["pick"]["quant"] == "Q8_0"
    tight = cli("cluster", "pick", _tight_cluster(tmp_path, 300), "--models", models, "--ctx", "1024", "--json")
    assert tight.code == 0, tight.stderr  # type: ignore[attr-defined]
    got = json.loads(tight.stdout)  # type: ignore[attr-defined]
    split = got["pick"]["split"]
    assert got["pick"]["quant"] == "Q8_0" and got["pick"]["runs_on"] == "split"
    assert "the best single-board pairing is smollm2-135m Q4_K_M (pi4-4gb@10.0.0.2:50052)" in got["why"]
    assert sum(r["layers"] + r["output_layer"] for r in split) == 31
    assert all(r["need_mib"] <= r["budget_mib"] for r in split if r["endpoint"])
    assert 0 < got["pick"]["tokens_per_s"] < 1000
    none = cli("cluster", "pick", _tight_cluster(tmp_path, 100), "--models", models, "--ctx", "1024")
    assert none.code == 4 and "nothing fits the cluster" in none.stderr  # type: ignore[attr-defined]


def test_split_speed_adds_the_nodes_and_the_network(tiny_gguf: Path) -> None:
    from edge_run.runtime.cluster.pick import Link, split_speed
    from edge_run.runtime.cluster.plan import plan_cluster
    from edge_run.runtime.cluster.spec import parse_inline
    from edge_run.runtime.estimate.gguf import shape_from_gguf

    shape = shape_from_gguf(tiny_gguf)
    one = plan_cluster(parse_inline("pi4-4gb@127.0.0.1:1"), shape, 256)
    two = plan_cluster(parse_inline("pi4-4gb@127.0.0.1:1,pi4-4gb@127.0.0.1:2"), shape, 256)
    fast, slow = Link(1000.0, 0.1), Link(10.0, 5.0)
    assert split_speed(two, shape, fast) < split_speed(one, shape, fast)  # one more hop per token
    assert split_speed(two, shape, slow) < split_speed(two, shape, fast)


@pytest.mark.zoo
def test_pick_cluster_delegates_to_the_cluster_planner(
        cli: Callable[..., object], zoo_gguf_dir: Callable[[str, str], Path], tmp_path: Path) -> None:
    models = zoo_gguf_dir("smollm2-135m", "Q8_0").parent
    zoo_gguf_dir("smollm2-135m", "Q4_K_M")
    split = cli("pick", "--cluster", _tight_cluster(tmp_path, 300), "--models", models, "--ctx", "1024")
    assert split.code == 0, split.stderr  # type: ignore[attr-defined]
    lines = split.stdout.splitlines()  # type: ignore[attr-defined]
    assert lines[0].startswith("smollm2-135m Q8_0 needs ") and "split 16/15 layers over" in lines[0]
    assert "the best single-board pairing is smollm2-135m Q4_K_M" in lines[0]
    assert lines[1].split()[:3] == ["node", "layers", "weights"] and len(lines) == 5  # header, host, 2 workers
    both = cli("pick", "--cluster", "pi4-4gb@10.0.0.2:50052", "--profile", "pi4-4gb", "--models", models)
    neither = cli("pick", "--models", models)
    for r in (both, neither):
        assert r.code == 2 and "one of --profile or --cluster" in r.stderr  # type: ignore[attr-defined]


def test_uneven_boards_get_uneven_shares(tiny_gguf: Path) -> None:
    from edge_run.runtime.cluster.plan import deal, plan_cluster
    from edge_run.runtime.cluster.spec import parse_inline
    from edge_run.runtime.estimate.gguf import shape_from_gguf

    assert deal([7892.0, 1748.0, 3796.0], 33) == [20, 4, 9]  # an 8B's 32 layers + output over 8 / 2 / 4 GB
    assert deal([1.0] * 5, 33) == [7, 7, 7, 6, 6] and deal([1.0, 100.0], 3) == [1, 2]  # at least one each
    shape = shape_from_gguf(tiny_gguf)
    plan = plan_cluster(parse_inline("pi4-8gb,pi4-2gb@127.0.0.1:1,pi4-4gb@127.0.0.1:2"), shape, 256)
    counts = [s.count for s in plan.shares]
    assert counts == [2, 1, 1]
    host, *workers = plan.shares
    assert host.weight_mib > sum(w.weight_mib for w in workers) / len(workers)  # its layers and the embeddings
    assert all(s.need_mib >= s.run_mib and s.peak_rss_mib >= s.need_mib for s in plan.shares)
