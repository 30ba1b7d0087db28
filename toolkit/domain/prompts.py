"""The texts the toolkit feeds models: benchmark prompts of a given length, and the reference text.

Both the benchmark and the checklist's time-per-token check cut prompts from the same
fixed text, so their figures are comparable.
"""

from __future__ import annotations

from importlib import resources

_FILLER = (
    "Small language models run on laptops and phones when they are converted and quantized. "
    "The weights shrink from thirty-two bits to eight or four, the model loads faster, and each "
    "generated token needs fewer bytes read from memory. Quality drops a little, so every "
    "precision is tested against the full-precision reference before it is deployed. "
)
# Asks for a long answer, so Foundry Local (which has no minimum length) rarely stops early.
_INSTRUCTION = "Continue this text for several paragraphs:\n\n"


REFERENCE_TEXT = "reference_text.txt"

#: The bundled cases file (JSONL) the checklist uses when a run names none.
BUNDLED_CASES = "smollm2_cases.jsonl"


def prompt_text(tokenizer, tokens: int) -> str:
    """The instruction and the repeated filler, cut to their first ``tokens`` tokens."""
    text = _INSTRUCTION + _FILLER
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    while len(ids) < tokens:
        text += _FILLER
        ids = tokenizer.encode(text, add_special_tokens=False).ids
    return tokenizer.decode(ids[:tokens])


def reference_text() -> str:
    """The bundled English text (about 430 SmolLM2 tokens) used for agreement checks."""
    return resources.files("slmops.toolkit.domain.data").joinpath(REFERENCE_TEXT).read_text()
