"""Verdicts against stated targets, and the paired test that says whether two builds answer cases differently.

Every status the toolkit shows is :class:`Status` pass, warn or fail against a target it states:
a figure below its target is never "ok". Two builds asked the same cases are compared per
family of cases (``domain``, ``heldout``, ``tool_call`` ...) by McNemar's exact test: only the
cases one build passes and the other fails (the discordant pairs) carry information, and under
"no difference" each such case is as likely to go either way, so their split is a fair coin's
(an exact binomial test). A difference of one or two cases is then what chance gives, and decides
nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    """A verdict against a stated target: pass (meets it), warn (short of it, still usable), fail (unusable)."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


def status_at_least(value: float, target: float, floor: float | None = None) -> Status:
    """The status of a figure that must reach ``target``; below ``floor`` (when given) it fails, else it warns.

    Example:
        >>> status_at_least(0.66, 0.85, floor=0.25)
        <Status.WARN: 'warn'>
    """
    if value >= target:
        return Status.PASS
    return Status.FAIL if floor is None or value < floor else Status.WARN


#: Top-1 agreement with FP32 (or with the source) a quantized build should reach: the INT4 recipe
#: comparison's target. Below it a build is usable but short of the target (warn); below the
#: checklist's ``top1_min`` it fails.
TOP1_TARGET = 0.85

#: The paired test's name, as results and sentences cite it.
PAIRED_TEST = "McNemar's exact test"

#: Two builds differ on a family of cases only when the paired test's p-value is below this.
ALPHA = 0.05


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided p-value of McNemar's exact test from the two discordant counts.

    Args:
        b: Cases the first build passes and the second fails.
        c: Cases the second build passes and the first fails.

    Returns:
        The probability (0-1) of a split at least as uneven as ``b``:``c`` when each discordant
        case goes either way with probability 1/2 (the binomial sum, doubled, at most 1).

    Raises:
        ValueError: a negative count.

    Example:
        >>> mcnemar_exact(0, 2)
        0.5
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


class Difference(StrEnum):
    """What a paired test says of a candidate against its reference on a family of cases."""

    WORSE = "worse"
    BETTER = "better"
    NONE = "no difference"


@dataclass(frozen=True)
class PairedComparison:
    """A candidate build against the reference build on the cases of one family, case by case.

    Result files hold it as the codec writes it (:func:`~slmops.toolkit.core.codec.dump`), the test's
    name and the difference it finds included.

    Attributes:
        family: The family of cases (a checklist item such as ``domain``).
        reference: The reference (``fp32``).
        candidate: The build compared with it.
        both: Cases both pass.
        reference_only: Cases the reference passes and the candidate fails (the test's ``b``).
        candidate_only: Cases the candidate passes and the reference fails (``c``).
        neither: Cases both fail.
        test: The paired test (:data:`PAIRED_TEST`).
        p_value: Two-sided p-value of the test (0-1).
        alpha: Below this p-value the builds differ.
        difference: Worse or better only when the test tells it from chance (``p_value < alpha``; computed).
    """

    family: str
    reference: str
    candidate: str
    both: int
    reference_only: int
    candidate_only: int
    neither: int
    test: str = field(init=False, default=PAIRED_TEST)
    p_value: float
    alpha: float = ALPHA
    difference: Difference = field(init=False, default=Difference.NONE)

    def __post_init__(self) -> None:
        if self.p_value < self.alpha:
            worse = self.reference_only > self.candidate_only
            object.__setattr__(self, "difference", Difference.WORSE if worse else Difference.BETTER)

    @property
    def cases(self) -> int:
        """Cases both builds were asked."""
        return self.both + self.reference_only + self.candidate_only + self.neither

    def words(self) -> str:
        """The comparison in one clause.

        Example:
            >>> PairedComparison("tool_call_heldout", "fp32", "int4", 3, 0, 2, 1, 0.5).words()
            "int4 tool_call_heldout: 5/6 against fp32's 3/6; 0 cases only fp32 passes, 2 only int4 (McNemar's exact test p = 0.50): no difference"
        """
        return (f"{self.candidate} {self.family}: {self.both + self.candidate_only}/{self.cases} against "
                f"{self.reference}'s {self.both + self.reference_only}/{self.cases}; {self.reference_only} cases only "
                f"{self.reference} passes, {self.candidate_only} only {self.candidate} ({PAIRED_TEST} p = "
                f"{self.p_value:.2f}): {self.difference}")


def paired(family: str, reference: str, candidate: str, reference_passed: dict[str, bool],
           candidate_passed: dict[str, bool], alpha: float = ALPHA) -> PairedComparison:
    """Compare two builds on the cases both were asked (by case id).

    Args:
        reference_passed: Case id to whether the reference passed it.
        candidate_passed: The same for the candidate; a case only one build was asked is left out.

    Example:
        >>> paired("domain", "fp32", "int4", {"a": True, "b": True}, {"a": False, "b": False}).p_value
        0.5
    """
    shared = [case for case in reference_passed if case in candidate_passed]
    pairs = [(reference_passed[case], candidate_passed[case]) for case in shared]
    b = sum(r and not c for r, c in pairs)
    c = sum(c and not r for r, c in pairs)
    return PairedComparison(family, reference, candidate, sum(r and c for r, c in pairs), b, c,
                            sum(not r and not c for r, c in pairs), mcnemar_exact(b, c), alpha)


#: The checklist items made of cases (one verdict per case): the families the paired test compares.
CASE_FAMILIES = ("domain", "heldout", "format", "structured", "tool_call", "tool_call_heldout", "retention")


def family_comparisons(verdicts: dict[tuple[str, str, str], str], reference: str = "fp32",
                       alpha: float = ALPHA) -> dict[str, list[PairedComparison]]:
    """Each build against the reference, per case family, from a run's verdicts.

    Args:
        verdicts: ``(build, check, case)`` to ``pass``, ``fail`` or ``inconclusive`` (a family's
            ``<check>-overall`` row is its pass rate, not a case, and is left out).
        reference: The reference build (absent: nothing to compare, an empty result).

    Returns:
        Per build other than the reference, one comparison per family both were asked.
    """
    per: dict[str, dict[str, dict[str, bool]]] = {}
    for (build, check, case), verdict in verdicts.items():
        if check in CASE_FAMILIES and case != f"{check}-overall":
            per.setdefault(build, {}).setdefault(check, {})[case] = verdict == "pass"
    base = per.get(reference)
    if base is None:
        return {}
    return {build: [paired(family, reference, build, base[family], cases, alpha)
                    for family, cases in families.items() if family in base]
            for build, families in per.items() if build != reference}
