"""Every child process's typed payload and result survives the trip through JSON unchanged."""

from __future__ import annotations

import json

import pytest

from slmops.toolkit.domain import adapters, parity
from slmops.toolkit.domain.datasets import Example
from slmops.toolkit.domain.quantize import QuantizeJob, QuantPlan
from slmops.toolkit.runtimes import foundry, genai, reference
from slmops.toolkit.stages import finetune

_TOOL = {"type": "function", "function": {"name": "city_weather", "parameters": {"type": "object", "properties": {}}}}
_FIGURES = parity.Figures(positions=64, top1_agreement=0.9375, max_abs_diff=0.5, mean_abs_diff=0.01,
                          logit_range=30.0, kl_divergence=0.0123)

RECORDS = [
    genai.CompareJob("/m/fp32", "Some text.", {"int4": "/m/int4", "int8": "/m/int8"}),
    genai.DecodeJob({"int4": "/m/int4"}),
    genai.ThreadJob("/m/int4", (1, 2, 3), (0, 1, 2, 4)),
    genai.ThreadSpeed(2, 118.2, 35.5),
    genai.BandwidthJob((0, 2, 4)),
    finetune.TrainJob("/m/base", "/m/out", (
        Example("a", "Q?", "A.", "Q again?", ("a",)),
        Example("b", "Weather?", "", "Weather now?", ("Lunmere",), "", (_TOOL,),
                {"name": "city_weather", "arguments": {"city": "Lunmere"}}, "Sunny."),
    ), rank=8, steps=40, batch=4, learning_rate=2e-4, seed=0),
    reference.ParityJob("/m/hf", "Some text.", "float32", "abc123", {"fp32": "/m/fp32", "int4": "/m/int4"}),
    reference.ParityResult("transformers 4.57.1 (float32)", (("text", 64), ("past the window", 600)),
                           {"fp32": (_FIGURES, _FIGURES), "int4": (_FIGURES,)}, 49152),
    adapters.MergeJob("/m/lora", "/m/base", "/m/merged", 49153, ("chat_template.jinja", "tokenizer.json")),
    adapters.MergeResult(3.1e-6, adapters.TokenizerOrigin("adapter", "adapter", "base", ("tokenizer.json",), (2,),
                                                          49153)),
    foundry.WebServiceJob("smollm2-int4", "/cache"),
    foundry.WebServiceSeen(("smollm2-int4", "other"), 404),
    QuantizeJob("/m/fp32/model.onnx", "/m/int4/model.onnx", QuantPlan(bits=4, algorithm="gptq", mix="v")),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_a_child_payload_survives_json(record) -> None:
    sent = json.loads(json.dumps(record.to_json()))
    assert type(record).from_json(sent) == record
    assert json.loads(json.dumps(type(record).from_json(sent).to_json())) == sent  # the same JSON both ways


def test_payload_json_keeps_the_shapes_children_and_files_read() -> None:
    train = finetune.TrainJob("/b", "/o", (Example("a", "Q?", "A.", "Q2?", ("a",)),), 8, 40, 4, 2e-4, 0).to_json()
    assert set(train) == {"base", "out", "examples", "rank", "steps", "batch", "learning_rate", "seed"}
    assert train["examples"][0]["expect"] == ("a",) and json.loads(json.dumps(train))["examples"][0]["expect"] == ["a"]
    origin = adapters.TokenizerOrigin("base", "base", "base", (), (), 10).to_json()
    assert list(origin) == ["tokenizer_from", "chat_template_from", "generation_config_from", "files_from_adapter",
                            "eos_token_ids_added", "vocab_size"]  # merge.json's ``tokenizer`` entry
    assert list(genai.ThreadSpeed(0, 1.0, 2.0).to_json()) == ["threads", "decode_tps", "ttft_ms"]  # registration's probe
    assert QuantizeJob("s", "t", QuantPlan()).to_json()["plan"] == json.loads(json.dumps(QuantPlan().__dict__))
