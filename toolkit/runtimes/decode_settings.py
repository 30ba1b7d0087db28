"""What a registered model folder's ``genai_config.json`` says about decoding, for :mod:`slmops.toolkit.runtimes.batching`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from slmops.toolkit.weights.context_limit import positions


@dataclass(frozen=True)
class Sampling:
    """How one sequence picks its tokens (defaults: the model's ``genai_config.json`` search section).

    Attributes:
        max_new: Most tokens to generate.
        temperature: 0 is greedy.
        top_k: Candidates kept before sampling (0: all).
        top_p: Nucleus share (1: all).
        seed: The sequence's random seed.
        repetition_penalty: Divides positive (multiplies negative) logits of every token seen (1: none).
        min_length: End-of-sequence held back until the sequence, prompt included, is this long.
    """

    max_new: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = 1.0
    min_length: int = 0


@dataclass(frozen=True)
class ModelSettings:
    """What ``genai_config.json`` says about decoding (see :func:`read_settings`)."""

    eos_ids: tuple[int, ...]
    context: int
    layers: int
    kv_heads: int
    head_size: int
    threads: int
    search: dict = field(default_factory=dict)
    #: The graph a ``decoder-pipeline`` runs on the prompt (the token graph is ``model.onnx``); "": one graph.
    prompt_graph: str = ""

    def sampling(self, max_new: int, temperature: float, top_p: float | None = None, seed: int = 0) -> Sampling:
        """A request's :class:`Sampling`: its own options (temperature 0: greedy), the model's search defaults for the rest."""
        search = self.search
        return Sampling(max_new=max_new, temperature=float(temperature), top_k=int(search.get("top_k", 0) or 0),
                        top_p=float(top_p or search.get("top_p", 1.0)), seed=seed,
                        repetition_penalty=float(search.get("repetition_penalty", 1.0)),
                        min_length=int(search.get("min_length", 0) or 0))


def read_settings(folder: Path) -> ModelSettings:
    """The decoding settings of the model folder ``folder``."""
    config = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    model, decoder = config["model"], config["model"]["decoder"]
    eos = model.get("eos_token_id", [])
    eos_ids = tuple(eos) if isinstance(eos, list) else (eos,)
    claimed, built = int(model.get("context_length") or 0), positions(folder, config).limit
    context = min(claimed, built) if claimed and built else claimed or built or 2048
    threads = int((decoder.get("session_options") or {}).get("intra_op_num_threads") or 0)
    prompt = [stage for entry in decoder.get("pipeline") or [] for stage in entry.values()
              if stage.get("run_on_prompt") and not stage.get("run_on_token_gen")]
    return ModelSettings(eos_ids=eos_ids, context=context, layers=int(decoder["num_hidden_layers"]),
                         kv_heads=int(decoder["num_key_value_heads"]), head_size=int(decoder["head_size"]),
                         threads=threads, search=config.get("search") or {},
                         prompt_graph=prompt[0]["filename"] if prompt else "")
