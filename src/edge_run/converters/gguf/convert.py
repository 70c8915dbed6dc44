"""HF checkpoint -> one or more GGUF artifacts, each with a manifest.

    checkpoint ──stream──> <name>.F16.gguf (intermediate, temp unless F16 was asked for)
                              ├── quantize (child) ──> <name>.Q8_0.gguf   + .manifest.json
                              └── quantize (child) ──> <name>.Q4_K_M.gguf + .manifest.json

Everything is written under a temp name and renamed when complete; existing artifacts are kept
unless ``force``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_run.converters.architectures import ArchSpec, lookup
from edge_run.converters.checkpoint import Checkpoint, open_checkpoint
from edge_run.converters.config_check import check_config
from edge_run.converters.gguf.hparams import validate_hparams
from edge_run.converters.gguf.quant_types import QuantType, parse_quant_list
from edge_run.converters.gguf.quantize import quantize_gguf
from edge_run.converters.gguf.vocab import VocabInfo, build_vocab
from edge_run.converters.gguf.writer import write_full_precision
from edge_run.core.errors import UsageError
from edge_run.core.fsutil import (
    atomic_path,
    check_destination,
    exclusive_folder,
    os_error_to_resource,
    sha256_file,
)
from edge_run.core.manifest import Manifest, manifest_path_for, write_manifest
from edge_run.core.quoting import artifact_base_name
from edge_run.core.tuning import of_checkpoint

# progress(stage, done, total): stage is a short label such as "F16" or "Q4_K_M"
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ConvertOptions:
    quants: str = "q4_k_m"
    intermediate: str = "f16"  # f32 | f16 | bf16
    name: str | None = None
    force: bool = False
    n_threads: int = 0
    imatrix: Path | None = None  # .npz of per-column importances (see quantize.py)


def artifact_path(out_dir: Path, name: str, q: QuantType) -> Path:
    return Path(out_dir) / f"{name}.{q.name}.gguf"


def _manifest(ckpt: Checkpoint, digest: str, arch_key: str, q: QuantType, path: Path, tokenizer: str,
              extra: dict, stats: tuple[int, int]) -> Manifest:
    nbytes, n_elements = stats
    cfg = ckpt.text_config()
    return Manifest(
        format="gguf", artifact=path.name,
        source={"path": str(ckpt.path.resolve()), "digest": digest},
        architecture=ckpt.architecture, arch=arch_key,
        parameter_count=n_elements, quant=q.name,
        bits_per_weight=round(8 * nbytes / n_elements, 4),
        file_size=path.stat().st_size, sha256=sha256_file(path),
        tokenizer=tokenizer, context_length=int(cfg.get("max_position_embeddings", 0)),
        extra=extra,
    )


def convert_to_gguf(checkpoint: Path, out_dir: Path, options: ConvertOptions,
                    progress: Progress | None = None) -> list[Path]:
    """Convert and quantize; return the artifact paths in the order asked."""
    quants = parse_quant_list(options.quants, have_imatrix=options.imatrix is not None)
    if options.intermediate.upper() not in ("F32", "F16", "BF16"):
        raise UsageError(f"unknown intermediate type {options.intermediate!r}", "choose f32, f16 or bf16")
    ckpt = open_checkpoint(checkpoint)
    _, spec = lookup(ckpt.config)
    check_config(ckpt)  # sizes vs tensors and sane bounds before anything is allocated
    validate_hparams(ckpt.text_config())
    vocab = build_vocab(ckpt, int(ckpt.text_config().get("vocab_size", 0)))  # a bad tokenizer fails before writing
    name = artifact_base_name(options.name, ckpt.name)  # UsageError for a name no file or script can hold
    out_dir = Path(out_dir)
    targets = {q.name: artifact_path(out_dir, name, q) for q in quants}
    for path in targets.values():
        check_destination(path, options.force)
    with exclusive_folder(out_dir):  # one writer per folder; removes dead converts' temp files
        for path in targets.values():
            check_destination(path, options.force)
        return _convert(ckpt, spec, quants, targets, name, options, progress, vocab)


def _convert(ckpt: Checkpoint, spec: ArchSpec, quants: list[QuantType], targets: dict[str, Path], name: str,
             options: ConvertOptions, progress: Progress | None, vocab: VocabInfo) -> list[Path]:
    out_dir = next(iter(targets.values())).parent
    digest = ckpt.digest()
    inter = options.intermediate.upper()
    # instruction-tuned / base / unknown, from the checkpoint's files (the picker's chat preference reads it)
    extra = {"intermediate": inter, "imatrix": bool(options.imatrix), **of_checkpoint(ckpt.path).to_dict()}

    def report(stage: str) -> Callable[[int, int], None]:
        return lambda done, total: progress(stage, done, total) if progress else None

    results: list[Path] = []
    with contextlib.ExitStack() as stack:
        if inter in targets:
            base_final = targets[inter]
            base = stack.enter_context(atomic_path(base_final, force=options.force))
        else:
            base_final = None
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=f".edge-run-{os.getpid()}-", dir=out_dir))
            base = Path(tmpdir) / f"{name}.{inter}.gguf"
        try:
            vocab, *base_stats = write_full_precision(ckpt, spec, inter.lower(), base, name, report(inter), vocab)
        except OSError as e:
            raise os_error_to_resource(e, f"{name}.{inter}.gguf") from e
        for q in quants:
            if q.name == inter:
                continue
            with atomic_path(targets[q.name], force=options.force) as tmp:
                if progress:
                    progress(q.name, 0, 1)
                stats = quantize_gguf(base, tmp, q, options.n_threads, options.imatrix)
                m = _manifest(ckpt, digest, spec.key, q, tmp, vocab.kind, extra, stats)
                m.artifact = targets[q.name].name
            write_manifest(targets[q.name], m, force=True)
            if progress:
                progress(q.name, 1, 1)
        if base_final is not None:
            m = _manifest(ckpt, digest, spec.key, next(q for q in quants if q.name == inter), base,
                          vocab.kind, extra, (base_stats[0], base_stats[1]))
            m.artifact = base_final.name
            stack.close()  # renames the base into place
            write_manifest(base_final, m, force=True)
    for q in quants:
        results.append(targets[q.name])
        assert manifest_path_for(targets[q.name]).exists()
    return results
