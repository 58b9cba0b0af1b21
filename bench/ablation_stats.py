"""Paired comparisons for bench/paper_ablation.py: mean difference ± standard error over seeds.

Every variant of one comparison is run with the same seeds, and a seed fixes everything the two
runs share (initialisation, text sample, batch order, teacher). So the noise that matters is the
spread of the per-seed *differences*, not of the variants themselves: SE = sd(d) / sqrt(n). An
effect is claimed only when |mean d| > 2 SE; with one seed there is no SE and no claim.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    """Per-seed differences `a - b` of one metric (lower is better) and the verdict."""

    a: str
    b: str
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs)

    @property
    def se(self) -> float | None:
        if len(self.diffs) < 2:
            return None
        return statistics.stdev(self.diffs) / math.sqrt(len(self.diffs))

    def verdict(self) -> str:
        """'a better' / 'b better' beyond two standard errors, else 'not resolved'."""
        se = self.se
        if se is None:
            return "one seed: no claim"
        if abs(self.mean) <= 2 * se:
            return "not resolved (within 2 SE)"
        return f"{self.a} better" if self.mean < 0 else f"{self.b} better"


def paired(a: str, b: str, values: dict[str, dict[int, float]]) -> Paired:
    """Differences `values[a][s] - values[b][s]` over the seeds both variants have.

    Args:
        a, b: variant names (keys of `values`).
        values: variant -> seed -> metric.
    """
    seeds = tuple(sorted(set(values[a]) & set(values[b])))
    if not seeds:
        raise ValueError(f"no common seed for {a!r} and {b!r}")
    return Paired(a, b, seeds, tuple(values[a][s] - values[b][s] for s in seeds))


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (None with one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def fmt(mean: float, se: float | None, digits: int = 4) -> str:
    return f"{mean:+.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def comparison_table(rows: list[tuple[str, Paired]], unit: str, digits: int = 4) -> str:
    """Markdown: comparison, seeds, mean difference ± SE, per-seed differences, verdict."""
    lines = [f"| comparison (a − b) | seeds | mean difference ± SE ({unit}) | per seed | verdict |",
             "|---|---:|---:|---|---|"]
    for label, p in rows:
        per_seed = " / ".join(f"{d:+.{digits}f}" for d in p.diffs)
        lines.append(f"| {label} | {len(p.seeds)} | {fmt(p.mean, p.se, digits)} | {per_seed} | {p.verdict()} |")
    return "\n".join(lines)
