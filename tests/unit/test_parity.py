"""The parity gate: every build is compared with transformers on the same token ids, and kept only when it matches."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from slmops.toolkit.core import codec, settings
from slmops.toolkit.core.codec import RecordError
from slmops.toolkit.core.errors import ToolFailedError
from slmops.toolkit.domain import parity
from slmops.toolkit.domain.options import Precision
from slmops.toolkit.runtimes import reference_model
from slmops.toolkit.stages import convert
from slmops.toolkit.stages.convert_plan import ConvertSpec


def test_figures_measure_what_they_name() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((100, 50))
    same = parity.figures(ref, ref.astype(np.float32))
    assert same.top1_agreement == 1.0 and same.max_abs_diff < 1e-6 and same.kl_divergence < 1e-9
    assert same.verdict(parity.EXACT) is parity.Verdict.PASS
    moved = ref.copy()
    moved[10] += 10 * np.eye(50)[0]  # one position gets a new favourite token
    f = parity.figures(ref, moved)
    assert f.top1_agreement == pytest.approx(0.99) and f.max_abs_diff == pytest.approx(10)
    assert f.max_diff_of_range == pytest.approx(10 / (ref.max() - ref.min()))
    assert f.verdict(parity.EXACT) is parity.Verdict.FAIL  # 10 is far over 1% of the range
    padded = np.concatenate([ref, np.zeros((100, 14))], axis=1)  # a builder's padded vocabulary
    assert parity.figures(ref, padded).max_abs_diff == 0


def test_top1_is_judged_up_to_near_ties_so_random_weights_pass_faithful_and_fail_broken() -> None:
    """A random model of a real vocabulary is near ties everywhere: its faithful INT4 was refused on top-1 0.08."""
    rng = np.random.default_rng(1)
    flat = rng.standard_normal((128, 150_000)).astype(np.float32) * 0.72  # no position has a clear favourite
    noisy = flat + rng.standard_normal(flat.shape).astype(np.float32) * 0.5  # quantization-like noise
    f = parity.figures(flat, noisy)
    assert f.top1_agreement < 0.25 < f.top1_up_to_ties and f.kl_divergence < 0.2
    assert f.verdict(parity.QUANTIZED) is parity.Verdict.PASS
    broken = parity.figures(flat, rng.permutation(flat, axis=1))  # the same values on the wrong tokens
    assert broken.top1_up_to_ties < 0.05 and broken.kl_divergence < parity.QUANTIZED.max_kl  # KL alone would pass
    assert broken.verdict(parity.QUANTIZED) is parity.Verdict.FAIL
    decided = flat[:, :1000].copy()
    decided[:, 0] += 8.0  # a trained model's clear favourite: up to ties is plain top-1
    moved = decided.copy()
    moved[:100, 1] += 12.0  # another token overtakes at 100 of 128 positions
    g = parity.figures(decided, moved)
    assert g.top1_agreement == g.top1_up_to_ties == pytest.approx(28 / 128)
    assert g.verdict(parity.QUANTIZED) is parity.Verdict.FAIL
    assert "up to near ties" in parity.judge("int4", "t", [("x", 128)], [f], parity.QUANTIZED).in_words()
    old = {**codec.dump(parity.judge("int4", "t", [("x", 128)], [g], parity.QUANTIZED)), "schema_version": 1}
    del old["top1_up_to_ties"]
    assert codec.load(parity.ParityCheck, old).figures.top1_up_to_ties == old["top1_agreement"]


#: A check as the manifest has kept it since version 2 (written by 685c710's ``ParityCheck.to_json``).
_WRITTEN = {"schema_version": 2, "build": "fp32", "reference": "transformers 4.57.1 (float32)",
            "sequences": [{"what": "the reference text", "positions": 3}], "positions": 3, "top1_agreement": 1.0,
            "max_abs_diff": 0.01, "mean_abs_diff": 0.003333, "logit_range": 1.0, "max_diff_of_range": 0.01,
            "kl_divergence": 1.226e-05, "top1_up_to_ties": 1.0,
            "tolerance": {"min_top1": 0.99, "max_diff_of_range": 0.01, "max_kl": None}, "verdict": "pass"}


def test_a_record_reads_back_and_says_which_version() -> None:
    check = parity.judge("fp32", "transformers 4.57.1 (float32)", [("the reference text", 3)],
                         [parity.figures(np.eye(3), np.eye(3) * 1.01)], parity.EXACT)
    assert codec.dump(check) == _WRITTEN  # the manifest's shape, rounding included
    assert codec.load(parity.ParityCheck, _WRITTEN) == check
    assert check.sequences[0].positions == 3 and check.figures.max_diff_of_range == pytest.approx(0.01)
    with pytest.raises(RecordError, match="schema_version"):
        codec.load(parity.ParityCheck, {**_WRITTEN, "schema_version": 3})


class _Tokenizer:
    """Enough of a Hugging Face tokenizer: one id per character, a BOS of 1 when special tokens are added."""

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = [1] * add_special_tokens + [2 + ord(c) % 50 for c in text]
        return type("Encoding", (), {"input_ids": ids})()


def test_a_model_with_a_sliding_window_is_read_past_it() -> None:
    windowed = type("Config", (), {"max_position_embeddings": 2048, "sliding_window": 128,
                                   "layer_types": ["sliding_attention", "full_attention"]})()
    seqs = reference_model.sequences(_Tokenizer(), windowed, "abc " * 100)
    assert [len(ids) for _, ids in seqs] == [401, 128 + parity.PAST_WINDOW]
    assert seqs[1][1][0] == 1 and seqs[1][1][1:5] == seqs[0][1][1:5]  # the BOS once, then the text repeated
    no_window = type("Config", (), {"max_position_embeddings": 2048, "sliding_window": 128,
                                    "layer_types": ["full_attention"] * 2})()
    assert len(reference_model.sequences(_Tokenizer(), no_window, "abc")) == 1


def test_a_failed_child_is_one_line_and_its_log_outlives_the_command(tiny_model: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    crash = "import sys; print('Traceback (most recent call last):'); print('  File x'); " \
            "print(\"KeyError: 'position_ids'\"); sys.exit(1)"
    monkeypatch.setattr(convert, "builder_command", lambda *_: [sys.executable, "-c", crash])
    with pytest.raises(ToolFailedError) as caught:
        convert.convert(ConvertSpec(tiny_model, tmp_path / "out" / "fp32", Precision.FP32), progress=False)
    first, log_line = str(caught.value).split("\n")
    assert first.endswith("KeyError: 'position_ids'") and "Traceback" not in first
    log = Path(log_line.removeprefix("Full log: "))
    assert log.is_file() and "position_ids" in log.read_text()
    assert log.is_relative_to(settings.home())
