"""The rotated path: a model rotated into a scratch folder beside its quantized target, then quantized.

The rotation itself is :mod:`slmops.toolkit.weights.rotate`; this module gives the quantizer a
rotated copy of its FP32 source (with the folder's other files, for GPTQ's tokenizer) for as
long as it needs it, and removes it whatever happens.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain.genai_config import decoder_config
from slmops.toolkit.weights.rotate import UnsupportedGraph, rotate


@contextmanager
def rotated_copy(source: Path, scratch: Path) -> Iterator[Path]:
    """Rotate the FP32 model ``source`` into the folder ``scratch`` (its other files copied); yield the rotated graph.

    The scratch folder is removed when the block ends, whatever happens.

    Raises:
        InputError: the graph is not one the rotation supports (the message says to quantize without it).
    """
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        for f in source.parent.iterdir():
            if f.is_file() and not f.name.startswith(source.name):
                shutil.copy2(f, scratch / f.name)
        decoder = decoder_config(source.parent)
        head_dim = int(decoder.get("head_size", 0))
        try:
            rotate(source, scratch / source.name, head_dim=head_dim,
                   value_columns=head_dim * int(decoder.get("num_key_value_heads", 0)))
        except UnsupportedGraph as exc:
            raise InputError(f"cannot rotate this model ({exc}): quantize it without rotate") from exc
        yield scratch / source.name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
