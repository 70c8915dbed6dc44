"""Bounds on a chat template's render: its time, the size of each value it makes, all it makes together, its output.

A chat template is code from the model file. The sandbox keeps it away from Python's internals; these bounds keep
it from wedging the process or filling memory. Every operation that can make a value much larger than its inputs is
sized BEFORE it runs, so ``'x' * 3000000000`` fails at once without allocating: the operators ``* + ** %`` and
``~``, the filters and string methods that grow their input (the tables below) and every printed value. Loops,
calls and attribute lookups check the deadline. The limits grow with the messages: a long conversation renders, a
template that multiplies it does not. The budget of the render in progress is a context variable, so one compiled
template serves any number of threads.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from typing import Any

from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

from edge_run.core.errors import ArtifactError

HINT = "the model's chat template is at fault: fix it, or run without --chat"
BASE_SECONDS = 1.0  # plus SECONDS_PER_MB for the messages' text and SECONDS_PER_MESSAGE for each message
SECONDS_PER_MB = 2.0
SECONDS_PER_MESSAGE = 100e-6  # about 5 times what a message of a real template takes here, bounded (2 cores, x86)
BASE_VALUE = 1 << 20  # characters one value (the output included) may have, plus 8 per character of the messages
BASE_ALLOC = 64 << 20  # characters all sized operations of one render may make, plus 32 per character of the messages
PER_MESSAGE = 1024  # value and output allowance per message (its headers)
CHECK_EVERY = 64  # loop iterations between deadline checks
MAX_INT_DIGITS = 4300  # Python's own limit on printing an int
MAX_JSON_INDENT = 16


@dataclass(frozen=True)
class Limits:
    seconds: float
    max_value: int
    max_alloc: int

    @classmethod
    def for_input(cls, chars: int, messages: int) -> Limits:
        """The limits for a render of ``messages`` messages holding ``chars`` characters."""
        return cls(seconds=BASE_SECONDS + SECONDS_PER_MB * chars / 1e6 + SECONDS_PER_MESSAGE * messages,
                   max_value=BASE_VALUE + 8 * chars + PER_MESSAGE * messages,
                   max_alloc=BASE_ALLOC + 32 * chars + PER_MESSAGE * messages)


class Budget:
    """The bounds of one render in progress (a template makes many small values: checking them is kept cheap)."""

    __slots__ = ("deadline", "left", "limits", "max_value")

    def __init__(self, limits: Limits, deadline: float) -> None:
        self.limits, self.deadline = limits, deadline  # deadline: time.monotonic()
        self.max_value, self.left = limits.max_value, limits.max_alloc

    def late(self) -> None:
        raise ArtifactError(f"the chat template ran past its {self.limits.seconds:.1f} s limit", HINT)

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            self.late()

    def charge(self, size: int, what: str) -> None:
        if size > self.max_value:
            raise ArtifactError(f"the chat template tried to make a value of about {_count(size)} characters {what} "
                                f"(the limit is {self.max_value:,})", HINT)
        self.left -= size
        if self.left < 0:
            raise ArtifactError(f"the chat template made more than {self.limits.max_alloc:,} characters of values",
                                HINT)
        if time.monotonic() > self.deadline:
            self.late()


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"10^{len(str(n)) - 1}" if n < 10**MAX_INT_DIGITS else "more than 10^4300"


BUDGET: ContextVar[Budget | None] = ContextVar("edge_run_template_budget", default=None)


def charge(size: int, what: str) -> None:
    budget = BUDGET.get()
    if budget is not None:
        budget.charge(size, what)


def tick() -> None:
    budget = BUDGET.get()
    if budget is not None and time.monotonic() > budget.deadline:
        budget.late()


# -- sizes ---------------------------------------------------------------------------------------

def _cap() -> int:
    budget = BUDGET.get()
    return budget.limits.max_value + 1 if budget is not None else 1 << 62  # past the limit, the exact size is moot


def size_of(value: Any, cap: int | None = None) -> int:
    """About how many characters ``str(value)`` takes (at least that many), counted only until ``cap`` (the limit)
    is passed; containers count their items' text (a list of one string repeated is as large as all its text)."""
    cap = _cap() if cap is None else cap
    total, stack = 0, [value]
    while stack and total <= cap:
        v = stack.pop()
        if isinstance(v, (str, bytes, bytearray)):
            total += len(v)
        elif isinstance(v, bool) or v is None or isinstance(v, float):
            total += 24
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        elif isinstance(v, (list, tuple, set, frozenset, dict)):
            items = [*v.keys(), *v.values()] if isinstance(v, dict) else v
            total += 2 + 2 * len(items)
            kinds = set(map(type, items))  # flat lists of strings or ints are counted in C
            if kinds <= {str}:
                total += sum(map(len, items))
            elif kinds <= {int}:
                total += sum(map(int.bit_length, items)) // 3 + len(items)
            elif total <= cap:
                stack.extend(items)
        elif isinstance(v, Namespace):
            stack.append(v._Namespace__attrs)
        else:
            total += 24
    return total


def items_of(value: Any) -> int:
    """What a value holds: characters of a string, items of a container (references: its items are not copied),
    digits of a number."""
    if isinstance(value, (str, bytes, bytearray, list, tuple, set, frozenset, dict)):
        return len(value)
    return size_of(value)


def _int(value: Any) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{type(value).__name__} is not an integer")
    return value


def _number(digits: int) -> int:
    """A whole number's size, refused past Python's limit on printing one: the arithmetic of larger numbers (their
    division is quadratic) would run in C, out of reach of the deadline."""
    if digits > MAX_INT_DIGITS:
        raise ArtifactError(f"the chat template tried to make a number of about {_count(digits)} digits "
                            f"(the limit is {MAX_INT_DIGITS:,})", HINT)
    return digits


def _whole(*values: Any) -> bool:
    return all(isinstance(v, int) for v in values)


def _times(a: Any, b: Any) -> int:
    if _whole(a, b):
        return _number(size_of(a) + size_of(b))
    seq, n = (a, b) if isinstance(b, int) else (b, a)
    return items_of(seq) * max(n, 0) if isinstance(n, int) else items_of(a) + items_of(b)


def _plus(a: Any, b: Any) -> int:
    return _number(max(size_of(a), size_of(b)) + 1) if _whole(a, b) else items_of(a) + items_of(b)


def _power(a: Any, b: Any) -> int:
    if _whole(a, b) and b > 0 and a not in (0, 1, -1):
        return _number(a.bit_length() * b // 3 + 1)
    return 24


FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?")


def _percent(fmt: Any, args: Any) -> int:
    """``fmt % args``: the format, each field printing all the arguments (a mapping may be named twice), widths."""
    if not isinstance(fmt, str):
        return size_of(fmt) + size_of(args)
    total = len(fmt)
    for m in FIELD.finditer(fmt):
        if "*" in m.group(0):
            return 1 << 62  # a width taken from the arguments: refused rather than sized
        total += size_of(args) + sum(int(g) for g in m.groups() if g)
    return total


def _format(fmt: str, *args: Any, **kwargs: Any) -> int:
    """``fmt.format(...)``: as ``%``, and a nested width (``{:{w}}``) is refused."""
    total = len(fmt)
    for _, name, spec, _ in string.Formatter().parse(fmt):
        if name is None:
            continue
        if "{" in (spec or ""):
            return 1 << 62
        total += size_of(args) + size_of(kwargs) + sum(int(d) for d in re.findall(r"\d+", spec or ""))
    return total


def _joined(items: Any, sep: Any = "", *_: Any, **__: Any) -> int:
    items = list(items) if not isinstance(items, (str, bytes)) else items
    return size_of(items) + size_of(sep) * max(len(items) - 1, 0)


def _text(value: Any) -> str | None:
    """What .replace() works on, as a str (bytes as Latin-1: the same length); None for a value too large."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1")
    return value if isinstance(value, str) else str(value) if size_of(value) <= BASE_VALUE else None


def _replaced(s: Any, old: Any, new: Any, count: Any = -1, *_: Any, **__: Any) -> int:
    text, old, new = _text(s), _text(old), _text(new)
    if text is None or old is None or new is None:
        return 1 << 62
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(len(new) - len(old), 0)


def _split(s: Any, sep: Any = None, *_: Any, **__: Any) -> int:
    pieces = s.count(sep) + 1 if isinstance(sep, type(s)) and sep else len(s) // 2 + 1
    return len(s) + 64 * pieces  # each piece is an object


def _indented(s: Any, width: Any = 4, *_: Any, **__: Any) -> int:
    lines = s.count("\n") + 1 if isinstance(s, str) else size_of(s)
    return size_of(s) + (len(width) if isinstance(width, str) else _int(width)) * lines


def _scaled(factor: int) -> Callable[..., int]:
    return lambda value, *_, **__: factor * size_of(value)


def _listed(value: Any, *_: Any, **__: Any) -> int:
    return 64 * len(value) if isinstance(value, str) else size_of(value)  # a string becomes one object a character


def _wrapped(s: Any, width: Any = 79, long_words: Any = True, wrapstring: Any = None, *_: Any, **__: Any) -> int:
    return size_of(s) * (1 + size_of(wrapstring if wrapstring is not None else "\n"))  # a line holds a character


def _json(value: Any, indent: Any = None, *_: Any, **__: Any) -> int:
    """json.dumps: \\uXXXX escapes; an indent repeats on each line, once per level (levels are bounded by Python's
    recursion limit, the indent here)."""
    width = 0 if indent is None else len(indent) if isinstance(indent, str) else _int(indent)
    return 1 << 62 if width > MAX_JSON_INDENT else 6 * size_of(value) * (1 + width)


def _widened(s: Any, width: Any = 80, *_: Any, **__: Any) -> int:
    return max(size_of(s), _int(width))


# what an operator's result may take; the others (- / // comparisons) make numbers no longer than their operands
BINOP_SIZES: dict[str, Callable[[Any, Any], int]] = {
    "*": _times,
    "+": _plus,
    "**": _power,
    "%": _percent,
}

BINOP_WHAT = {operator: f"with the {operator} operator" for operator in BINOP_SIZES}

# filters that can make a value much larger than their input, or that print it (str() of a list of one long string
# repeated is as large as all its text): the size of their result, from their arguments
FILTER_SIZES: dict[str, Callable[..., int]] = {
    "join": _joined,
    "replace": _replaced,
    "center": _widened,
    "indent": _indented,
    "format": lambda value, *args, **kwargs: _percent(value, kwargs or args),
    "wordwrap": _wrapped,
    "tojson": _json,
    "list": _listed,
    "string": _scaled(1),
    "safe": _scaled(1),
    "trim": _scaled(1),
    "truncate": _scaled(1),
    "wordcount": _scaled(1),
    "reverse": _scaled(1),
    "pprint": _scaled(2),
    "e": _scaled(6),  # &#39; for '
    "escape": _scaled(6),
    "forceescape": _scaled(6),
    "xmlattr": _scaled(6),
    "urlencode": _scaled(12),  # %XX for each of up to 4 bytes
    "upper": _scaled(3),  # case mappings can lengthen a character to three (U+FB03 -> FFI)
    "lower": _scaled(3),
    "title": _scaled(3),
    "capitalize": _scaled(3),
    "sum": lambda items, attribute=None, start=0, *_, **__: size_of(items) + size_of(start),
    "batch": lambda items, count, fill_with=None, *_, **__: size_of(items) + size_of(fill_with) * _int(count),
}

# string (and bytes) methods that can make a value much larger than the string
METHOD_SIZES: dict[str, Callable[..., int]] = {
    "join": lambda s, items, *_, **__: _joined(items, s),
    "replace": _replaced,
    "center": _widened,
    "ljust": _widened,
    "rjust": _widened,
    "zfill": _widened,
    "expandtabs": lambda s, tabsize=8, *_, **__: len(s) + s.count("\t") * max(_int(tabsize), 0),
    "translate": lambda s, table, *_, **__: len(s) * (1 + size_of(table)),
    "split": _split,
    "rsplit": _split,
    "splitlines": lambda s, *_, **__: len(s) + 64 * (len(s) + 1),
    "encode": lambda s, *_, **__: 4 * len(s),
    "upper": _scaled(3),
    "lower": _scaled(3),
    "title": _scaled(3),
    "capitalize": _scaled(3),
    "swapcase": _scaled(3),
    "casefold": _scaled(3),
}

REMOVED_FILTERS = ("striptags", "urlize")  # regular expressions that take quadratic time on crafted text
REMOVED_GLOBALS = ("lipsum",)  # makes text of any size


def materialized(value: Any) -> Any:
    """An iterator as a list (so it can be sized, then used), read with the deadline checked."""
    if not isinstance(value, Iterator):
        return value
    return list(bounded_iter(value))


def bounded_iter(items: Iterable[Any]) -> Iterator[Any]:
    for i, item in enumerate(items):
        if not i % CHECK_EVERY:
            tick()
        yield item


def _sized(what: str, estimate: Callable[..., int], *args: Any, **kwargs: Any) -> None:
    budget = BUDGET.get()
    if budget is None:
        return
    try:
        size = estimate(*args, **kwargs)
    except (TypeError, ValueError, AttributeError) as e:
        raise ArtifactError(f"the chat template's arguments cannot be sized ({what}: {e})", HINT) from e
    budget.charge(size, what)


def _bounded_filter(name: str, f: Callable[..., Any], estimate: Callable[..., int]) -> Callable[..., Any]:
    lead = 0 if getattr(f, "jinja_pass_arg", None) is None else 1  # the context the filter is passed first
    what = f"with the |{name} filter"

    @wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        if len(args) > lead:
            args = (*args[:lead], materialized(args[lead]), *args[lead + 1:])
        _sized(what, estimate, *args[lead:], **kwargs)
        return f(*args, **kwargs)

    return run


def _env_call(name: str, args: list[Any], lineno: int) -> nodes.Call:
    call = nodes.Call(nodes.EnvironmentAttribute(name), args, [], None, None)
    return call.set_lineno(lineno)  # type: ignore[return-value]


class _Guard(NodeTransformer):
    """Every loop reads its items through ``bounded_iter``, every ``~`` concatenation is sized first."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)  # type: ignore[assignment]
        node.iter = _env_call("bounded_iter", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)  # type: ignore[assignment]
        return _env_call("bounded_concat", list(node.nodes), node.lineno)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(BINOP_SIZES)

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, finalize=self._printed)
        for name, estimate in FILTER_SIZES.items():
            self.filters[name] = _bounded_filter(name, self.filters[name], estimate)
        for name in REMOVED_FILTERS:
            self.filters.pop(name, None)
        for name in REMOVED_GLOBALS:
            self.globals.pop(name, None)

    @staticmethod
    def _printed(value: Any) -> Any:
        charge(len(value) if type(value) is str else size_of(value), "to print")
        return value

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _Guard().visit(super()._parse(source, name, filename))

    @staticmethod
    def bounded_iter(items: Iterable[Any]) -> Iterator[Any]:
        return bounded_iter(items)

    @staticmethod
    def concat(parts: Iterable[Any]) -> str:
        """What a captured block ({% set %}, a macro, {% filter %}) printed, joined: sized first."""
        parts = parts if isinstance(parts, list) else list(parts)
        charge(size_of(parts), "in a block")
        return "".join(parts)

    @staticmethod
    def bounded_concat(*values: Any) -> str:
        charge(sum(size_of(v) for v in values), "with ~")
        return "".join(map(str, values))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and type(left) is str and type(right) is str:  # most of what templates compute
            charge(len(left) + len(right), BINOP_WHAT["+"])
        else:
            _sized(BINOP_WHAT[operator], BINOP_SIZES[operator], left, right)
        return self.binop_table[operator](left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(argument, slice):
            charge(items_of(obj), "with a slice")
        else:
            tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        fmt = super().wrap_str_format(value)
        if fmt is None:
            return None
        template: str = value.__self__

        @wraps(fmt)
        def run(*args: Any, **kwargs: Any) -> str:
            _sized("with str.format", _format, template, *args, **kwargs)
            return fmt(*args, **kwargs)

        return run

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        tick()
        owner = getattr(obj, "__self__", None)
        estimate = METHOD_SIZES.get(getattr(obj, "__name__", "")) if isinstance(owner, (str, bytes)) else None
        if estimate is not None:
            args = tuple(materialized(a) for a in args)
            _sized(f"with .{obj.__name__}()", estimate, owner, *args, **kwargs)
        return super().call(context, obj, *args, **kwargs)
