"""Request validation for the OpenAI-compatible endpoints, and the OpenAI error shape.

Every rejected request becomes an :class:`ApiError`, answered as
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with its HTTP status.
Checks are explicit code (no pydantic): the server must stay small enough for a Raspberry Pi bundle.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "developer")  # OpenAI's "developer" is treated as "system"
MAX_STOP = 4
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**63 - 1
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more text than any context of a small model holds
MAX_DEPTH = 64  # nesting of arrays/objects; OpenAI requests (tool schemas included) stay far below
MAX_INT_DIGITS = 64  # Python refuses ints over 4,300 digits with a ValueError; no field needs more than 20
MAX_MESSAGES = 4096  # also at most one per context token: every message costs at least one
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \uD800-\uDFFF: the only way JSON text spells a surrogate
_SURROGATE = re.compile("[\ud800-\udfff]")


class ApiError(Exception):
    """A request the server refuses: HTTP status + OpenAI error fields."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code, param)


@dataclass
class SamplingRequest:
    """What both endpoints share."""

    model: str
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None  # None: until the context is full or the model stops
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class ChatRequest(SamplingRequest):
    messages: list[dict[str, str]] = field(default_factory=list)


@dataclass
class CompletionRequest(SamplingRequest):
    prompt: str = ""


def _brief(value: Any, limit: int = 40) -> str:
    """A value for an error message: its repr, cut short (a client may send a megabyte where a name belongs)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ApiError(400, f"the request body holds an integer of {len(digits)} digits; at most {MAX_INT_DIGITS} "
                       "are accepted", "invalid_json")
    return int(digits)


def _constant(name: str) -> Any:
    raise ApiError(400, f"the request body holds {name}, which JSON does not allow", "invalid_json")


def _check_values(data: Any) -> None:
    """Nesting at most MAX_DEPTH deep (walked without recursion) and no lone surrogate in any string or key
    (one cannot be encoded as UTF-8: not for the tokenizer, not for a reply that quotes it)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise ApiError(400, "the request body holds a lone UTF-16 surrogate (\\uD800-\\uDFFF) in a string",
                               "invalid_json")
        elif isinstance(value, (list, dict)):
            if depth > MAX_DEPTH:
                raise ApiError(400, f"the request body is nested more than {MAX_DEPTH} levels deep", "invalid_json")
            items = value.values() if isinstance(value, dict) else value
            if isinstance(value, dict):
                stack.extend((key, depth) for key in value)
            stack.extend((v, depth + 1) for v in items if isinstance(v, (str, list, dict)))


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object. Whatever the bytes, the outcome is a dict or an ApiError (400): never a
    RecursionError, a ValueError from a 5,000-digit integer, NaN, or a string that cannot be encoded."""
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_int=_int, parse_constant=_constant)
    except RecursionError as e:
        raise ApiError(400, f"the request body is nested more than {MAX_DEPTH} levels deep", "invalid_json") from e
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the request body is not UTF-8 (byte {e.start})", "invalid_json") from e
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", "invalid_json") from e
    except ValueError as e:  # json's own limits (e.g. a float literal it cannot convert)
        raise ApiError(400, f"the request body is not valid JSON ({_brief(str(e), 80)})", "invalid_json") from e
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}", "invalid_json")
    if text.count("[") + text.count("{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(text):
        _check_values(data)
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _optional(data: dict[str, Any], key: str) -> Any:
    value = data.get(key)
    return None if value is None else value


def _sampling(data: dict[str, Any], req: SamplingRequest) -> None:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string", "model", "invalid_type" if model is not None
                      else "missing_required_parameter")
    req.model = model
    stream = _optional(data, "stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise invalid("'stream' must be a boolean", "stream", "invalid_type")
        req.stream = stream
    options = _optional(data, "stream_options")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise invalid("'stream_options' must be an object with a boolean 'include_usage'", "stream_options",
                          "invalid_type")
        req.include_usage = bool(options.get("include_usage", False))
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _optional(data, key)
    if max_tokens is not None:
        if not _is_int(max_tokens):
            raise invalid(f"'{key}' must be an integer", key, "invalid_type")
        if max_tokens < 1:
            raise invalid(f"'{key}' must be at least 1, got {max_tokens}", key)
        req.max_tokens = max_tokens
    temperature = _optional(data, "temperature")
    if temperature is not None:
        if not _is_number(temperature):
            raise invalid("'temperature' must be a number", "temperature", "invalid_type")
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise invalid(f"'temperature' must be between 0 and {MAX_TEMPERATURE:g}, got {temperature}",
                          "temperature")
        req.temperature = float(temperature)
    top_p = _optional(data, "top_p")
    if top_p is not None:
        if not _is_number(top_p):
            raise invalid("'top_p' must be a number", "top_p", "invalid_type")
        if not 0.0 < top_p <= 1.0:
            raise invalid(f"'top_p' must be greater than 0 and at most 1, got {top_p}", "top_p")
        req.top_p = float(top_p)
    stop = _optional(data, "stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise invalid("'stop' must be a non-empty string or a list of non-empty strings", "stop", "invalid_type")
        if len(stops) > MAX_STOP:
            raise invalid(f"'stop' may hold at most {MAX_STOP} strings, got {len(stops)}", "stop")
        req.stop = tuple(stops)
    seed = _optional(data, "seed")
    if seed is not None:
        if not _is_int(seed) or not -MAX_SEED - 1 <= seed <= MAX_SEED:
            raise invalid("'seed' must be a 64-bit integer", "seed", "invalid_type")
        req.seed = seed & 0xFFFFFFFF
    n = _optional(data, "n")
    if n is not None and n != 1:
        raise invalid("only n=1 is supported", "n", "unsupported_value")
    if data.get("logprobs") not in (None, False):
        raise invalid("logprobs are not supported", "logprobs", "unsupported_value")


def _content(message: dict[str, Any], i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text parts are understood
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content",
                              "unsupported_value")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content",
                  "invalid_type")


def parse_chat(data: dict[str, Any], max_messages: int = MAX_MESSAGES) -> ChatRequest:
    """The chat request; more than ``max_messages`` messages is refused before any of them is looked at."""
    req = ChatRequest(model="")
    _sampling(data, req)
    messages = data.get("messages")
    if messages is None:
        raise invalid("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise invalid("'messages' must be a list of message objects", "messages", "invalid_type")
    if not messages:
        raise invalid("'messages' must not be empty", "messages")
    if len(messages) > max_messages:
        raise ApiError(400, f"'messages' holds {len(messages)} messages; this server takes at most {max_messages}",
                       "context_length_exceeded", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]",
                          "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise invalid(f"messages[{i}].role {_brief(role)} is not one of {', '.join(ROLES)}",
                          f"messages[{i}].role")
        req.messages.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    return req


def parse_completion(data: dict[str, Any]) -> CompletionRequest:
    req = CompletionRequest(model="")
    _sampling(data, req)
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise invalid("'prompt' is required", "prompt", "missing_required_parameter")
    if not isinstance(prompt, str):
        raise invalid("'prompt' must be a string (one prompt per request)", "prompt", "invalid_type")
    if not prompt:
        raise invalid("'prompt' must not be empty", "prompt")
    if data.get("echo") not in (None, False):
        raise invalid("echo is not supported", "echo", "unsupported_value")
    req.prompt = prompt
    return req
