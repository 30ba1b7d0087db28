"""One entry point per stage, taking the run: what the notebooks, the widgets and the CLI all call.

``slmops run`` and ``slmops demo`` execute the notebooks, whose cells call :func:`convert`,
:func:`compare_recipes`, :func:`register`, :func:`test` and :func:`bench`; ``slmops test`` and
``slmops bench`` call the same :func:`test` and :func:`bench`. So the FP32 reference, the negative
control (the base asked the same cases) and the files a stage writes are chosen here, once.

The run each takes is :mod:`slmops.toolkit.orchestration.runs`'s (:func:`~slmops.toolkit.orchestration.runs.open_run`);
a widget's choice is recorded there before the stage runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from slmops.toolkit.core.errors import InputError, ParamsError
from slmops.toolkit.domain import options, recipe_choice
from slmops.toolkit.domain.options import Int4Options, Precision
from slmops.toolkit.domain.results.bench import BenchFile
from slmops.toolkit.domain.results.checklist import ChecklistReport, Thresholds
from slmops.toolkit.domain.results.conversion import Manifest, read_manifest
from slmops.toolkit.domain.results.recipes import RecipeResult
from slmops.toolkit.domain.results.registration import RegisteredModel, read_registered
from slmops.toolkit.domain.templates import PromptTemplate, Template
from slmops.toolkit.orchestration import recipes, run_source
from slmops.toolkit.orchestration.runs import RUN_FILE, Run, current, record
from slmops.toolkit.presentation import checklist_tables
from slmops.toolkit.presentation.compare import Comparison, compare_runs, load_run, write_comparison
from slmops.toolkit.stages import bench as bench_stage
from slmops.toolkit.stages import checklist
from slmops.toolkit.stages.bench.results import write_results
from slmops.toolkit.stages.register import ModelConfig, register_all
from slmops.toolkit.stages.register_catalog import list_models


@dataclass(frozen=True)
class Converted:
    """The convert stage's result.

    Attributes:
        source: The run's model, adapter and cases as resolved (the demo's fine-tune trained on first use).
        manifests: One conversion manifest per precision (``models/convert.json``), in the order built.
        run: The run as recorded after the widgets' choices.
    """

    source: run_source.RunSource
    manifests: list[Manifest]
    run: Run


def _int4_params(int4: Int4Options | None, run: Run) -> dict:
    """The params a widget's INT4 options amount to: its recipe (and block size) when it is a named one."""
    if int4 is None:
        return {}
    named = options.recipe_name(int4)
    if named:
        return {"int4_recipe": named, "int4_block_size": 0}
    base = options.recipe_name(replace(int4, block_size=options.INT4_RECIPES[run.params.int4_recipe].block_size))
    return {"int4_recipe": base, "int4_block_size": int4.block_size} if base else {}


def convert(run: Run, *, model: str | os.PathLike[str] | None = None,
            precisions: list[str] | tuple[str, ...] | None = None, int4: Int4Options | None = None,
            progress: bool = True) -> Converted:
    """Convert the run's model at each precision (and the base at FP32 as the control of a fine-tune).

    Args:
        run: The run.
        model: The model picked (None: the run's ``model_dir``, or the bundled model); picking a
            fine-tune's base converts the fine-tune.
        precisions: The precisions picked (None: the run's).
        int4: The INT4 options picked (None: the run's recipe and block size).
        progress: Progress bars.

    Returns:
        The :class:`Converted` result; ``models/convert.json`` is written.
    """
    chosen = [str(Precision(p)) for p in precisions] if precisions is not None else list(run.params.precisions)
    if not chosen:
        raise ParamsError("No precision picked: choose at least one (e.g. int4) and run convert again.")
    run = record(run, precisions=chosen, **_int4_params(int4, run))
    p = run.params
    source = run_source.prepare(p.model_dir, p.adapter, p.finetune, p.cases, run.dir, progress=progress)
    if model is not None and Path(model).expanduser().resolve() != source.base.resolve():
        # Another model picked: it becomes the run's model (converted as it is; a fine-tune is of the run's own).
        run = record(run, model_dir=str(Path(model).expanduser().resolve()))
        p = run.params
        source = run_source.prepare(p.model_dir, p.adapter, p.finetune, p.cases, run.dir, progress=progress)
    int4 = int4 or options.recipe_options(p.int4_recipe, block_size=p.int4_block_size)
    manifests = run_source.convert_all(source, source.base, list(p.precisions), run.models, method=p.method,
                                       int4=int4, progress=progress)
    return Converted(source, manifests, run)


def source_words(source: run_source.RunSource) -> str:
    """One line on what the run deploys: the model, or the LoRA fine-tune and how its training went."""
    if source.trained:
        reused = " (reused)" if source.trained.reused else ""
        return (f"LoRA adapter {source.adapter}: {source.trained.examples} examples, loss "
                f"{source.trained.losses[0]:.3f} -> {source.trained.losses[-1]:.4f}{reused}")
    return f"Deploying {source.model}" + (" (a LoRA adapter)" if source.adapter else "")


def compare_recipes(run: Run, *, progress: bool = True) -> list[RecipeResult]:
    """Build every INT4 recipe and measure it against the run's FP32 build (with ``compare_recipes``).

    The run's own INT4 build is reused for its recipe. For a LoRA fine-tune whose LoRA can stay in the graph,
    the ways of :data:`~slmops.toolkit.domain.options.LORA_IN_GRAPH_RECIPES` are built and measured too (each
    through the parity gate against the merged fine-tune); they are shown, and the run adopts only a merged
    recipe (:func:`~slmops.toolkit.domain.recipe_choice.adoptable`).

    Returns:
        One result per recipe (``models/recipes/recipes.json``); none when the run does not compare
        recipes or has no FP32 build.
    """
    run = current(run)
    p = run.params
    fp32 = run.models / "fp32"
    if not p.compare_recipes or not (fp32 / "genai_config.json").is_file():
        return []
    source = run_source.prepare(p.model_dir, p.adapter, p.finetune, p.cases, run.dir, progress=progress)
    built = options.recipe_name(options.recipe_options(p.int4_recipe, block_size=p.int4_block_size))
    reuse = {built: run.models / "int4"} if built and (run.models / "int4").is_dir() else {}
    control = run.models / run_source.CONTROL_DIR  # the base: a recipe closer to it than to the fine-tune is flagged
    names = recipes.recipe_names(source.model, p.method)  # the merged recipes, and the LoRA in the graph of a fine-tune
    results = recipes.compare_int4_recipes(source.model, run.models / "recipes", fp32, names, method=p.method, reuse=reuse,
                                           base_reference_dir=control if control.is_dir() else None, cache=True,
                                           progress=progress)
    # The run deploys what it recommends: the recommended recipe's build becomes the run's int4.
    if (run.models / "int4").is_dir() and any(recipe_choice.adoptable(r) for r in results):
        recipes.adopt_recipe(results, recipe_choice.recommend_recipe(results)[0], run.models)
    return results


def recipe_words(results: list[RecipeResult], run: Run | None = None) -> str:
    """The recipe comparison in a sentence: the recommendation (and that the run deploys it), or why there is none."""
    if not results:
        return "Recipe comparison skipped: set compare_recipes: true and include fp32 in precisions."
    shown = "".join(f" {sentence}" for sentence in recipe_choice.in_graph_words(results))
    if not any(recipe_choice.adoptable(r) for r in results):
        return "Every merged INT4 recipe was refused by the parity gate (the table gives the gate's figures)." + shown
    recommended, why = recipe_choice.recommend_recipe(results)
    deployed = run is not None and (made := read_manifest(run.models / "int4")) is not None and made.recipe == recommended
    return (f"**Recommended INT4 recipe: `{recommended}`.** {why}" + (
        f" The run deploys it as its int4 (`{run.models / 'int4'}`); the tutorial's `builder-default` stays "
        "available: set int4_recipe and compare_recipes: false." if deployed else "") + shown)


@dataclass(frozen=True)
class Registered:
    """The register stage's result.

    Attributes:
        models: The run's registered models (``registered.json``), in precision order.
        control: The registered name of the base (the fine-tune's negative control), or None.
        run: The run as recorded after the template choice.
    """

    models: list[RegisteredModel]
    control: str | None
    run: Run

    @property
    def names(self) -> list[str]:
        """Every registered name of the run, the control last: what a chat can talk to."""
        return [m.name for m in self.models] + ([self.control] if self.control else [])


def register(run: Run, *, template: Template | str | None = None, custom: PromptTemplate | None = None,
             progress: bool = True) -> Registered:
    """Register every build of the run as ``PREFIX-PRECISION`` (and the control as ``PREFIX-base``).

    Args:
        run: The run (its ``models/convert.json`` lists the builds).
        template: The template picked (None: the run's ``template``); ``custom`` needs ``custom``.
        custom: The four strings of a custom template, checked before anything is registered.
        progress: A progress bar over the models (each registration probes threads: seconds).

    Raises:
        TemplateError: a malformed custom template (one line; nothing registered).
        InputError: nothing converted yet.
    """
    run = current(run)
    chosen = Template(template) if template is not None else Template(run.params.template)
    if chosen is Template.CUSTOM:
        if custom is None:
            raise ParamsError("The custom template has no strings: type the four strings, each with {Content}.")
        custom.validate()
    else:
        custom = None
        run = record(run, template=chosen.value)
    if not (run.models / "convert.json").is_file():
        raise InputError(f"Nothing converted in {run.dir} yet: run the convert stage first (notebook 01).")
    p = run.params
    config = ModelConfig(repetition_penalty=p.repetition_penalty)
    register_all(run.models / "convert.json", p.name_prefix, template=chosen.value, custom_template=custom,
                                cache=run.cache, force=True, model_config=config, out_dir=run.dir, progress=progress)
    control = run_source.register_control(run.models, p.name_prefix, template=chosen.value, custom_template=custom,
                                          cache=run.cache, repetition_penalty=p.repetition_penalty)
    return Registered(read_registered(run.dir / "registered.json"), control, run)


def registered_names(run: Run, *, control: bool = True) -> list[str]:
    """Every model the run registered (``registered.json``), then its control (the base) when ``control``.

    Raises:
        InputError: nothing registered yet, when ``control`` is False (a caller needing a model).
    """
    file = run.dir / "registered.json"
    if not control:
        return [m.name for m in read_registered(file)]
    names = [m.name for m in read_registered(file)] if file.is_file() else []
    base = run_source.control_name(run.dir, run.params.name_prefix)
    return names + ([base] if base and names else [])


def tool_case(run: Run) -> dict | None:
    """A tool question the run's fine-tune learned, with its tools; None when it learned none."""
    run = current(run)
    return run_source.tool_case(run.params.model_dir, run.params.adapter, run.params.finetune)


#: :func:`test`'s ``reference`` default: the FP32 build among the models.
AUTO = "auto"


def choose_reference(names: list[str], run: Run) -> str | None:
    """The FP32 model among ``names``: the checklist's quality and timing reference.

    Read from the run's ``registered.json`` (each model's conversion precision), and for names
    it does not list, from each registered folder's manifest (never from the name).
    """
    file = run.dir / "registered.json"
    precision = {m.name: m.precision for m in read_registered(file)} if file.is_file() else {}
    missing = [n for n in names if n.split(":")[0] not in precision]
    if missing:
        precision.update({row.name: row.precision for row in list_models(run.cache) if row.name not in precision})
    return next((n for n in names if precision.get(n.split(":")[0]) == "fp32"), None)


def run_cases(run: Run) -> list[dict]:
    """The run's checklist cases: its ``cases`` file, the fine-tune's (trained, held-out, general), or the defaults."""
    p = run.params
    cases_path = run_source.cases_file(p.model_dir, p.adapter, p.finetune, p.cases, run.dir)
    return checklist.load_cases(cases_path if cases_path is None or cases_path.is_file() or p.cases else None)


def test(run: Run, *, names: list[str] | None = None, reference: str | None = AUTO,
         thresholds: Thresholds | None = None, lengths: list[int] | None = None,
         progress: bool = True) -> ChecklistReport:
    """The quality checklist on the run's registered models, and the negative control; writes ``test.json``.

    Args:
        run: The run (its ``registered.json``, its cases, seed and request count).
        names: The models (None: those the run registered).
        reference: The FP32 model (``AUTO``: :func:`choose_reference`; None: no quality check).
        thresholds: The checks' limits (None: the defaults).
        lengths: Input lengths of the performance check (None: from 64 to half the context; []: skip).
        progress: Progress bars.

    Returns:
        What ``RUN/test.json`` now holds.
    """
    p = run.params
    names = names or [m.name for m in read_registered(run.dir / "registered.json")]
    if reference == AUTO:
        reference = choose_reference(names, run)
    cases = run_cases(run)
    limits = thresholds or Thresholds()
    reports = checklist.run_checklists(names, reference=reference, cases=cases, cache=run.cache,
                                       requests=p.checklist_requests, lengths=lengths, thresholds=limits, seed=p.seed,
                                       progress=progress)
    control_model = run_source.control_name(run.dir, p.name_prefix)
    control = checklist.run_control(control_model, cases, cache=run.cache, seed=p.seed, keep=True,
                                    progress=progress) if control_model else None
    run.dir.mkdir(parents=True, exist_ok=True)
    return checklist.write_report(reports, run.dir / "test.json", limits, control=control)


def control_words(summary: ChecklistReport) -> str:
    """The negative control in a sentence: the base's score on the trained and held-out cases, and what it means."""
    if summary.control is None:
        return "No fine-tune in this run: no control."
    return "{model}: trained questions {trained}, held-out {heldout}: {verdict}".format(
        **checklist_tables.control_row(summary.control))


def bench(run: Run, *, names: list[str] | None = None, engines: tuple[str, ...] = ("foundry-local", "ort-genai"),
          endpoint: tuple[str, str] | None = None, progress: bool = True) -> BenchFile:
    """Benchmark the run's registered models with its sweep parameters; writes ``bench.json`` and ``bench.csv``.

    Returns:
        ``bench.json``'s content, typed (rows, engine ratios, decode ceiling ...).
    """
    p = run.params
    names = names or [m.name for m in read_registered(run.dir / "registered.json")]
    rows = bench_stage.bench(names, prompt_lengths=p.prompt_lengths, gen_lengths=p.gen_lengths,
                             threads=p.threads or None, repeats=p.repeats, warmup=p.warmup, cache=run.cache,
                             engines=engines, endpoint=endpoint, progress=progress)
    run.dir.mkdir(parents=True, exist_ok=True)
    return write_results(rows, run.dir)


def compare(run_a: str | os.PathLike[str], run_b: str | os.PathLike[str] = "", out_dir: str | os.PathLike[str] = "",
            *, run_file: str | os.PathLike[str] = RUN_FILE,
            fail_on: dict[str, float] | None = None) -> Comparison:
    """Compare two run folders; write ``compare.html`` and ``compare.json`` to ``out_dir`` (default RUN_B/compare).

    Args:
        run_a: The baseline run folder.
        run_b: The run judged against it (empty: the folder of ``run_file``, the notebook's own run).
        out_dir: Where the comparison goes (empty: ``RUN_B/compare``).
        run_file: The notebook's run file.
        fail_on: How far each quality figure may move the wrong way (None: the defaults).

    Raises:
        InputError: a folder is not given or holds no run (no ``params.json``), naming what to pass.
    """
    run_b = run_b or Path(run_file).expanduser().resolve().parent
    for label, folder in (("run_a", run_a), ("run_b", run_b)):
        if not folder:
            raise InputError(f"No {label} to compare: set {label} to a run folder that `slmops demo`, `slmops run` "
                             "or `slmops lab` wrote (e.g. run_a = \"/path/to/outputs/demo\").")
        if not (Path(folder) / RUN_FILE).is_file():
            raise InputError(f"{label} = {str(folder)!r} is no run folder (no {RUN_FILE}); use a folder that "
                             "`slmops demo`, `slmops run` or `slmops lab` wrote.")
    result = compare_runs(load_run(run_a), load_run(run_b), fail_on=fail_on or {})
    write_comparison(result, out_dir or Path(run_b) / "compare")
    return result
