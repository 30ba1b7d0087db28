"""Pipeline commands: demo, run, convert, recipes, finetune, register, test, bench."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from slmops.toolkit import endpoint
from slmops.toolkit.cli.common import (
    Command,
    Group,
    print_json,
)
from slmops.toolkit.cli.pipeline_parsers import NO_REFERENCE, PARSERS
from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import recipe_choice, run_params
from slmops.toolkit.domain.options import (
    INT4_RECIPES,
    BranchLayout,
)
from slmops.toolkit.domain.results.bench import BenchFile
from slmops.toolkit.domain.results.checklist import Thresholds
from slmops.toolkit.domain.results.checklist_file import dump_report
from slmops.toolkit.domain.results.conversion import Manifest, ParityGate
from slmops.toolkit.domain.results.registration import read_registered
from slmops.toolkit.domain.run_params import MAX_SWEEP_RUNS
from slmops.toolkit.domain.templates import load_prompt_template
from slmops.toolkit.orchestration import cluster, pipeline, recipes, run_stages, runs, workspace
from slmops.toolkit.presentation import bench_text, checklist_tables, plots, report
from slmops.toolkit.presentation.tables import text_table
from slmops.toolkit.stages import checklist, convert, finetune, register
from slmops.toolkit.stages.convert_plan import ConvertSpec

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
    spec = ConvertSpec(Path(args.model_dir), Path(args.out), args.precision, args.method,
                               int4_options(args), args.execution_provider, Path(args.base) if args.base else None,
                               keep_adapter=args.keep_adapter, adapter_in_graph=args.adapter_in_graph,
                               error_rank=args.error_rank, branch_bits=args.branch_bits,
                               branch_layout=BranchLayout(args.branch_layout),
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
    weights = ", ".join(f"{kind} {count / 1e6:.1f}M" for kind, count in m.weights.parameters.items())
    print(f"{m.precision} model in {folder}: {m.size_mb:.1f} MB = {m.size_ratio_vs_fp32:.3f}x FP32 "
          f"({m.fp32_size_from}; tutorial table x{m.tutorial_size_ratio}), {m.wall_s:.1f} s, "
          f"peak RSS {m.peak_rss_mib:.0f} MiB (predicted {m.memory.predicted_peak_mib:.0f} MiB)\n"
          f"weights: {weights}; LM head {m.weights.lm_head}, embeddings {m.weights.embeddings}")
    adapter = m.adapter
    if adapter and m.kept_apart:
        files = ", ".join(f"{f.path} ({f.bytes / 1e6:.3f} MB, {f.bits_per_weight:.2f} bits per weight with "
                          "the base)" for f in m.adapter_files)
        print(f"LoRA adapter {adapter.path} (rank {adapter.rank}, {', '.join(adapter.target_modules)}) kept "
              f"apart from its base {adapter.base}: {files}; base {m.base_size_mb:.1f} MB, "
              f"{m.bits_per_weight:.2f} bits per weight counting the adapter")
    elif adapter and adapter.kept_apart:  # no adapter file: a side branch in the graph
        print(f"LoRA adapter {adapter.path} (rank {adapter.rank}, {', '.join(adapter.target_modules)}) kept "
              f"as an FP16 side branch in the graph over its base {adapter.base}: base {m.base_size_mb:.1f} MB, "
              f"{m.bits_per_weight:.2f} bits per weight counting the adapter "
              f"({m.bits_per_weight_without_adapter:.2f} without)")
    elif adapter:
        print(f"LoRA adapter {adapter.path} (rank {adapter.rank}, {', '.join(adapter.target_modules)}) merged "
              f"into {adapter.base} by {adapter.merge_route}")
    gate = m.parity or ParityGate()
    for check in gate.checks:
        print(f"parity of the {check.build} model with the source in {check.reference}: {check.in_words()}")
    for name, other in gate.more_adapters.items():
        for check in other.checks:
            print(f"parity of the {check.build} model with adapter {name} active, against its merge in "
                  f"{check.reference}: {check.in_words()}")
    return 0


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
    try:
        best = recipe_choice.recommend_recipe(results)
    except ValueError as exc:  # only LoRA-in-the-graph builds named, or every merged one refused: shown, not ranked
        best = (None, f"No recipe to recommend: {exc}.")
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
                                  repetition_penalty=args.repetition_penalty, threads=args.threads,
                                  prompt_bits=args.prompt_bits)
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


def registered_names(args: argparse.Namespace) -> list[str]:
    """The models named on the command line, else those the run in ``--out`` registered (its ``registered.json``)."""
    return args.names or [m.name for m in read_registered(Path(args.out) / "registered.json")]


def cli_run(args: argparse.Namespace, **params: object) -> runs.Run:
    """The run in ``--out``: its own ``params.json`` when it is a run folder, with the options given on top."""
    out = Path(args.out)
    given = {k: v for k, v in params.items() if v is not None}
    if not (out / runs.RUN_FILE).is_file():
        # Not a run folder: a plain set of models, checked on the bundled cases unless --cases names others.
        given.setdefault("finetune", False)
        return runs.Run(run_params.parse({**given, "run_dir": str(out.resolve())}))
    return runs.open_run(out / runs.RUN_FILE, given)


def cmd_test(args: argparse.Namespace) -> int:
    run = cli_run(args, cases=str(Path(args.cases).resolve()) if args.cases else None, seed=args.seed,
                  checklist_requests=args.requests, cache_dir=args.cache_dir)
    limits = Thresholds(leak_mib_per_100=args.max_leak, slowdown=args.max_slowdown, top1_min=args.min_top1)
    reference = None if args.reference == NO_REFERENCE else args.reference or run_stages.AUTO
    written = run_stages.test(run, names=args.names or None, reference=reference, thresholds=limits,
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


def _print_bench(rows: list, results: BenchFile, quality: dict | None) -> None:
    print(text_table([{**vars(r), "threads": r.threads or "default"} for r in rows], [
        ("model", "MODEL"), ("engine", "ENGINE"), ("prompt_tokens", "PROMPT"), ("gen_tokens", "GEN", ".0f"),
        ("threads", "THREADS"), ("ttft_ms", "TTFT ms", ".1f"), ("decode_tps", "DECODE tok/s", ".1f"),
        ("decode_tps_sd", "± sd", ".1f"), ("decode_cv", "CV", ".1%"), ("e2e_ms", "E2E ms", ".1f"),
        ("peak_rss_mib", "RSS MiB", ".0f"), ("cpu_percent", "CPU%", ".0f"), ("system_cpu_percent", "SYS%", ".0f")]))
    for ratio in results.engine_ratios:
        print(f"{ratio.model} at ~{ratio.target_prompt_tokens} prompt / {ratio.target_gen_tokens} generated "
              f"tokens: Foundry Local decodes at {ratio.ratio:.3f}x ONNX Runtime GenAI direct")
    for line in results.ttft_breakdown:
        print(f"{line.model} at ~{line.target_prompt_tokens} prompt tokens: Foundry Local's first token "
              f"{line.foundry_ttft_ms:.1f} ms ({line.ratio:.2f}x direct) = session {line.setup_ms:.2f} + "
              f"template and tokenizer {line.template_ms:.2f} + "
              + (f"prefill and first token (direct) {line.prefill_ms:.1f} + harness {line.harness_ms:.2f} + "
                 f"runtime other {line.runtime_other_ms:+.1f} ms" if line.runtime_other_ms is not None else
                 f"prefill and runtime together {line.prefill_ms:.1f} + harness {line.harness_ms:.2f} ms "
                 f"({line.unmeasured})"))
    for endpoint_ratio in results.endpoint_ratios:
        print(f"{endpoint_ratio.model} at ~{endpoint_ratio.target_prompt_tokens} prompt / "
              f"{endpoint_ratio.target_gen_tokens} generated tokens: through HTTP it decodes at "
              f"{endpoint_ratio.decode_ratio:.3f}x in-process, first token {endpoint_ratio.ttft_overhead_ms:+.1f} ms")
    for line in bench_text.summary_lines(results, quality):
        print(line)
    print(f"Harness overhead: at most {results.max_harness_overhead_pct:.3f}% of decode time")


def cmd_bench(args: argparse.Namespace) -> int:
    run = cli_run(args, prompt_lengths=args.prompt_lengths, gen_lengths=args.gen_tokens, threads=args.threads,
                  repeats=args.repeats, warmup=args.warmup, cache_dir=args.cache_dir)
    names = args.names or None
    if "endpoint" in args.engines:  # the endpoint runs in its own process, as an application would reach it
        names = registered_names(args)
        with endpoint.background(names, cache=args.cache_dir) as server:
            results = run_stages.bench(run, names=names, engines=tuple(args.engines),
                                      endpoint=(server.url, server.api_key))
    else:
        results = run_stages.bench(run, names=names, engines=tuple(args.engines))
    rows = results.rows
    out = run.dir
    quality = checklist.read_report(out / "test.json")
    for stem, ax in plots.bench_figures(results, quality).items():
        report.save_figure(ax, out / f"{stem}.png")
    for warning in bench_text.warnings(rows):
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print_json({"file": out / "bench.json", **codec.dump(results), "warnings": bench_text.warnings(rows)})
        return 0
    _print_bench(rows, results, quality)
    print(f"Wrote {out / 'bench.json'}, bench.csv and plots")
    return 0


def add_commands(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands to ``sub``."""
    about = {c.name: c.summary for c in COMMANDS}
    handlers = {"demo": cmd_demo, "run": cmd_run, "lab": cmd_lab, "finetune": cmd_finetune, "convert": cmd_convert,
                "recipes": cmd_recipes, "register": cmd_register, "test": cmd_test, "bench": cmd_bench}
    for name, parser in PARSERS.items():
        parser(sub, parents, about).set_defaults(func=handlers[name])
