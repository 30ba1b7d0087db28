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
from IPython.display import display

from slmops.toolkit.domain import deployment_choice
from slmops.toolkit.orchestration import run_stages, runs
from slmops.toolkit.presentation import bench_page, compare
from slmops.toolkit.stages import checklist
from slmops.widgets import RunPanel

run = runs.open_run(run_file, globals())  # papermill's injected parameters, if any, override the run file
panel = RunPanel("benchmark", lambda: run_stages.bench(run),
                 show=lambda results: bench_page.benchmark_outputs(
                     results, checklist.read_report(run.dir / "test.json"),
                     deployment_choice.recommend(compare.load_run(run.dir)), run.dir),
                 interactive=run.interactive)
display(panel) if run.interactive else None
results = panel.run()
