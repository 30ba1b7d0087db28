# %% [markdown]
# # 5. Compare two runs
#
# Puts two runs side by side: a rerun of a report, a new fine-tune, a new release of the runtime. Parameters,
# inputs and package versions that differ; sizes, quality against FP32 and every checklist verdict with its delta,
# changes first; timings judged against both runs' measured spread, so a change inside the noise is never called a
# regression. `slmops compare RUN_A RUN_B` does the same from a shell and exits 1 on a regression.
#
# Pick the baseline run below (the runs beside this one are listed; any folder `slmops demo`, `slmops run` or
# `slmops lab` wrote will do, e.g. `outputs/demo`), then press **Run compare**: this run is judged against it.
# A headless run (papermill) compares `run_a` with `run_b` at once.

# %% tags=["parameters"]
run_file = "params.json"  # this run's parameters; papermill's injected parameters override them
run_a: str = ""  # the baseline run folder (one slmops demo, run or lab wrote); empty: set it first
run_b: str = ""  # the run to judge against it; empty means this run (the folder of the run file)
out_dir: str = ""  # folder for compare.html and compare.json; empty means RUN_B/compare

# %%
from IPython.display import Markdown, display

from slmops.toolkit.orchestration import run_stages, runs
from slmops.toolkit.presentation import report
from slmops.widgets import RunPanel, RunPicker

runs.show_errors_in_one_line()
interactive = runs.waits_for_buttons(run_file, globals())  # papermill's injected parameters, if any, win
baseline = RunPicker(run_a, beside=run_b or run_file)  # the runs beside this one, offered
panel = RunPanel("compare", lambda: run_stages.compare(baseline.value.folder, run_b, out_dir, run_file=run_file),
                 show=lambda result: (
                     Markdown(f"**{result.headline}**"),  # pass / warn / fail, agreeing with every table below
                     report.table(result.summary),
                     Markdown("## What differs going in"),
                     report.table(result.params) if result.params else Markdown("Parameters: the same."),
                     Markdown("\n".join(f"- {line}" for line in result.inputs + result.machine)
                              or "Inputs, package versions and machine: the same."),
                     Markdown("## Checklist verdicts (changes first), sizes and quality"),
                     report.table(result.verdicts), report.table(result.sizes), report.table(result.quality),
                     Markdown("## Timings, judged against both runs' noise"),
                     report.table(result.timings) if result.timings else Markdown("No timing measured in both.")),
                 interactive=interactive)
display(baseline, panel) if interactive else None
comparison = panel.run()
