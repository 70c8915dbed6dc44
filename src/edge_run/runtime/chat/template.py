"""Chat templates rendered in a sandboxed jinja environment (a template cannot reach Python internals).

jinja2 is imported when a template is rendered: ~20 ms that `edge-run run` without --chat on an ONNX artifact never
needs (llama-cpp-python imports jinja2 itself, so a GGUF run pays it either way)."""

from __future__ import annotations

from typing import Any

from edge_run.core.errors import ArtifactError


def _raise_exception(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


def render_chat(template: str | None, messages: list[dict[str, str]], bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    if not template:
        raise ArtifactError("the model has no chat template",
                            "run without --chat, or convert a checkpoint that has one")
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    try:
        compiled = env.from_string(template)
        return compiled.render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                               add_generation_prompt=add_generation_prompt)
    except SecurityError as e:
        raise ArtifactError(f"the chat template tried an unsafe operation ({e})",
                            "the template was refused; run without --chat or fix the template") from e
    except TemplateError as e:
        raise ArtifactError(f"the chat template failed to render ({e})",
                            "run without --chat or fix the template") from e
    except Exception as e:  # the template is code from the model file: any failure of it is the artifact's
        raise ArtifactError(f"the chat template failed to render ({type(e).__name__}: {e})",
                            "run without --chat or fix the template") from e


def user_turn(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]
