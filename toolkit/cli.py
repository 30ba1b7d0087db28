"""The ``slmops`` command: a thin shell over the toolkit's functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from toolkit import settings
from toolkit.errors import SlmopsError

EPILOG = "Foundry Local's cache: --cache-dir, else $SLMOPS_CACHE_DIR, else ~/.slmops/foundry. Nothing uses the network."


def _cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="Foundry Local model cache (default: $SLMOPS_CACHE_DIR or ~/.slmops/foundry)")


def cmd_bundled(args: argparse.Namespace) -> int:
    from toolkit.models import bundled_model

    print(bundled_model(rebuild=args.rebuild))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from toolkit.convert import ConvertSpec, Int4Options, convert

    spec = ConvertSpec(Path(args.model_dir), Path(args.out), args.precision, args.method,
                       Int4Options(args.block_size, not args.asymmetric, args.accuracy_level),
                       args.execution_provider)
    result = convert(spec, dry_run=args.dry_run)
    if args.dry_run:
        print(f"Wrote {result.manifest['config']} (dry run: nothing converted)")
        return 0
    m = result.manifest
    print(f"{m['precision']} model in {result.output_dir}: {m['size_mb']:.1f} MB "
          f"({m['size_ratio_vs_source']:.2f}x the source; tutorial table x{m['tutorial_size_ratio']}), "
          f"{m['wall_s']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from toolkit.register import ModelConfig, register

    config = None
    if args.max_length is not None:
        config = ModelConfig(max_length=args.max_length)
    reg = register(args.onnx_dir, args.name, version=args.version, template=args.template, model_config=config,
                   cache=args.cache_dir, force=args.force, description=args.description)
    print(f"Registered {reg.model_id} ({reg.template} template) at {reg.path}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from toolkit.register import list_models

    rows = list_models(args.cache_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"No models registered in {settings.cache_dir(args.cache_dir)}.")
        return 0
    print(f"{'NAME':<28} {'ID':<30} {'PRECISION':<9} {'SIZE MB':>8}  REGISTERED  FOLDER")
    for row in rows:
        size = f"{row['size_mb']:.1f}" if row["size_mb"] is not None else "-"
        print(f"{row['name']:<28} {row['model_id']:<30} {row['precision']:<9} {size:>8}  "
              f"{'yes' if row['registered'] else 'no':<10}  {'yes' if row['folder'] else 'no'}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from toolkit.foundry import Generation, LoadedModel

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
    from toolkit.evaluate import load_cases, run_checklist, write_report

    cases = load_cases(args.cases)
    results = [r for name in args.names for r in run_checklist(name, cases=cases, cache=args.cache_dir)]
    report = write_report(results, args.out)
    for r in results:
        print(f"{'PASS' if r.passed else 'FAIL'}  {r.model:<20} {r.check:<7} {r.case:<20} {r.threshold}")
    print(f"Wrote {args.out}: {'all checks passed' if report['passed'] else 'some checks FAILED'}")
    return 0 if report["passed"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from toolkit.bench import bench, write_results

    rows = bench(args.names, prompt_lengths=args.prompt_lengths, gen_tokens=args.gen_tokens, repeats=args.repeats,
                 warmup=args.warmup, cache=args.cache_dir)
    write_results(rows, args.out)
    print(f"{'MODEL':<24} {'PROMPT':>6} {'TTFT ms':>8} {'DECODE tok/s':>13} {'E2E ms':>8} {'RSS MB':>7}")
    for r in rows:
        print(f"{r.model:<24} {r.prompt_tokens:>6} {r.ttft_ms:>8.1f} {r.decode_tps:>13.1f} {r.e2e_ms:>8.1f} "
              f"{r.peak_rss_mb:>7.0f}")
    print(f"Wrote {Path(args.out) / 'bench.json'} and bench.csv")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from toolkit.doctor import diagnose

    checks = diagnose(Path(args.model_dir))
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    return 0 if all(c.ok for c in checks) else 1


def cmd_run(args: argparse.Namespace) -> int:
    from toolkit.pipeline import load_params, run_pipeline

    index = run_pipeline(load_params(args.params), args.out)
    print(f"Report: {index}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from toolkit.pipeline import demo

    index = demo(args.out)
    print(f"Report: {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from toolkit.convert import Method, Precision
    from toolkit.templates import Template

    parser = argparse.ArgumentParser(
        prog="slmops", description="Fine-tuned small language model -> quantized ONNX -> Foundry Local, tested "
        "and benchmarked.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole pipeline on the bundled model (fp32, int8, int4)", epilog=EPILOG)
    p.add_argument("--out", default="outputs/demo", help="run folder (default: outputs/demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="the four notebooks with papermill, parameters from a YAML/JSON file")
    p.add_argument("--params", required=True, help="YAML/JSON file of notebook parameters")
    p.add_argument("--out", required=True, help="run folder, e.g. outputs/my-run")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("convert", help="convert one Hugging Face model to ONNX at one precision")
    p.add_argument("model_dir", help="Hugging Face model folder (config.json, safetensors, tokenizer)")
    p.add_argument("--precision", choices=[x.value for x in Precision], default="int4")
    p.add_argument("--out", required=True, help="output folder (replaced only when the conversion succeeds)")
    p.add_argument("--method", choices=[x.value for x in Method], default="builder",
                   help="builder: ONNX Runtime GenAI builder; olive: olive auto-opt; olive-config: olive run --config")
    p.add_argument("--block-size", type=int, default=32, help="INT4 block size: 16, 32, 64, 128 or 256")
    p.add_argument("--asymmetric", action="store_true", help="INT4 with zero points (uint4)")
    p.add_argument("--accuracy-level", type=int, default=4, help="INT4 MatMul compute: 4 int8, 3 bf16, 2 fp16, 1 fp32")
    p.add_argument("--execution-provider", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dry-run", action="store_true", help="with --method olive-config: write the config only")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("register", help="register a converted model with Foundry Local", epilog=EPILOG)
    p.add_argument("onnx_dir", help="folder written by `slmops convert`")
    p.add_argument("--name", required=True, help="model name: letters, digits, '.', '_', '-'")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--template", choices=[t.value for t in Template if t is not Template.CUSTOM], default="auto",
                   help="prompt template; auto derives it from the model's own chat template")
    p.add_argument("--max-length", type=int, help="ModelConfig max_length (default: min(2048, context))")
    p.add_argument("--description", default="")
    p.add_argument("--force", action="store_true", help="replace a different model registered under this name")
    _cache_option(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("ls", help="list registered models (as `foundry cache ls`)", epilog=EPILOG)
    p.add_argument("--json", action="store_true")
    _cache_option(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("chat", help="interactive streaming chat (as `foundry model run`)", epilog=EPILOG)
    p.add_argument("name", help="registered model name (or NAME:VERSION)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    _cache_option(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("test", help="the quality checklist; exit code 1 when a check fails", epilog=EPILOG)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--cases", help="JSONL cases file (default: the bundled SmolLM2 cases)")
    p.add_argument("--out", default="test.json")
    _cache_option(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("bench", help="benchmark registered models; writes bench.json, bench.csv", epilog=EPILOG)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--prompt-lengths", type=int, nargs="+", default=[16, 128])
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=".", help="folder for bench.json and bench.csv")
    _cache_option(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("doctor", help="check a model folder for everything Foundry Local needs")
    p.add_argument("model_dir")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("bundled", help="print the bundled model's Hugging Face folder (built on first use)")
    p.add_argument("--rebuild", action="store_true")
    p.set_defaults(func=cmd_bundled)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slmops`` console script."""
    settings.apply_offline_env()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SlmopsError as exc:
        print(f"slmops: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slmops: interrupted; nothing half-written was left in place.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
