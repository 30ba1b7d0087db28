"""INT4 recipes compared: each built, read against the FP32 build, probed for speed, and one recommended.

It composes the convert stage (one build per recipe) with ONNX Runtime GenAI's agreement
and decode measurements, so it sits above the stages.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

from slmops.toolkit.core import build_cache, codec
from slmops.toolkit.core.artifacts import dir_size_mb
from slmops.toolkit.core.errors import InputError, InvalidOptionError, ParityError
from slmops.toolkit.domain import adapters, recipe_choice
from slmops.toolkit.domain.options import INT4_RECIPES, LORA_IN_GRAPH_RECIPES, RECIPE_NOTES, Method, Precision
from slmops.toolkit.domain.results.conversion import (
    BuildCacheEntry,
    Manifest,
    read_conversions,
    read_manifest,
    write_conversions,
    write_manifest,
)
from slmops.toolkit.domain.results.recipes import RecipeResult, Refusal, RefusedFigures, write_recipes
from slmops.toolkit.runtimes import genai
from slmops.toolkit.runtimes.genai_jobs import Agreement
from slmops.toolkit.stages.convert import build
from slmops.toolkit.stages.convert_checks import Prepared, check_keepable, prepare
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.weights.adapter_inspect import inspect_adapter


def _recipe_names(recipes: list[str] | None, model_dir: Path) -> list[str]:
    """The recipes to compare (the merged ones by default); refused when one is not in :data:`INT4_RECIPES` or,
    for a LoRA adapter, :data:`LORA_IN_GRAPH_RECIPES`."""
    names = list(recipes or INT4_RECIPES)
    known = [*INT4_RECIPES, *(LORA_IN_GRAPH_RECIPES if adapters.is_adapter(model_dir) else ())]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidOptionError("recipe", unknown, f"names from {known}")
    return names


def _build_recipe(name: str, prepared: Prepared, folder: Path, fp32_mb: float, key: str | None) -> RecipeResult | None:
    """Build one prepared recipe into ``folder`` (or take it from the build cache when ``key`` is given).

    Returns:
        The refusal when the parity gate refuses the build (now or when it was cached), else None.
    """
    kept = build_cache.lookup(_CACHE, key) if key is not None else None
    if kept is not None and (kept / _REFUSAL).is_file():
        refusal = codec.read(Refusal, kept / _REFUSAL)
        return _refused(name, refusal.reason, refusal.record, fp32_mb)
    if kept is not None:
        _copy_kept(kept, folder, key)
        return None
    try:
        build(prepared, progress=False)
    except ParityError as exc:  # the comparison shows it, refused, and goes on with the others
        if key is not None:  # kept too, so the same build is not made again to be refused
            build_cache.store_json(_CACHE, key, _REFUSAL, {"reason": str(exc), "record": exc.record})
        return _refused(name, str(exc), codec.load(RefusedFigures, exc.record), fp32_mb)
    if key is not None:
        build_cache.store(_CACHE, key, folder)
    return None


def _measured(name: str, folder: Path, a: Agreement, decode_tps: float, fp32_mb: float) -> RecipeResult:
    """A built recipe's result: its size and bits per weight, its own parity figures, its agreement ``a`` with the
    FP32 build and its decode speed."""
    size = _size_mb(folder)
    made = read_manifest(folder)
    own = made.parity.own_figures() if made and made.parity else None
    return RecipeResult(
        recipe=name, note=_note(name), output_dir=str(folder), size_mb=round(size, 2),
        size_ratio_vs_fp32=round(size / fp32_mb, 4), top1_agreement=a.top1_agreement, kl_divergence=a.kl_divergence, perplexity=a.perplexity,
        reference_perplexity=a.reference_perplexity, decode_tps=decode_tps,
        kl_divergence_to_base=a.kl_divergence_to_base,
        moved_toward_base=a.kl_divergence_to_base is not None and a.kl_divergence_to_base < a.kl_divergence,
        lora_in_graph=name in LORA_IN_GRAPH_RECIPES, bits_per_weight=_bits_per_weight(folder, made),
        parity_top1_agreement=own[0] if own else None, parity_kl_divergence=own[2] if own else None,
    )


def _bits_per_weight(folder: Path, made: Manifest | None) -> float | None:
    """A build's bits per weight: its manifest's (a LoRA kept apart or in the graph counted), else its graph's
    files x 8 over the source's parameters; None without a manifest giving the parameter count."""
    if made is None or not made.parameters:
        return None
    if made.bits_per_weight is not None:
        return made.bits_per_weight
    return round(sum(f.stat().st_size for f in folder.glob("model.onnx*") if f.is_file()) * 8 / made.parameters, 3)


def compare_int4_recipes(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                         reference_dir: str | os.PathLike[str], recipes: list[str] | None = None, *,
                         method: Method | str = Method.BUILDER, reuse: dict[str, str] | None = None,
                         progress: bool = True, base_reference_dir: str | os.PathLike[str] | None = None,
                         cache: bool = False) -> list[RecipeResult]:
    """Build each INT4 recipe into ``out_dir/<recipe>`` and measure it against the FP32 build.

    Args:
        model_dir: The Hugging Face model.
        out_dir: Where the recipe builds go; ``recipes.json`` is written there.
        reference_dir: The FP32 build of the same model.
        recipes: Names from :func:`recipe_names`; by default the merged recipes of :data:`INT4_RECIPES`. The ways of
            :data:`LORA_IN_GRAPH_RECIPES` (a LoRA adapter's LoRA an FP16 side branch in the graph) are compared
            when named (the run's recipe stage names them for a fine-tune): their results carry ``lora_in_graph``,
            and they are shown, never recommended or adopted (on a tiny model their rank against the merged
            twin turns on timing noise).
        method: Conversion route.
        reuse: Recipe name to an existing build of it (e.g. the pipeline's ``int4``).
        progress: Show progress bars.
        base_reference_dir: The FP32 build of the base model (for a fine-tune): each recipe's
            KL to it is measured, and a recipe closer to the base than to ``reference_dir`` is flagged.
        cache: Reuse a build (or a refusal) of the same recipe, source, FP32 reference, packages and
            toolkit code from the build cache (:func:`recipe_cache_keys`), and keep new ones there.
            Agreement and decode speed are measured every time.

    Returns:
        One result per recipe, in order. A recipe whose build the parity gate refuses stays in
        the list with ``refused`` set to the gate's reason and its figures (nothing was kept for
        it, so no perplexity or decode speed); the others are measured as usual.

    Example:
        >>> [r.recipe for r in compare_int4_recipes(bundled_model(), "out/recipes", "out/fp32")]
        ['builder-default', 'compact', 'int8-head', 'hqq']
    """
    from tqdm.auto import tqdm

    names = _recipe_names(recipes, Path(model_dir))
    out, reuse = Path(out_dir), dict(reuse or {})
    # Every recipe quantizes the same FP32 export: the reference build when it is one (checked by convert).
    specs = {n: _recipe_spec(n, Path(model_dir), out / n, Method(method), Path(reference_dir))
             for n in names if n not in reuse}
    prepared = {name: prepare(spec) for name, spec in specs.items()}  # every recipe checked before any is built
    folders = {n: Path(reuse[n]) if n in reuse else out / n for n in names}
    fp32_mb = _size_mb(Path(reference_dir))
    keys = recipe_cache_keys(model_dir, reference_dir, specs) if cache and specs else {}
    refused: dict[str, RecipeResult] = {}
    for name in tqdm(list(specs), desc="build recipes", disable=not progress):
        refusal = _build_recipe(name, prepared[name], folders[name], fp32_mb, keys[name] if cache else None)
        if refusal is not None:
            refused[name] = refusal
    built = {n: folders[n] for n in names if n not in refused}
    agreement = {a.model: a for a in genai.agreement(reference_dir, built, base_dir=base_reference_dir)} if built else {}
    speeds = genai.decode_speeds(built) if built else {}
    results = [refused[name] if name in refused else _measured(name, folders[name], agreement[name], speeds[name], fp32_mb)
               for name in names]
    write_recipes(out / "recipes.json", results)
    return results


def recipe_names(model_dir: str | os.PathLike[str], method: Method | str = Method.BUILDER) -> list[str]:
    """The recipes this model can be compared on: :data:`INT4_RECIPES`, and for a LoRA adapter that can stay apart
    from its base (on the builder route) the ways of :data:`LORA_IN_GRAPH_RECIPES`, which keep it in the graph."""
    if Method(method) is not Method.BUILDER or not adapters.is_adapter(Path(model_dir)):
        return list(INT4_RECIPES)
    try:
        check_keepable(inspect_adapter(model_dir), in_graph=True)
    except InputError:  # a retrained head or added tokens: only a merge applies it
        return list(INT4_RECIPES)
    return [*INT4_RECIPES, *LORA_IN_GRAPH_RECIPES]


def _recipe_spec(name: str, model_dir: Path, out: Path, method: Method, reference_dir: Path) -> ConvertSpec:
    """A recipe's conversion: merged by its named options, or (a LoRA kept in the graph) by its base recipe's."""
    if name in LORA_IN_GRAPH_RECIPES:
        return ConvertSpec(model_dir, out, Precision.INT4, method, INT4_RECIPES[LORA_IN_GRAPH_RECIPES[name][0]],
                           adapter_in_graph=True)
    return ConvertSpec(model_dir, out, Precision.INT4, method, INT4_RECIPES[name], quantize_from=reference_dir)


def _note(name: str) -> str:
    return LORA_IN_GRAPH_RECIPES[name][1] if name in LORA_IN_GRAPH_RECIPES else RECIPE_NOTES[name]


#: The build cache's kind for recipe builds, and the file an entry of a refused recipe holds instead.
_CACHE, _REFUSAL = "recipe-builds", "refused.json"


def recipe_cache_keys(model_dir: str | os.PathLike[str], reference_dir: str | os.PathLike[str],
                      specs: dict[str, ConvertSpec]) -> dict[str, str]:
    """Each recipe's build-cache key: everything that decides what its build holds.

    That is the source folder's content, the FP32 reference's source fingerprint and package
    versions (the recipes quantize its export), the recipe's options, the route and execution
    provider, and the source of the toolkit modules that build and check it (so a changed
    quantizer never reuses an old build).
    """
    from slmops.toolkit.domain import options, parity, quant_plan, sources
    from slmops.toolkit.runtimes import genai_builder
    from slmops.toolkit.stages import convert, convert_checks, convert_plan, convert_record
    from slmops.toolkit.weights import (
        calibration,
        gptq,
        head_and_table,
        lora_apart,
        lora_branch,
        onnx_weights,
        quantize,
        rotate,
        rotated,
        table_layout,
        weight_store,
    )

    made = read_manifest(reference_dir)
    common = (sources.fingerprint(model_dir), made.source_fingerprint if made else None, made.versions if made else None,
              build_cache.code_fingerprint(quantize, rotate, rotated, gptq, calibration, head_and_table,
                                           table_layout, weight_store, onnx_weights, lora_apart, lora_branch, quant_plan, parity,
                                           options, convert, convert_plan, convert_checks, convert_record,
                                           genai_builder))
    return {name: build_cache.key_of(*common, name, asdict(spec.int4), str(spec.method), spec.execution_provider)
            for name, spec in specs.items()}


def _copy_kept(kept: Path, target: Path, key: str) -> None:
    """Put a cached recipe build at ``target``; its manifest says where it came from."""
    build_cache.copy_out(kept, target)
    write_manifest(target, replace(read_manifest(target) or Manifest(), build_cache=BuildCacheEntry(key, str(kept))))


def _size_mb(build: Path) -> float:
    """A build's size on disk in MB, as its manifest records it (measured when it has none)."""
    made = read_manifest(build)
    return made.size_mb if made and made.size_mb else dir_size_mb(build)


def _refused(name: str, reason: str, figures: RefusedFigures, fp32_mb: float) -> RecipeResult:
    """A recipe the parity gate refused, with the gate's figures (against the source model) and its reason."""
    size = figures.size_mb or 0.0
    return RecipeResult(
        recipe=name, note=_note(name), output_dir="", size_mb=round(size, 2),
        size_ratio_vs_fp32=round(size / fp32_mb, 4), top1_agreement=figures.top1_agreement,
        kl_divergence=figures.kl_divergence, perplexity=None, reference_perplexity=None,
        decode_tps=None, refused=reason, lora_in_graph=name in LORA_IN_GRAPH_RECIPES)


def adopt_recipe(results: list[RecipeResult], name: str, models_dir: str | os.PathLike[str]) -> str:
    """Make the run's INT4 build the recipe ``name`` the comparison measured, and say what was deployed.

    The run deploys (registers, checks, benchmarks) ``models_dir/int4``; after the recipe
    comparison that is the recommended recipe's build, so the run never recommends one recipe
    and carries on with another. Its build is copied into place (complete or not at all) and its
    manifest, marked with ``recipe``, replaces the ``int4`` entry of ``convert.json``. Another
    recipe stays available by name: set ``int4_recipe`` and turn the comparison off.

    Args:
        results: The comparison's results (:func:`compare_int4_recipes`).
        name: The recipe to deploy (normally :func:`~slmops.toolkit.domain.recipe_choice.recommend_recipe`'s).
        models_dir: The run's models folder (``int4`` and ``convert.json`` in it).

    Returns:
        What the run now deploys, in one sentence.

    Raises:
        InvalidOptionError: ``name`` was not measured, the parity gate refused it, or its LoRA stays in the graph
            (shown, never adopted: :func:`~slmops.toolkit.domain.recipe_choice.adoptable`).
    """
    chosen = next((r for r in results if r.recipe == name and recipe_choice.adoptable(r)), None)
    if chosen is None:
        raise InvalidOptionError("recipe", name, "a measured, unrefused recipe with its LoRA merged: "
                                 f"{[r.recipe for r in results if recipe_choice.adoptable(r)]}")
    models = Path(models_dir)
    target = models / str(Precision.INT4)
    source = Path(chosen.output_dir).resolve()
    if source != target.resolve():
        build_cache.copy_out(source, target)
    manifest = replace(read_manifest(target) or Manifest(), recipe=name)
    write_manifest(target, manifest)
    entries = [m for m in read_conversions(models / "convert.json") if m.precision != str(Precision.INT4)]
    write_conversions(models / "convert.json", [*entries, replace(manifest, output_dir=str(target))])
    return (f"The run deploys INT4 recipe `{name}` ({chosen.size_mb:.1f} MB, {chosen.size_ratio_vs_fp32:.2f}x FP32, "
            f"top-1 agreement {chosen.top1_agreement:.3f}) as its int4 build; to deploy another recipe, set "
            "int4_recipe to its name and compare_recipes to false.")
