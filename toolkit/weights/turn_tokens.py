"""The special token an assistant turn ends with, looked up in the model's tokenizer (``tokenizers``)."""

from __future__ import annotations

from pathlib import Path

from slmops.toolkit.domain.templates import PromptTemplate


def end_of_turn_tokens(template: PromptTemplate | str, tokenizer_file: Path) -> list[tuple[int, str]]:
    """The special token an assistant turn ends with, as ``[(id, token)]``: what must stop generation.

    Args:
        template: The four strings, or the end marker itself (what follows an assistant's content,
            e.g. ``<|im_end|>\\n``, ``<end_of_turn>\\n``, ``<|eot_id|>``).
        tokenizer_file: The model's ``tokenizer.json``.

    Returns:
        The longest added token the marker starts with; ``[]`` for a plain-text marker (no token
        id can stop on it).
    """
    from tokenizers import Tokenizer

    end = template.turn_end if isinstance(template, PromptTemplate) else template
    if not end:
        return []
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    added = {token.content: index for index, token in tokenizer.get_added_tokens_decoder().items()}
    for length in range(len(end), 0, -1):
        if end[:length] in added:
            return [(added[end[:length]], end[:length])]
    return []
