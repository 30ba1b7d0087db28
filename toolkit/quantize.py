"""INT8 weight quantization of an FP32 ONNX model (run as a child process).

The 0.14 model builder has no int8 precision, so INT8 is built as FP32 by the builder,
then ONNX Runtime's dynamic quantization turns every MatMul with a constant weight into
``MatMulInteger`` with int8 weights (activations are quantized on the fly).

Why not 8-bit ``MatMulNBits``: ONNX Runtime GenAI 0.14 runs it correctly, but the
runtime inside foundry-local-sdk 2.2.1 (genai-core 0.18) produces garbage with it on
CPU (checked on the bundled model), while ``MatMulInteger`` agrees in both. Usage::

    python -m toolkit.quantize IN.onnx OUT.onnx [--per-channel]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def quantize_int8(source: Path, target: Path, *, per_channel: bool = False) -> None:
    """Quantize ``source``'s MatMul weights to int8 and save to ``target`` (external data).

    Example:
        >>> quantize_int8(Path("fp32/model.onnx"), Path("int8/model.onnx"))
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ORT warns about "pre-processing" meant for CNNs; it does not apply to LLM graphs.
    logging.getLogger().setLevel(logging.ERROR)
    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
        per_channel=per_channel, use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry for the child process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--per-channel", action="store_true")
    args = parser.parse_args(argv)
    quantize_int8(args.source, args.target, per_channel=args.per_channel)


if __name__ == "__main__":
    main()
