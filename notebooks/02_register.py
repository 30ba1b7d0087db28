# %% [markdown]
# # 2. Register with Foundry Local
#
# Registers each converted model with Foundry Local as `PREFIX-PRECISION`: the `models/custom/NAME/` folder with
# `inference_model.json` (read by the `foundry` CLI), the matching Jinja chat template in the tokenizer files
# (read by the SDK's ChatSession), and the SDK's local catalog entry. A fine-tune's base is registered too, as
# `PREFIX-base` (the checklist's negative control).

# %% tags=["parameters"]
run_file = "params.json"  # this run's parameters; papermill's injected parameters override them

# %%
from IPython.display import HTML, display

from slmops.toolkit.endpoint.cli import ask_once, call_tool_once
from slmops.toolkit.orchestration import run_stages, runs
from slmops.toolkit.presentation import checklist_tables, report
from slmops.toolkit.stages.register_catalog import list_models
from slmops.widgets import ChatBox, RunPanel, TemplatePicker

run = runs.open_run(run_file, globals())  # papermill's injected parameters, if any, override the run file
picker = TemplatePicker(run.params.template, model_dir=run.models / run.params.precisions[0])
chat = ChatBox(lambda: run_stages.registered_names(run), cache=run.cache, temperature=0)
display(picker if run.interactive else picker.value)

# %% [markdown]
# Pick or edit the template above, then press **Run register**: the models are registered with the template the
# preview shows (one the preview flags in red is refused in one line, nothing registered). Each registration
# probes thread counts, seconds per model; the bar counts the models.

# %%
panel = RunPanel("register", lambda: run_stages.register(run, template=picker.value.template,
                                                    custom=picker.value.custom),
                 show=lambda registered: (
                     report.table(registered.models,
                                  ["name", "model_id", "precision", "template", "threads", "threads_speedup", "notes"]),
                     report.table(list_models(run.cache))),
                 then=[chat.refresh], interactive=run.interactive)
display(panel) if run.interactive else None
registered = panel.run()

# %% [markdown]
# ## Chat
#
# Talk to any model the run registered, the base included: pick it, type, press Enter or **Send** (**Reset**
# starts over). A headless run asks one question, so the report shows the model answering through Foundry Local.

# %%
if run.interactive:
    display(chat)
else:
    chat.model = run_stages.registered_names(run, control=False)[-1]  # the smallest build, the one a run deploys
    answer = chat.send("What is the capital of France?")
    display(HTML(chat.transcript_html()))
    chat.close()
    print(checklist_tables.domain_fact_note(answer, run_stages.run_cases(run)))  # a general question: did the fine-tune forget?

# %% [markdown]
# ## Serve it to applications
#
# `slmops serve NAME` runs an OpenAI-compatible endpoint (`/v1/models`, `/v1/chat/completions`, streaming,
# `response_format`) over the same runtime, for any OpenAI client. **Run endpoint** starts it in the background for
# the run's last model, asks through the official `openai` client, and stops it.

# %%
endpoint = RunPanel("endpoint", lambda: ask_once(run_stages.registered_names(run, control=False)[-1],
                                                        "Name a city in France.", cache=run.cache),
                    show=print, interactive=run.interactive)
display(endpoint) if run.interactive else None
answer = endpoint.run()

# %% [markdown]
# ## Call a tool through the endpoint
#
# The demo's fine-tune also learned two functions (`city_weather`, `city_population`). Offered as OpenAI `tools`,
# the model answers with a call whose arguments Foundry Local constrained to the tool's JSON Schema; the result goes
# back as a `tool` message and the model answers from it.

# %%
tool = RunPanel("tool call", lambda: call_tool_once(run_stages.registered_names(run, control=False)[0],
                                                          run_stages.tool_case(run), cache=run.cache),
                show=lambda lines: print("\n".join(lines)), interactive=run.interactive)
display(tool) if run.interactive else None
tool_lines = tool.run()
