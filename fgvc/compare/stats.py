"""Differences between two methods on the same test images, with their uncertainty.

Two runs tested on the same images are paired: each image is right or wrong for each. Their accuracy
difference is ``(n10 - n01) / n`` where ``n10`` counts the images only the first gets right and ``n01`` those
only the second does; the images both get right or both get wrong say nothing about the difference.

- **The interval**: a paired bootstrap over test images (resample the images with replacement, recompute the
  difference; the 2.5th and 97.5th percentiles of 10,000 resamples). A resample's difference depends only on
  how many of its images fall in each of the three groups (first only, second only, same), so the resamples are
  drawn as multinomial counts of the groups: the same distribution as resampling image indices, in O(resamples)
  rather than O(resamples x images).
- **Within noise or not**: the exact McNemar test, the two-sided binomial test of ``n10`` among the
  ``n10 + n01`` discordant images against a fair coin. It is exact for any count (the chi-square form is not for
  the few discordant images of a small test set) and answers the question the words on the page state: could
  a difference this large come from two equally accurate methods? ``p >= 0.05`` reads "within noise".

At the margin the two can disagree (an interval that just excludes 0 with p just above 0.05); the words follow
the exact test.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ALPHA = 0.05
RESAMPLES = 10_000


def discordant(first: Sequence[bool], second: Sequence[bool]) -> tuple[int, int, int]:
    """``(n10, n01, n)``: images only ``first`` gets right, only ``second`` gets right, and all images."""
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired results need the same images: {a.shape} vs {b.shape}")
    return int((a & ~b).sum()), int((~a & b).sum()), int(a.size)


def mcnemar_exact(n10: int, n01: int) -> float:
    """Two-sided exact McNemar p-value (binomial test of ``n10`` in ``n10 + n01`` against 1/2); 1 when no image
    is discordant."""
    from scipy.stats import binomtest

    total = n10 + n01
    return 1.0 if total == 0 else float(binomtest(n10, total, 0.5).pvalue)


def bootstrap_interval(n10: int, n01: int, n: int, level: float = 0.95, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap percentile interval of the accuracy difference in percentage points."""
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [n10 / n, n01 / n, 1 - (n10 + n01) / n], size=resamples)
    diffs = 100.0 * (counts[:, 0] - counts[:, 1]) / n
    lo, hi = np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def paired_difference(first: Sequence[bool], second: Sequence[bool], alpha: float = ALPHA) -> dict[str, Any]:
    """The difference of ``first``'s accuracy over ``second``'s on the same images, in points, with its 95%
    paired bootstrap interval, the exact McNemar p-value and the verdict (``better``, ``worse`` or
    ``within noise``)."""
    n10, n01, n = discordant(first, second)
    diff = 100.0 * (n10 - n01) / n if n else float("nan")
    lo, hi = bootstrap_interval(n10, n01, n)
    p = mcnemar_exact(n10, n01)
    verdict = "within noise" if p >= alpha else ("better" if diff > 0 else "worse")
    return {"diff": diff, "ci_low": lo, "ci_high": hi, "p_value": p, "verdict": verdict, "only_first": n10,
            "only_second": n01, "images": n}


def describe(d: dict[str, Any], first: str = "", second: str = "") -> str:
    """One sentence for a :func:`paired_difference`: ``+1.2 points [-0.4, +2.8], p = 0.17: within noise``."""
    words = {"within noise": "within noise", "better": f"{first or 'the first'} is better beyond noise",
             "worse": f"{first or 'the first'} is worse beyond noise"}[d["verdict"]]
    return (f"{d['diff']:+.2f} points [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}], p = {d['p_value']:.2g}"
            f"{f' against {second}' if second else ''} ({d['only_first']} images only {first or 'the first'} "
            f"gets right, {d['only_second']} only {second or 'the second'}): {words}")


__all__ = ["paired_difference", "mcnemar_exact", "bootstrap_interval", "discordant", "describe", "ALPHA"]
