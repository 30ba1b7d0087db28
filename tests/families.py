"""The model families people fine-tune, as tiny ``config.json`` fields for parity checks.

Each entry of :data:`FAMILIES` keeps the fields that make its family what it is, as the
public checkpoint's ``config.json`` spells them (RoPE settings and their scaling, sliding
windows and which layers have them, layers without RoPE, soft-capping, Granite's multipliers,
partial rotary, Q/K norms, attention biases), with small sizes: 2 to 6 layers so that every
layer type appears, head_dim a multiple of 16 (ONNX Runtime's attention kernels want it), a
vocabulary of 512 (the tiny tokenizer has about 400 tokens) and, where the family has one,
a sliding window of 16 so that a 64-token sequence crosses it.

:func:`make_family_model` writes such a model with :func:`tests.models.make_shaped_model`
and then scales its weights up: at the usual std 0.02 attention is nearly uniform and logits
span a fraction of a unit, so a wrong window, theta or scale would hardly move them.

Example:
    >>> sorted(FAMILIES)[:3]
    ['gemma2', 'gemma3', 'granite']
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.models import make_shaped_model

_TINY = {"vocab_size": 500, "max_position_embeddings": 4096}

#: Family name -> ``config.json`` fields (real fields, tiny sizes). Comments name the source checkpoint.
FAMILIES: dict[str, dict] = {
    # meta-llama/Llama-3.2-1B-Instruct: llama3 RoPE scaling, tied embeddings
    "llama3": _TINY | {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": False, "mlp_bias": False,
        "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True,
    },
    # Qwen/Qwen2.5-0.5B-Instruct: Q/K/V biases, theta 1e6, sliding window configured but off
    "qwen2.5": _TINY | {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 32768, "sliding_window": 32768, "use_sliding_window": False,
        "max_window_layers": 21, "tie_word_embeddings": True,
    },
    # Qwen/Qwen3-0.6B: Q/K RMSNorm, head_dim 128 apart from hidden/heads
    "qwen3": _TINY | {
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "attention_bias": False,
        "max_position_embeddings": 40960, "sliding_window": None, "use_sliding_window": False,
        "tie_word_embeddings": True,
    },
    # microsoft/Phi-3-mini-4k-instruct: fused qkv/gate_up, sliding window on every layer
    "phi3": _TINY | {
        "model_type": "phi3", "architectures": ["Phi3ForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
        "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
        "sliding_window": 16, "tie_word_embeddings": False,
    },
    # microsoft/Phi-3.5-mini-instruct: longrope (short/long factors, one per rotary pair)
    "phi3.5": _TINY | {
        "model_type": "phi3", "architectures": ["Phi3ForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        "rope_scaling": {"type": "longrope",
                         "short_factor": [1.0 + 0.05 * i for i in range(16)],
                         "long_factor": [1.0 + 2.0 * i for i in range(16)]},
        "sliding_window": 262144, "tie_word_embeddings": False,
    },
    # microsoft/Phi-4-mini-instruct: partial rotary 0.75 (rotary 48 of head_dim 64: its cos cache
    # width must be a multiple of 8), longrope, GQA, tied embeddings
    "phi4-mini": _TINY | {
        "model_type": "phi3", "architectures": ["Phi3ForCausalLM"],
        "hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "partial_rotary_factor": 0.75,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        "rope_scaling": {"type": "longrope",
                         "short_factor": [1.0 + 0.05 * i for i in range(24)],
                         "long_factor": [1.0 + 2.0 * i for i in range(24)]},
        "sliding_window": 262144, "tie_word_embeddings": True,
    },
    # mistralai/Mistral-7B-Instruct-v0.1: sliding window on every layer
    "mistral": _TINY | {
        "model_type": "mistral", "architectures": ["MistralForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 32768, "sliding_window": 16, "tie_word_embeddings": False,
    },
    # HuggingFaceTB/SmolLM2-135M-Instruct: a Llama with theta 1e5 and tied embeddings
    "smollm2": _TINY | {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "rope_scaling": None,
        "max_position_embeddings": 8192, "tie_word_embeddings": True,
    },
    # HuggingFaceTB/SmolLM3-3B: every 4th layer without RoPE (no_rope_layers)
    "smollm3": _TINY | {
        "model_type": "smollm3", "architectures": ["SmolLM3ForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 5000000.0, "attention_bias": False,
        "max_position_embeddings": 65536, "no_rope_layer_interval": 4, "no_rope_layers": [1, 1, 1, 0],
        "use_sliding_window": False, "sliding_window": None, "tie_word_embeddings": True,
    },
    # ibm-granite/granite-3.3-2b-instruct: embedding/attention/residual multipliers, logits scaling
    "granite": _TINY | {
        "model_type": "granite", "architectures": ["GraniteForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000000.0,
        "max_position_embeddings": 131072, "attention_multiplier": 0.015625,
        "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "logits_scaling": 8.0,
        "attention_bias": False, "tie_word_embeddings": True,
    },
    # google/gemma-2-2b-it: sliding window on even layers, soft-capping, query_pre_attn_scalar
    "gemma2": _TINY | {
        "model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 8192, "query_pre_attn_scalar": 256, "sliding_window": 16,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "tie_word_embeddings": True,
    },
    # google/gemma-3-270m: 5 sliding : 1 full, RoPE theta per layer type, Q/K norms, one KV head
    "gemma3": _TINY | {
        "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 6,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768, "query_pre_attn_scalar": 256, "sliding_window": 16,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        "attn_logit_softcapping": None, "final_logit_softcapping": None,
        "use_bidirectional_attention": False, "tie_word_embeddings": True,
    },
}

#: Settings of these families that public checkpoints rarely use but configs allow, same check.
VARIANTS: dict[str, dict] = {
    # Qwen2 with use_sliding_window: the window on layers from max_window_layers on, not all
    "qwen2.5-sliding": FAMILIES["qwen2.5"] | {"use_sliding_window": True, "sliding_window": 16,
                                              "max_window_layers": 1},
    # longrope past original_max_position_embeddings (the long factors) within 64 tokens
    "phi3.5-long": FAMILIES["phi3.5"] | {"original_max_position_embeddings": 32},
    # Gemma 3 4B and larger: linear RoPE scaling (factor 8) on the full-attention layers only
    "gemma3-linear": FAMILIES["gemma3"] | {"rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
}

#: How much the random weights are scaled up (std 0.02 -> 0.3): attention becomes selective.
WEIGHT_SCALE = 15.0


def make_family_model(target: str | os.PathLike[str], family: str | dict, *, seed: int = 0,
                      scale: float = WEIGHT_SCALE) -> Path:
    """Write the tiny random FP32 model of ``family`` into ``target``.

    ``family`` is a name in :data:`FAMILIES` or :data:`VARIANTS`, or ``config.json`` fields.

    Linear and embedding weights are multiplied by ``scale``; norm weights get a little noise
    around their stored value, so an offset or a missing norm shows in the logits.
    """
    import torch
    from safetensors.torch import load_file, save_file

    config = family if isinstance(family, dict) else FAMILIES.get(family) or VARIANTS[family]
    folder = make_shaped_model(target, config, dtype="float32", seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    for file in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(file))
        for name, tensor in tensors.items():
            if name.endswith("norm.weight"):
                tensors[name] = tensor * 0.5 + 0.1 * torch.randn(tensor.shape, generator=generator)
            else:
                tensors[name] = tensor * scale
        save_file(tensors, str(file), metadata={"format": "pt"})
    return folder
