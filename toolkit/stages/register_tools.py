"""The tool-calling probe: whether a registered model calls a function when asked (a fine-tune with one of its own
cases)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core.errors import (
    InputError,
)
from slmops.toolkit.domain import tools
from slmops.toolkit.domain.results.conversion import read_manifest
from slmops.toolkit.domain.results.finetune import read_finetune
from slmops.toolkit.runtimes import foundry

#: The default probe (a tool_call case): a call any general model that can call tools makes. A
#: fine-tune taught its own functions is probed with one of its own cases (``tool_probe``).
PROBE_CASE = {"messages": [{"role": "user", "content": "What is the weather in Paris right now?"}],
              "tools": [{"type": "function", "function": {
                  "name": "get_weather", "description": "The current weather in a city.",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}}],
              "expect": {"call": {"name": "get_weather", "arguments": {}}}}


PROBE_MAX_TOKENS = 64


@dataclass(frozen=True)
class ToolCalling:
    """How tool calling was set up at registration.

    Attributes:
        markers: The tool-call boundaries published to the runtime (``[start, end]``; empty: none).
        supports: Whether ``supports_tool_calling`` was set: the probe got a valid call.
        detail: What the probe saw, in words.
    """

    markers: tuple[str, ...]
    supports: bool
    detail: str


def fine_tune_probe(onnx_dir: Path) -> dict | None:
    """A tool case from the dataset the model was fine-tuned on (its manifest's adapter, that adapter's
    ``finetune.json``), or None: a fine-tune taught its own functions is probed with one of them."""
    from slmops.toolkit.domain import datasets

    made = read_manifest(onnx_dir)
    adapter = made.adapter if made else None
    record = read_finetune(adapter.path) if adapter and adapter.path else None
    data = record.data if record else None
    if not data:
        return None
    try:
        return datasets.tool_probe(datasets.load_dataset(None if data == datasets.BUNDLED_DATASET else data))
    except InputError:
        return None


def probe_tool_calling(model_id: str, cache: str | Path | None, case: dict | None = None) -> tuple[bool, str]:
    """Ask the registered model a tool case (``tool_choice: auto``, greedy): True when it made the expected call.

    The runtime constrains a call once the model opens one; a model that never learned the
    markers answers in text (or runs out of tokens), and is not marked as able to call tools.

    Args:
        model_id: The registration to ask.
        cache: Foundry cache.
        case: ``{"messages", "tools", "expect": {"call": {"name", "arguments"}}}`` (default :data:`PROBE_CASE`).
    """
    from slmops.toolkit.core.errors import SlmopsError

    case = case or PROBE_CASE
    try:
        with foundry.LoadedModel(model_id, cache) as model:
            answer = model.generate(case["messages"], max_tokens=PROBE_MAX_TOKENS, tool_defs=case["tools"],
                                    tool_choice="auto")
    except SlmopsError as exc:
        return False, f"no call: {str(exc)[-200:]}"
    check = tools.check_call(list(answer.tool_calls), case["tools"], case["expect"]["call"])
    if check.passed:
        return True, f"called {answer.tool_calls[0]['function']['name']}({answer.tool_calls[0]['function']['arguments']})"
    return False, f"no valid call ({'; '.join(check.problems)}); answered {answer.text[:80]!r}"

