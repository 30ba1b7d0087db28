"""Which INT4 recipe to deploy, and why, from the recipes' measured figures (the recipe comparison's rule).

Pure: the comparison that builds and measures each recipe is
:func:`slmops.toolkit.orchestration.recipes.compare_int4_recipes`.
"""

from __future__ import annotations

from slmops.toolkit.domain.results.recipes import RecipeResult
from slmops.toolkit.domain.verdicts import TOP1_TARGET

#: How the report and the notebook label a build whose LoRA stays a side branch in the graph.
IN_GRAPH_LABEL = "LoRA kept in the graph; shown, not adopted"


def adoptable(r: RecipeResult) -> bool:
    """Whether the run may recommend and deploy ``r``: built (not refused) and its LoRA merged.

    A build whose LoRA stays a side branch in the graph (``lora_in_graph``) is measured and shown beside the
    merged recipes but never adopted: the run deploys a merged build whichever way the comparison ranks it (on a
    tiny model that rank against its merged twin can turn on the decode probe's timing noise).
    """
    return not r.refused and not r.lora_in_graph


def in_graph_words(results: list[RecipeResult]) -> list[str]:
    """One sentence per build whose LoRA stays in the graph: its label, parity figure, bits and decode beside its
    merged twin's (the recipe whose name it extends), for the notebook and the report.

    Example:
        >>> in_graph_words(results)[0][:48]
        '`mixed-lora`: LoRA kept in the graph; shown, not'
    """
    words = []
    for r in (r for r in results if r.lora_in_graph):
        if r.refused:
            words.append(f"`{r.recipe}`: {IN_GRAPH_LABEL}; refused by the parity gate (top-1 {r.top1_agreement:.3f}, "
                         f"KL {r.kl_divergence:.3f} against the merged fine-tune in transformers).")
            continue
        parity = (f"parity gate against the merged fine-tune in transformers: pass, top-1 {r.parity_top1_agreement:.3f}, "
                  f"KL {r.parity_kl_divergence:.3f}" if r.parity_top1_agreement is not None
                  and r.parity_kl_divergence is not None else "parity gate: not recorded")
        bits = f"{r.bits_per_weight:.2f} bits per weight counting the branch, " if r.bits_per_weight else ""
        sentence = (f"`{r.recipe}`: {IN_GRAPH_LABEL}. Its {parity}; against the FP32 build top-1 "
                    f"{r.top1_agreement:.3f}, KL {r.kl_divergence:.3f}; {bits}{r.decode_tps:.0f} tok/s")
        twin = next((t for t in results if not t.lora_in_graph and not t.refused
                     and r.recipe.startswith(f"{t.recipe}-")), None)
        if twin is not None:
            twin_bits = f", {twin.bits_per_weight:.2f} bits per weight" if twin.bits_per_weight else ""
            sentence += (f" (merged `{twin.recipe}`: top-1 {twin.top1_agreement:.3f}, KL {twin.kl_divergence:.3f}"
                         f"{twin_bits}, {twin.decode_tps:.0f} tok/s)")
        words.append(sentence + ".")
    return words


def fidelity_key(r: RecipeResult) -> tuple:
    """Sort key, best first: not moved toward the base, domain pass rate, lowest KL, top-1, smallest.

    Perplexity is not in it: on a generic text it rewards a build that fell back to the base.
    """
    return (r.moved_toward_base, -(r.pass_rate if r.pass_rate is not None else 1.0), r.kl_divergence, -r.top1_agreement, r.size_mb)


def recommend_recipe(results: list[RecipeResult], *, size_target: float = 0.25, top1_target: float = TOP1_TARGET,
                     speed_floor: float = 0.5) -> tuple[str, str]:
    """Pick the recipe to use and say why, in one sentence.

    The winner meets the size target (ratio to FP32) and the agreement target and decodes
    at least ``speed_floor`` times as fast as the fastest recipe; among those, the one
    closest to FP32 wins (:func:`fidelity_key`: not moved toward the base model, domain pass
    rate, lowest KL, then top-1). When none does, the closest among the fast recipes wins, and
    the sentence names any recipe that met both targets only by being slow. A recipe the parity
    gate refused is never recommended; the sentence names it. Nor is a build whose LoRA stays in the
    graph (:func:`adoptable`): it is shown beside the others, not ranked with them.

    Raises:
        ValueError: every merged recipe was refused (there is nothing to recommend).

    Example:
        >>> recommend_recipe(results)[0]
        'int8-head'
    """
    refused = [r for r in results if r.refused and not r.lora_in_graph]
    results = [r for r in results if adoptable(r)]
    if not results:
        raise ValueError("every INT4 recipe was refused by the parity gate or keeps its LoRA in the graph (never recommended)")
    fastest = max(r.decode_tps for r in results)
    fast = [r for r in results if r.decode_tps >= speed_floor * fastest] or results
    on_target = [r for r in results if r.size_ratio_vs_fp32 <= size_target and r.top1_agreement >= top1_target]

    def describe(r: RecipeResult) -> str:
        return (f"`{r.recipe}` ({r.size_ratio_vs_fp32:.2f}x FP32 size, top-1 agreement {r.top1_agreement:.3f}, "
                f"KL {r.kl_divergence:.3f}, {r.decode_tps:.0f} tok/s)")

    gate = (" Refused by the parity gate (not built): " + ", ".join(
        f"`{r.recipe}` (top-1 {r.top1_agreement:.3f}, KL {r.kl_divergence:.3f})" for r in refused) + ".") if refused else ""
    winners = [r for r in on_target if r in fast]
    if winners:
        best = min(winners, key=fidelity_key)
        return best.recipe, (f"Use {describe(best)}: closest to FP32 of those meeting <= {size_target}x size and "
                             f">= {top1_target} agreement." + gate)
    best = min(fast, key=fidelity_key)
    sentence = (f"No fast recipe meets both <= {size_target}x size and >= {top1_target} top-1 agreement; "
                f"the best fast one is {describe(best)}.")
    slow = [r for r in on_target if r not in fast]
    if slow:
        sentence += (" " + ", ".join(describe(r) for r in slow) + " meets both targets but decodes at under "
                     f"{speed_floor:.0%} of the fastest recipe's speed; choose it when size and fidelity matter more.")
    return best.recipe, sentence + gate
