"""`edge-run serve`: an OpenAI-compatible HTTP server (chat completions, completions, models, health)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from edge_run.core.errors import UsageError
from edge_run.runtime.backends.speculative import DRAFT_HELP

if TYPE_CHECKING:
    from edge_run.runtime.backends import Backend
    from edge_run.runtime.session import SessionOptions


def serve_command(
    artifact: Path = typer.Argument(None, help=".gguf file or ONNX artifact folder (omit with --profile)"),
    profile: str = typer.Option(None, "--profile", help="serve the best artifact for this device profile"),
    models: Path = typer.Option(None, "--models", help="with --profile: folder of artifacts/checkpoints"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8080, "--port", help="TCP port (0: any free port)"),
    api_key: str = typer.Option(None, "--api-key", envvar="EDGE_RUN_API_KEY",
                                help="require 'Authorization: Bearer KEY' on /v1/* (or set EDGE_RUN_API_KEY); "
                                     "printable ASCII"),
    allow_host: list[str] = typer.Option(None, "--allow-host", metavar="NAME",
                                         help="also answer requests for this Host name (repeatable; *.lan "
                                              "patterns; loopback names and the bound address always work)"),
    cors: list[str] = typer.Option(None, "--cors", metavar="ORIGIN",
                                   help="let web pages from this origin call the API, e.g. http://localhost:3000 "
                                        "(repeatable; * for any)"),
    ctx: int = typer.Option(None, "--ctx", "-c", min=16, help="context length (default 2048 or the trained one)"),
    threads: int = typer.Option(None, "--threads", "-t", min=1, help="default: physical cores"),
    queue: int = typer.Option(16, "--queue", min=0, help="requests that may wait while every slot generates"),
    parallel: int = typer.Option(None, "--parallel", "-np",
                                 help="GGUF: requests generated together in one batch, each slot with its own --ctx "
                                      "of KV cache (default: as many as fit in memory, up to 4). ONNX artifacts "
                                      "are served one request at a time (a FIFO queue)"),
    draft: str = typer.Option(None, "--draft", help=DRAFT_HELP),
    force: bool = typer.Option(False, "--force", help="load even if the memory estimate exceeds available memory"),
    cluster: str = typer.Option(None, "--cluster", help="split the model over edge-run workers (as `run --cluster`); "
                                "a lost worker fails its request with 503 and the next request reconnects"),
) -> None:
    """Serve one model over an OpenAI-compatible HTTP API (needs `pip install 'edge-run\\[serve]'`)."""
    try:
        from edge_run.runtime.serve.app import ServerConfig, ServerState
        from edge_run.runtime.serve.guard import access_policy, check_api_key
        from edge_run.runtime.serve.server import bind, run_server, startup_lines
    except ImportError as e:
        raise UsageError(f"edge-run serve needs the serve extra ({e.name} is not installed)",
                         "pip install 'edge-run[serve]'") from e
    from edge_run.runtime.pick.resolve import resolve_artifact
    from edge_run.runtime.session import DEFAULT_CTX, SessionOptions, open_session

    if api_key is not None:
        check_api_key(api_key)
    path, _ = resolve_artifact(artifact, profile, models, ctx or DEFAULT_CTX)
    sock = bind(host, port)  # before loading: a busy port (or a malformed name) fails fast
    try:
        n_slots = _slots(path, ctx, parallel, draft, force, cluster)
        access = access_policy(sock.getsockname()[0], allow_host, cors, api_key)
        options = SessionOptions(ctx=ctx, threads=threads, force=force, parallel=n_slots, draft=draft or "")
        opened = open_session(path, options) if cluster is None else _cluster_backend(path, options, cluster)
        with opened as backend:
            model_id = path.name
            state = ServerState(backend, ServerConfig(model_id=model_id, api_key=api_key, max_waiting=queue,
                                                      access=access))
            bound_host, bound_port = sock.getsockname()[:2]
            url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}"

            def ready() -> None:
                for line in startup_lines(host, url, model_id, backend.n_ctx, queue, api_key, n_slots):
                    print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout, flush=True)

            run_server(state, sock, ready)
    finally:
        sock.close()
    print("edge-run serve: stopped", flush=True)


def _slots(path: Path, ctx: int | None, parallel: int | None, draft: str | None, force: bool,
           cluster: str | None) -> int:
    """The slot count (runtime/serve/capacity.py); --draft and --parallel checked against the artifact first."""
    from edge_run.runtime.artifacts.formats import row_for
    from edge_run.runtime.backends.speculative import check_draft
    from edge_run.runtime.serve.capacity import choose_parallel
    from edge_run.runtime.session import resolve_context

    if draft is not None:
        check_draft(draft, row_for(path).name)
    if cluster is not None:
        if parallel is not None and parallel != 1:
            raise UsageError("--parallel with --cluster is not supported: a cluster serves one request at a time",
                             "drop --parallel")
        return 1
    return choose_parallel(path, resolve_context(path, ctx), parallel, force)


def _cluster_backend(path: Path, options: SessionOptions, cluster: str) -> Backend:
    from edge_run.runtime.cluster.recover import open_recovering

    return open_recovering(path, cluster, options)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
