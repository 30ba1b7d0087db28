"""Fine-tunes served as adapters over one loaded base (``slmops serve BASE --adapter NAME=FILE ...``).

Each adapter is a model of its own name (``GET /v1/models`` lists it with its ``parent``, the base, as vLLM
lists its LoRA modules); a client picks it with ``model``. The base is loaded once (Foundry Local for its
chat template and request checks, and the batch engine's ONNX Runtime session); each adapter's matrices are
read once (:mod:`slmops.toolkit.runtimes.adapter_weights`) and bound as the base graph's LoRA inputs on the
runs of its requests by the base's own batch engine (:class:`AdapterHost`): one session, one set of cache rows
and one thread for the base and every adapter. A batch holds one adapter's requests (one set of inputs per
run): requests of one adapter are decoded together, another adapter's wait until the running batch has drained
(in arrival order), and switching adapters between requests reloads nothing. Foundry Local, which runs constrained
decoding (``response_format``) and tool calls for the base, cannot apply an adapter, so an adapter's such requests
are constrained in the batch engine itself, with the same grammars (:mod:`slmops.toolkit.runtimes.constrained`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.endpoint.hosts import ModelHost, ModelState
from slmops.toolkit.endpoint.protocol import ApiError
from slmops.toolkit.runtimes.adapter_weights import AdapterWeights, load_adapter, lora_inputs
from slmops.toolkit.runtimes.foundry_session import find_model


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter to serve: the model name clients ask for and its matrices, loaded (:func:`check_adapters`)."""

    name: str
    weights: AdapterWeights


def parse_option(value: str) -> tuple[str, Path]:
    """``NAME=FILE`` as the name and the file.

    Raises:
        InputError: no ``=``, an empty side, or a name with spaces.
    """
    name, sep, file = value.partition("=")
    name, file = name.strip(), file.strip()
    if not sep or not name or not file or any(c.isspace() for c in name):
        raise InputError(f"--adapter {value!r} is not NAME=FILE: give the name clients ask for (no spaces) and the "
                         ".onnx_adapter file, e.g. --adapter support=outputs/kept/adapters/support.onnx_adapter.")
    return name, Path(file).expanduser()


def check_adapters(names: Sequence[str], values: Sequence[str], cache: str | Path | None,
                   batch_size: int) -> list[ServedAdapter]:
    """Refuse adapters that cannot be served over ``names`` (before anything is loaded); read the others once.

    Args:
        names: The served models (with adapters: one, their base; already found registered).
        values: ``--adapter`` values, ``NAME=FILE`` each.
        cache: The Foundry cache.
        batch_size: The server's ``--batch-size`` (adapters run on the batch engine).

    Returns:
        The adapters, in the order given.

    Raises:
        InputError: a malformed value, several bases, no batching, a name served twice, a file that is not an
            adapter of the base, or a base built without LoRA inputs.
    """
    if not values:
        return []
    if len(names) != 1:
        raise InputError(f"--adapter serves fine-tunes over one base, and {len(names)} models are named "
                         f"({', '.join(names)}): serve the base of the adapters alone, the others in another "
                         "`slmops serve`.")
    if batch_size < 1:
        raise InputError("--adapter runs on the batch engine: leave --batch-size at its default or give 1 or more "
                         "(0 answers on Foundry Local, which cannot apply an adapter).")
    base = names[0]
    parsed = [parse_option(value) for value in values]
    seen = {base}
    for name, _file in parsed:
        if name in seen:
            raise InputError(f"--adapter {name}=...: the name {name!r} is served twice (the base or another "
                             "adapter has it): give each adapter a name of its own.")
        seen.add(name)
    inputs = lora_inputs(base_graph(base, cache))
    return [ServedAdapter(name, load_adapter(file, inputs, base)) for name, file in parsed]


def base_graph(base: str, cache: str | Path | None) -> Path:
    """The ONNX graph the registered model ``base`` decodes with."""
    import json

    folder = Path(find_model(base, cache).get_path())
    config = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    return folder / config["model"]["decoder"].get("filename", "model.onnx")


class AdapterHost(ModelHost):
    """One adapter served under its own name over the base's loaded model and batch engine (see the module docstring).

    Args:
        adapter: The adapter and its name.
        base: The base's host (loaded before this one: :func:`~slmops.toolkit.endpoint.hosts.load_all` goes in
            order). Its batch size histogram counts the adapters' decode steps too.
    """

    def __init__(self, adapter: ServedAdapter, base: ModelHost) -> None:
        super().__init__(adapter.name, base.cache, base.batch_size, base.policy)
        self.base, self.weights = base, adapter.weights

    def load(self) -> None:
        """Give the base's batch engine the adapter's inputs (the base is loaded by then)."""
        if self.base.state is not ModelState.READY or self.base.batched is None:
            self.error = f"its base {self.base.name!r} did not load: {self.base.error or 'no batch engine'}"
            self.state = ModelState.FAILED
            return
        self.model, self.batched = self.base.model, self.base.batched
        self.batched.engine.adapters[self.name] = self.weights.values
        self.state = ModelState.READY

    def close(self) -> None:
        """Let queued requests finish (the base's host stops the engine and unloads the model)."""
        self.executor.shutdown(wait=True)

    def slot_for(self, body: dict) -> asyncio.Semaphore:
        """A batch slot; ``max_tokens`` cut to what the cache row leaves.

        Raises:
            ApiError: 400 for a prompt (tool protocol included) longer than the cache row.
        """
        prompt = self.model.prompt_ids(body["messages"], body.get("tools"), body.get("tool_choice"))
        room = self.batched.engine.capacity - len(prompt)
        if room < 1:
            raise ApiError(400, f"The prompt does not fit {self.name!r}'s cache rows "
                                f"({self.batched.engine.capacity} positions): send a shorter one.",
                           param="messages", code="context_length_exceeded")
        body["max_tokens"] = min(int(body.get("max_tokens") or room), room)
        return self.batch_slots

    def stream(self, body: dict, batched: bool):
        """The adapter's answer in its batch (chunks name the adapter)."""
        return self.batched.stream({**body, "model": self.name}, adapter=self.name)

    def describe(self) -> dict:
        """The adapter's ``/v1/models`` entry: the base is its ``parent``."""
        return {**super().describe(), "parent": self.base.name}


def adapter_hosts(adapters: Sequence[ServedAdapter], base: ModelHost) -> dict[str, AdapterHost]:
    """The adapters' hosts by name."""
    return {a.name: AdapterHost(a, base) for a in adapters}
