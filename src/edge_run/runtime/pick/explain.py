"""Why the picker chose what it chose: the binding constraint, counterfactuals, and the nothing-fits error.

    binding constraint = why the best-quality row that lost was rejected (one sentence)
    counterfactuals    = q8_0 KV cache savings, how much more the next model up needs, the largest context ...
    nothing fits       = the smallest pairing and how much memory it lacks, or the context limit, or --min-tps
    chat note          = for a chat: the best fit is a base model, so a tuned one was picked (or none fits)

Split out of src/edge_run/runtime/pick/picker.py (which calls it); library only, nothing printed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from edge_run.core.errors import NothingFitsError
from edge_run.core.tuning import INSTRUCT
from edge_run.profiles.devices import DeviceProfile
from edge_run.runtime.estimate.gguf import MemoryEstimate

if TYPE_CHECKING:
    from edge_run.runtime.pick.types import Candidate, Row

Estimate = Callable[["Candidate", int, DeviceProfile, str], "MemoryEstimate | None"]
Fits = Callable[["Candidate", int, DeviceProfile, str, float], bool]

def nothing_fits(profile: DeviceProfile, rows: list[Row], budget: float, ctx: int,
                  min_tps: float) -> NothingFitsError:
    sized = [r for r in rows if r.estimate is not None]
    if not sized:
        return NothingFitsError(f"none of the {len(rows)} candidates can be estimated ({rows[0].reason})",
                                "convert a checkpoint to GGUF with `edge-run convert`")
    smallest = min(sized, key=lambda r: r.estimate.total_mib if r.estimate else 0.0)
    assert smallest.estimate is not None
    in_memory = [r for r in sized if not set(r.constraints) & _MEMORY]
    too_short = [r for r in in_memory if "context" in r.constraints]
    if too_short and not any(r.constraints == ("speed",) for r in in_memory):
        longest = max(too_short, key=lambda r: r.candidate.trained_ctx)
        limit = longest.candidate.trained_ctx
        return NothingFitsError(f"nothing fits {profile.name} at ctx {ctx}: the context, not memory, is the limit: "
                                f"the pairings that fit in memory were trained for at most {limit} tokens "
                                f"({longest.candidate.label})",
                                f"lower --ctx to {limit} or add a model trained for a longer context to --models")
    if in_memory and min_tps:
        fastest = max(sized, key=lambda r: r.tps)
        return NothingFitsError(f"nothing reaches --min-tps {min_tps:g} on {profile.name}: the fastest pairing, "
                                f"{fastest.candidate.label}, makes about {fastest.tps:.1f} tok/s",
                                "lower --min-tps or add a smaller model to --models")
    need = smallest.estimate.total_mib
    return NothingFitsError(
        f"nothing fits {profile.name} at ctx {ctx}: the smallest pairing, {smallest.candidate.label}, needs "
        f"{need:.0f} MiB (needs {need - budget:.0f} MiB more than the budget of {budget:.0f} MiB)",
        "lower --ctx, use --cache-type q8_0, or add a smaller model to --models")


_MEMORY = frozenset({"memory", "page-cache"})


def explain(profile: DeviceProfile, rows: list[Row], choice: Row, budget: float, ctx: int, min_tps: float,
             cache_type: str, estimate: Estimate, fits: Fits, kv_auto: bool = False) -> tuple[str, list[str]]:
    """``kv_auto``: the q8_0 KV cache was already a dimension of the pick (no counterfactual for it).
    ``estimate(candidate, ctx, profile, cache_type)`` and ``fits(candidate, ctx, profile, cache_type, budget)``
    are the picker's (passed in: this module sits below src/edge_run/runtime/pick/picker.py)."""
    better = [r for r in rows if r.rank_key() < choice.rank_key() and not r.fits]
    counter: list[str] = []
    est = choice.estimate
    assert est is not None
    if cache_type == "f16" and not choice.candidate.cache_type and not kv_auto:
        q8 = estimate(choice.candidate, ctx, profile, "q8_0")
        if q8 is not None:
            line = f"a q8_0 KV cache would free {est.total_mib - q8.total_mib:.0f} MiB"
            unlocked = next((r for r in better if set(r.constraints) <= _MEMORY
                             and fits(r.candidate, ctx, profile, "q8_0", budget)), None)
            if unlocked is not None:
                line += f" and let {unlocked.candidate.label} fit"
            counter.append(line + " (--cache-type auto; llama.cpp needs flash attention for a quantized V cache)")
    mem_up = [r for r in better if set(r.constraints) <= _MEMORY and r.estimate is not None
              and replace(r.candidate, cache_type="") != replace(choice.candidate, cache_type="")]  # not its own twin
    if mem_up:
        nxt = min(mem_up, key=lambda r: r.estimate.total_mib if r.estimate else 0.0)
        assert nxt.estimate is not None
        counter.append(f"the next model up, {nxt.candidate.label} (BPB {nxt.quality.label} vs "
                       f"{choice.quality.label}), needs {nxt.estimate.total_mib - budget:.0f} MiB "
                       f"more ({nxt.estimate.total_mib:.0f} MiB)")
        if nxt.max_ctx:
            counter.append(f"{nxt.candidate.label} would fit at ctx {nxt.max_ctx}")
    slow = [r for r in better if r.constraints == ("speed",)]
    lower = max(16, ctx // 2)
    at_lower = next((r for r in mem_up if r.max_ctx >= lower and fits(r.candidate, lower, profile, cache_type, budget)
                     and not choice.ctx), None)
    if at_lower is not None:  # the next context step down (what `--ctx` halved, or `--min-ctx`, would allow)
        counter.append(f"at ctx {lower}, {at_lower.candidate.label} (BPB {at_lower.quality.label}) would fit: "
                       f"--ctx {lower}, or --min-ctx {lower} to let the picker trade context for quality")
    if slow:
        counter.append(f"without --min-tps, {slow[0].candidate.label} would be picked (~{slow[0].tps:.1f} tok/s)")
    if choice.max_ctx > ctx:
        counter.append(f"{choice.candidate.label} fits up to ctx {choice.max_ctx}")
    if not better:
        return "none: the best-quality candidate fits", counter
    # binding: the best better row rejected for one reason only (relaxing that one changes the pick)
    top = next((r for r in better if len(r.constraints) == 1), better[0])
    top_mib = top.estimate.total_mib if top.estimate else 0.0
    binding = {
        "memory": f"memory: {top.candidate.label} needs {top_mib:.0f} MiB, budget {budget:.0f} MiB",
        "page-cache": f"page cache: {top.candidate.label}'s mmap'd weights do not fit beside its anonymous memory",
        "speed": f"speed: {top.candidate.label} makes ~{top.tps:.1f} tok/s < --min-tps {min_tps:g}",
        "context": f"context: {top.candidate.label} was trained for {top.candidate.trained_ctx} tokens < ctx {ctx}",
        "format": f"format: {top.reason}",
    }[top.constraint]
    return binding, counter


def chat_note(rows: list[Row], best: Row, choice: Row) -> str:
    """One line for a chat pick whose best fit by quality is not instruction-tuned ("" when it is)."""
    if best.candidate.tuning.kind == INSTRUCT:
        return ""
    chosen, top = choice.candidate, best.candidate
    if choice is not best:
        line = f"the best fit, {top.label}, is {top.tuning.label}; for chat, picked {chosen.label}"
        if chosen.tuning.kind == INSTRUCT:
            return line
        line += f", {chosen.tuning.label}"
    else:
        line = f"the pick, {chosen.label}, is {chosen.tuning.label}"
    tuned = [r for r in rows if r.candidate.tuning.kind == INSTRUCT]
    if not tuned:
        return line + ", and no candidate is instruction-tuned: it may continue a chat's text rather than answer it"
    smallest = min(tuned, key=lambda r: r.estimate.total_mib if r.estimate else float("inf"))
    return (line + f"; no instruction-tuned candidate fits (the smallest, {smallest.candidate.label}: "
            f"{smallest.reason})")
