"""What the runtime needs from a converter to plan and make a pairing that is not converted yet, as an interface
the command layer plugs an implementation into. The runtime library never imports a converter::

    runtime.cli, tools ── use("edge_run.converters.planning:CONVERTER") ──┐   (a "module:attribute" string:
                                                                           ▼    nothing is imported until asked)
    picker, estimate, pick_measure ── converter() ──> planning.Converter (Protocol)
                                                                           ▲
    edge_run.converters.planning.CONVERTER ───────── implements ───────────┘

A checkpoint's plan is read once per process and file state (names, sizes, mtimes of its json/safetensors).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from edge_run.core.errors import UsageError
from edge_run.core.plan import CheckpointPlan
from edge_run.core.stamp_cache import files_stamp

Progress = Callable[[str, int, int], None]


class Converter(Protocol):
    def plan(self, checkpoint: Path) -> CheckpointPlan:
        """Raises CheckpointError / UnsupportedArchitectureError when the folder cannot be converted."""
        ...

    def convert(self, checkpoint: Path, out_dir: Path, quants: Sequence[str], name: str, *, force: bool = False,
                imatrix: Path | None = None) -> list[Path]:
        """GGUF artifacts of ``quants`` (upper-case llama.cpp names), one per type, in that order."""
        ...

    def artifact_path(self, out_dir: Path, name: str, quant: str) -> Path:
        """Where ``convert`` writes ``quant`` of ``name``."""
        ...

    def f16(self, checkpoint: Path, out_dir: Path, name: str, progress: Progress | None = None) -> Path:
        """The F16 GGUF an importance matrix is measured on (src/edge_run/runtime/eval/imatrix.py's ``to_f16``)."""
        ...


GGUF_CONVERTER = "edge_run.converters.planning:CONVERTER"  # what edge-run's command layer and tools plug in
_SPEC: list[str] = []


def use(spec: str) -> None:
    """Plug in the converter, as "module:attribute" (resolved on first use, so a command that plans nothing
    imports nothing)."""
    _SPEC[:] = [spec]
    converter.cache_clear()


@functools.cache
def converter() -> Converter:
    if not _SPEC:
        raise UsageError("no converter is plugged in to plan or convert checkpoints",
                         'call edge_run.core.planning.use("edge_run.converters.planning:CONVERTER") first')
    module, _, attribute = _SPEC[0].partition(":")
    found: Converter = getattr(importlib.import_module(module), attribute)
    return found


def _stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return files_stamp(sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors")))
    except OSError:  # the converter's plan() says what is wrong with the folder
        return ()


@functools.lru_cache(maxsize=16)
def _cached_plan(folder: str, stamp: tuple[tuple[str, int, int], ...], spec: str) -> CheckpointPlan:
    return converter().plan(Path(folder))


def checkpoint_plan(checkpoint: Path) -> CheckpointPlan:
    """The converter's plan of ``checkpoint``, read once for all the quant types the picker plans (a changed
    checkpoint, or another converter, is read again)."""
    folder = Path(checkpoint).resolve()
    return _cached_plan(str(folder), _stamp(folder), _SPEC[0] if _SPEC else "")
