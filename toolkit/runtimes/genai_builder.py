"""Run ONNX Runtime GenAI's model builder with a lean FP32 export and transformers 5 compatibility.

Two patches of the pinned builder (onnxruntime-genai 0.14.1), installed by :func:`install`
in the child that runs it (:func:`main`) or in any process that calls its ``create_model``
(Olive's ``ModelBuilder`` pass): :func:`install_compat`, which makes its graphs compute what
transformers 5 computes for every family in ``tests/families.py`` (its docstring
lists each cause), and the lean initializer below.

The 0.14 builder stores each weight as a lazy tensor that casts the checkpoint's tensor
(bf16 in most fine-tunes) to the ONNX dtype when it is saved, and its closure keeps the
cast copy: by the end of saving every weight exists twice, once in the checkpoint's dtype
and once in FP32. Measured on a random Qwen2.5-0.5B-shaped bf16 checkpoint (988 MB):
``-p fp32`` peaked at 3.9 GB; with the cast copy dropped after it is written and made
contiguous in one step, the peak is the checkpoint itself plus one tensor in flight. Nothing else changes: the
same graph and bytes are written. Usage::

    python -m slmops.toolkit.core.workers slmops.toolkit.runtimes.genai_builder -i DIR -o OUT -p fp32 ...
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Mapping


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


_SLIDING, _FULL = "sliding_attention", "full_attention"


def _rope_by_layer_type(config) -> dict | None:
    """Transformers 5's RoPE settings per layer type (Gemma 3: ``{"full_attention": {...}, ...}``), else None."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, Mapping) and params and all(isinstance(v, Mapping) for v in params.values()):
        return {key: dict(value) for key, value in params.items()}
    return None


def _linear_factor(params: Mapping | None, layers: str) -> float:
    """The ``inv_freq`` divisor of one RoPE entry: 1 for ``default``, its factor for ``linear``; else refused."""
    kind = (params or {}).get("rope_type", (params or {}).get("type", "default"))
    if kind == "default":
        return 1.0
    if kind == "linear":
        return float(params["factor"])
    raise NotImplementedError(
        f"RoPE type {kind!r} on {layers} layers: the pinned model builder (onnxruntime-genai 0.14.1) "
        "builds only 'default' and 'linear' RoPE per layer type"
    )


def normalize_config(config) -> None:
    """Give the builder the transformers 4.x names it reads, from transformers 5's ``rope_parameters``.

    Transformers 5 keeps ``rope_theta`` (and, for Gemma 3, one entry per layer type) inside
    ``rope_parameters``; the 0.14 builder reads ``config.rope_theta`` (falling back to 10,000 for
    a per-layer-type dict, which has no top-level theta) and Gemma 3's ``rope_local_base_freq``.
    """
    per_type = _rope_by_layer_type(config)
    if per_type is not None:
        full = per_type.get(_FULL) or next(iter(per_type.values()))
        local = per_type.get(_SLIDING) or full
        config.rope_theta = float(full["rope_theta"])
        config.rope_local_base_freq = float(local["rope_theta"])
        return
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, Mapping) and "rope_theta" in params and not hasattr(config, "rope_theta"):
        config.rope_theta = float(params["rope_theta"])


def install_compat() -> None:
    """Patch the 0.14.1 builder's classes so its graphs compute what transformers 5 computes.

    Causes fixed (each measured on a tiny random model of the family, see ``tests/integration/test_families.py``):

    * RoPE theta: transformers 5 keeps it in ``rope_parameters``; for Gemma 3 (one entry per layer
      type) the builder found no theta at all (global layers built with 10,000, not 1,000,000) and
      crashed on ``rope_local_base_freq``. :func:`normalize_config` restores the 4.x names, and
      Gemma 3's two cos/sin caches are built from their own layer type's entry (theta and linear factor).
    * Which layers slide: the builder hard-codes Gemma 2's sliding layers as the odd ones
      (transformers: the even ones, ``layer_types``), Gemma 3's as ``(i + 1) % 6`` and every other
      family's as all layers; each layer now takes its window from ``config.layer_types``
      (Qwen2 with ``use_sliding_window``, SmolLM3, Gemma 2/3).
    * Layers without RoPE (SmolLM3's ``no_rope_layers``): the builder switched off only RoPE
      inside attention, so it fell back to a separate RotaryEmbedding op that needs a
      ``position_ids`` input the graph no longer has (``KeyError: 'position_ids'``); such layers now
      build with no rotary embedding at all.
    * Gemma's embedding scale: the builder rounds sqrt(hidden_size) to two decimals (25.3 for
      25.2982 at Gemma 3 270M); transformers multiplies by the exact value.
    """
    from builders import base, gemma, smollm

    _patch_layers(base, gemma, smollm)
    _patch_gemma_scale(gemma)
    _patch_gemma3_caches(base, gemma)


def _patch_layers(base, gemma, smollm) -> None:
    """Each layer's window and RoPE from the config (``layer_types``, ``no_rope_layers``), for every family."""
    model_init = base.Model.__init__
    make_attention = base.Model.make_attention

    def init(self, config, *args, **kwargs):
        normalize_config(config)
        types = getattr(config, "layer_types", None)
        self.slmops_layer_types = list(types) if types else None
        rope_layers = getattr(config, "no_rope_layers", None)
        self.slmops_rope_layers = list(rope_layers) if rope_layers is not None else None
        self.slmops_rope_by_type = _rope_by_layer_type(config)
        self.slmops_layer_id = None
        model_init(self, config, *args, **kwargs)

    def sliding(self, layer_id, default):
        types = getattr(self, "slmops_layer_types", None)
        if types is not None and layer_id < len(types):
            return types[layer_id] == _SLIDING
        return default(self, layer_id)

    def attention(self, layer_id, attention, root_input, **kwargs):
        saved = (self.window_size, self.attention_attrs["rope"], self.attention_attrs["use_rope_in_attn"])
        self.slmops_layer_id = layer_id
        types = self.slmops_layer_types
        if types is not None and layer_id < len(types):
            window = self.window_size if self.window_size is not None else -1
            # None (no window configured) leaves the attribute out, as the builder writes it; -1 is its default.
            self.window_size = window if types[layer_id] == _SLIDING and window > 0 else (
                None if self.window_size is None else -1)
        rope_layers = self.slmops_rope_layers
        if rope_layers is not None and layer_id < len(rope_layers) and not rope_layers[layer_id]:
            self.attention_attrs["rope"] = False
            self.attention_attrs["use_rope_in_attn"] = False
        try:
            make_attention(self, layer_id, attention, root_input, **kwargs)
        finally:
            self.window_size, self.attention_attrs["rope"], self.attention_attrs["use_rope_in_attn"] = saved
            self.slmops_layer_id = None

    base.Model.__init__ = init
    base.Model.make_attention = attention
    # The families' own make_attention only re-derived the window / RoPE per layer (wrongly for
    # Gemma 2, crashing for SmolLM3): the base one above now does it from the config.
    gemma.Gemma2Model.make_attention = attention
    smollm.SmolLM3Model.make_attention = attention

    gemma2_local, gemma3_local = gemma.Gemma2Model.is_local, gemma.Gemma3Model.is_local
    gemma.Gemma2Model.is_local = lambda self, layer_id: sliding(self, layer_id, gemma2_local)
    gemma.Gemma3Model.is_local = lambda self, layer_id: sliding(self, layer_id, gemma3_local)


def _patch_gemma_scale(gemma) -> None:
    """Gemma's embedding scale: the exact sqrt(hidden_size) in float32, as transformers multiplies by."""
    import numpy as np

    gemma_init = gemma.GemmaModel.__init__

    def gemma_model_init(self, config, *args, **kwargs):
        gemma_init(self, config, *args, **kwargs)
        self.embed_attrs["scale"] = float(np.float32(self.hidden_size**0.5))

    gemma.GemmaModel.__init__ = gemma_model_init


def _patch_gemma3_caches(base, gemma) -> None:
    """Gemma 3's global and local cos/sin caches, each from its own layer type's RoPE entry."""
    def gemma3_caches(self):
        per_type = self.slmops_rope_by_type or {}
        local_theta = self.rope_local_theta
        for which, layers, theta in (("global", _FULL, self.rope_attrs["theta"]), ("local", _SLIDING, local_theta)):
            params = per_type.get(layers)
            self.rope_attrs["create_caches"] = True
            self.rope_attrs["theta"] = float(params["rope_theta"]) if params else theta
            self.rope_attrs["rescale_factors"] = _linear_factor(params, layers) if per_type else self.rope_attrs["rescale_factors"]
            base.Model.make_rotary_embedding_caches(self, cos_cache_name=f"cos_cache_{which}",
                                                    sin_cache_name=f"sin_cache_{which}")
        self.cos_cache_global_name, self.sin_cache_global_name = "cos_cache_global", "sin_cache_global"
        self.cos_cache_local_name, self.sin_cache_local_name = "cos_cache_local", "sin_cache_local"

    def gemma3_cache_names(self, **kwargs):
        layer_id = self.slmops_layer_id
        local = self.is_local(layer_id) if layer_id is not None else self.window_size != -1
        cos = kwargs.get("cos_cache_name", self.cos_cache_local_name if local else self.cos_cache_global_name)
        sin = kwargs.get("sin_cache_name", self.sin_cache_local_name if local else self.sin_cache_global_name)
        return base.Model.make_rotary_embedding_caches(self, cos_cache_name=cos, sin_cache_name=sin)

    gemma.Gemma3Model.make_rotary_embedding_multi_cache = gemma3_caches
    gemma.Gemma3Model.make_rotary_embedding_caches = gemma3_cache_names


def install() -> None:
    """Patch the builder in this process: the lean initializer and :func:`install_compat`.

    For any process that runs the builder's ``create_model`` in-process (Olive's ``ModelBuilder``
    pass, through :mod:`slmops.toolkit.runtimes.olive_cli`) as well as for :func:`main`. Idempotent.
    """
    import onnxruntime_genai.models  # noqa: F401  (puts the builder's ``builders`` package on sys.path)
    from builders import base  # the name builder.py itself imports its classes under

    if getattr(base.Model, "_slmops_installed", False):
        return
    base.Model.make_initializer = _lean_make_initializer
    install_compat()
    base.Model._slmops_installed = True


def main() -> None:
    """Install the lean initializer and the transformers 5 compatibility, then hand over to the builder's CLI."""
    install()
    sys.argv = ["onnxruntime_genai.models.builder", *sys.argv[1:]]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
