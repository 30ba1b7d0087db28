"""Run ONNX Runtime GenAI's model builder with a lean FP32 export (child process entry point).

The 0.14 builder stores each weight as a lazy tensor that casts the checkpoint's tensor
(bf16 in most fine-tunes) to the ONNX dtype when it is saved, and its closure keeps the
cast copy: by the end of saving every weight exists twice, once in the checkpoint's dtype
and once in FP32. Measured on a random Qwen2.5-0.5B-shaped bf16 checkpoint (988 MB):
``-p fp32`` peaked at 3.9 GB; with the cast copy dropped after it is written and made
contiguous in one step, the peak is the checkpoint itself plus one tensor in flight. Nothing else changes: the
same graph and bytes are written. Usage::

    python -m toolkit.core.workers toolkit.runtimes.genai_builder -i DIR -o OUT -p fp32 ...
"""

from __future__ import annotations

import runpy
import sys


def _lean_make_initializer(self, tensor, /, name, to=None):
    """``Model.make_initializer`` whose lazy cast is recomputed per save instead of kept."""
    import onnx_ir as ir
    import torch
    from onnx_ir.tensor_adapters import TorchTensor, to_torch_dtype

    if to is not None:
        source = tensor

        def cast():
            # A fresh copy each time, so nothing holds on to it once it is written; made
            # contiguous in one allocation (the LM head is a transposed view, and writing a
            # non-contiguous tensor would copy it again).
            copy = torch.empty(tuple(source.shape), dtype=to_torch_dtype(to))
            copy.copy_(source)
            return TorchTensor(copy, name=name)

        ir_tensor = ir.LazyTensor(cast, dtype=to, shape=ir.Shape(tensor.shape), name=name)
    elif isinstance(tensor, torch.nn.parameter.Parameter):
        ir_tensor = TorchTensor(tensor, name=name)
    else:
        ir_tensor = ir.tensor(tensor, name=name)
    value = self.make_value(name, ir_tensor.dtype, ir_tensor.shape)
    value.const_value = ir_tensor
    self.model.graph.register_initializer(value)


def main() -> None:
    """Install the lean initializer, then hand over to the builder's own command line."""
    import onnxruntime_genai.models  # noqa: F401  (puts the builder's ``builders`` package on sys.path)
    from builders import base  # the name builder.py itself imports its classes under

    base.Model.make_initializer = _lean_make_initializer
    sys.argv = ["onnxruntime_genai.models.builder", *sys.argv[1:]]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
