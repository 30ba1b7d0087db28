"""Bad input a new user produces by accident: a registered config that claims more positions than the model was
built for (the fast kinds are in ``tests/unit/test_bad_input.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import PromptTooLongError
from tests.unit.test_bad_input import run


def test_a_prompt_past_the_positions_built_is_refused_even_if_the_registered_config_claims_more(
        tiny_int4: Path, tmp_path: Path) -> None:
    """A model registered before this check (its genai_config.json edited since): the runtime's context is the
    positions built, so a prompt past them is a PromptTooLongError (the endpoint's 400, the CLI's one line)."""
    from slmops.toolkit.runtimes.foundry import LoadedModel
    from slmops.toolkit.stages import register

    registered = register.register(tiny_int4, "ctx-claims-more", force=True)
    config_file = Path(registered.path) / "genai_config.json"
    config = json.loads(config_file.read_text())
    config["model"]["context_length"] = 131072
    config_file.write_text(json.dumps(config))
    with LoadedModel("ctx-claims-more") as model:
        assert model.context_length == 512
        with pytest.raises(PromptTooLongError, match="context is 512 tokens"):
            model.generate([{"role": "user", "content": "Paris is the capital of France. " * 200}], max_tokens=4)
    code, out, _ = run(["doctor", str(registered.path), "--no-load"])
    assert code == 1 and "FAIL  context length" in out


# --- 4. cases files checked whole -----------------------------------------------------------------------------------


def case(case_id: str, content: str = "What is 2+2?", **extra: object) -> str:
    return json.dumps({"id": case_id, "messages": [{"role": "user", "content": content}],
                       "expect": {"contains_any": ["4"]}, **extra})


