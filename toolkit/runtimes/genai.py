"""The one place ONNX Runtime GenAI runs a model directly, outside Foundry Local.

Foundry's chat API returns text, not logits; the measurements that compare a quantized
build with its FP32 reference (top-1 agreement, KL divergence, perplexity), a quick
decode-speed probe and the benchmark's direct engine need the runtime the builder targets.
They run as worker tasks in a child process (:mod:`slmops.toolkit.core.workers`): the
``onnxruntime_genai`` module cannot load into a process that already holds Foundry Local's
own build of the same native library. :func:`agreement`, :func:`decode_speeds` and
:func:`bench` are the parent-side calls; the payloads they exchange with the child are in
:mod:`~slmops.toolkit.runtimes.genai_jobs`, the folder this package can load in
:mod:`~slmops.toolkit.runtimes.genai_folders`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from slmops.toolkit.core import codec, workers
from slmops.toolkit.core.measure import CpuMeter, peak_rss_mib, rss_mib
from slmops.toolkit.domain.parity import log_softmax
from slmops.toolkit.domain.prompts import reference_text
from slmops.toolkit.domain.results.bench import TimedRun
from slmops.toolkit.domain.results.registration import ThreadSpeed
from slmops.toolkit.runtimes.genai_folders import load, readable_dir, single_graph_overlay
from slmops.toolkit.runtimes.genai_jobs import (
    Agreement,
    BandwidthJob,
    BenchJob,
    CompareJob,
    DecodeJob,
    DirectBench,
    ThreadJob,
)
from slmops.toolkit.weights import lm_head

_MODULE = "slmops.toolkit.runtimes.genai"


def _context_length(model_dir: Path) -> int:
    config = json.loads((model_dir / "genai_config.json").read_text())
    return int(config["model"]["context_length"])


def _special_prefix(model_dir: Path) -> list[int]:
    """The special tokens the model's tokenizer puts before a text (Gemma's and Llama's BOS), as transformers adds them.

    Read from ``tokenizer.json``'s ``TemplateProcessing`` post-processor; ONNX Runtime GenAI's
    tokenizer does not apply it, and a model that always saw a BOS reads a text without one
    badly (Gemma 3: perplexity in the tens of thousands).
    """
    try:
        processor = json.loads((model_dir / "tokenizer.json").read_text()).get("post_processor") or {}
    except (OSError, ValueError):
        return []
    if processor.get("type") != "TemplateProcessing":
        return []
    prefix = []
    for piece in processor.get("single", []):
        if "SpecialToken" not in piece:
            break
        prefix += processor.get("special_tokens", {}).get(piece["SpecialToken"]["id"], {}).get("ids", [])
    return [int(i) for i in prefix]


def logits(model_dir: str | os.PathLike[str], text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``text`` and the model's next-token logits at every position (one forward pass).

    The text starts with the special tokens the tokenizer adds (a BOS, see :func:`_special_prefix`)
    and is cut to fit the model's context.

    Returns:
        ``(ids, logits)``: int ``[T]`` and float32 ``[T, vocab]`` (the graph's own output type).

    Example:
        >>> ids, out = logits("outputs/demo/models/fp32", "The capital of France is")
        >>> out.shape[0] == len(ids)
        True
    """
    import onnxruntime_genai as og

    folder = Path(model_dir)
    config = og.Config(str(readable_dir(folder)))
    full = lm_head.all_positions_graph(folder)  # a served folder's graph computes the last position only
    if full:
        config.overlay(single_graph_overlay(folder, full))
    model = og.Model(config)
    encoded = [int(i) for i in og.Tokenizer(model).encode(text)]
    prefix = _special_prefix(folder)
    if prefix and encoded[:len(prefix)] != prefix:
        encoded = prefix + encoded
    ids = np.asarray(encoded, dtype=np.int64)[: _context_length(folder) - 1]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    return ids, np.asarray(generator.get_output("logits"), dtype=np.float32)[0]


def logits_for_ids(model: object, ids: list[int] | np.ndarray, adapter: str | os.PathLike[str] | None = None
                   ) -> np.ndarray:
    """A loaded model's next-token logits at every position of ``ids`` (one prompt pass, nothing cut).

    Args:
        model: An ``og.Model``.
        ids: Token ids ``[T]``; ``T`` must be below the model's context length.
        adapter: An ``.onnx_adapter`` file to activate (a build whose LoRA was kept apart); none: the graph alone.

    Returns:
        float32 ``[T, vocab]``.
    """
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1)
    generator = og.Generator(model, params)
    if adapter is not None:
        adapters = og.Adapters(model)
        adapters.load(str(adapter), Path(adapter).stem)
        generator.set_active_adapter(adapters, Path(adapter).stem)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    return np.asarray(generator.get_output("logits"), dtype=np.float32)[0]


def decode_tps(model_dir: str | os.PathLike[str], *, prompt: str = "The capital of France is",
               tokens: int = 32) -> float:
    """Greedy decode speed in tokens/s (first token excluded), a quick probe, not a benchmark.

    Example:
        >>> decode_tps("outputs/demo/models/int4") > 0
        True
    """
    import onnxruntime_genai as og

    model = og.Model(str(readable_dir(model_dir)))
    ids = og.Tokenizer(model).encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + tokens + 1, min_length=len(ids) + tokens + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    generator.generate_next_token()
    start, produced = time.perf_counter(), 0
    while not generator.is_done() and produced < tokens:
        generator.generate_next_token()
        produced += 1
    return produced / (time.perf_counter() - start)


def bench_model(model_dir: str | os.PathLike[str], prompts: list[list[int]], gen_lengths: list[int], repeats: int,
                warmup: int, threads: int = 0) -> DirectBench:
    """Time greedy generation of exactly each of ``gen_lengths`` tokens (EOS ignored) after each prompt of token ids.

    The method of ONNX Runtime GenAI's ``benchmark_e2e.py``: time to first token covers the
    prompt pass and choosing the first token; each later token is one model step. Each step
    is timed too, so what the loop around them costs (the harness) is measured. Run in a
    child process so the peak RSS is this model's own.

    Returns:
        The load's cost and every timed run (:class:`DirectBench`).
    """
    rss0, start = rss_mib(), time.perf_counter()
    model = load(model_dir, threads)
    load_s, load_rss = time.perf_counter() - start, rss_mib() - rss0
    runs = tuple(tuple(tuple(time_generation(model, list(ids), gen, repeats, warmup)) for gen in gen_lengths)
                 for ids in prompts)
    return DirectBench(load_s, load_rss, peak_rss_mib(), runs)


def time_generation(model, ids: list[int], gen_tokens: int, repeats: int, warmup: int) -> list[TimedRun]:
    """Timed greedy runs of exactly ``gen_tokens`` tokens after ``ids`` on a loaded ``og.Model``.

    See :func:`bench_model` for the method and each run's keys.
    """
    import onnxruntime_genai as og

    meter = CpuMeter()
    measured = []
    for index in range(warmup + repeats):
        params = og.GeneratorParams(model)
        total = len(ids) + gen_tokens
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(model, params)
        meter.start()
        begin = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        first = time.perf_counter()
        produced, in_steps = 1, 0.0
        while not generator.is_done():
            step = time.perf_counter()
            generator.generate_next_token()
            in_steps += time.perf_counter() - step
            produced += 1
        end = time.perf_counter()
        if index >= warmup:
            measured.append(TimedRun(first - begin, end - begin, produced, harness_s=(end - first) - in_steps,
                                     **asdict(meter.stop())))
        del generator
    return measured


def compare(reference_dir: str | os.PathLike[str], candidates: dict[str, str], text: str,
            base_dir: str | os.PathLike[str] | None = None) -> list[Agreement]:
    """Teacher-forced top-1 agreement, KL divergence and perplexity of each candidate against the reference.

    Each model is loaded and run once: with ``base_dir``, each candidate's KL divergence to the
    base model is measured from the same pass (what a second comparison against the base would
    load and run again). Only log-probabilities ``[T, vocab]`` are kept (the top-1 of a row is the
    same on logits and on their log-softmax), in float32 as the parity gate's
    :func:`~slmops.toolkit.domain.parity.figures` (KL within about 1e-6 of its value); the
    reference's and the base's probabilities are computed once, not once per candidate.

    Returns:
        One :class:`Agreement` per candidate.

    Raises:
        ValueError: a model tokenizes the text differently from the reference.
    """
    def log_probs(folder: str | os.PathLike[str], label: str, expected: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        ids, out = logits(folder, text)
        if expected is not None and not np.array_equal(ids, expected):
            raise ValueError(f"{label} tokenizes the text differently from the reference")
        return ids, log_softmax(out)

    ids, ref_log = log_probs(reference_dir, "the reference", None)
    base_log = log_probs(base_dir, "the base model", ids)[1] if base_dir else None
    ref_top1 = ref_log.argmax(-1)
    positions = np.arange(len(ids) - 1)

    def perplexity(log_probs_: np.ndarray) -> float:
        return float(np.exp(-log_probs_[positions, ids[1:]].mean(dtype=np.float64)))

    def kl(reference: tuple[np.ndarray, np.ndarray], candidate: np.ndarray) -> float:
        log_p, p = reference
        return round(float(np.einsum("tv,tv->t", p, log_p - candidate).mean(dtype=np.float64)), 5)

    ref = (ref_log, np.exp(ref_log))
    base = (base_log, np.exp(base_log)) if base_log is not None else None

    rows = []
    for label, folder in candidates.items():
        cand_log = log_probs(folder, label, ids)[1]
        rows.append(Agreement(
            model=label, tokens=len(ids),
            top1_agreement=round(float((ref_top1 == cand_log.argmax(-1)).mean()), 4),
            kl_divergence=kl(ref, cand_log),
            perplexity=round(perplexity(cand_log), 3), reference_perplexity=round(perplexity(ref_log), 3),
            kl_divergence_to_base=kl(base, cand_log) if base is not None else None,
        ))
    return rows


def agreement(reference_dir: str | os.PathLike[str], candidates: dict[str, str | os.PathLike[str]],
              text: str | None = None, *, base_dir: str | os.PathLike[str] | None = None) -> list[Agreement]:
    """Top-1 agreement, KL divergence and perplexity of each candidate against the FP32 reference (child process).

    Args:
        reference_dir: The FP32 build (an ONNX model folder).
        candidates: Label to ONNX model folder.
        text: Text to read; the bundled :func:`~slmops.toolkit.domain.prompts.reference_text` by default.
        base_dir: The base model's FP32 build (for a fine-tune): each candidate's KL divergence to it
            too, from the same pass (:func:`compare`).

    Example:
        >>> agreement("models/fp32", {"int4": "models/int4"})[0].top1_agreement
        0.6659
    """
    job = CompareJob(str(Path(reference_dir).resolve()), text or reference_text(),
                     {label: str(Path(folder).resolve()) for label, folder in candidates.items()},
                     str(Path(base_dir).resolve()) if base_dir else None)
    rows = workers.run_worker(_MODULE, "compare", codec.dump(job), name="agreement with FP32 (onnxruntime-genai)").result
    return codec.load(list[Agreement], rows)


def _compare_task(job: dict, _emit) -> list[dict]:
    """Worker task: :func:`compare` on a :class:`CompareJob`."""
    job_ = codec.load(CompareJob, job)
    return codec.dump(compare(job_.reference, job_.candidates, job_.text, job_.base))


def decode_speeds(models: dict[str, str | os.PathLike[str]]) -> dict[str, float]:
    """A quick greedy decode probe (tokens/s) of each labelled model folder, in one child process."""
    job = DecodeJob({label: str(Path(folder).resolve()) for label, folder in models.items()})
    result = workers.run_worker(_MODULE, "decode", codec.dump(job), name="decode probe (onnxruntime-genai)").result
    return codec.load(dict[str, float], result)


def _decode_task(job: dict, _emit) -> dict[str, float]:
    """Worker task: :func:`decode_tps` of each model of a :class:`DecodeJob`."""
    return {label: round(decode_tps(folder), 1) for label, folder in codec.load(DecodeJob, job).models.items()}


def thread_probe(model_dir: str | os.PathLike[str], ids: list[int], counts: list[int], gen_tokens: int = 32,
                 repeats: int = 1) -> list[ThreadSpeed]:
    """Decode speed and time to first token of ``model_dir`` with each intra-op thread count (0: the runtime's default).

    Counts are tried in turn, twice over in alternating order, so a burst of machine noise does not favour one;
    each count is warmed up once, on its first turn (its second finds the session warm). One timed run a turn
    (``repeats``) is enough to choose: on a small machine the counts differ far more than the run-to-run noise
    (the benchmarks page's thread section), and the probe is kept per graph and machine, so the choice does not
    change run to run.

    Returns:
        One :class:`ThreadSpeed` per count (best of its runs).
    """
    models = {count: load(model_dir, count) for count in counts}
    best: dict[int, ThreadSpeed] = {}
    for turn, order in enumerate((counts, counts[::-1])):
        for count in order:
            for run in time_generation(models[count], ids, gen_tokens, repeats, warmup=1 if turn == 0 else 0):
                current = best.get(count, ThreadSpeed(count, 0.0, float("inf")))
                best[count] = ThreadSpeed(count, round(max(current.decode_tps, run.decode_tps), 1),
                                          round(min(current.ttft_ms, run.ttft_s * 1000), 1))
    return [best[count] for count in counts]


def probe_threads(model_dir: str | os.PathLike[str], ids: list[int], counts: list[int]) -> list[ThreadSpeed]:
    """:func:`thread_probe` in a child process."""
    job = ThreadJob(str(model_dir), tuple(ids), tuple(counts))
    rows = workers.run_worker(_MODULE, "threads", codec.dump(job), name=f"thread probe of {Path(model_dir).name}",
                              timeout=900).result
    return codec.load(list[ThreadSpeed], rows)


def _threads_task(job: dict, _emit) -> list[dict]:
    """Worker task: :func:`thread_probe` on a :class:`ThreadJob`."""
    job_ = codec.load(ThreadJob, job)
    return codec.dump(thread_probe(job_.model_dir, list(job_.ids), list(job_.counts)))


def read_bandwidth(threads: int, megabytes: int = 512, passes: int = 12) -> float:
    """Memory read bandwidth in GB/s as decode reads: ONNX Runtime multiplying one row by a large weight matrix.

    A decode step is matrix-vector products over every weight, split across the session's
    intra-op threads; this times exactly that (FP32 ``MatMul`` of ``[1, K] x [K, N]``) on a
    buffer far larger than the last-level cache, with ``threads`` intra-op threads (0: ONNX
    Runtime's default), best of ``passes``. A single-threaded NumPy sum reads less than
    decode does (measured here: 20 GB/s against decode's 30-39), so it cannot be the bound.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    k = 4096
    n = megabytes * 1_000_000 // (4 * k)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [k, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    weights = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    x = np.ones((1, k), dtype=np.float32)
    feeds = {"x": ort.OrtValue.ortvalue_from_numpy(x), "w": ort.OrtValue.ortvalue_from_numpy(weights)}
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        session.run_with_ort_values(["y"], feeds)
        best = min(best, time.perf_counter() - start)
    return weights.nbytes / best / 1e9


def read_bandwidths(threads: list[int]) -> dict[int, float]:
    """:func:`read_bandwidth` for each thread count, in a child process; GB/s by thread count."""
    job = BandwidthJob(tuple(sorted(set(threads))))
    result = workers.run_worker(_MODULE, "bandwidth", codec.dump(job), name="memory bandwidth probe", timeout=600).result
    return codec.load(dict[int, float], result)  # JSON keys are strings


def _bandwidth_task(job: dict, _emit) -> dict[int, float]:
    """Worker task: :func:`read_bandwidth` with each count of a :class:`BandwidthJob`."""
    return {t: round(read_bandwidth(t), 2) for t in codec.load(BandwidthJob, job).threads}


def bench(model_dir: str | os.PathLike[str], prompts: list[list[int]], gen_lengths: list[int], repeats: int,
          warmup: int, threads: int = 0) -> DirectBench:
    """:func:`bench_model` in a child process of its own, so its peak RSS is this model's alone."""
    job = BenchJob(str(model_dir), tuple(tuple(ids) for ids in prompts), tuple(gen_lengths), repeats, warmup, threads)
    result = workers.run_worker(_MODULE, "bench", codec.dump(job), name=f"direct benchmark of {Path(model_dir).name}")
    return codec.load(DirectBench, result.result)


if __name__ == "__main__":
    workers.serve({
        "compare": _compare_task,
        "decode": _decode_task,
        "bench": lambda job, _emit: codec.dump(bench_model(**vars(codec.load(BenchJob, job)))),
        "threads": _threads_task,
        "bandwidth": _bandwidth_task,
    })
