"""``slmops doctor``: check a model folder for what Foundry Local needs, with the fix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolkit import templates


@dataclass(frozen=True)
class Check:
    """One doctor check: name, verdict and what to do."""

    name: str
    ok: bool
    detail: str


def diagnose(folder: Path) -> list[Check]:
    """Run every check on ``folder`` (an ONNX model, or a registered ``models/custom/NAME``)."""
    checks = []
    config_file = folder / "genai_config.json"
    if not config_file.is_file():
        return [Check("genai_config.json", False, f"missing in {folder}; convert with `slmops convert`")]
    try:
        config = json.loads(config_file.read_text())
        checks.append(Check("genai_config.json", True, "present and valid JSON"))
    except json.JSONDecodeError as exc:
        return [Check("genai_config.json", False, f"not valid JSON ({exc}); re-run the conversion")]
    filename = config.get("model", {}).get("decoder", {}).get("filename", "model.onnx")
    model_file = folder / filename
    data_ok = model_file.is_file() and (not (folder / f"{filename}.data").exists()
                                        or (folder / f"{filename}.data").stat().st_size > 0)
    checks.append(Check("model files", data_ok, f"{filename} present" if data_ok
                        else f"{filename} (or its .data) missing or empty; re-run the conversion"))
    jinja = templates.read_chat_template(folder)
    checks.append(Check("chat template", bool(jinja.strip()), "non-empty" if jinja.strip()
                        else "empty: ChatSession fails with 'Empty chat template'; register with --template"))
    info_file = folder / "inference_model.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        try:
            templates.PromptTemplate(**info["PromptTemplate"]).validate()
            checks.append(Check("PromptTemplate", True, "every field has one {Content}"))
        except Exception as exc:  # malformed JSON shape or placeholders
            checks.append(Check("PromptTemplate", False, f"{exc}; re-register with `slmops register`"))
        context = int(config["model"].get("context_length", 0))
        max_length = int(info.get("ModelConfig", {}).get("max_length", 0))
        ok = 0 < max_length <= (context or max_length)
        checks.append(Check("max_length", ok, f"{max_length} within context {context}" if ok
                            else f"{max_length} exceeds the model's context {context}; lower --max-length"))
    else:
        checks.append(Check("inference_model.json", False, "missing: the foundry CLI will not list this model; "
                            "register it with `slmops register`"))
    return checks
