"""Chat templates rendered in a sandboxed, bounded jinja environment (bounds.py): a template can neither reach
Python's internals nor run or grow without limit.

jinja2 is imported when a template is rendered: ~20 ms that `edge-run run` without --chat on an ONNX artifact never
needs (llama-cpp-python imports jinja2 itself, so a GGUF run pays it either way)."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from edge_run.core.errors import ArtifactError, EdgeRunError

if TYPE_CHECKING:
    from collections.abc import Generator

    from jinja2 import Template

    from edge_run.runtime.chat.bounds import BoundedEnvironment, Limits

FIX = "run without --chat or fix the template"


def _raise_exception(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


@lru_cache(maxsize=1)
def _environment() -> BoundedEnvironment:
    from edge_run.runtime.chat.bounds import BoundedEnvironment

    env = BoundedEnvironment()
    env.globals["raise_exception"] = _raise_exception
    return env


@lru_cache(maxsize=8)
def _compiled(template: str) -> Template:
    """The template compiled once (a compiled template renders in any number of threads at once)."""
    from jinja2 import TemplateError

    from edge_run.runtime.chat.bounds import BUDGET, Budget, Limits

    limits = Limits.for_input(0, 0)  # jinja computes constant expressions while compiling: they are bounded too
    token = BUDGET.set(Budget(limits, time.monotonic() + limits.seconds))  # (one past a bound is left to the render)
    try:
        return _environment().from_string(template)
    except TemplateError as e:
        raise ArtifactError(f"the chat template is not valid jinja ({e})", FIX) from e
    except RecursionError as e:
        raise ArtifactError("the chat template nests too deep to compile", FIX) from e
    finally:
        BUDGET.reset(token)


def input_size(messages: list[dict[str, Any]]) -> int:
    """Characters of the messages' text (what the render limits grow with)."""
    return sum(len(v) for m in messages for v in m.values() if isinstance(v, str))


def render_bounded(template: str | None, variables: dict[str, Any], limits: Limits, deadline: float) -> str:
    """``template`` rendered with ``variables``, within ``limits`` and before ``deadline`` (time.monotonic()).
    A failure of the template is an ArtifactError; an interrupt (KeyboardInterrupt, Interrupted) goes through."""
    if not template:
        raise ArtifactError("the model has no chat template",
                            "run without --chat, or convert a checkpoint that has one")
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    from edge_run.runtime.chat.bounds import BUDGET, Budget

    compiled = _compiled(template)
    budget = Budget(limits, deadline)
    token = BUDGET.set(budget)
    chunks = cast("Generator[str, None, None]", compiled.generate(**variables))
    try:
        out: list[str] = []
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > limits.max_value:
                raise ArtifactError(f"the chat template's output passed its limit of {limits.max_value:,} characters",
                                    FIX)
            budget.tick()
            out.append(chunk)
        return "".join(out)
    except (EdgeRunError, MemoryError):  # a bound hit, an interrupt (SIGINT/SIGTERM), memory: not a template error
        raise
    except SecurityError as e:
        raise ArtifactError(f"the chat template tried an unsafe operation ({e})",
                            "the template was refused; run without --chat or fix the template") from e
    except TemplateError as e:
        raise ArtifactError(f"the chat template failed to render ({e})", FIX) from e
    except RecursionError as e:
        raise ArtifactError("the chat template recursed too deep", FIX) from e
    except Exception as e:  # the template is code from the model file: any failure of it is the artifact's
        raise ArtifactError(f"the chat template failed to render ({type(e).__name__}: {e})", FIX) from e
    finally:
        chunks.close()
        BUDGET.reset(token)


def render_chat(template: str | None, messages: list[dict[str, Any]], bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    """The template rendered for ``messages``, bounded by limits that grow with the messages."""
    from edge_run.runtime.chat.bounds import Limits

    limits = Limits.for_input(input_size(messages), len(messages))
    return render_bounded(template, {"messages": messages, "bos_token": bos_token, "eos_token": eos_token,
                                     "add_generation_prompt": add_generation_prompt},
                          limits, time.monotonic() + limits.seconds)


def user_turn(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]
