"""Layer 3, weights: the code that reads, transforms and writes model weights with the ML frameworks.

Quantization (ONNX Runtime's quantizer, GPTQ), the rotation, the adapter merge (peft), the
source checkpoints' readers (torch, transformers) and the installers of the bundled and
packaged models. It sits between :mod:`slmops.toolkit.runtimes` and :mod:`slmops.toolkit.domain`:
the domain describes (plans, records, checks), this layer does. One concern per module, after
Olive's one pass per file.

Imports only :mod:`slmops.toolkit.domain` and :mod:`slmops.toolkit.core`.
"""
