"""`edge-run bench`: prefill / decode speed, time to first token, load time and peak RSS of an artifact."""

from __future__ import annotations

from pathlib import Path

import typer

from edge_run.cli._cluster_open import CLUSTER_HELP
from edge_run.cli._common import console, print_json, progress_bars


def bench_command(
    artifact: Path = typer.Argument(..., help=".gguf file or ONNX artifact folder"),
    repeats: int = typer.Option(3, "--repeats", "-r", help="measured runs (median and spread are reported)"),
    n_prompt: int = typer.Option(512, "--n-prompt", "-p", help="prefill prompt length in tokens"),
    n_gen: int = typer.Option(128, "--n-gen", "-n", help="tokens to decode"),
    threads: int = typer.Option(None, "--threads", "-t", min=1, max=512,  # llama.cpp: GGML_MAX_N_THREADS
                                 help="default: physical cores"),
    flash_attn: str = typer.Option("auto", "--flash-attn", "-fa",
                                   help="GGUF: llama.cpp's flash attention, auto | on | off (as llama-bench -fa)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    cluster: str = typer.Option(None, "--cluster", help=CLUSTER_HELP),
) -> None:
    """Benchmark an artifact on this machine (pp<N> prefill and tg<N> decode tokens/s, like llama-bench)."""
    from edge_run.cli._cluster_open import cluster_opener
    from edge_run.core.errors import ArtifactError
    from edge_run.runtime.artifacts.formats import open_backend
    from edge_run.runtime.bench import BenchConfig, bench
    from edge_run.runtime.session import verify

    if not Path(artifact).exists():
        raise ArtifactError(f"{artifact} does not exist", "pass the path of a .gguf file or an ONNX artifact folder")
    verify(artifact)
    config = BenchConfig(n_prompt=n_prompt, n_gen=n_gen, repeats=repeats, threads=threads, flash_attn=flash_attn)
    with progress_bars(enabled=not as_json) as progress:
        result = bench(artifact, config, progress=progress, opener=cluster_opener(cluster) or open_backend)
    if as_json:
        print_json(result)
        return
    pp, tg = result["prefill"]["tokens_per_s"], result["decode"]["tokens_per_s"]
    quant = result["quant"] or "unknown quant"
    console.print(f"{result['artifact']} ({quant}, {result['file_size'] / 2**20:.1f} MiB), "
                  f"{result['threads']} threads, {result['repeats']} runs (median, min-max)")
    console.print(f"  pp{n_prompt:<5} {pp['median']:9.2f} tok/s   ({pp['min']:.2f}-{pp['max']:.2f})")
    console.print(f"  tg{n_gen:<5} {tg['median']:9.2f} tok/s   ({tg['min']:.2f}-{tg['max']:.2f})")
    console.print(f"  ttft     {1000 * result['ttft_s']['median']:9.1f} ms      "
                  f"({result['ttft_s']['prompt_tokens']}-token prompt)")
    console.print(f"  load     {1000 * result['load_s']['median']:9.1f} ms")
    console.print(f"  peak RSS {result['peak_rss_mib']:9.1f} MiB")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
