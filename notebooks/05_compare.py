# %% [markdown]
# # 5. Compare two runs
#
# Puts two runs side by side: a rerun of a report, a new fine-tune, a new release of the runtime. Parameters,
# inputs and package versions that differ; sizes, quality against FP32 and every checklist verdict with its delta,
# changes first; timings judged against both runs' measured spread, so a change inside the noise is never called a
# regression. `slmops compare RUN_A RUN_B` does the same from a shell and exits 1 on a regression.
#
# Set `run_a` below to the run to compare this one with, e.g. the folder `slmops demo` wrote (`outputs/demo`).

# %% tags=["parameters"]
run_file = "params.json"  # this run's parameters; papermill's injected parameters override them
run_a: str = ""  # the baseline run folder (one slmops demo, run or lab wrote); empty: set it first
run_b: str = ""  # the run to judge against it; empty means this run (the folder of the run file)
out_dir: str = ""  # folder for compare.html and compare.json; empty means RUN_B/compare

# %%
from IPython.display import Markdown, display

from slmops.toolkit.orchestration import run as stages
from slmops.toolkit.presentation import report

stages.show_errors_in_one_line()
result = stages.compare(run_a, run_b, out_dir, run_file=run_file)
display(Markdown(f"**{result.headline}**"))  # pass / warn / fail, agreeing with every table below
report.table(result.summary)

# %% [markdown]
# ## What differs going in

# %%
display(report.table(result.params), Markdown("\n".join(f"- {line}" for line in result.inputs + result.machine)
                                              or "Inputs and versions: the same."))

# %% [markdown]
# ## Checklist verdicts (changes first), sizes and quality

# %%
display(report.table(result.verdicts), report.table(result.sizes), report.table(result.quality))

# %% [markdown]
# ## Timings, judged against both runs' noise

# %%
report.table(result.timings)
