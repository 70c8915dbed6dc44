"""A chat template is code from the model file: one that loops, multiplies or prints without end fails within about
a second with one line (exit 3), having allocated little; long real conversations still render; Ctrl-C while a
template renders is an interrupt (exit 130), never "the chat template failed to render"."""

from __future__ import annotations

import json
import signal
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_run.core.errors import ArtifactError, Interrupted
from edge_run.runtime.chat import bounds
from edge_run.runtime.chat.prompt import render_parts
from edge_run.runtime.chat.template import render_chat

from .conftest import CliResult
from .test_chat_template_security import CHATML, GEMMA3

MESSAGES = [{"role": "user", "content": "hi"}]
NESTED = "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(9) %}{% endfor %}{% endfor %}" \
         "{% endfor %}"
TOO_BIG = "tried to make a value"
# name -> (template, what the one-line error says)
HOSTILE: dict[str, tuple[str, str]] = {
    "nested loops": (NESTED, "ran past its 1.0 s limit"),
    "nested loops over a string, no calls": (
        "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}"
        "{% endfor %}", "ran past"),
    "recursive macro": ("{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed too deep"),
    "string times 3e9": ("{{ 'x' * 3000000000 }}", TOO_BIG),
    "list times 3e9": ("{{ ['x'] * 3000000000 }}", TOO_BIG),
    "power": ("{{ 7 ** 1000000000 }}", "a number of about"),
    "squaring": ("{% set ns = namespace(n=7 ** 4000) %}{% for i in range(30) %}{% set ns.n = ns.n * ns.n %}"
                 "{% endfor %}{{ ns.n // 7 }}", "a number of about"),
    "doubling with ~": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}{{ ns.s }}", TOO_BIG),
    "doubling with +": ("{% set ns = namespace(s=['x']) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                        "{% endfor %}{{ ns.s }}", TOO_BIG),
    "huge output": ("{% for a in range(100000) %}{% for b in range(100000) %}{{ 'y' * 100 }}{% endfor %}"
                    "{% endfor %}", "output passed its limit"),
    "output captured by {% set %}": ("{% set x %}{% for i in range(400) %}{% for j in range(100) %}" + "y" * 3000
                                     + "{% endfor %}{% endfor %}{% endset %}{{ x | length }}", TOO_BIG),
    "output of a macro": ("{% macro m() %}{% for i in range(400) %}{% for j in range(100) %}" + "y" * 3000
                          + "{% endfor %}{% endfor %}{% endmacro %}{{ m() | length }}", TOO_BIG),
    "printing a long list": ("{% set s = 'x' * 1000000 %}{{ [s, s, s, s, s, s, s, s, s, s] }}", TOO_BIG),
    "str.format width": ("{{ '{:>999999999}'.format(1) }}", TOO_BIG),
    "str.format nested width": ("{{ '{:>{w}}'.format(1, w=999999999) }}", TOO_BIG),
    "% width": ("{{ '%0999999999d' % 1 }}", TOO_BIG),
    "% star width": ("{{ '%*d' % (999999999, 1) }}", TOO_BIG),
    "|format width": ("{{ '%999999999s' | format('x') }}", TOO_BIG),
    ".center": ("{{ 'x'.center(1000000000) }}", TOO_BIG),
    "|center": ("{{ 'x' | center(1000000000) }}", TOO_BIG),
    ".replace": ("{{ ('x' * 100000).replace('x', 'x' * 100000) }}", TOO_BIG),
    "|replace": ("{{ ('x' * 100000) | replace('x', 'x' * 100000) }}", TOO_BIG),
    "|center folded while compiling": ("{{ 'x' | center(1000000000) }}{{ 'y' | center(999999999) }}", TOO_BIG),
    ".join of a repeated string": ("{% set s = 'x' * 100000 %}{{ ''.join([s, s, s, s, s, s, s, s, s, s, s, s]) }}",
                                   TOO_BIG),
    "|join of a generator": ("{{ range(2000) | map('string') | map('center', 1000) | join }}", TOO_BIG),
    "|indent": ("{{ ('\n' * 100000) | indent(100000) }}", TOO_BIG),
    ".expandtabs": ("{{ ('\t' * 1000).expandtabs(1000000) }}", TOO_BIG),
    "|trim of a repeated list": ("{% set s = 'x' * 1000000 %}{{ ([s] * 100) | trim | length }}", TOO_BIG),
    "|tojson indent": ("{{ [[[[1]]]] | tojson(indent=1000000) }}", TOO_BIG),
    "|wordwrap wrapstring": ("{{ ('x ' * 50000) | wordwrap(1, wrapstring='y' * 100000) }}", TOO_BIG),
    "|list of a long string": ("{{ ('x' * 1000000) | list | length }}", TOO_BIG),
    "many mid-sized values": ("{{ range(100000) | map('string') | map('center', 900000) | list | length }}",
                              "more than"),
    "|striptags (quadratic regex)": ("{{ ('<' * 100000) | striptags }}", "No filter named 'striptags'"),
    "lipsum": ("{{ lipsum(1000000) }}", "'lipsum' is undefined"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_template_fails_fast_and_small(name: str) -> None:
    """Fast (timed alone), and small (Python's allocations traced, which slows it down)."""
    template, says = HOSTILE[name]
    t0 = time.monotonic()
    with pytest.raises(ArtifactError, match=says):
        render_chat(template, MESSAGES)
    assert time.monotonic() - t0 < 2.0
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError):
            render_chat(template, MESSAGES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20, f"{peak / 2**20:.0f} MiB"


def test_the_limits_grow_with_the_messages() -> None:
    """Long real conversations render (here 1 MB in 2,000 turns, and 31,000 empty turns), trimmed or not."""
    long = [{"role": ("user", "assistant")[i % 2], "content": f" {i} " + "word " * 100} for i in range(2000)]
    for template in (CHATML, GEMMA3):
        t0 = time.monotonic()
        r = render_parts(template, long)
        assert r.exact and len(r.text) > 1_000_000
        assert time.monotonic() - t0 < bounds.Limits.for_input(1_000_000, 2000).seconds
    empty = [{"role": ("user", "assistant")[i % 2], "content": ""} for i in range(31_000)]
    assert render_parts(CHATML, empty).text.count("<|im_start|>") == 31_002


def test_the_bound_counts_every_render_of_one_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The marked renders share the deadline of the prompt: a template that is slow only on marked text fails
    within the one limit."""
    slow_on_marks = ("{% for m in messages %}{% if m.content.startswith(' ') %}" + NESTED + "{% endif %}"
                     "{{ m.content }}{% endfor %}")
    t0 = time.monotonic()
    with pytest.raises(ArtifactError, match="ran past"):
        render_parts(slow_on_marks, MESSAGES)
    assert time.monotonic() - t0 < 2.5


def test_renders_in_threads_at_once() -> None:
    """One compiled template, many threads: each render has its own budget (serve renders off the event loop)."""
    results: list[Any] = []

    def work(template: str) -> None:
        try:
            results.append(render_parts(template, MESSAGES).exact)
        except ArtifactError as e:
            results.append(e.message)

    threads = [threading.Thread(target=work, args=(t,)) for t in (CHATML, NESTED, CHATML, NESTED)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(map(str, results)) == ["True", "True", *["the chat template ran past its 1.0 s limit"] * 2]


# ---------------------------------------------------------------------------------------------- interrupts


@pytest.fixture
def restored_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def _interrupt_when(started: threading.Event, after: float = 0.2) -> threading.Thread:
    def fire() -> None:
        if started.wait(60):
            time.sleep(after)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("handler", ["python's", "edge-run's"])
def test_ctrl_c_while_rendering_is_an_interrupt(handler: str, restored_signals: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_run.core.fsutil import install_signal_handlers

    monkeypatch.setattr(bounds, "BASE_SECONDS", 60.0)
    if handler == "edge-run's":
        install_signal_handlers()
    else:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    started = threading.Event()
    started.set()
    _interrupt_when(started)
    t0 = time.monotonic()
    with pytest.raises(Interrupted if handler == "edge-run's" else KeyboardInterrupt):
        render_chat(NESTED, MESSAGES)
    assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def nested_loop_model(tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    from edge_run.converters.gguf.convert import ConvertOptions, convert_to_gguf

    ckpt = tmp_path_factory.mktemp("nested") / "ckpt"
    shutil.copytree(tiny_checkpoint("llama"), ckpt)
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg["chat_template"] = NESTED
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    (path,) = convert_to_gguf(ckpt, tmp_path_factory.mktemp("nested-gguf"), ConvertOptions(quants="q8_0", name="n"))
    return path


def test_run_chat_with_a_nested_loop_template(nested_loop_model: Path, cli: Callable[..., CliResult]) -> None:
    t0 = time.monotonic()
    res = cli("run", nested_loop_model, "-p", "hello", "-n", "2", "--chat")
    assert res.code == 3, res.stderr
    assert "the chat template ran past its 1.0 s limit" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 20
    assert cli("run", nested_loop_model, "-p", "hello", "-n", "2").code == 0


def test_run_chat_interrupted_while_rendering(nested_loop_model: Path, cli: Callable[..., CliResult],
                                              restored_signals: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_run.runtime.chat import template

    monkeypatch.setattr(bounds, "BASE_SECONDS", 60.0)
    started = threading.Event()
    render = template.render_bounded

    def rendering(*args: Any, **kwargs: Any) -> str:
        started.set()
        return render(*args, **kwargs)

    monkeypatch.setattr(template, "render_bounded", rendering)
    _interrupt_when(started)
    res = cli("run", nested_loop_model, "-p", "hello", "-n", "2", "--chat")
    assert started.is_set()
    assert res.code == 130, res.stderr
    assert "interrupted" in res.stderr and "template" not in res.stderr
