"""`edge-run inspect` for ONNX artifact folders: graph I/O, operator counts, quantized matrices and the
genai_config.json summary, read without loading the weights (external data stays on disk)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from edge_run.core.errors import ArtifactError


def _shape(value_info: Any) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def onnx_summary(path: Path) -> dict[str, Any]:
    import onnx

    path = Path(path)
    model_file = path / "model.onnx" if path.is_dir() else path
    folder = model_file.parent
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / OSError / ValueError for bad files
        raise ArtifactError(f"{model_file.name} is not a readable ONNX model ({e})", "re-convert it") from e
    graph = model.graph
    ops = Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in graph.node)
    quantized: Counter[str] = Counter()
    for n in graph.node:
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            quantized[f"{n.op_type} int{attrs.get('bits', 4)} block {attrs.get('block_size')}"] += 1
    external = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    info: dict[str, Any] = {
        "producer": f"{model.producer_name} (ir {model.ir_version})",
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "metadata": {p.key: p.value for p in model.metadata_props},
        "nodes": len(graph.node),
        "operators": dict(ops.most_common()),
        "quantized_ops": dict(quantized),
        "inputs": {i.name: _shape(i) for i in graph.input[:4]} | {"...": f"{len(graph.input)} inputs"},
        "outputs": {o.name: _shape(o) for o in graph.output[:4]} | {"...": f"{len(graph.output)} outputs"},
        "initializers": len(graph.initializer),
        "external_data": sorted(external),
    }
    genai = folder / "genai_config.json"
    if genai.is_file():
        try:
            cfg = json.loads(genai.read_text(encoding="utf-8"))["model"]
            dec = cfg["decoder"]
            info["genai_config"] = {"type": cfg.get("type"), "context_length": cfg.get("context_length"),
                                    "layers": dec.get("num_hidden_layers"), "heads": dec.get("num_attention_heads"),
                                    "kv_heads": dec.get("num_key_value_heads"), "head_size": dec.get("head_size"),
                                    "eos_token_id": cfg.get("eos_token_id")}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ArtifactError(f"genai_config.json is malformed ({e!r})", "re-convert the artifact") from e
    return info
