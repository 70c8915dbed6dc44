"""`edge-run run`: generate text from an artifact (or the pick for a device profile)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import typer

from edge_run.cli._cluster_open import CLUSTER_HELP, open_model
from edge_run.cli._common import closed_or_left_to_exit, print_json
from edge_run.runtime.backends import GenerationParams
from edge_run.runtime.backends.base import physical_cores
from edge_run.runtime.backends.speculative import DRAFT_HELP
from edge_run.runtime.chat.template import user_turn
from edge_run.runtime.pick.resolve import resolve_artifact
from edge_run.runtime.prompt import check_prompt_size
from edge_run.runtime.session import DEFAULT_CTX, SessionOptions


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(
    artifact: Path = typer.Argument(None, help=".gguf file or ONNX artifact folder (omit with --profile)"),
    prompt: str = typer.Option(None, "--prompt", "-p", help="prompt text"),
    prompt_file: Path = typer.Option(None, "--prompt-file", help="read the prompt from a UTF-8 file"),
    chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the model's chat template"),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", min=1, help="tokens to generate at most"),
    ctx: int = typer.Option(None, "--ctx", "-c", min=16,
                            help=f"context length (default {DEFAULT_CTX} or the model's trained context if smaller)"),
    temperature: float = typer.Option(0.0, "--temp", min=0.0, help="0 = greedy"),
    top_k: int = typer.Option(40, "--top-k", min=0, help="0 = no top-k cut"),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(None, "--threads", "-t", min=1, max=512,  # llama.cpp: GGML_MAX_N_THREADS
                                 help="default: physical cores"),
    profile: str = typer.Option(None, "--profile",
                                help="pick the best artifact for this device profile ('auto' = this machine)"),
    models: Path = typer.Option(None, "--models", help="with --profile: folder of artifacts/checkpoints to pick from"),
    flash_attn: str = typer.Option("auto", "--flash-attn", "-fa",
                                   help="GGUF: llama.cpp's flash attention, auto | on | off (as llama-cli -fa)"),
    mmap: str = typer.Option("auto", "--mmap", help="GGUF: load with mmap, auto | on | off (auto: off where llama.cpp "
                             "repacks most weights for this CPU, so one copy is held)"),
    force: bool = typer.Option(False, "--force", help="load even if the memory estimate exceeds available memory"),
    as_json: bool = typer.Option(False, "--json", help="print text, token counts, speeds, load time, peak RSS as JSON"),
    cluster: str = typer.Option(None, "--cluster", help=CLUSTER_HELP),
    draft: str = typer.Option(None, "--draft", help=DRAFT_HELP),
) -> None:
    """Generate text, streaming it to stdout."""
    text = _read_prompt(prompt, prompt_file)
    n_threads = threads or physical_cores()
    # --chat picks for a chat: an instruction-tuned model first, and a note when the best fit is not one
    artifact, pick_info = resolve_artifact(artifact, profile, models, ctx or DEFAULT_CTX, "chat" if chat else "text")
    if pick_info and pick_info.get("note") and not as_json:
        print(f"note: {pick_info['note']}", file=sys.stderr, flush=True)
    params = GenerationParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    options = SessionOptions(ctx=ctx, threads=n_threads, force=force, seed=seed, flash_attn=flash_attn, mmap=mmap,
                             draft=draft or "")
    model, cluster_info = open_model(artifact, options, cluster)
    with closed_or_left_to_exit(model) as backend:
        rendered = backend.chat_prompt(text) if chat else text
        check_prompt_size(rendered, "the prompt rendered by the chat template")
        # with --chat the message's own text never becomes a control token of the template (e.g. "<|im_end|>")
        tokens = backend.chat_prompt_messages(user_turn(text)) if chat else backend.tokenize(rendered, add_special=True)
        pieces = []
        for piece in backend.stream(tokens, params):
            pieces.append(piece)
            if not as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        result = backend.last_result
        assert result is not None
        if not as_json:
            sys.stdout.write("\n")
            return
        from edge_run.runtime.artifacts.formats import estimate_artifact

        print_json({
            "artifact": str(artifact), "text": "".join(pieces), "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "finish_reason": result.finish_reason,
            "prefill_tokens_per_s": round(result.prefill_tps, 2), "decode_tokens_per_s": round(result.decode_tps, 2),
            "load_seconds": round(backend.load_seconds, 3), "peak_rss_mib": round(peak_rss_mib(), 1),
            "threads": n_threads, "n_ctx": backend.n_ctx, "pick": pick_info,
            "memory": estimate_artifact(artifact, backend.n_ctx, mmap=mmap).to_dict(),
            **({"cluster": cluster_info} if cluster_info else {}),
        })


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    from edge_run.runtime.prompt import read_prompt

    return read_prompt(prompt, prompt_file)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
