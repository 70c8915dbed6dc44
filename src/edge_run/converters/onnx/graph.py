"""A small ONNX graph writer whose initializers stream straight into one external data file.

    model.onnx        GraphProto: nodes, inputs/outputs, initializer *references*
    model.onnx.data   every initializer's bytes, appended in creation order:

        +-----------+-----+-----------+-----+-----------+
        | tensor 0  | pad | tensor 1  | pad | tensor 2  | ...   pad: large tensors start on a
        +-----------+-----+-----------+-----+-----------+       4 KiB boundary (mmap-able)

    each initializer's TensorProto says data_location=EXTERNAL, location=model.onnx.data,
    offset, length. Nothing but the node list is ever held in memory, so converting a model
    needs about one weight matrix of RAM and has no 2 GB protobuf limit.

Node outputs are named ``<node name>/output_<i>`` so a value's producer is readable from its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

MS_DOMAIN = "com.microsoft"
OPSET = 21
IR_VERSION = 10
PAGE = 4096
LARGE_TENSOR = 64 * 1024


class Graph:
    """Collects nodes and writes initializer bytes to ``data`` as they are added."""

    def __init__(self, data: BinaryIO, data_location: str) -> None:
        self.data = data
        self.location = data_location
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self._names: set[str] = set()
        self.weight_bytes = 0  # bytes of weight initializers (what bits-per-weight counts)

    # -- initializers ---------------------------------------------------------------------------
    def _begin(self, nbytes: int) -> int:
        pos = self.data.tell()
        align = PAGE if nbytes >= LARGE_TENSOR else 16
        pad = (-pos) % align
        if pad:
            self.data.write(b"\0" * pad)
        return pos + pad

    def _reference(self, name: str, dtype: int, shape: Sequence[int], offset: int, length: int) -> str:
        if name in self._names:
            raise ValueError(f"duplicate initializer {name}")
        self._names.add(name)
        t = TensorProto(name=name, data_type=dtype, dims=list(shape))
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(t)
        return name

    def initializer(self, name: str, array: np.ndarray, weight: bool = True) -> str:
        """Store ``array`` (C order, little endian) under ``name``."""
        return self.initializer_chunks(name, array.dtype, array.shape, [array], weight)

    def initializer_chunks(self, name: str, dtype: npt.DTypeLike, shape: Sequence[int], chunks: Iterable[np.ndarray],
                           weight: bool = True) -> str:
        """Store a tensor produced as consecutive C-order chunks of its bytes (e.g. row blocks)."""
        dtype = np.dtype(dtype)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        offset = self._begin(expected)
        written = 0
        for chunk in chunks:
            buf = np.ascontiguousarray(chunk, dtype=dtype.newbyteorder("<"))
            self.data.write(buf.tobytes())
            written += buf.nbytes
        if written != expected:
            raise ValueError(f"{name}: wrote {written} bytes, shape {list(shape)} needs {expected}")
        if weight:
            self.weight_bytes += written
        return self._reference(name, helper.np_dtype_to_tensor_dtype(dtype), shape, offset, written)

    def const(self, values: Any, dtype: str = "int64") -> str:
        """A small constant (deduplicated), stored inline in model.onnx."""
        arr = np.asarray(values, dtype=dtype)
        key = (dtype, arr.tobytes(), arr.shape)
        if key not in self._consts:
            flat = ",".join(str(v) for v in arr.reshape(-1).tolist())
            name = f"/model/constants/{dtype}/{list(arr.shape)}/{flat}"
            self.initializers.append(onnx.numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    # -- nodes ----------------------------------------------------------------------------------
    def node(self, op: str, inputs: Sequence[str], name: str, n_out: int = 1, domain: str = "",
             outputs: Sequence[str] | None = None, **attrs: Any) -> list[str]:
        """Add ``op`` named ``name``; return its output value names (``outputs`` names graph outputs;
        an empty string there leaves that optional output unused)."""
        outputs = list(outputs) if outputs is not None else [f"{name}/output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=name, domain=domain or None, **attrs))
        return outputs

    def op(self, op: str, inputs: Sequence[str], name: str, domain: str = "", **attrs: Any) -> str:
        return self.node(op, inputs, name, 1, domain, **attrs)[0]

    def branch(self, name: str, values: Sequence[str]) -> onnx.GraphProto:
        """A subgraph for If that returns outer-scope f32 values unchanged (one Identity each)."""
        outs = [f"{name}/output_{i}" for i in range(len(values))]
        nodes = [helper.make_node("Identity", [v], [o], name=f"{name}/Identity_{i}")
                 for i, (v, o) in enumerate(zip(values, outs, strict=True))]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                   for o in outs])

    def add_input(self, name: str, elem: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def add_input_with_default(self, name: str, value: np.ndarray) -> str:
        """An optional graph input: an initializer of the same name supplies it when not fed."""
        self.initializers.append(onnx.numpy_helper.from_array(value, name))
        self.inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                         list(value.shape)))
        return name

    def add_output(self, name: str, elem: int, shape: Sequence[int | str]) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    # -- output ---------------------------------------------------------------------------------
    def model(self, graph_name: str, metadata: dict[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="edge-run")
        model.ir_version = IR_VERSION
        helper.set_model_props(model, metadata)
        return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write the graph (initializers already live in the external data file)."""
    Path(path).write_bytes(model.SerializeToString())
