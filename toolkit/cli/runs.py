"""Run commands: rerun, recommend, compare, report."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from slmops.toolkit.cli.common import Command, Group, json_option, out_option, print_json
from slmops.toolkit.cli.pipeline import say_what_differs
from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import deployment_choice
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.presentation import compare, report

COMMANDS = (
    Command(Group.RUNS, "rerun", "run a report again as written (its params.json); first says what differs"),
    Command(Group.RUNS, "recommend", "the precision to deploy from a run, and why the others lost"),
    Command(Group.RUNS, "compare", "two runs side by side; exit 1 on a regression"),
    Command(Group.RUNS, "report", "rewrite a run's index.html; --zip packs the run folder to send"),
)


def _no_run(folder: object, what: str = "params.json") -> InputError:
    return InputError(f"No run folder at {folder} (no {what}); use a folder that `slmops demo` or `slmops run` wrote.")


def cmd_rerun(args: argparse.Namespace) -> int:
    params_file = Path(args.run_dir) / "params.json"
    if not params_file.is_file():
        raise _no_run(args.run_dir)
    params = pipeline.load_params(params_file)
    say_what_differs(params_file, params)
    index = pipeline.run_pipeline(params, args.out)
    if args.json:
        print_json({"report": index, "run_dir": index.parent})
    else:
        print(f"Report: {index}")
    return 0


def _fail_on(text: str) -> tuple[str, float]:
    """An argparse type: ``FIGURE=LIMIT`` for ``slmops compare --fail-on``."""
    name, _, value = text.partition("=")
    if name not in compare.FAIL_ON:
        raise argparse.ArgumentTypeError(f"{name!r} is not a quality figure; use {', '.join(compare.FAIL_ON)}")
    try:
        limit = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write FIGURE=LIMIT, e.g. top1_agreement=0.01") from None
    if not 0 <= limit < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r}: the limit must be a number >= 0")
    return name, limit


def cmd_compare(args: argparse.Namespace) -> int:
    runs = []
    for folder in (args.run_a, args.run_b):
        if not (Path(folder) / "params.json").is_file():
            raise _no_run(folder)
        runs.append(compare.load_run(folder))
    result = compare.compare_runs(*runs, fail_on=dict(args.fail_on or []))
    out = Path(args.out or Path(args.run_b).parent / f"compare-{runs[0].name}-vs-{runs[1].name}")
    page = compare.write_comparison(result, out)
    if args.json:
        print_json({"report": page, "passed": result.passed, "status": result.status, "headline": result.headline,
                    "comparison": codec.dump(result)})
        return 0 if result.passed else 1
    changed = [v for v in result.verdicts if v.change != "same"]
    print(result.headline)
    print(f"{result.b} against {result.a}: {len(result.params)} parameters differ, "
          f"{len(changed)} of {len(result.verdicts)} verdicts changed, "
          f"{sum(t.judgement.judged in ('faster', 'slower') for t in result.timings)} of {len(result.timings)} timings "
          "moved beyond the noise")
    for row in result.params:
        print(f"differs: parameter {row.parameter}: {row.a} -> {row.b}")
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
    decision = deployment_choice.recommend(compare.load_run(args.run_dir))
    if args.json:
        print_json(codec.dump(decision))
    else:
        print(decision.sentence)
    return 0 if decision.choice else 1


def cmd_report(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    if not (run / "params.json").is_file():  # never write an index into a folder that is not a run
        raise InputError(f"No run folder at {run} (no params.json); run `slmops demo` or "
                         f"`slmops run --params FILE --out {run}`.")
    index = report.write_index(run)
    target = None
    if args.zip:
        folder = Path(args.out) if args.out else run.resolve().parent
        target = report.archive(run, folder / f"{run.resolve().name}.zip", with_models=args.with_models)
    if args.json:
        print_json({"report": index, "archive": target})
        return 0
    print(f"Report: {index}")
    if target:
        print(f"Archive: {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return 0


def add_commands(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands to ``sub``."""
    about = {c.name: c.summary for c in COMMANDS}

    p = sub.add_parser("rerun", parents=parents, description=about["rerun"] + ".")
    p.add_argument("run_dir", metavar="RUN", help="a run folder, e.g. outputs/demo")
    out_option(p, "the new run folder, e.g. outputs/demo-again", required=True)
    json_option(p, "the report's path")
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser(
        "compare", parents=parents,
        description="Parameters, inputs and versions that differ; sizes, quality against FP32 and every checklist "
        "verdict with deltas (changes first); timings judged against both runs' measured spread. Writes "
        "compare.html and compare.json. Exit code 1 when a verdict got worse or a quality figure moved too far, "
        "so CI can gate a release of a fine-tune.")
    p.add_argument("run_a", metavar="RUN_A", help="the baseline run folder")
    p.add_argument("run_b", metavar="RUN_B", help="the run to judge against it")
    out_option(p, "folder for compare.html and compare.json (default: compare-A-vs-B beside RUN_B)")
    p.add_argument("--fail-on", type=_fail_on, nargs="+", metavar="FIGURE=LIMIT",
                   help="how far a quality figure may move the wrong way: "
                   + ", ".join(f"{k}={v}" for k, v in compare.FAIL_ON.items())
                   + " by default (top1_agreement and kl_divergence absolute, perplexity relative; top1 and kl "
                   "are accepted for the first two)")
    json_option(p, "the comparison")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("recommend", parents=parents,
                       description="The smallest, then fastest, precision that loses no checklist item to the "
                       "others (a miss every precision shares is the model's own), read from the run's test.json "
                       "and bench.json; for each other precision the reason it lost (a "
                       "failed check, size, speed). Exit 1 when nothing passes.")
    p.add_argument("run_dir", metavar="RUN", help="a run folder, e.g. outputs/demo")
    json_option(p, "the decision and every precision's figures")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("report", parents=parents, description=about["report"] + " (model weights left out unless "
                       "--with-models).")
    p.add_argument("run_dir", metavar="RUN", help="a run folder, e.g. outputs/demo")
    p.add_argument("--zip", action="store_true", help="also write RUN.zip (model weights left out)")
    p.add_argument("--with-models", action="store_true", help="keep the ONNX model weights in the archive")
    out_option(p, "folder for RUN.zip (default: the folder that holds the run folder)")
    json_option(p, "the paths written")
    p.set_defaults(func=cmd_report)
