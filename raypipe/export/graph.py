"""A small ONNX graph builder: unique names, constants as initialisers, one node per call."""
from __future__ import annotations

from typing import Any

import numpy as np

ML = "ai.onnx.ml"  # the domain of LabelEncoder


class Graph:
    """Collects the nodes, initialisers, inputs and outputs of one ONNX graph."""

    def __init__(self, prefix: str = "f") -> None:
        self.prefix, self.count = prefix, 0
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def input(self, name: str, elem_type: int, shape: list[Any]) -> str:
        from onnx import helper

        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: list[Any]) -> None:
        """Expose ``value`` as the graph output ``name`` (through an Identity)."""
        from onnx import helper

        self.alias(value, name)
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def alias(self, value: str, name: str) -> None:
        """Make ``value`` available under ``name`` (an Identity node)."""
        from onnx import helper

        self.nodes.append(helper.make_node("Identity", [value], [name], name=self.name("alias")))

    def const(self, value: Any, hint: str = "c", dtype: Any = None) -> str:
        from onnx import numpy_helper

        arr = np.asarray(value, dtype=dtype)
        if arr.dtype.kind in "UO":
            arr = arr.astype(object)
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, *inputs: str, domain: str = "", n_out: int = 1, **attrs: Any) -> Any:
        """Add a node; returns its output name (a list of names when ``n_out`` > 1)."""
        from onnx import helper

        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        node = helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), domain=domain, **attrs)
        self.nodes.append(node)
        return outs[0] if n_out == 1 else outs

    def model(self, opsets: dict[str, int], ir_version: int | None = None, doc: str = "") -> Any:
        from onnx import helper

        graph = helper.make_graph(self.nodes, "raypipe", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                                  producer_name="raypipe", doc_string=doc)
        if ir_version is not None:
            model.ir_version = ir_version
        return model
