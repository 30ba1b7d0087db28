"""A model's end-of-sequence ids are resolved before conversion, as transformers resolves them.

A config made in code with transformers 5 (``Qwen2Config(...)``) has no ``eos_token_id``; the model
builder wrote ``null`` into ``genai_config.json``, which ONNX Runtime GenAI refuses, and the
conversion failed after the whole build, blamed on the parity check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _drop_eos(folder: Path, *, tokenizer: bool = False) -> None:
    """Remove ``eos_token_id`` from the folder's configs (and the tokenizer's ``eos_token`` when asked)."""
    for name in ("config.json", "generation_config.json") + (("tokenizer_config.json",) if tokenizer else ()):
        file = folder / name
        if file.is_file():
            data = json.loads(file.read_text())
            data.pop("eos_token_id", None)
            data.pop("eos_token", None)
            file.write_text(json.dumps(data))


def test_a_config_without_eos_converts_with_the_tokenizers_eos(tiny_model: Path, tmp_path: Path) -> None:
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec

    source = tmp_path / "no-eos"
    subprocess.run(["cp", "-r", str(tiny_model), str(source)], check=True)
    _drop_eos(source)
    expected = json.loads((tiny_model / "config.json").read_text())["eos_token_id"]
    result = convert(ConvertSpec(source, tmp_path / "int4", Precision.INT4), progress=False)
    genai = json.loads((result.output_dir / "genai_config.json").read_text())["model"]
    assert genai["eos_token_id"] == expected
    assert result.manifest.parity.verdict == "pass"
    assert (result.manifest.eos_token_id, result.manifest.eos_token_id_from) == ((expected,),
                                                                                       "tokenizer_config.json")


def test_a_model_with_no_eos_anywhere_is_refused_before_any_work(tiny_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "none"
    subprocess.run(["cp", "-r", str(tiny_model), str(source)], check=True)
    _drop_eos(source, tokenizer=True)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "slmops.toolkit.cli", "convert", str(source), "--precision", "int4",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no end-of-sequence token" in lines[0] and "Set eos_token_id" in lines[0]
    assert not out.exists() and not any(p.name.startswith(".out.") for p in tmp_path.iterdir())
