"""Regenerate notebooks/*.ipynb (outputs cleared) from the cell sources below."""
from pathlib import Path

import nbformat as nbf

from slmops.toolkit.domain.params import CompareParams, parameters_cell

# One source: the parameter model (toolkit/domain/params.py) writes the parameters cell.
PARAMS = parameters_cell()

def nb(title, intro, cells, params=PARAMS):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.cells.append(nbf.v4.new_markdown_cell(f"# {title}\n\n{intro}"))
    p = nbf.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    n.cells.append(p)
    for c in cells:
        n.cells.append(nbf.v4.new_markdown_cell(c[3:]) if c.startswith("#MD") else nbf.v4.new_code_cell(c))
    return n

books = {
"01_convert": nb("1. Convert and quantize",
 "Converts the model to ONNX for ONNX Runtime GenAI at each precision (the tutorial's stage 1), "
 "with a `manifest.json` beside each model: route, options, tool versions, wall time, peak RSS and size. "
 "The tutorial's advice: start with INT4; if quality is not good enough, try INT8 or FP16.",
 ['''from pathlib import Path

from IPython.display import Markdown, display

from slmops.toolkit.domain import options
from slmops.toolkit.orchestration import recipes as int4_recipes
from slmops.toolkit.orchestration import run_source
from slmops.toolkit.presentation import plots, report
from slmops.toolkit.stages import convert
from slmops.widgets import ModelPicker, PrecisionPicker, RunPanel

# The model, or its LoRA fine-tune: the demo trains one on the bundled Veloria dataset (once, about 2 minutes).
source = run_source.prepare(model_dir, adapter, finetune, cases, run_dir)
model = ModelPicker(model_dir)
picker = PrecisionPicker(precisions, recipe=int4_recipe,
                         int4=options.recipe_options(int4_recipe, block_size=int4_block_size), run_dir=run_dir)
display(model, picker) if interactive else (model.value, picker.value)''',
 '''#MDChange the model or the precisions above, then press **Run convert**: the table under the picker fills in
with the measured size (and, after the later notebooks, top-1 agreement and decode speed).''',
 '''#MD## The fine-tune

When the run deploys a LoRA fine-tune, its loss curve (the adapter is merged into the base before conversion;
every build is checked against the merged model in transformers: the table's `parity` columns).''',
 '''if source.trained:
    print(f"LoRA adapter {source.adapter}: {source.trained.examples} examples, loss {source.trained.losses[0]:.3f} -> "
          f"{source.trained.losses[-1]:.4f}" + (" (reused)" if source.trained.reused else ""))
    display(report.figure(plots.plot_loss(source.trained.losses), Path(run_dir) / "finetune_loss.png"))
else:
    print(f"Deploying {source.model}" + (" (a LoRA adapter)" if source.adapter else ""))''',
 '''models = Path(run_dir) / "models"
panel = RunPanel("convert", lambda: run_source.convert_all(source, model.value, list(picker.value.precisions),
                                                           models, method=method, int4=picker.value.int4),
                 show=lambda manifests: (report.table(convert.summary(manifests)),
                                         report.figure(plots.plot_sizes(manifests), Path(run_dir) / "sizes.png")),
                 then=[picker.refresh], interactive=interactive)
display(panel) if interactive else None
manifests = panel.run()''',
 '''#MDSize against the FP32 build and the tutorial's table (FP16 ×0.5, INT8 ×0.25, INT4 ×0.125). `lm_head` and
`embeddings` say where those two big tables went: the builder's INT4 keeps the embedding table in FP32,
which is why its ratio sits well above ×0.125.''',
 '''#MD## Which INT4 recipe?

Each recipe is built and read against the FP32 build on a bundled text (teacher-forced, like llama.cpp's
KL-divergence mode): **top-1** is how often the greedy next token matches FP32's, **KL** how far the
distributions are, **perplexity** how well each predicts the text; a short greedy run probes decode speed.
Targets: at most 0.25× FP32 size and at least 0.85 top-1 agreement.''',
 '''recipes = []
if compare_recipes and (models / "fp32").is_dir():
    current = options.recipe_name(picker.value.int4)
    reuse = {current: models / "int4"} if current and (models / "int4").is_dir() else {}
    control = models / run_source.CONTROL_DIR  # the base: a recipe closer to it than to the fine-tune is flagged
    recipes = int4_recipes.compare_int4_recipes(run_source.convert_from(model.value, source), models / "recipes",
                                                models / "fp32", method=method, reuse=reuse,
                                                base_reference_dir=control if control.is_dir() else None, cache=True)
report.table(recipes)''',
 '''if recipes and all(r.refused for r in recipes):
    print("Every INT4 recipe was refused by the parity gate (the table gives the gate's figures).")
elif recipes:
    recommended, why = int4_recipes.recommend_recipe(recipes)
    # The run deploys what it recommends: the recommended recipe's build becomes the run's int4.
    deployed = int4_recipes.adopt_recipe(recipes, recommended, models) if (models / "int4").is_dir() else ""
    picker.refresh()
    ax = plots.plot_recipes(recipes)
    display(Markdown(f"**Recommended INT4 recipe: `{recommended}`.** {why} {deployed}"),
            report.figure(ax, Path(run_dir) / "recipes.png"))
else:
    print("Recipe comparison skipped: set compare_recipes=True and include fp32 in precisions.")''']),
"02_register": nb("2. Register with Foundry Local",
 "Registers each converted model with Foundry Local as `PREFIX-PRECISION`: the `models/custom/NAME/` folder "
 "with `inference_model.json` (read by the `foundry` CLI), the matching Jinja chat template in the tokenizer "
 "files (read by the SDK's ChatSession), and the SDK's local catalog entry.",
 ['''from pathlib import Path

from IPython.display import HTML, display

from slmops.toolkit import endpoint as serve
from slmops.toolkit.orchestration import run_source
from slmops.toolkit.presentation import checklist as tables
from slmops.toolkit.presentation import report
from slmops.toolkit.stages import register
from slmops.toolkit.stages.checklist import load_cases
from slmops.widgets import ChatBox, TemplatePicker

models = Path(run_dir) / "models"
picker = TemplatePicker(template, model_dir=models / precisions[0])
picker if interactive else picker.value''',
 '''registered = register.register_all(models / "convert.json", name_prefix, template=picker.value.template,
                                   custom_template=picker.value.custom, cache=cache_dir or None, force=True,
                                   model_config=register.ModelConfig(repetition_penalty=repetition_penalty),
                                   out_dir=run_dir)
control = run_source.register_control(models, name_prefix, template=picker.value.template,
                                     custom_template=picker.value.custom, cache=cache_dir or None,
                                     repetition_penalty=repetition_penalty)  # the base, when fine-tuned
report.table(registered, ["name", "model_id", "precision", "template", "threads", "threads_speedup", "notes"])''',
 '''#MDWhat Foundry Local now lists (as `foundry cache ls`):''',
 '''report.table(register.list_models(cache_dir or None))''',
 '''#MD## Chat

Talk to the last registered model (type and press Enter; **Reset** starts over). A headless run asks one
question so the report shows the model answering through Foundry Local.''',
 '''chat = ChatBox(registered[-1]["name"], cache=cache_dir or None, temperature=0)
if interactive:
    display(chat)
else:
    answer = chat.send("What is the capital of France?")
    display(HTML(chat.transcript_html()))
    chat.close()
    file = run_source.cases_file(model_dir, adapter, finetune, cases, run_dir)  # a general question: forgotten?
    print(tables.domain_fact_note(answer, load_cases(file)) if file else "")''',
 '''#MD## Serve it to applications

`slmops serve NAME` runs an OpenAI-compatible endpoint (`/v1/models`, `/v1/chat/completions`, streaming,
`response_format`) over the same runtime, for any OpenAI client. Here it starts in the background, answers
through the official `openai` client, and stops.''',
 '''name = registered[-1]["name"]
with serve.background([name], cache=cache_dir or None) as endpoint:
    client = endpoint.client()
    answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Name a city in France."}],
                                            max_tokens=32, temperature=0)
    print(f"{endpoint.url} answered: {answer.choices[0].message.content!r} ({answer.usage.total_tokens} tokens)")''',
 '''#MD## Call a tool through the endpoint

The demo's fine-tune also learned two functions (`city_weather`, `city_population`). Offered as OpenAI
`tools`, the model answers with a call whose arguments Foundry Local constrained to the tool's JSON Schema;
the result goes back as a `tool` message and the model answers from it.''',
 '''case = run_source.tool_case(model_dir, adapter, finetune)  # a trained tool question and its tools (None: none learned)
tool_model = registered[0]["name"]
if case is None:
    print("This run's model learned no tool calls.")
else:
    with serve.background([tool_model], cache=cache_dir or None) as endpoint:
        client = endpoint.client()
        asked = client.chat.completions.create(model=tool_model, messages=case["messages"], tools=case["tools"],
                                               max_tokens=64, temperature=0)
        message = asked.choices[0].message
        for call in message.tool_calls or []:
            print(f"{case['messages'][-1]['content']!r} -> {call.function.name}({call.function.arguments}) "
                  f"[finish_reason {asked.choices[0].finish_reason}]")
        if message.tool_calls:
            result = {"role": "tool", "tool_call_id": message.tool_calls[0].id,
                      "content": '{"sky": "rain", "temperature_c": 11}'}
            answer = client.chat.completions.create(model=tool_model, messages=[*case["messages"], message, result],
                                                    tools=case["tools"], max_tokens=48, temperature=0)
            print(f"after the result: {answer.choices[0].message.content!r}")
        else:
            print(f"no call: {message.content!r}")''']),
"03_test": nb("3. Quality checklist",
 "The tutorial's checklist as checks, each with a threshold, a measured value and a verdict, against every "
 "registered precision: domain answers and response format from a cases file, memory over many requests, "
 "time per output token from short inputs to half the context, edge cases and invalid input (run in a child "
 "process with a timeout, so a crash or hang is caught), and quality against the FP32 build. Greedy decoding "
 "with a recorded seed keeps results repeatable.",
 ['''from pathlib import Path

from slmops.toolkit.domain.results.registration import read_registered, reference_of
from slmops.toolkit.orchestration import run_source
from slmops.toolkit.presentation import checklist as tables
from slmops.toolkit.presentation import plots, report
from slmops.toolkit.stages import checklist as evaluate

# The models notebook 02 registered (whatever precisions notebook 01's picker converted), and the FP32 one.
registered = read_registered(Path(run_dir) / "registered.json")
names = [m.name for m in registered]
reference = reference_of(registered)
run_cases = evaluate.load_cases(run_source.cases_file(model_dir, adapter, finetune, cases, run_dir))
checklist = evaluate.run_checklists(names, reference=reference, cases=run_cases, cache=cache_dir or None,
                                    requests=checklist_requests, seed=seed)
control_model = run_source.control_name(run_dir, name_prefix)
control = evaluate.run_control(control_model, run_cases, cache=cache_dir or None, seed=seed,
                               keep=True) if control_model else None
summary = evaluate.write_report(checklist, Path(run_dir) / "test.json", control=control)
report.table(tables.summary_rows(summary))''',
 '''#MDThe negative control: the base model (not fine-tuned) asked the same domain cases. If it passes them, they
test nothing about the fine-tune.''',
 '''print("{model}: trained questions {trained}, held-out {heldout}: {verdict}".format(**tables.control_row(control))
      if control else "No fine-tune in this run: no control.")
report.table(tables.before_after(control, checklist[0])) if control else None''',
 '''#MD## What the fine-tune forgot

General questions the base model answers correctly (its own answers are the reference), asked of every build.''',
 '''print("\\n".join(tables.retention_sentences(summary)) or "No general questions in this run's cases.")''',
 '''#MD## The checklist, per precision (✓ pass, ✗ fail; open a check to see every case, failures first)''',
 '''tables.checklist_details(summary.models)''',
 '''#MD## Quality against FP32

Teacher-forced on a bundled text: greedy top-1 agreement and KL divergence against the FP32 build, and
each model's perplexity.''',
 '''report.table(tables.quality_rows(checklist))''',
 '''#MD## Memory over requests and time per token over input length''',
 '''report.figure(plots.plot_rss(checklist), Path(run_dir) / "rss_over_requests.png")''',
 '''report.figure(plots.plot_per_token(checklist), Path(run_dir) / "ms_per_token.png")''']),
"04_benchmark": nb("4. Benchmark",
 "Measures each precision through Foundry Local (in-process, what users deploy) and through ONNX Runtime GenAI "
 "directly (the reference: exactly the asked number of tokens with EOS ignored, as ONNX Runtime GenAI's "
 "`benchmark_e2e.py`), each model and engine in its own process, with the same prompt token ids and a recorded "
 "thread count: model load time and memory, time to first token, prefill and decode tokens/s (mean ± sd, p50, p90, "
 "coefficient of variation), end-to-end latency, peak process RSS, process and system CPU, the harness's own "
 "overhead, and size on disk. Sweeps: `prompt_lengths`, `gen_lengths`, `threads`.",
 ['''from pathlib import Path

from IPython.display import Markdown, display

from slmops.toolkit.domain.results.bench import rows_of as bench_rows
from slmops.toolkit.domain.results.registration import read_registered
from slmops.toolkit.presentation import bench as bench_text
from slmops.toolkit.presentation import compare, plots, report
from slmops.toolkit.stages import bench, checklist
from slmops.widgets import RunPanel

names = [m.name for m in read_registered(Path(run_dir) / "registered.json")]  # the models notebook 02 registered
quality = checklist.read_report(Path(run_dir) / "test.json")
panel = RunPanel("benchmark", lambda: bench.write_results(bench.bench(
                     names, prompt_lengths=prompt_lengths, gen_lengths=gen_lengths, threads=threads or None,
                     repeats=repeats, warmup=warmup, cache=cache_dir or None), run_dir),
                 show=lambda results: Markdown("\\n".join(
                     f"- {line}" for line in bench_text.summary(results, quality)
                     + bench_text.warnings(bench_rows(results)))),
                 interactive=interactive)
display(panel) if interactive else None
results = panel.run()
report.table(results["rows"], ["model", "engine", "prompt_tokens", "gen_tokens", "threads", "ttft_ms", "prefill_tps",
                               "decode_tps", "decode_tps_sd", "tpot_ms", "tpot_ms_p50", "tpot_ms_p90", "ttft_ms_p90",
                               "decode_cv", "noisy", "e2e_ms", "peak_rss_mib", "load_s", "load_rss_mib", "cpu_percent",
                               "system_cpu_percent",
                               "harness_overhead_pct", "size_mb"])''',
 '''#MD## Recommendation

The smallest, then fastest, precision that loses no checklist item to the others (from `test.json` and `bench.json`), and
why each other one lost.''',
 '''decision = compare.recommend(compare.load_run(run_dir))
display(Markdown(f"**{decision.sentence}**"), report.table(decision.rows))
report.table(decision.paired)  # each precision against FP32 per case family: McNemar's exact test''',
 '''#MDFoundry Local against ONNX Runtime GenAI directly (decode tokens/s; 1.0 means no overhead):''',
 '''report.table(results["engine_ratios"])''',
 '''#MD## Speed, latency and memory''',
 '''figures = plots.bench_figures(results, quality)
for stem, ax in figures.items():
    if stem != "tradeoff":
        display(report.figure(ax, Path(run_dir) / f"{stem}.png"))''',
 '''#MD## Against the memory-bandwidth bound, and the trade-off

Decode reads every weight once per token, so measured memory bandwidth / model size bounds decode speed.''',
 '''report.table(results["decode_ceiling"])''',
 '''report.figure(figures["tradeoff"], Path(run_dir) / "tradeoff.png")''']),
"05_compare": nb("5. Compare two runs",
 "Puts two runs side by side: a rerun of a report, a new fine-tune, a new release of the runtime. Parameters, "
 "inputs and package versions that differ; sizes, quality against FP32 and every checklist verdict with its "
 "delta, changes first; timings judged against both runs' measured spread, so a change inside the noise is "
 "never called a regression. `slmops compare RUN_A RUN_B` does the same from a shell and exits 1 on a regression.",
 ['''from IPython.display import Markdown, display

from slmops.toolkit.presentation import compare, report

result = compare.compare_runs(compare.load_run(run_a), compare.load_run(run_b))
page = compare.write_comparison(result, out_dir)
display(Markdown(f"**{result.headline}**"))  # pass / warn / fail, agreeing with every table below
report.table(result.summary)''',
 '''#MD## What differs going in''',
 '''display(report.table(result.params), Markdown("\\n".join(f"- {line}" for line in result.inputs + result.machine)
                                              or "Inputs and versions: the same."))''',
 '''#MD## Checklist verdicts (changes first), sizes and quality''',
 '''display(report.table(result.verdicts), report.table(result.sizes), report.table(result.quality))''',
 '''#MD## Timings, judged against both runs' noise''',
 '''report.table(result.timings)'''], params=parameters_cell(CompareParams)),
}
for name, book in books.items():
    nbf.write(book, Path(__file__).resolve().parent.parent / "notebooks" / f"{name}.ipynb")
