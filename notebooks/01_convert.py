# %% [markdown]
# # 1. Convert and quantize
#
# Converts the model to ONNX for ONNX Runtime GenAI at each precision (the tutorial's stage 1), with a
# `manifest.json` beside each model: route, options, tool versions, wall time, peak RSS and size. The tutorial's
# advice: start with INT4; if quality is not good enough, try INT8 or FP16.
#
# The run's parameters are in its run file, `params.json` (`slmops lab DIR` writes it beside these notebooks:
# change a parameter there, once for every notebook). Results stay in the run's folder.

# %% tags=["parameters"]
run_file = "params.json"  # this run's parameters; papermill's injected parameters override them

# %%
from IPython.display import Markdown, display

from slmops.toolkit.domain import options
from slmops.toolkit.orchestration import run_stages, runs
from slmops.toolkit.presentation import plots, report
from slmops.toolkit.stages.convert_record import conversion_rows
from slmops.widgets import ModelPicker, PrecisionPicker, RunPanel

run = runs.open_run(run_file, globals())  # papermill's injected parameters, if any, override the run file
p = run.params
model = ModelPicker(p.model_dir)
picker = PrecisionPicker(p.precisions, recipe=p.int4_recipe,
                         int4=options.recipe_options(p.int4_recipe, block_size=p.int4_block_size), run_dir=run.dir)
display(model, picker) if run.interactive else (model.value, picker.value)

# %% [markdown]
# Choose the model and the precisions above, then press **Run convert**: nothing is built before that (a headless
# run, `slmops run`, converts at once with the run file's values). The choices are written back to the run file.
# The table under the picker fills in with the measured size (and, after the later notebooks, top-1 agreement and
# decode speed). When the run deploys a LoRA fine-tune (the demo trains one once and reuses it), its loss
# comes first: the adapter is merged into the base before conversion, and every build is checked against the
# merged model in transformers (the table's `parity` columns).
#
# Size is read against the FP32 build and the tutorial's table (FP16 ×0.5, INT8 ×0.25, INT4 ×0.125). `lm_head`
# and `embeddings` say where those two big tables went: the builder's INT4 keeps the embedding table in FP32,
# which is why its ratio sits well above ×0.125.

# %%
panel = RunPanel("convert", lambda: run_stages.convert(run, model=model.value, precisions=picker.value.precisions,
                                                  int4=picker.value.int4),
                 show=lambda converted: (
                     Markdown(run_stages.source_words(converted.source)),
                     report.figure(plots.plot_loss(converted.source.trained.losses), run.dir / "finetune_loss.png")
                     if converted.source.trained else None,
                     report.table(conversion_rows(converted.manifests)),
                     report.figure(plots.plot_sizes(converted.manifests), run.dir / "sizes.png")),
                 then=[picker.refresh], interactive=run.interactive)
display(panel) if run.interactive else None
converted = panel.run()

# %% [markdown]
# ## Which INT4 recipe?
#
# Each recipe is built and read against the FP32 build on a bundled text (teacher-forced, like llama.cpp's
# KL-divergence mode): **top-1** is how often the greedy next token matches FP32's, **KL** how far the
# distributions are, **perplexity** how well each predicts the text; a short greedy run probes decode speed.
# Targets: at most 0.25× FP32 size and at least 0.85 top-1 agreement. It needs `compare_recipes` and fp32 among
# the precisions; press **Run recipes** once the builds exist.

# %%
recipes = RunPanel("recipes", lambda: run_stages.compare_recipes(run),
                   show=lambda results: (
                       report.table(results) if results else None,
                       Markdown(run_stages.recipe_words(results, run)),
                       report.figure(plots.plot_recipes(results), run.dir / "recipes.png") if results else None),
                   then=[picker.refresh], interactive=run.interactive)
display(recipes) if run.interactive else None
recipe_results = recipes.run()
