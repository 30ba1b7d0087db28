# %% [markdown]
# # 4. Benchmark
#
# Measures each precision through Foundry Local (in-process, what users deploy) and through ONNX Runtime GenAI
# directly (the reference: exactly the asked number of tokens with EOS ignored, as ONNX Runtime GenAI's
# `benchmark_e2e.py`), each model and engine in its own process, with the same prompt token ids and a recorded
# thread count: model load time and memory, time to first token, prefill and decode tokens/s (mean ± sd, p50, p90,
# coefficient of variation), end-to-end latency, peak process RSS, process and system CPU, the harness's own
# overhead, and size on disk. Sweeps: `prompt_lengths`, `gen_lengths`, `threads`. `slmops bench` runs this same
# stage. Then the recommendation: the smallest, then fastest, precision that loses no checklist item to the others
# (from `test.json` and `bench.json`), and why each other one lost.

# %% tags=["parameters"]
run_file = "params.json"  # this run's parameters; papermill's injected parameters override them

# %%
from IPython.display import Markdown, display

from slmops.toolkit.domain import deployment_choice
from slmops.toolkit.orchestration import run_stages, runs
from slmops.toolkit.presentation import bench_text, compare, plots, report
from slmops.toolkit.stages import checklist
from slmops.widgets import RunPanel

run = runs.open_run(run_file, globals())  # papermill's injected parameters, if any, override the run file
panel = RunPanel("benchmark", lambda: run_stages.bench(run),
                 show=lambda results: (
                     Markdown("\n".join(f"- {line}" for line in bench_text.summary_lines(
                         results, checklist.read_report(run.dir / "test.json"))
                         + bench_text.warnings(results.rows))),
                     # Three tables of a dozen columns or fewer: each fits the notebook's width.
                     report.table(list(results.rows), [
                         "model", "engine", "prompt_tokens", "gen_tokens", "threads", "ttft_ms", "ttft_ms_p90",
                         "prefill_tps", "decode_tps", "decode_tps_sd", "decode_cv", "noisy"]),
                     report.table(list(results.rows), [
                         "model", "engine", "prompt_tokens", "gen_tokens", "tpot_ms", "tpot_ms_p50", "tpot_ms_p90",
                         "e2e_ms", "harness_overhead_pct"]),
                     report.table(list(results.rows), [
                         "model", "engine", "size_mb", "load_s", "load_rss_mib", "peak_rss_mib", "cpu_percent",
                         "system_cpu_percent"]),
                     Markdown("## Recommendation"),
                     Markdown(f"**{deployment_choice.recommend(compare.load_run(run.dir)).sentence}**"),
                     report.table(deployment_choice.recommend(compare.load_run(run.dir)).rows),
                     Markdown("Each precision against FP32 per case family (McNemar's exact test):"),
                     report.table(deployment_choice.recommend(compare.load_run(run.dir)).paired),
                     Markdown("Foundry Local against ONNX Runtime GenAI directly (decode tokens/s; 1.0 means no "
                              "overhead):"),
                     report.table(list(results.engine_ratios)),
                     Markdown("## Speed, latency and memory"),
                     *(report.figure(ax, run.dir / f"{stem}.png") for stem, ax in plots.bench_figures(
                         results, checklist.read_report(run.dir / "test.json")).items()),
                     Markdown("Decode reads every weight once per token, so measured memory bandwidth / model size "
                              "bounds decode speed:"),
                     report.table(list(results.decode_ceiling))),
                 interactive=run.interactive)
display(panel) if run.interactive else None
results = panel.run()
