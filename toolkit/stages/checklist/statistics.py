"""Statistics behind the timing and memory verdicts: a median judged outside its own run-to-run spread."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from slmops.toolkit.domain.results.checklist import Verdict


@dataclass(frozen=True)
class Decision:
    """A statistic against its threshold, with its measured run-to-run spread.

    Attributes:
        value: The statistic (a median over rounds or windows), in the threshold's units.
        spread: ``spread_sigmas`` standard errors of ``value``, from the rounds' own scatter.
        threshold: The largest passing value.
        verdict: ``pass`` (value + spread <= threshold), ``fail`` (value - spread > threshold) or
            ``inconclusive`` (the threshold lies within the spread: a rerun could land either side).
    """

    value: float
    spread: float
    threshold: float
    verdict: Verdict

    @property
    def finite_spread(self) -> float | None:
        """``spread``, or None when one sample gave no spread (infinite: JSON has no infinity)."""
        return self.spread if math.isfinite(self.spread) else None

    def words(self, unit: str) -> str:
        """The statistic, its spread and threshold in words."""
        return (f"{self.value:+.2f} {unit} (run-to-run spread ±{self.spread:.2f}, threshold {self.threshold:+.2f})"
                + ("; inconclusive: rerun" if self.verdict is Verdict.INCONCLUSIVE else ""))


def decide(samples: list[float], threshold: float, sigmas: float = 3.0) -> Decision:
    """Judge the median of repeated measurements against ``threshold``, outside their spread only.

    The spread is ``sigmas`` standard errors of the median, estimated from the samples' own
    scatter (1.4826 x the median absolute deviation, a standard deviation robust to one slow
    outlier; x1.2533 / sqrt(n) for the median of n).

    Example:
        >>> decide([1.0, 1.1, 0.9, 1.0], threshold=5.0).verdict
        <Verdict.PASS: 'pass'>
        >>> decide([4.0, 6.0, 5.5, 4.5], threshold=5.0).verdict
        <Verdict.INCONCLUSIVE: 'inconclusive'>
    """
    import numpy as np

    values = np.asarray(samples, dtype=float)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826
    spread = sigmas * 1.2533 * mad / np.sqrt(len(values)) if len(values) > 1 else math.inf
    verdict = (Verdict.PASS if median + spread <= threshold else Verdict.FAIL if median - spread > threshold
               else Verdict.INCONCLUSIVE)
    return Decision(round(median, 4), round(float(spread), 4), threshold, verdict)


def growth_mib_per_100(rss_mib: list[float], skip: float = 0.5) -> float:
    """Least-squares slope of RSS over requests, in MiB per 100 requests, after the first ``skip`` share.

    The first half is warm-up: ONNX Runtime's memory arena grows and shrinks for tens of
    requests before it settles (seen on the bundled model: 300 -> 690 -> 300 -> 690 MiB, then flat).

    Example:
        >>> round(growth_mib_per_100([100 + 0.05 * i for i in range(200)]), 2)
        5.0
    """
    import numpy as np

    start = int(len(rss_mib) * skip)
    values = np.asarray(rss_mib[start:], dtype=float)
    if len(values) < 3:
        return 0.0
    slope = np.polyfit(np.arange(len(values)), values, 1)[0]
    return float(slope * 100)


def window_growth(rss_mib: list[float], per_window: int) -> tuple[list[float], list[float]]:
    """High-water RSS (MiB) of each window of ``per_window`` requests after the first (warm-up) window, and the
    growth from each window to the next in MiB per 100 requests.

    A window's high-water mark ignores the arena's swings inside it (300 -> 690 -> 300 MiB on the
    bundled model): an arena's marks stop rising, a leak's rise by the same amount every window.

    Example:
        >>> window_growth([100.0 + 0.5 * i for i in range(40)], 10)[1]
        [50.0, 50.0]
    """
    levels = [max(rss_mib[i:i + per_window]) for i in range(per_window, len(rss_mib) - per_window + 1, per_window)]
    return levels, [round((b - a) * 100 / per_window, 3) for a, b in itertools.pairwise(levels)]
