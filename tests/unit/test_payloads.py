"""Every child process's typed payload and result survives the trip through JSON unchanged."""

from __future__ import annotations

import json

import pytest

from slmops.toolkit.core import codec
from slmops.toolkit.core.codec import RecordError
from slmops.toolkit.domain import adapters, parity
from slmops.toolkit.domain.datasets import Example
from slmops.toolkit.domain.quant_plan import QuantizeJob, QuantPlan
from slmops.toolkit.domain.results.bench import BenchRow, TimedRun, run_metrics
from slmops.toolkit.domain.results.merge import TokenizerOrigin
from slmops.toolkit.domain.results.registration import ThreadSpeed
from slmops.toolkit.runtimes import reference_jobs
from slmops.toolkit.runtimes.foundry_web import WebServiceJob, WebServiceSeen
from slmops.toolkit.runtimes.genai_jobs import BandwidthJob, CompareJob, DecodeJob, ThreadJob
from slmops.toolkit.stages import finetune
from slmops.toolkit.stages.bench import engines
from slmops.toolkit.stages.checklist import edge

_TOOL = {"type": "function", "function": {"name": "city_weather", "parameters": {"type": "object", "properties": {}}}}
_FIGURES = parity.Figures(positions=64, top1_agreement=0.9375, max_abs_diff=0.5, mean_abs_diff=0.01,
                          logit_range=30.0, kl_divergence=0.0123)
_FACTS = engines.ModelFacts("smollm2-int4", "int4", 210.4, 182.1)
_ROW = BenchRow(model="smollm2-int4", precision="int4", engine="foundry-local", target_prompt_tokens=16,
                prompt_tokens=17, target_gen_tokens=8, threads=0, peak_rss_mib=812.0, size_mb=210.4,
                weights_read_mb=182.1, load_s=1.5, load_rss_mib=300.2, template_ms=0.25,
                **run_metrics([TimedRun(0.1, 0.5, 8, 17, 0.001, 0.02, 98.0, 12.5)], 17))
_MESSAGES = (({"role": "user", "content": "Some text."},), ({"role": "user", "content": "Some longer text."},))

RECORDS = [
    CompareJob("/m/fp32", "Some text.", {"int4": "/m/int4", "int8": "/m/int8"}),
    DecodeJob({"int4": "/m/int4"}),
    ThreadJob("/m/int4", (1, 2, 3), (0, 1, 2, 4)),
    ThreadSpeed(2, 118.2, 35.5),
    BandwidthJob((0, 2, 4)),
    finetune.TrainJob("/m/base", "/m/out", (
        Example("a", "Q?", "A.", "Q again?", ("a",)),
        Example("b", "Weather?", "", "Weather now?", ("Lunmere",), "", (_TOOL,),
                {"name": "city_weather", "arguments": {"city": "Lunmere"}}, "Sunny."),
    ), rank=8, steps=40, batch=4, learning_rate=2e-4, seed=0),
    reference_jobs.ParityJob("/m/hf", "Some text.", "float32", "abc123", {"fp32": "/m/fp32", "int4": "/m/int4"}),
    reference_jobs.ParityResult("transformers 4.57.1 (float32)", (("text", 64), ("past the window", 600)),
                                {"fp32": (_FIGURES, _FIGURES), "int4": (_FIGURES,)}, 49152,
                                {"reference (transformers)": 812.5, "fp32 (onnxruntime)": 640.0}),
    reference_jobs.CandidateJob("fp32", "/m/fp32", "", "/cache/parity/abc.npz", lean=True),
    reference_jobs.ReferenceTask(reference_jobs.ParityJob("/m/hf", "Some text.", "float32", "", {}), "/c/ref.npz"),
    reference_jobs.ReferenceMeta("transformers 4.57.1 (float32)", ("the reference text", "past the sliding window")),
    reference_jobs.ReferenceWritten(4 * 49152 * 64),
    reference_jobs.CandidateFigures((_FIGURES, _FIGURES), "onnxruntime"),
    adapters.MergeJob("/m/lora", "/m/base", "/m/merged", 49153, ("chat_template.jinja", "tokenizer.json")),
    adapters.MergeResult(3.1e-6, TokenizerOrigin("adapter", "adapter", "base", ("tokenizer.json",), (2,),
                                                          49153)),
    WebServiceJob("smollm2-int4", "/cache"),
    WebServiceSeen(("smollm2-int4", "other"), 404),
    QuantizeJob("/m/fp32/model.onnx", "/m/int4/model.onnx", QuantPlan(bits=4, algorithm="gptq", mix="v")),
    _FACTS,
    engines.MeasureJob("smollm2-int4", (16, 64), (8, 32), repeats=3, warmup=1, cache="/cache"),
    engines.MeasuredModel(_FACTS, "/cache/models/custom/smollm2-int4", 2, ((1, 2, 3), (4, 5)), _MESSAGES,
                          (_ROW, _ROW)),
    engines.EndpointJob(_FACTS, 2, (16, 64), _MESSAGES, "http://127.0.0.1:5273/v1", "key", (8,), repeats=3,
                        warmup=1),
    edge.EdgeJob("smollm2-int4", "", skip=2, seed=0),
    edge.EdgeOutcome("empty-prompt", "refused: InvalidPromptError: The prompt is empty.", True, 0.012),
    edge.EdgeOutcome("long-history", "the process died (exit -11)", False, None),
]

#: A job or result of each task that was sent as a loose dict, and one of its number fields (a word there is refused).
STRICT = [
    (engines.MeasureJob("smollm2-int4", (16,), (8,), 3, 1, "/cache"), "repeats"),
    (engines.MeasuredModel(_FACTS, "/m", 0, ((1,),), _MESSAGES[:1], (_ROW,)), "threads"),
    (engines.EndpointJob(_FACTS, 0, (16,), _MESSAGES[:1], "http://127.0.0.1:5273/v1", "", (8,), 3, 1), "warmup"),
    (edge.EdgeJob("smollm2-int4", "", 0, 0), "skip"),
    (edge.EdgeOutcome("unicode", "answered (8 tokens, length)", True, 0.4), "seconds"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_a_child_payload_survives_json(record) -> None:
    sent = json.loads(json.dumps(codec.dump(record)))
    assert codec.load(type(record), sent) == record
    assert json.loads(json.dumps(codec.dump(codec.load(type(record), sent)))) == sent  # the same JSON both ways


def test_payload_json_keeps_the_shapes_children_and_files_read() -> None:
    train = codec.dump(finetune.TrainJob("/b", "/o", (Example("a", "Q?", "A.", "Q2?", ("a",)),), 8, 40, 4, 2e-4, 0))
    assert set(train) == {"base", "out", "examples", "rank", "steps", "batch", "learning_rate", "seed"}
    assert train["examples"][0]["expect"] == ["a"]
    origin = codec.dump(TokenizerOrigin("base", "base", "base", (), (), 10))
    assert list(origin) == ["tokenizer_from", "chat_template_from", "generation_config_from", "files_from_adapter",
                            "eos_token_ids_added", "vocab_size"]  # merge.json's ``tokenizer`` entry
    assert list(codec.dump(ThreadSpeed(0, 1.0, 2.0))) == ["threads", "decode_tps", "ttft_ms"]  # registration's probe
    assert codec.dump(QuantizeJob("s", "t", QuantPlan()))["plan"] == json.loads(json.dumps(QuantPlan().__dict__))


@pytest.mark.parametrize(("record", "number"), STRICT, ids=lambda r: r if isinstance(r, str) else type(r).__name__)
def test_a_payload_missing_a_field_or_with_a_wrong_one_is_refused(record, number: str) -> None:
    sent = json.loads(json.dumps(codec.dump(record)))
    for field in sent:  # every field is needed: a missing one is refused in one line naming it
        with pytest.raises(RecordError, match=f"{field}: field required"):
            codec.load(type(record), {k: v for k, v in sent.items() if k != field})
    with pytest.raises(RecordError, match=f"{number}: input should be a valid"):
        codec.load(type(record), {**sent, number: "many"})


def test_the_bench_and_edge_payloads_keep_the_json_their_children_read() -> None:
    assert codec.dump(engines.MeasureJob("m", (16,), (8,), 3, 1, "/c")) == {
        "name": "m", "prompt_lengths": [16], "gen_lengths": [8], "repeats": 3, "warmup": 1, "cache": "/c"}
    assert codec.dump(edge.EdgeJob("m", "", 2, 0)) == {"name": "m", "cache": "", "skip": 2, "seed": 0}
    sent = json.loads(json.dumps(codec.dump(engines.MeasuredModel(_FACTS, "/m", 0, ((1, 2),), _MESSAGES[:1], (_ROW,)))))
    assert sent["rows"] == [codec.dump(_ROW)] and sent["prompts"] == [[1, 2]]  # rows as bench.json holds them
