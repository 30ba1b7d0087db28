"""Benchmark: what each conversion route costs against running the builder directly.

Runs, side by side and interleaved (machines here are shared and noisy), for one model
and precision:

* ``direct builder``: ``python -m onnxruntime_genai.models.builder`` with exactly the
  arguments our builder route passes (the baseline);
* ``slmops builder``: :func:`slmops.toolkit.stages.convert.convert` with ``method=builder``, end to end
  (validation, fingerprint, manifest, atomic move included);
* ``slmops olive`` / ``slmops olive-config``: the two Olive routes, end to end;
* ``direct olive``: ``python -m olive auto-opt ... --disable_telemetry`` as Olive
  documents it, to show what Olive's telemetry costs offline.

Prints the median wall time of each and its ratio to the direct builder. Usage::

    .venv/bin/python benchmarks/convert_routes.py                 # tiny random model
    .venv/bin/python benchmarks/convert_routes.py --model bundled --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slmops.toolkit.core import settings, workers
from slmops.toolkit.domain.options import Method, Precision
from slmops.toolkit.stages import convert
from slmops.toolkit.stages.convert_plan import ConvertSpec, builder_command, olive_command

ROUTES = ("direct builder", "slmops builder", "direct olive", "slmops olive", "slmops olive-config")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _without_launcher(command: list[str]) -> list[str]:
    """``python -m MODULE ...`` itself, without the toolkit's child launcher in between."""
    assert command[1:3] == ["-m", "slmops.toolkit.core.workers"]
    return [command[0], "-m", *command[3:]]


def _direct_builder(spec: ConvertSpec, work: Path) -> None:
    out = work / "direct-builder"
    command = _without_launcher(builder_command(spec, out, work / "cache"))
    workers.run_tool(command, log_path=work / "direct-builder.log")
    shutil.rmtree(out)


def _direct_olive(spec: ConvertSpec, work: Path) -> None:
    out = work / "direct-olive"
    command = _without_launcher(olive_command(spec, out))
    command[2] = "olive"  # Olive's own CLI instead of our telemetry-off launcher
    workers.run_tool(command, log_path=work / "direct-olive.log", cwd=work)
    shutil.rmtree(out)
    shutil.rmtree(work / ".olive-cache", ignore_errors=True)


def _slmops(spec: ConvertSpec, method: str) -> None:
    convert.convert(ConvertSpec(spec.model_dir, spec.output_dir, spec.precision, Method(method)), progress=False)
    shutil.rmtree(spec.output_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (random, built here), 'bundled', or a HF folder")
    parser.add_argument("--precision", default="int4", choices=[p.value for p in Precision])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    settings.apply_offline_env()

    with tempfile.TemporaryDirectory(prefix="slmops-bench-convert-") as tmp:
        work = Path(tmp)
        if args.model == "tiny":
            from tests.models import make_tiny_model

            model = make_tiny_model(work / "tiny")
        elif args.model == "bundled":
            from slmops.toolkit.weights.bundled import bundled_model

            model = bundled_model()
        else:
            model = Path(args.model)
        spec = ConvertSpec(model, work / "out", Precision(args.precision))
        runs = {
            "direct builder": lambda: _direct_builder(spec, work),
            "slmops builder": lambda: _slmops(spec, "builder"),
            "direct olive": lambda: _direct_olive(spec, work),
            "slmops olive": lambda: _slmops(spec, "olive"),
            "slmops olive-config": lambda: _slmops(spec, "olive-config"),
        }
        times: dict[str, list[float]] = {route: [] for route in args.routes}
        for repeat in range(args.repeats):
            # Alternate the order so drift on a shared machine hits every route alike.
            order = args.routes if repeat % 2 == 0 else list(reversed(args.routes))
            for route in order:
                times[route].append(_timed(runs[route]))
                print(f"  repeat {repeat + 1}: {route:<20} {times[route][-1]:7.2f} s", flush=True)

    median = {route: statistics.median(values) for route, values in times.items()}
    base = median.get("direct builder")
    print(f"\n{args.model} model, {args.precision}, {args.repeats} interleaved repeats (median wall time)")
    print(f"{'route':<22}{'median s':>10}{'min s':>9}{'x direct builder':>18}")
    for route, values in times.items():
        ratio = f"{median[route] / base:.3f}" if base else "-"
        print(f"{route:<22}{median[route]:>10.2f}{min(values):>9.2f}{ratio:>18}")
    if "direct olive" in median and "slmops olive" in median:
        print(f"\nslmops olive / direct olive (telemetry off from the start): "
              f"{median['slmops olive'] / median['direct olive']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "precision": args.precision, "times_s": times,
                                         "median_s": median}, indent=2))


if __name__ == "__main__":
    main()
