"""What the quantizer and the rotation both read of an ONNX Runtime GenAI graph: node names and initializers.

Both work on the builder's FP32 graph, tensor by tensor; this module is the piece they share, so
neither imports the other for it (:mod:`slmops.toolkit.weights.quantize` runs the rotation first
when a plan asks for it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The LM head's MatMul in the builder's graphs.
LM_HEAD = "/lm_head/MatMul"
#: Name prefix of the MatMuls :mod:`slmops.toolkit.weights.rotate` adds; they stay in FP32.
ROTATION_PREFIX = "/rotation/"

#: ``TensorProto.EXTERNAL``: the tensor's bytes are in a file beside the graph.
EXTERNAL = 1


def read_initializer(tensor, folder: Path) -> np.ndarray:
    """The array of initializer ``tensor`` of the model in ``folder`` (inline or in an external file).

    External data is read with ``np.fromfile`` (a private copy, freed after use; onnx's own loader
    also refuses the hard-linked data files the toolkit's runs share), never from outside ``folder``.

    Raises:
        ValueError: the tensor's data file is outside ``folder``.
    """
    from onnx import helper, numpy_helper

    if tensor.data_location != EXTERNAL:
        return numpy_helper.to_array(tensor)
    where = {entry.key: entry.value for entry in tensor.external_data}
    file = (folder / where["location"]).resolve()
    if not file.is_relative_to(folder.resolve()):  # as onnx's own loader, never outside the model
        raise ValueError(f"{tensor.name}'s data is outside the model's folder: {where['location']}")
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    data = np.fromfile(file, dtype=dtype, count=count, offset=int(where.get("offset", 0)))
    return data.reshape(tuple(tensor.dims))
