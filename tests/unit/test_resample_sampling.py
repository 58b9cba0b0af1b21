"""The draw: softmax over batch losses, without replacement, in float64, seeded."""

import itertools

import numpy as np
import pytest

from rethinktiny.errors import UserError
from rethinktiny.resample.sampling import (excess_losses, num_to_select, resample, scored_subset, seeded_generator,
                                          softmax_probabilities)

# chi-square critical values at significance 0.001 (the draws are seeded, so the test is deterministic;
# the threshold only says how far from the law a correct sampler could plausibly be)
CHI2_999 = {1: 10.828, 5: 20.515, 9: 27.877}


def _exact_pair_probabilities(p: np.ndarray) -> dict[tuple[int, int], float]:
    """P({i, j} drawn) for 2 draws without replacement: p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j)."""
    return {(i, j): p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
            for i, j in itertools.combinations(range(len(p)), 2)}


def _chi_square(counts: dict, expected: dict, draws: int) -> float:
    return sum((counts.get(k, 0) - draws * q) ** 2 / (draws * q) for k, q in expected.items())


def test_pair_frequencies_match_the_without_replacement_softmax_law():
    losses = np.array([2.0, 3.0, 3.5, 1.0])
    p = np.exp(losses) / np.exp(losses).sum()
    expected = _exact_pair_probabilities(p)
    assert sum(expected.values()) == pytest.approx(1.0)
    generator, draws, counts = seeded_generator(7), 20000, {}
    for _ in range(draws):
        pair = tuple(resample(losses, 2, generator).selected.tolist())
        counts[pair] = counts.get(pair, 0) + 1
    assert _chi_square(counts, expected, draws) < CHI2_999[5], counts
    # a wrong law (with replacement-like independent inclusion p_i + p_j) is rejected by the same test
    wrong = {k: p[k[0]] + p[k[1]] for k in expected}
    wrong = {k: v / sum(wrong.values()) for k, v in wrong.items()}
    assert _chi_square(counts, wrong, draws) > CHI2_999[5]


def test_single_draw_frequencies_are_the_softmax():
    losses = np.array([0.0, 1.0, 2.0, 2.5, 3.0, 1.5, 0.5, 4.0, 2.2, 1.1])
    p = softmax_probabilities(losses)
    np.testing.assert_allclose(p, np.exp(losses) / np.exp(losses).sum(), rtol=1e-12)
    generator, draws = seeded_generator(3), 20000
    counts = np.bincount([int(resample(losses, 1, generator).selected[0]) for _ in range(draws)], minlength=10)
    chi2 = float(((counts - draws * p) ** 2 / (draws * p)).sum())
    assert chi2 < CHI2_999[9], counts


def test_high_temperature_tends_to_uniform():
    losses = np.array([1.0, 5.0, 9.0, 2.0, 7.0])
    gaps = [np.abs(softmax_probabilities(losses, t) - 0.2).max() for t in (1.0, 10.0, 1e3, 1e6)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-5
    generator, draws = seeded_generator(11), 10000
    counts = np.bincount([int(resample(losses, 1, generator, temperature=1e6).selected[0])
                          for _ in range(draws)], minlength=5)
    assert float(((counts - draws / 5) ** 2 / (draws / 5)).sum()) < 18.467  # chi2(4) at 0.001


def test_large_losses_do_not_overflow():
    # exp(1000) overflows float64 and exp(12) overflows float16: the log-sum-exp shift avoids both.
    for losses in (np.array([1000.0, 1001.0, 1002.0]), np.array([10.0, 11.0, 12.0], dtype=np.float16)):
        p = softmax_probabilities(losses)
        assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(p, np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum(), rtol=1e-12)


def test_nonfinite_losses_are_excluded_and_counted():
    losses = np.array([np.nan, 2.0, np.inf, 1.0, -np.inf, 3.0])
    p = softmax_probabilities(losses)
    assert p[[0, 2, 4]].tolist() == [0.0, 0.0, 0.0] and p.sum() == pytest.approx(1.0)
    generator = seeded_generator(0)
    for _ in range(300):
        draw = resample(losses, 3, generator)
        assert draw.selected.tolist() == [1, 3, 5] and draw.num_nonfinite == 3


def test_selection_is_sorted_distinct_and_seeded():
    losses = np.random.default_rng(0).normal(5, 1, size=200)
    a = resample(losses, 50, seeded_generator(42)).selected
    b = resample(losses, 50, seeded_generator(42)).selected
    c = resample(losses, 50, seeded_generator(43)).selected
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 50


def test_hard_batches_are_preferred():
    losses = np.concatenate([np.full(100, 2.0), np.full(100, 4.0)])
    selected = resample(losses, 50, seeded_generator(1)).selected
    assert (selected >= 100).sum() > 40  # p ratio e^2 ~ 7.4 per batch


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, float("nan")])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(UserError, match="--ratio must be in"):
        num_to_select(10, ratio=ratio)


def test_num_to_select_rules():
    assert num_to_select(10, ratio=1.0) == 10 and num_to_select(10, ratio=0.5) == 5
    assert num_to_select(10, ratio=0.01) == 1
    assert num_to_select(10, count=10) == 10
    with pytest.raises(UserError, match="more than the 10 batches"):
        num_to_select(10, count=11)
    with pytest.raises(UserError, match="positive integer"):
        num_to_select(10, count=0)
    with pytest.raises(UserError, match="exactly one"):
        num_to_select(10, ratio=0.5, count=3)
    with pytest.raises(UserError, match="exactly one"):
        num_to_select(10)


def test_bad_draws_are_refused():
    with pytest.raises(UserError, match="all 3 batch losses are non-finite"):
        resample(np.array([np.nan, np.inf, np.nan]), 1, seeded_generator(0))
    with pytest.raises(UserError, match="only 2 of 4 have a finite loss"):
        resample(np.array([np.nan, 1.0, np.inf, 2.0]), 3, seeded_generator(0))
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(UserError, match="--temperature"):
            softmax_probabilities(np.array([1.0]), bad)


def test_floor_keeps_every_finite_batch_drawable():
    excess = np.array([0.0, 1.0, -800.0, np.nan])  # batch 2's softmax weight underflows to 0
    plain = resample(excess, 2, seeded_generator(0))
    assert plain.probabilities[2] == 0.0
    floored = resample(excess, 3, seeded_generator(0), floor=0.1)
    assert floored.probabilities[2] == pytest.approx(0.1 / 3) and floored.probabilities[3] == 0.0
    assert floored.probabilities.sum() == pytest.approx(1.0) and floored.selected.tolist() == [0, 1, 2]
    np.testing.assert_allclose(floored.probabilities[:2], 0.9 * plain.probabilities[:2] + 0.1 / 3)
    with pytest.raises(UserError, match=r"--floor must be in \[0, 1\)"):
        resample(excess, 1, seeded_generator(0), floor=1.0)


def test_excess_loss_is_nan_where_either_loss_is_not_finite():
    excess = excess_losses(np.array([3.0, np.inf, 2.0]), np.array([1.0, 1.0, np.nan]))
    assert excess[0] == 2.0 and np.isnan(excess[1:]).all()


def test_scored_subset_is_seeded_sorted_and_bounded():
    subset = scored_subset(100, max_batches=10, seed=3)
    assert len(subset) == 10 == len(set(subset.tolist())) and subset.tolist() == sorted(subset.tolist())
    assert scored_subset(100, max_batches=10, seed=3).tolist() == subset.tolist()
    assert scored_subset(100, max_batches=10, seed=4).tolist() != subset.tolist()
    assert len(scored_subset(100, fraction=0.25)) == 25
    assert scored_subset(100) is None and scored_subset(100, max_batches=100) is None
    for kwargs, message in [({"max_batches": 0}, "--max-batches"), ({"fraction": 1.5}, "--fraction"),
                            ({"max_batches": 2, "fraction": 0.5}, "at most one")]:
        with pytest.raises(UserError, match=message):
            scored_subset(100, **kwargs)
