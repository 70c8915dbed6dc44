"""Built-in evaluation corpora shipped with edge-run (see src/edge_run/runtime/data/SOURCES.md for provenance)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from edge_run.core.errors import CorpusError

BUILTIN_CORPORA: dict[str, str] = {
    "wikitext-2-raw-test": "wikitext-2-raw-test.txt",
    "tinyshakespeare": "tinyshakespeare.txt",
}


def builtin_corpus_path(name: str) -> Path:
    if name not in BUILTIN_CORPORA:
        raise CorpusError(f"no built-in corpus named {name!r}", f"choose from: {', '.join(BUILTIN_CORPORA)}")
    return Path(str(resources.files("edge_run.runtime.eval") / "data" / BUILTIN_CORPORA[name]))
