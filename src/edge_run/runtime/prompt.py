"""Reading and bounding a prompt (-p text or --prompt-file): UTF-8, non-empty, and small enough that llama.cpp's
tokenizer is never handed hundreds of MB (a ~300 MB rendered prompt aborted it; no context holds more than a few
MB of text anyway)."""

from __future__ import annotations

from pathlib import Path

from edge_run.core.errors import UsageError
from edge_run.core.fsutil import read_regular_file

# 8 MiB of UTF-8 is about 2M tokens: far beyond any model's context, far below what the tokenizer chokes on.
MAX_PROMPT_BYTES = 8 * 2**20


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """The prompt text from -p or --prompt-file (exactly one), as UsageError when unusable."""
    if prompt is not None and prompt_file is not None:
        raise UsageError("both -p and --prompt-file given", "pass only one of them")
    if prompt_file is not None:
        data = read_regular_file(prompt_file, "prompt file", MAX_PROMPT_BYTES, UsageError, "pass an existing file")
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"prompt file {prompt_file} is not UTF-8 text (byte {e.start})",
                             "convert it to UTF-8") from e
    elif prompt is not None:
        try:  # argv bytes that are not UTF-8 arrive as lone surrogates (surrogateescape)
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise UsageError(f"the prompt is not UTF-8 text (character {e.start})",
                             "pass UTF-8 text with -p or use --prompt-file") from e
    if prompt is None or not prompt.strip():
        raise UsageError("the prompt is empty", "pass a non-empty prompt with -p or --prompt-file")
    check_prompt_size(prompt)
    return prompt


def check_prompt_size(text: str, what: str = "the prompt") -> None:
    """UsageError when ``text`` (a prompt, or one rendered by a chat template) is over MAX_PROMPT_BYTES."""
    if len(text) > MAX_PROMPT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
        raise UsageError(f"{what} is larger than {MAX_PROMPT_BYTES // 2**20} MiB",
                         "pass a shorter prompt: no model's context holds that much text")
