"""Confidence intervals over prompts and the direction labels of the study's comparisons.

Every variant of the trained study is sampled on the same prompts and seeds, so comparisons are
paired: one bootstrap draw resamples prompts (each prompt with all of its images) and the same draw
is applied to every variant. A metric's interval is the percentile interval of its value over
draws; a comparison's interval is that of the paired difference. A direction is called
"reproduced" when the difference's interval lies wholly on the paper's side of zero, "not
reproduced" when wholly on the other side, and "inconclusive (CI overlaps)" when it contains zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive (CI overlaps)"
LOWER, HIGHER = "lower", "higher"  # the direction a claim states for A relative to B


@dataclass(frozen=True)
class Interval:
    value: float  # the statistic on the full sample
    lo: float
    hi: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def bootstrap_draws(n_units: int, n_draws: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_draws, n_units] indices of units (prompts) drawn with replacement; shared across variants."""
    if n_units < 2:
        raise ValueError(f"a bootstrap needs at least 2 units (prompts), got {n_units}")
    if n_draws < 10:
        raise ValueError(f"n_draws must be >= 10, got {n_draws}")
    return np.random.default_rng(seed).integers(0, n_units, size=(n_draws, n_units))


def interval(stat: Callable[[np.ndarray], float], draws: np.ndarray, level: float = 0.95) -> Interval:
    """stat(unit indices) on all units and on each draw -> percentile interval."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    full = float(stat(np.arange(draws.shape[1])))
    vals = np.array([stat(d) for d in draws], dtype=np.float64)
    a = (1 - level) / 2
    return Interval(full, float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a)), level)


def paired_difference(stat_a: Callable, stat_b: Callable, draws: np.ndarray, level: float = 0.95) -> Interval:
    """Interval of stat_a - stat_b over the same draws (paired: same prompts and seeds)."""
    return interval(lambda idx: stat_a(idx) - stat_b(idx), draws, level)


def direction(diff: Interval, claim: str) -> str:
    """The label of a claim 'A is `claim` than B' (LOWER or HIGHER) given the interval of A - B."""
    if claim not in (LOWER, HIGHER):
        raise ValueError(f"claim must be {LOWER!r} or {HIGHER!r}, got {claim!r}")
    if diff.lo <= 0 <= diff.hi:
        return INCONCLUSIVE
    return REPRODUCED if (diff.hi < 0) == (claim == LOWER) else NOT_REPRODUCED


def mean_stat(per_unit: Sequence[float]) -> Callable[[np.ndarray], float]:
    """The mean of per-unit values (e.g. a prompt's diversity) over the drawn units."""
    v = np.asarray(per_unit, dtype=np.float64)
    return lambda idx: float(v[idx].mean())


def grouped_rows(idx: np.ndarray, group_size: int) -> np.ndarray:
    """Unit (prompt) indices -> the row indices of their samples (group_size consecutive rows each)."""
    return (np.asarray(idx)[:, None] * group_size + np.arange(group_size)[None]).reshape(-1)
