"""Check `slmops bench` against ONNX Runtime GenAI's own benchmark method on the same models.

ONNX Runtime GenAI's ``benchmark/python/benchmark_e2e.py`` measures a model like this: the
prompt is what the model itself generates greedily from "a" up to the asked length;
generation runs with ``min_length = max_length = prompt + generated`` (EOS ignored); the
first ``generate_next_token`` after the prompt is the prompt-processing time; every later
call is timed on its own, and token generation throughput is one over their mean. This
script measures that way, independently of the toolkit's code, and then runs
``slmops.toolkit.stages.bench.bench`` on the same registered models with the same prompt and generation
lengths. The two alternate, model by model, for several rounds, and each figure is the
median over rounds, so a noisy moment on a shared machine hits both alike and does not
decide the verdict. A paired check then runs the method and the toolkit's direct-engine
timing alternately on one loaded model with the same prompt ids, run by run, which leaves
the methods as the only difference. Decode tokens/s must agree within 10% everywhere.

Usage (after ``make demo``, which registers smollm2-fp32/int8/int4)::

    .venv/bin/python benchmarks/genai_method.py
    .venv/bin/python benchmarks/genai_method.py smollm2-int4 --prompt-lengths 16 512 --gen-tokens 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TOLERANCE = 0.10


def _method_prompt(og, model, tokenizer, prompt_length: int) -> list[int]:
    """The prompt ``benchmark_e2e.py`` uses: the model's own greedy text from "a", re-encoded."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=prompt_length, min_length=prompt_length, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode("a"))
    while not generator.is_done():
        generator.generate_next_token()
    return list(tokenizer.encode(tokenizer.decode(generator.get_sequence(0))))


def _method_run(og, model, tokens: list[int], gen_length: int) -> tuple[float, list[float]]:
    """One timed repetition as ``benchmark_e2e.py`` does it: prompt-processing seconds, then each step's seconds."""
    total = len(tokens) + gen_length
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(tokens)
    generator.generate_next_token()
    prompt_s = time.perf_counter() - start
    steps = []
    while not generator.is_done() and len(steps) + 1 < gen_length:
        start = time.perf_counter()
        generator.generate_next_token()
        steps.append(time.perf_counter() - start)
    return prompt_s, steps


def method(folder: str, prompt_length: int, gen_length: int, repeats: int, warmup: int) -> dict:
    """Prefill and token-generation throughput measured as ``benchmark_e2e.py`` does (run in a child)."""
    import onnxruntime_genai as og

    model = og.Model(folder)
    tokens = _method_prompt(og, model, og.Tokenizer(model), prompt_length)
    for _ in range(warmup):  # its warm-up: the prompt and one token
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(tokens) + gen_length, min_length=len(tokens) + gen_length,
                                  do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(tokens)
        generator.generate_next_token()
        del generator
    runs = [_method_run(og, model, tokens, gen_length) for _ in range(repeats)]
    steps = [step for _, run_steps in runs for step in run_steps]
    return {"prompt_tokens": len(tokens), "prefill_tps": len(tokens) / statistics.mean(p for p, _ in runs),
            "decode_tps": 1 / statistics.mean(steps)}


def paired(folder: str, prompt_length: int, gen_length: int, pairs: int) -> dict:
    """The method and the toolkit's direct engine on one loaded model, alternating run by run (same prompt ids).

    Both see the same moments of machine noise, so what is left between them is the method.
    """
    import onnxruntime_genai as og

    from slmops.toolkit.runtimes.genai import time_generation

    model = og.Model(folder)
    tokens = _method_prompt(og, model, og.Tokenizer(model), prompt_length)
    _method_run(og, model, tokens, gen_length)
    time_generation(model, tokens, gen_length, repeats=1, warmup=0)
    steps, ours = [], []
    for _ in range(pairs):
        steps += _method_run(og, model, tokens, gen_length)[1]
        ours.append(time_generation(model, tokens, gen_length, repeats=1, warmup=0)[0].decode_tps)
    return {"method_tps": 1 / statistics.mean(steps), "toolkit_tps": statistics.mean(ours)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=["smollm2-fp32", "smollm2-int8", "smollm2-int4"])
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per figure in each round")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two methods; medians are compared")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cache-dir")
    parser.add_argument("--pairs", type=int, default=15, help="alternating runs per length in the paired check")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "JOB"), help=argparse.SUPPRESS)
    parser.add_argument("--paired-child", nargs=2, metavar=("FOLDER", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child[1])
        print(json.dumps([method(args.child[0], n, job["gen"], job["repeats"], job["warmup"])
                          for n in job["lengths"]]))
        return 0
    if args.paired_child:
        job = json.loads(args.paired_child[1])
        print(json.dumps([paired(args.paired_child[0], n, job["gen"], job["pairs"]) for n in job["lengths"]]))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from slmops.toolkit.runtimes.foundry_session import models_root
    from slmops.toolkit.stages import bench

    print(f"{'model':<14} {'prompt':>6} {'method':>8} {'foundry':>8} {'direct':>8} {'f/method':>9} {'d/method':>9}"
          f"  prefill method/direct   (medians of {args.rounds} rounds)")
    worst = 0.0
    for name in args.names if args.rounds else []:  # --rounds 0: the paired check only
        folder = str(models_root(args.cache_dir) / name)
        figures: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            rows = bench.bench([name], prompt_lengths=args.prompt_lengths, gen_lengths=[args.gen_tokens],
                               repeats=args.repeats, warmup=args.warmup, cache=args.cache_dir, progress=False)
            for row in rows:
                figures.setdefault((row.engine, row.target_prompt_tokens), []).append(row.decode_tps)
                if row.engine == "ort-genai":
                    figures.setdefault(("direct-prefill", row.target_prompt_tokens), []).append(row.prefill_tps)
            # The method gets the prompt lengths the toolkit's rows really had (the chat template
            # makes the shortest prompt longer than asked).
            actual = [next(r.prompt_tokens for r in rows if r.target_prompt_tokens == n) for n in args.prompt_lengths]
            job = json.dumps({"lengths": actual, "gen": args.gen_tokens, "repeats": args.repeats,
                              "warmup": args.warmup})
            done = subprocess.run([sys.executable, __file__, "--child", folder, job], capture_output=True, text=True,
                                  check=True)
            for length, ref in zip(args.prompt_lengths, json.loads(done.stdout.strip().splitlines()[-1]), strict=True):
                figures.setdefault(("method", length), []).append(ref["decode_tps"])
                figures.setdefault(("method-prefill", length), []).append(ref["prefill_tps"])
        for length in args.prompt_lengths:
            med = {key: statistics.median(values) for (key, n), values in figures.items() if n == length}
            f_ratio = med["foundry-local"] / med["method"]
            d_ratio = med["ort-genai"] / med["method"]
            worst = max(worst, abs(f_ratio - 1), abs(d_ratio - 1))
            print(f"{name:<14} {length:>6} {med['method']:>8.1f} {med['foundry-local']:>8.1f} {med['ort-genai']:>8.1f} "
                  f"{f_ratio:>9.3f} {d_ratio:>9.3f}  {med['method-prefill']:.0f}/{med['direct-prefill']:.0f}",
                  flush=True)
    if args.rounds:
        print(f"Largest decode difference across processes: {worst:.1%}")
    print(f"\nPaired on one loaded model, {args.pairs} alternating runs per length (same prompt ids):")
    print(f"{'model':<14} {'prompt':>6} {'method':>8} {'toolkit':>8} {'ratio':>7}")
    worst_paired = 0.0
    for name in args.names:
        job = json.dumps({"lengths": args.prompt_lengths, "gen": args.gen_tokens, "pairs": args.pairs})
        done = subprocess.run([sys.executable, __file__, "--paired-child", str(models_root(args.cache_dir) / name),
                               job], capture_output=True, text=True, check=True)
        for length, result in zip(args.prompt_lengths, json.loads(done.stdout.strip().splitlines()[-1]), strict=True):
            ratio = result["toolkit_tps"] / result["method_tps"]
            worst_paired = max(worst_paired, abs(ratio - 1))
            print(f"{name:<14} {length:>6} {result['method_tps']:>8.1f} {result['toolkit_tps']:>8.1f} {ratio:>7.3f}",
                  flush=True)
    verdict = "PASS" if max(worst, worst_paired) <= TOLERANCE else "FAIL"
    across = f"across processes {worst:.1%}" if args.rounds else "across processes not run (--rounds 0)"
    print(f"{verdict}: largest decode difference from ONNX Runtime GenAI's method {max(worst, worst_paired):.1%} "
          f"(paired {worst_paired:.1%}, {across}; tolerance {TOLERANCE:.0%})")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
