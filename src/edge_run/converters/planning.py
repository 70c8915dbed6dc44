"""The converters' side of src/edge_run/core/planning.py: a checkpoint's plan (config + safetensors headers, nothing
loaded) and GGUF conversion, for the picker to plan and make pairings. The command layer plugs ``CONVERTER`` in
by name; this package still imports nothing from the runtime (runtime.planning.Converter is a Protocol)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edge_run.converters.architectures import lookup
from edge_run.converters.checkpoint import open_checkpoint
from edge_run.converters.gguf.convert import ConvertOptions, artifact_path, convert_to_gguf
from edge_run.converters.gguf.entry import f16_gguf
from edge_run.converters.gguf.hparams import head_dim
from edge_run.converters.gguf.quant_types import QUANT_TYPES
from edge_run.converters.gguf.tensors import plan_tensors
from edge_run.core.plan import CheckpointPlan, PlanTensor


class GGUFConverter:
    def plan(self, checkpoint: Path) -> CheckpointPlan:
        ckpt = open_checkpoint(Path(checkpoint))
        _, spec = lookup(ckpt.config)
        cfg = ckpt.text_config()
        tensors = tuple(PlanTensor(t.gguf_name, tuple(t.shape), t.n_elements) for t in plan_tensors(ckpt, spec, "f16"))
        return CheckpointPlan(name=ckpt.name, digest=ckpt.digest(), parameter_count=ckpt.parameter_count(),
                              text_config=cfg, head_dim=head_dim(cfg), tensors=tensors)

    def convert(self, checkpoint: Path, out_dir: Path, quants: Sequence[str], name: str, *, force: bool = False,
                imatrix: Path | None = None) -> list[Path]:
        return convert_to_gguf(checkpoint, out_dir, ConvertOptions(
            quants=",".join(q.lower() for q in quants), name=name, force=force, imatrix=imatrix))

    def artifact_path(self, out_dir: Path, name: str, quant: str) -> Path:
        return artifact_path(out_dir, name, QUANT_TYPES[quant.upper()])

    def f16(self, checkpoint: Path, out_dir: Path, name: str,
            progress: Callable[[str, int, int], None] | None = None) -> Path:
        return f16_gguf(checkpoint, out_dir, name, progress)


CONVERTER = GGUFConverter()
