"""Layer 3, runtimes: the engines a model runs in: Foundry Local (in-process), ONNX Runtime
GenAI directly (in a child process), and Olive's launcher.

Imports only :mod:`slmops.toolkit.domain` and :mod:`slmops.toolkit.core`.
"""
