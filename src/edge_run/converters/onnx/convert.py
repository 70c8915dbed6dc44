"""HF checkpoint -> ONNX artifact folder(s), one per quant scheme, each with a manifest.

    OUT/<name>.<quant label>/        e.g. OUT/smollm2-135m.int4-b32-sym/
        model.onnx                   the graph (builder.py), initializers by reference
        model.onnx.data              every weight, streamed in as it is quantized
        genai_config.json            onnxruntime-genai's description of the graph
        tokenizer.json, tokenizer_config.json (+ special_tokens_map.json, generation_config.json)
        manifest.json                written last

The folder is built as a hidden temp folder beside its destination and renamed into place when
complete: an interrupted or failed conversion leaves nothing under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_run.converters.architectures import lookup
from edge_run.converters.checkpoint import Checkpoint, open_checkpoint
from edge_run.converters.config_check import check_config
from edge_run.converters.gguf.vocab import build_vocab
from edge_run.converters.onnx.builder import DecoderBuilder, Weights
from edge_run.converters.onnx.calibrate import Calibration, calibrate
from edge_run.converters.onnx.genai import copy_tokenizer, genai_config
from edge_run.converters.onnx.graph import OPSET, Graph, save_model
from edge_run.converters.onnx.hparams import decoder_config
from edge_run.converters.onnx.mix import plan_mix
from edge_run.converters.onnx.quantize import QuantConfig, parse_quant
from edge_run.core.errors import OutputExistsError, ResourceError
from edge_run.core.fsutil import (
    TEMP_PREFIX,
    check_destination,
    exclusive_folder,
    os_error_to_resource,
    sha256_file,
)
from edge_run.core.manifest import Manifest, write_manifest
from edge_run.core.quoting import artifact_base_name
from edge_run.core.tuning import of_checkpoint

Progress = Callable[[str, int, int], None]
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


@dataclass(frozen=True)
class OnnxOptions:
    quant: str = "int4"  # comma list of quantize.SCHEMES names
    block_size: int = 32
    symmetric: bool = False  # asymmetric: lower perplexity (results/bench_onnx.json)
    accuracy_level: int = 4
    name: str | None = None
    force: bool = False
    calibration_text: Path | None = None  # calibrated schemes; default: calibrate.DEFAULT_TEXT


def artifact_dir(out_dir: Path, name: str, quant: QuantConfig) -> Path:
    return Path(out_dir) / f"{name}.{quant.label}"


@contextlib.contextmanager
def _atomic_dir(dest: Path, force: bool) -> Iterator[Path]:
    """Yield a temp folder beside ``dest``; on success it replaces ``dest`` (kept unless ``force``)."""
    if dest.exists() and not force:
        raise OutputExistsError(f"{dest} already exists", "pass --force to overwrite it")
    check_destination(dest, force=True)  # makes and checks the parent folder
    tmp = dest.with_name(f"{TEMP_PREFIX}{os.getpid()}-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        if dest.exists():
            old = dest.with_name(f"{TEMP_PREFIX}{os.getpid()}-old-{dest.name}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except OSError as e:
        raise os_error_to_resource(e, dest.name) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_artifact(ckpt: Checkpoint, digest: str, quant: QuantConfig, dest: Path, tokenizer_kind: str,
                    progress: Progress | None, cal: Calibration | None = None) -> None:
    arch_name, spec = lookup(ckpt.config)
    cfg = decoder_config(ckpt, spec)
    stage = quant.label
    scheme = quant.scheme
    importance = cal.importance if cal is not None and scheme.calibrate else None
    packed4 = cal.packed if cal is not None and scheme.calibrate and scheme.search else None
    plan = (plan_mix(quant, cal.shapes, cal.sensitivity, scheme.budget_bpw)
            if cal is not None and scheme.budget_bpw is not None else None)

    def layer_progress(done: int, total: int) -> None:
        if progress:
            progress(stage, done, total)

    layer_progress(0, cfg.n_layers)
    with open(dest / DATA_FILE, "wb") as data:
        g = Graph(data, DATA_FILE)
        builder = DecoderBuilder(g, cfg, Weights(ckpt), quant, importance, plan, packed4)
        builder.build(layer_progress)
    model = g.model(f"{ckpt.name}-{quant.label}", {"edge_run.arch": spec.key, "edge_run.quant": quant.label})
    save_model(model, dest / MODEL_FILE)
    (dest / "genai_config.json").write_text(json.dumps(genai_config(ckpt, cfg, spec.key), indent=2) + "\n",
                                            encoding="utf-8")
    copy_tokenizer(ckpt, dest, tokenizer_kind)
    n_params = ckpt.parameter_count()
    bits = Counter("f32" if b is None else f"int{b}" for b in builder.linears.values())
    calibration = {} if importance is None or cal is None else {
        "calibration": {"text": cal.text, "tokens": cal.tokens, "seconds": cal.seconds,
                        "int8": sorted(k for k, b in (plan or {}).items() if b == 8)}}
    manifest = Manifest(
        format="onnx", artifact=MODEL_FILE,
        source={"path": str(ckpt.path.resolve()), "digest": digest},
        architecture=arch_name, arch=spec.key, parameter_count=n_params, quant=quant.label,
        bits_per_weight=round(8 * g.weight_bytes / n_params, 4),
        file_size=sum(p.stat().st_size for p in dest.iterdir() if p.is_file()),
        sha256=sha256_file(dest / DATA_FILE), tokenizer=tokenizer_kind, context_length=cfg.max_positions,
        extra={"scheme": quant.scheme.name, "block_size": quant.block_size, "symmetric": quant.symmetric,
               "accuracy_level": quant.accuracy_level, "opset": OPSET, "linear_bits": dict(sorted(bits.items())),
               "data_file": DATA_FILE, "num_layers": cfg.n_layers, **calibration, **of_checkpoint(ckpt.path).to_dict(),
               # every file's digest: edge-run's integrity check covers the graph and tokenizer, not only the data
               "files": {p.name: sha256_file(p) for p in sorted(dest.iterdir()) if p.is_file()}},
    )
    # the manifest's own size is not known before it is written; file_size counts every other file
    write_manifest(dest, manifest, force=True)


def convert_to_onnx(checkpoint: Path, out_dir: Path, options: OnnxOptions,
                    progress: Progress | None = None) -> list[Path]:
    """Convert ``checkpoint`` once per quant scheme in ``options.quant``; return the artifact folders."""
    quants = [parse_quant(q, options.block_size, options.symmetric, options.accuracy_level)
              for q in options.quant.split(",") if q.strip()]
    if not quants:
        quants = [parse_quant("int4", options.block_size, options.symmetric, options.accuracy_level)]
    ckpt = open_checkpoint(checkpoint)
    _, spec = lookup(ckpt.config)
    check_config(ckpt)
    cfg = decoder_config(ckpt, spec)  # fail on a bad config before writing anything
    vocab = build_vocab(ckpt, cfg.vocab)  # and on a missing / mismatched tokenizer
    Weights(ckpt)
    name = artifact_base_name(options.name, ckpt.name)  # UsageError for a name no file or script can hold
    targets = [artifact_dir(out_dir, name, q) for q in quants]
    for t in targets:
        if t.exists() and not options.force:
            raise OutputExistsError(f"{t} already exists", "pass --force to overwrite it")
        check_destination(t, force=True)
    with exclusive_folder(Path(out_dir)):  # one writer per folder; removes dead converts' temp folders
        _convert_all(ckpt, quants, targets, vocab.kind, options, progress)
    return targets


@contextlib.contextmanager
def _calibration(ckpt: Checkpoint, quants: list[QuantConfig], out_dir: Path, options: OnnxOptions,
                 progress: Progress | None) -> Iterator[Calibration | None]:
    """Measured once for every calibrated scheme of the run (the first one's 4-bit layout), in a temp folder
    that lives until the artifacts are written."""
    calibrated = [q for q in quants if q.scheme.calibrate]
    if not calibrated:
        yield None
        return
    _, spec = lookup(ckpt.config)
    work = Path(out_dir) / f"{TEMP_PREFIX}{os.getpid()}-calibration"
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir()
        cal = calibrate(ckpt, decoder_config(ckpt, spec), calibrated[0], work, options.calibration_text,
                        any(q.scheme.budget_bpw is not None for q in calibrated), progress)
        yield cal
    except OSError as e:
        raise os_error_to_resource(e, work.name) from e
    except MemoryError as e:
        raise ResourceError("out of memory while calibrating") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _convert_all(ckpt: Checkpoint, quants: list[QuantConfig], targets: list[Path], tokenizer_kind: str,
                 options: OnnxOptions, progress: Progress | None) -> None:
    digest = ckpt.digest()
    with _calibration(ckpt, quants, targets[0].parent, options, progress) as cal:
        for q, target in zip(quants, targets, strict=True):
            with _atomic_dir(target, options.force) as tmp:
                try:
                    _write_artifact(ckpt, digest, q, tmp, tokenizer_kind, progress, cal)
                except OSError as e:
                    raise os_error_to_resource(e, target.name) from e
                except MemoryError as e:
                    raise ResourceError(f"out of memory while converting {target.name}") from e
