# %% [markdown]
# # 3. Quality checklist
#
# The tutorial's checklist as checks, each with a threshold, a measured value and a verdict, against every
# registered precision: domain answers and response format from a cases file, memory over many requests, time per
# output token from short inputs to half the context, edge cases and invalid input (run in a child process with a
# timeout, so a crash or hang is caught), and quality against the FP32 build. Greedy decoding with a recorded seed
# keeps results repeatable. When the run deploys a fine-tune, the negative control: the base model (not fine-tuned)
# asked the same domain cases; if it passes them, they test nothing about the fine-tune. `slmops test` runs this
# same stage.

# %% tags=["parameters"]
run_file = "params.json"  # this run's parameters; papermill's injected parameters override them

# %%
from IPython.display import Markdown, display

from slmops.toolkit.orchestration import run_stages, runs
from slmops.toolkit.presentation import checklist_tables, plots, report
from slmops.widgets import RunPanel

run = runs.open_run(run_file, globals())  # papermill's injected parameters, if any, override the run file
# The models notebook 02 registered (read when the stage starts), FP32 as the reference, the base as control.
panel = RunPanel("test", lambda: run_stages.test(run),
                 show=lambda summary: (
                     report.table(checklist_tables.summary_rows(summary)),
                     Markdown("## The negative control"),
                     Markdown(run_stages.control_words(summary)),
                     report.table(checklist_tables.before_after(summary.control, summary.models[0])) if summary.control
                     else None,
                     Markdown("## What the fine-tune forgot\n\nGeneral questions the base model answers correctly "
                              "(its own answers are the reference), asked of every build."),
                     Markdown("\n\n".join(checklist_tables.retention_sentences(summary))
                              or "No general questions in this run's cases."),
                     Markdown("## The checklist, per precision (✓ pass, ✗ fail; open a check to see every case, "
                              "failures first)"),
                     checklist_tables.checklist_details(summary.models),
                     Markdown("## Quality against FP32\n\nTeacher-forced on a bundled text: greedy top-1 agreement "
                              "and KL divergence against the FP32 build, and each model's perplexity."),
                     report.table(checklist_tables.quality_rows(summary.models)),
                     Markdown("## Memory over requests and time per token over input length"),
                     report.figure(plots.plot_rss(summary.models), run.dir / "rss_over_requests.png"),
                     report.figure(plots.plot_per_token(summary.models), run.dir / "ms_per_token.png")),
                 interactive=run.interactive)
display(panel) if run.interactive else None
checklist = panel.run()
