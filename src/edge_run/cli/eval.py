"""`edge-run eval`: perplexity, bits per byte and (with --against) KL divergence on a text corpus."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from edge_run.cli._cluster_open import CLUSTER_HELP
from edge_run.cli._common import console, err_console, print_json, progress_bars
from edge_run.core.errors import EdgeRunError

if TYPE_CHECKING:
    from edge_run.runtime.eval.perplexity import EvalResult


def eval_command(
    artifact: Path = typer.Argument(..., help=".gguf file or ONNX artifact folder"),
    corpus: str = typer.Option("wikitext-2-raw-test", "--corpus",
                               help="built-in corpus name (wikitext-2-raw-test, tinyshakespeare) or a UTF-8 file"),
    ctx: int = typer.Option(512, "--ctx", "-c", help="chunk length in tokens (the second half of each is scored)"),
    chunks: int = typer.Option(None, "--chunks", help="score only the first N chunks (default: all)"),
    against: Path = typer.Option(None, "--against", help="parent artifact (e.g. the F16) for KL divergence"),
    threads: int = typer.Option(None, "--threads", "-t", min=1, max=512,  # llama.cpp: GGML_MAX_N_THREADS
                                 help="default: physical cores"),
    save: bool = typer.Option(True, "--save/--no-save", help="store the result in the artifact's manifest"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    cache_type: str = typer.Option("f16", "--cache-type",
                                   help="KV cache type: f16 | q8_0 | q4_0 | f32 (a quantized one: quality store only)"),
    cluster: str = typer.Option(None, "--cluster", help=CLUSTER_HELP),
) -> None:
    """Measure perplexity and bits per byte the way llama.cpp's perplexity tool does; store them in the manifest."""
    from edge_run.cli._cluster_open import cluster_opener
    from edge_run.runtime.eval.perplexity import evaluate, load_corpus, save_quality
    from edge_run.runtime.session import verify

    for path in (artifact, against):
        if path is not None:
            verify(path)
    text = load_corpus(corpus)
    with progress_bars(enabled=not as_json) as progress:
        result = evaluate(artifact, text, ctx=ctx, chunks=chunks, parent=against, threads=threads,
                          progress=progress, cache_type=cache_type, opener=cluster_opener(cluster))
    saved, not_saved = False, None
    if save:  # a finished measurement is printed even when the manifest cannot take it
        try:
            saved = save_quality(artifact, result)
        except EdgeRunError as failure:
            not_saved = failure
    if as_json:
        print_json({**result.to_json(), "saved_to_manifest": saved})
    else:
        _print_result(artifact, result, save, saved)
    if not_saved is not None:
        raise not_saved


def _print_result(artifact: Path, result: EvalResult, save: bool, saved: bool) -> None:
    text = result.corpus
    e = result.quality_entry()
    console.print(f"{Path(artifact).name} on {text.name}: {e['chunks']} chunks x {e['ctx']} tokens, "
                  f"{e['tokens_scored']} tokens / {e['bytes_scored']} bytes scored")
    console.print(f"  PPL {e['ppl']:.4f} ± {e['ppl_stderr']:.4f}   BPB {e['bpb']:.4f}")
    if result.parent is not None:
        console.print(f"  KLD vs {result.parent} {e['kld_vs_parent']:.6f}   "
                      f"top-1 agreement {100 * e['top1_agreement']:.2f}%")
    if save and not saved:
        err_console.print(f"note: {Path(artifact).name} has no manifest; the result was not stored", markup=False)
    elif saved and result.cache_type != "f16":
        console.print(f"  stored in the quality store (KV cache {result.cache_type})")
    elif saved:
        console.print(f"  stored in the manifest under quality[{text.quality_key!r}]")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
