"""The external-data writer: a model's initializers read one at a time, and new ones appended to the output's data file.

So the quantizer and the LoRA keep-apart step hold about one tensor at a time, whatever the
model's size; large tensors start on a page, as onnx's own writer places them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slmops.toolkit.weights.onnx_weights import EXTERNAL, read_initializer


class WeightStore:
    """Initializers read one at a time from a model's external data, and new ones appended to the output's.

    Reads go through ``np.fromfile`` (a private copy freed after use), not a memory map,
    so pages of tensors already done do not pile up in the resident set.
    """

    def __init__(self, source_dir: Path, target_data: Path) -> None:
        self.source_dir = source_dir
        self.target_data = target_data
        self.handle = target_data.open("wb")
        self.stored: set[str] = set()

    def read(self, tensor) -> np.ndarray:
        """The array of initializer ``tensor`` (inline or in an external file)."""
        return read_initializer(tensor, self.source_dir)

    def store(self, tensor) -> None:
        """Move ``tensor``'s bytes to the output's data file; ``tensor`` then points there."""
        data = self.read(tensor)
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                      "string_data"):
            tensor.ClearField(field)
        self._append(tensor, data)

    def write(self, name: str, array: np.ndarray, *, transposed: bool = False):
        """A new initializer ``name`` holding ``array`` (or its transpose), written straight to the data file.

        The transpose is written in slices, so no whole transposed copy is ever made.
        """
        from onnx import TensorProto, helper

        shape = array.shape[::-1] if transposed else array.shape
        tensor = TensorProto(name=name, dims=list(shape), data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        self._append(tensor, array, transposed=transposed)
        return tensor

    def _append(self, tensor, array: np.ndarray, *, transposed: bool = False) -> None:
        """Append ``array`` (or its transpose, in slices) to the data file and point ``tensor`` at it."""
        offset = self.handle.tell()
        # Large tensors start on a page, as onnx's own writer places them, so the runtime can map them.
        if array.nbytes >= ALIGN_ABOVE_BYTES and offset % 4096:
            self.handle.write(b"\0" * (4096 - offset % 4096))
            offset = self.handle.tell()
        if transposed:
            step = max(1, CHUNK_BYTES // max(1, array.shape[0] * array.itemsize))
            for start in range(0, array.shape[1], step):
                np.ascontiguousarray(array[:, start:start + step].T).tofile(self.handle)
        else:
            np.ascontiguousarray(array).tofile(self.handle)  # no bytes copy of a large table
        del tensor.external_data[:]
        tensor.data_location = EXTERNAL
        for key, value in (("location", self.target_data.name), ("offset", str(offset)),
                           ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.stored.add(tensor.name)

    def inline(self, tensor) -> None:
        """Keep ``tensor`` inside the graph (small tensors: shapes must be inline for ORT's shape inference)."""
        if tensor.data_location == EXTERNAL:
            data = np.ascontiguousarray(self.read(tensor))
            del tensor.external_data[:]
            tensor.data_location = 0  # TensorProto.DEFAULT: inline
            tensor.raw_data = data.tobytes()
        self.stored.add(tensor.name)

    def close(self) -> None:
        self.handle.close()


#: Largest slice of a weight quantized at once: ORT's quantizer holds about four copies of
#: what it is given, which for a 150k-token LM head (545 MB in FP32) peaked at 2.6 GB.
CHUNK_BYTES = 64 * 2**20


#: Tensors smaller than this stay inside the graph (as onnx's own writer's threshold).
INLINE_BYTES = 1024


#: Tensors from this size start on a page boundary in the data file (onnx's ``align_threshold``).
ALIGN_ABOVE_BYTES = 2**20
