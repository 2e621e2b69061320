"""Bootstrap intervals and direction labels of the trained study (hddm_core.pipeline.confidence)."""
import numpy as np
import pytest

from hddm_core.pipeline.confidence import (HIGHER, INCONCLUSIVE, LOWER, NOT_REPRODUCED, REPRODUCED, Interval,
                                           bootstrap_draws, direction, grouped_rows, interval, mean_stat,
                                           paired_difference)


def test_bootstrap_interval_of_a_mean_matches_the_normal_closed_form():
    """For n = 400 draws the percentile interval of a mean is mean +- 1.96 s / sqrt(n) to a few per cent."""
    x = np.random.default_rng(3).normal(2.0, 1.5, 400)
    iv = interval(mean_stat(x), bootstrap_draws(len(x), 4000, seed=1))
    half = 1.96 * x.std(ddof=0) / np.sqrt(len(x))
    assert iv.value == pytest.approx(x.mean(), abs=1e-12)
    assert (iv.hi - iv.lo) / 2 == pytest.approx(half, rel=0.08)
    assert iv.lo < x.mean() < iv.hi


def test_paired_difference_cancels_what_the_variants_share():
    """Same draws for both: a constant shift gives exactly that shift, identical stats exactly zero."""
    x = np.random.default_rng(0).normal(size=50)
    draws = bootstrap_draws(50, 200)
    d = paired_difference(mean_stat(x + 0.25), mean_stat(x), draws)
    assert d.lo == pytest.approx(0.25) and d.hi == pytest.approx(0.25) and d.value == pytest.approx(0.25)
    z = paired_difference(mean_stat(x), mean_stat(x), draws)
    assert (z.lo, z.hi) == (0.0, 0.0)


@pytest.mark.parametrize("lo,hi,claim,label", [
    (-2.0, -0.5, LOWER, REPRODUCED), (0.5, 2.0, LOWER, NOT_REPRODUCED), (-0.5, 0.5, LOWER, INCONCLUSIVE),
    (0.5, 2.0, HIGHER, REPRODUCED), (-2.0, -0.5, HIGHER, NOT_REPRODUCED), (0.0, 1.0, HIGHER, INCONCLUSIVE)])
def test_direction_labels(lo, hi, claim, label):
    assert direction(Interval((lo + hi) / 2, lo, hi), claim) == label


def test_grouped_rows_keeps_a_prompts_images_together():
    assert grouped_rows(np.array([2, 0, 2]), 3).tolist() == [6, 7, 8, 0, 1, 2, 6, 7, 8]


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="at least 2 units.*got 1"):
        bootstrap_draws(1)
    with pytest.raises(ValueError, match="'better'"):
        direction(Interval(0, -1, 1), "better")
    with pytest.raises(ValueError, match="level must be in"):
        interval(mean_stat([1.0, 2.0]), bootstrap_draws(2, 10), level=1.5)
