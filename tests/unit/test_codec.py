"""The one codec: records and child payloads to JSON and back, versions checked, old versions upgraded."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

import pytest

from slmops.toolkit.core import codec
from slmops.toolkit.core.codec import RecordError, ResultVersionError
from slmops.toolkit.core.errors import InputError


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Row:
    name: str
    tps: float
    ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Job:
    model_dir: str
    rows: tuple[Row, ...]
    colour: Colour = Colour.RED
    by_label: dict[str, float] = field(default_factory=dict)
    base: str | None = None


@dataclass(frozen=True)
class Result:
    """A versioned record: version 1 called ``rows`` ``runs``; version 2 renamed it."""

    SCHEMA_VERSION: ClassVar[int] = 2
    KIND: ClassVar[str] = "result.json"

    rows: tuple[Row, ...]
    note: str = ""

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        if version == 1:
            data["rows"] = data.pop("runs")
        return data


@dataclass(frozen=True)
class Listed:
    """A versioned record whose version 1 was a bare list of rows, and one with no history."""

    SCHEMA_VERSION: ClassVar[int] = 2

    rows: tuple[Row, ...]

    @classmethod
    def upgrade(cls, data: object, version: int) -> object:
        return {"rows": data} if isinstance(data, list) else data


@dataclass(frozen=True)
class Plain:
    SCHEMA_VERSION: ClassVar[int] = 1

    rows: tuple[Row, ...] = ()


_JOB = Job("/m", (Row("a", 1.5, (1, 2)), Row("b", 2.0)), Colour.BLUE, {"int4": 3.25}, None)


def test_a_record_survives_json_unchanged() -> None:
    sent = json.loads(json.dumps(codec.dump(_JOB)))
    assert sent == {"model_dir": "/m", "rows": [{"name": "a", "tps": 1.5, "ids": [1, 2]},
                                                 {"name": "b", "tps": 2.0, "ids": []}],
                    "colour": "blue", "by_label": {"int4": 3.25}, "base": None}
    assert codec.load(Job, sent) == _JOB
    assert codec.dump(codec.load(Job, sent)) == sent


def test_a_payload_declares_no_version_and_a_record_writes_its_own_first() -> None:
    assert codec.VERSION_KEY not in codec.dump(_JOB)
    assert list(codec.dump(Result((Row("a", 1.0),)))) == ["schema_version", "rows", "note"]


def test_json_numbers_and_lists_fill_their_fields_and_unknown_keys_are_ignored() -> None:
    row = codec.load(Row, {"name": "a", "tps": 3, "ids": [4], "added_later": True})
    assert row == Row("a", 3.0, (4,)) and isinstance(row.tps, float)


@pytest.mark.parametrize(("data", "where"), [
    ({"name": "a"}, "tps: field required"),
    ({"name": "a", "tps": "fast"}, "tps: input should be a valid number"),
    ({"name": 3, "tps": 1.0}, "name: input should be a valid string"),
    ({"name": "a", "tps": 1.0, "ids": ["x"]}, "ids.0: input should be a valid integer"),
])
def test_a_field_missing_or_of_the_wrong_type_is_refused_in_one_line_naming_it(data: dict, where: str) -> None:
    with pytest.raises(RecordError, match=where) as caught:
        codec.load(Row, data)
    assert isinstance(caught.value, InputError) and "\n" not in str(caught.value)


def test_an_older_version_is_upgraded_and_a_newer_one_refused() -> None:
    assert codec.load(Result, {"runs": [{"name": "a", "tps": 1.0}]}) == Result((Row("a", 1.0),))  # version 1
    assert codec.load(Result, {"schema_version": 2, "rows": []}) == Result(())
    for found in (3, "2", 0):
        with pytest.raises(ResultVersionError, match=f"result.json has schema_version {found!r}"):
            codec.load(Result, {"schema_version": found, "rows": []})
    with pytest.raises(RecordError, match="not a JSON object"):
        codec.load(Plain, [])
    assert codec.load(Listed, [{"name": "a", "tps": 1}]) == Listed((Row("a", 1.0),))  # version 1: a bare list
    with pytest.raises(RecordError, match="Listed"):
        codec.load(Listed, "rows")


def test_read_and_write_go_through_the_file(tmp_path) -> None:
    path = codec.write(tmp_path / "result.json", Result((Row("a", 1.0, (2,)),), "n"))
    assert json.loads(path.read_text())["schema_version"] == 2
    assert codec.read(Result, path) == Result((Row("a", 1.0, (2,)),), "n")
    with pytest.raises(InputError, match="run the step first"):
        codec.read(Result, tmp_path / "none.json", missing="run the step first")
    (tmp_path / "bad.json").write_text('{"schema_version": 2, "rows": 5}')
    with pytest.raises(RecordError, match=r"bad.json .*rows"):
        codec.read(Result, tmp_path / "bad.json")


def test_types_other_than_records_load_too() -> None:
    assert codec.load(dict[str, float], {"a": 1}) == {"a": 1.0}
    assert codec.load(list[Row], [{"name": "a", "tps": 1}]) == [Row("a", 1.0)]


def test_a_not_finite_figure_survives_the_round_trip_in_a_record_and_in_a_list_of_them() -> None:
    """A garbage build's KL divergence is NaN or infinite: it must reach the check as such, never as null."""
    for record in (Row("a", math.nan), [Row("a", math.nan), Row("b", math.inf)]):
        back = codec.load(type(record) if not isinstance(record, list) else list[Row],
                          json.loads(json.dumps(codec.dump(record))))
        rows = back if isinstance(back, list) else [back]
        assert math.isnan(rows[0].tps) and (len(rows) == 1 or rows[1].tps == math.inf)


def test_a_manifest_as_685c710_wrote_it_reads_typed_and_writes_back_the_same(tmp_path) -> None:
    """``manifest_v3.json``: written by 685c710, whose ``weights``, ``quantizer``, ``adapter`` and parity checks were dicts."""
    from slmops.toolkit.domain.options import Int4Options
    from slmops.toolkit.domain.parity import ParityCheck, Verdict
    from slmops.toolkit.domain.quant_plan import QuantPlan
    from slmops.toolkit.domain.results.conversion import WeightSummary, read_manifest
    from slmops.toolkit.domain.results.merge import MergeRecord

    written = json.loads((Path(__file__).parent / "manifest_v3.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(written))
    manifest = read_manifest(tmp_path)
    assert manifest.weights == WeightSummary({"int4": 1000, "fp32": 64}, "int4", "fp32")
    assert isinstance(manifest.quantizer, QuantPlan) and manifest.quantizer.algorithm == "rtn"
    fp32, int4 = manifest.parity.checks
    assert isinstance(fp32, ParityCheck) and (fp32.build, int4.verdict) == ("fp32", Verdict.PASS)
    assert fp32.sequences[0].what == "the reference text" and manifest.parity.own_figures()[0] == 1.0
    adapter = manifest.adapter
    assert isinstance(adapter, MergeRecord) and adapter.kept_apart and adapter.vocab_size.merged == 400
    assert adapter.rank_pattern == {"v_proj": 8} and adapter.merge_check.allowed == 0.002
    assert adapter.tokenizer.eos_token_ids_added == (2,) and manifest.more_adapters[0].merge_check is None
    assert manifest.options == Int4Options(block_size=32)  # version 3's options dict, typed
    again = json.loads(json.dumps(codec.dump(manifest)))
    added = {"merge_check": None, "tokenizer": None, "kept_apart": False}  # what the untyped entry left out
    upgraded = {"schema_version": 4, "options": codec.dump(Int4Options(block_size=32))}  # version 4: typed options
    assert again == {**written, **upgraded, "lora_branch": None,  # recorded later in version 4: none here
                     "more_adapters": [{**entry, **added} for entry in written["more_adapters"]]}


def test_a_side_branch_builds_error_rank_bits_and_layout_are_a_typed_field_of_its_manifest(tmp_path) -> None:
    """``lora_branch`` (``--adapter-in-graph``): written and read back typed; a manifest written before it reads None."""
    from dataclasses import replace

    from slmops.toolkit.domain.quant_plan import LoraBranched
    from slmops.toolkit.domain.results.conversion import read_manifest, write_manifest

    written = json.loads((Path(__file__).parent / "manifest_v3.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(written))
    assert read_manifest(tmp_path).lora_branch is None
    branched = LoraBranched(branches=210, grown=166, error_rank=16, branch_bits=8, layout="folded-merge8", folded=166,
                            merged=44)
    write_manifest(tmp_path, replace(read_manifest(tmp_path), lora_branch=branched))
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert again["lora_branch"] == {"branches": 210, "grown": 166, "error_rank": 16, "branch_bits": 8,
                                    "layout": "folded-merge8", "folded": 166, "merged": 44}
    assert read_manifest(tmp_path).lora_branch == branched


def test_a_version_3_manifest_of_a_build_not_int4_reads_its_empty_options_as_none(tmp_path) -> None:
    """Version 3 wrote ``"options": {}`` for FP32 and INT8 builds; version 4 writes null."""
    from slmops.toolkit.domain.results.conversion import read_manifest, write_manifest

    written = json.loads((Path(__file__).parent / "manifest_v3.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**written, "precision": "int8", "options": {}}))
    manifest = read_manifest(tmp_path)
    assert manifest.options is None and manifest.precision == "int8"
    write_manifest(tmp_path, manifest)
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert again["schema_version"] == 4 and again["options"] is None
    assert read_manifest(tmp_path) == manifest


#: ``.slmops-registration.json`` as 685c710's ``register`` wrote it (a dict built in place), threads probed.
_REGISTRATION = {
    "source": "/m/int4", "name": "m-int4", "version": 2, "template": "chatml", "notes": ["a note"],
    "registered": "2026-12-07T12:00:00+00:00",
    "stop_tokens": {"eos_token_id": [2, 7], "before": [2],
                    "added": [{"id": 7, "token": "<|im_end|>", "from": "the chat template's end of turn"}],
                    "generation_config": "/m/int4/generation_config.json"},
    "threads": {"setting": "auto", "chosen": 2, "speedup_vs_default": 1.25,
                "probe": [{"threads": 0, "decode_tps": 80.0, "ttft_ms": 30.0},
                          {"threads": 2, "decode_tps": 100.0, "ttft_ms": 25.0}], "reused_probe": False},
    "tool_calling": {"markers": ["<tool_call>", "</tool_call>"], "supports_tool_calling": True, "probe": "a call"},
}


def test_a_registration_record_as_685c710_wrote_it_reads_typed_and_writes_back_the_same(tmp_path) -> None:
    from slmops.toolkit.domain.results.registration import REGISTRATION_RECORD, read_registration, write_registration

    (tmp_path / REGISTRATION_RECORD).write_text(json.dumps(_REGISTRATION))
    record = read_registration(tmp_path)
    assert record.version == 2 and record.threads.probe[1].decode_tps == 100.0 and record.tool_calling.markers[0]
    assert record.stop_tokens.added[0].token == "<|im_end|>" and "added <|im_end|> (7," in record.stop_tokens.note()
    write_registration(tmp_path, record)
    assert json.loads((tmp_path / REGISTRATION_RECORD).read_text()) == _REGISTRATION
    plain = {**_REGISTRATION, "threads": {"setting": None}}  # registered with the runtime's default threads
    (tmp_path / REGISTRATION_RECORD).write_text(json.dumps(plain))
    assert read_registration(tmp_path).threads.setting is None
    (tmp_path / REGISTRATION_RECORD).write_text("{not json")
    assert read_registration(tmp_path) is None  # registered again as if it had none, as before


def test_a_finetune_record_as_685c710_wrote_it_reads_typed_and_writes_back_the_same(tmp_path) -> None:
    from slmops.toolkit.domain.results.finetune import FINETUNE_RECORD, read_finetune, write_finetune

    written = {"key": "abc", "base": "/m/base", "data": "veloria", "examples": 4, "tool_examples_skipped": 1,
               "losses": [2.5, 1.25], "wall_s": 3.5,
               "settings": {"rank": 4, "steps": 2, "batch": 2, "learning_rate": 0.002, "seed": 0}}
    (tmp_path / FINETUNE_RECORD).write_text(json.dumps(written))
    record = read_finetune(tmp_path)
    assert record.losses == (2.5, 1.25) and record.settings.rank == 4 and record.data == "veloria"
    write_finetune(tmp_path, record)
    assert json.loads((tmp_path / FINETUNE_RECORD).read_text()) == written


def test_a_run_record_as_685c710_wrote_it_reads_typed_and_writes_back_the_same(tmp_path) -> None:
    from slmops.toolkit.domain.provenance import RUN_RECORD, read_run_record, write_run_record

    written = {"inputs": {"model": {"path": "/m/SmolLM2", "fingerprint": "0123456789abcdef"},
                          "cases": {"path": "(bundled) cases.jsonl", "sha256": "fedcba9876543210"}, "seed": 0,
                          "params": {"precisions": ["fp32", "int4"], "repeats": 3}},
               "versions": {"python": "3.11.9", "onnxruntime": "1.23.2"},
               "machine": {"cpu": "x", "physical_cores": 2, "caches": {"L3": "32768K"}},
               "recorded": "2026-12-07T12:00:00+00:00"}
    (tmp_path / RUN_RECORD).write_text(json.dumps(written))
    record = read_run_record(tmp_path)
    assert record.inputs.model.fingerprint == "0123456789abcdef" and record.inputs.params["repeats"] == 3
    write_run_record(tmp_path, record)
    assert json.loads((tmp_path / RUN_RECORD).read_text()) == written
    (tmp_path / RUN_RECORD).write_text(json.dumps({"inputs": {"seed": 1}}))  # before parameters were kept
    assert read_run_record(tmp_path).inputs.params is None


def test_bench_json_sections_as_685c710_wrote_them_read_typed_and_write_back_the_same() -> None:
    from slmops.toolkit.domain.results.bench import BenchFile

    written = {"schema_version": 3, "metadata": {"cpu": "x", "logical_cpus": 4, "physical_cores": 2,
                                                 "versions": {"onnxruntime": "1.23.2"}, "timestamp": "t",
                                                 "caches": {"L3": "32768K"}, "isa": {"avx2": True},
                                                 "memory_bandwidth_gbs": 20.0,
                                                 "bandwidth_by_threads": [{"threads": 0, "gbs": 18.0},
                                                                          {"threads": 2, "gbs": 20.0}]}, "rows": [],
               "engine_ratios": [{"model": "m", "target_prompt_tokens": 16, "target_gen_tokens": 8, "threads": 2,
                                  "foundry_decode_tps": 90.0, "direct_decode_tps": 100.0, "ratio": 0.9}],
               "endpoint_ratios": [{"model": "m", "target_prompt_tokens": 16, "target_gen_tokens": 8,
                                    "in_process_decode_tps": 90.0, "endpoint_decode_tps": 88.0, "decode_ratio": 0.978,
                                    "in_process_ttft_ms": 30.0, "endpoint_ttft_ms": 32.5, "ttft_overhead_ms": 2.5}],
               "ttft_breakdown": [{"model": "m", "target_prompt_tokens": 16, "threads": 2, "foundry_ttft_ms": 30.0,
                                   "direct_ttft_ms": 25.0, "ratio": 1.2, "setup_ms": 1.0, "template_ms": 1.0,
                                   "prefill_ms": 25.0, "harness_ms": 0.1, "runtime_other_ms": 2.9, "unmeasured": ""}],
               "noisy": ["m/foundry-local/16/8/2"], "short": [], "max_harness_overhead_pct": 0.4,
               "decode_ceiling": [{"model": "m", "engine": "foundry-local", "target_prompt_tokens": 16,
                                   "target_gen_tokens": 8, "threads": 2, "weights_read_mb": 40.0, "bandwidth_gbs": 20.0,
                                   "decode_tps": 90.0, "ceiling_tps": 500.0, "percent_of_ceiling": 18.0,
                                   "above_bound_because": ""}]}
    report = codec.load(BenchFile, written)
    assert report.engine_ratios[0].ratio == 0.9 and report.ttft_breakdown[0].runtime_other_ms == 2.9
    assert report.decode_ceiling[0].percent_of_ceiling == 18.0 and report.endpoint_ratios[0].ttft_overhead_ms == 2.5
    assert json.loads(json.dumps(codec.dump(report))) == written
    older = {**written, "schema_version": 1, "ttft_breakdown": [{"model": "m", "ratio": 1.2}]}  # before the parts
    assert codec.load(BenchFile, older).ttft_breakdown[0].runtime_other_ms is None


def test_bench_json_metadata_of_version_2_reads_typed_with_its_bandwidth_by_thread_count_as_rows() -> None:
    """Version 2's metadata (f19f3fa's ``run_metadata()`` with caches, ISA and bandwidth keyed by the count as text)."""
    from slmops.toolkit.domain.results.bench import BenchFile
    from slmops.toolkit.domain.results.bench_metadata import Bandwidth

    metadata = {"cpu": "x", "logical_cpus": 4, "physical_cores": 2, "versions": {"python": "3.11.9"},
                "timestamp": "2026-12-07T12:00:00+0000", "caches": {"L3": "32768K"},
                "isa": {"avx2": True, "avx512f": False}, "memory_bandwidth_gbs": 20.0,
                "memory_bandwidth_gbs_by_threads": {"0": 18.0, "2": 20.0}}
    report = codec.load(BenchFile, {"schema_version": 2, "metadata": metadata, "rows": []})
    assert report.metadata.bandwidth_by_threads == (Bandwidth(0, 18.0), Bandwidth(2, 20.0))
    assert report.metadata.bandwidth_gbs(2) == 20.0 and report.metadata.bandwidth_gbs(4) is None
    assert (report.metadata.cpu, report.metadata.physical_cores, report.metadata.caches) == ("x", 2, {"L3": "32768K"})
    assert report.metadata.isa == {"avx2": True, "avx512f": False} and report.metadata.versions["python"] == "3.11.9"
    again = codec.dump(report)
    assert again["schema_version"] == 3 and "memory_bandwidth_gbs_by_threads" not in again["metadata"]
    assert codec.load(BenchFile, again) == report
    bare = codec.load(BenchFile, {"rows": [], "metadata": {"memory_bandwidth_gbs": 40.0}})  # version 1, hand-written
    assert bare.metadata.memory_bandwidth_gbs == 40.0 and bare.metadata.bandwidth_by_threads == ()
