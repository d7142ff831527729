"""The shared arithmetic of the benchmark reports."""

import pytest

from loadtests.benchmarks.common import round_ratios


def test_round_ratios_pairs_rounds_and_takes_the_true_median():
    ratios, median = round_ratios([10.0, 9.7, 9.5, 5.4], [10.0, 10.0, 10.0, 10.0])
    assert ratios == [1.0, 0.97, 0.95, 0.54]
    assert median == 0.96  # an even count: the mean of the middle two, not the upper one (0.97)
    assert round_ratios([3.0, 1.0, 2.0], [1.0, 1.0, 1.0])[1] == 2.0
    with pytest.raises(ValueError):
        round_ratios([1.0, 2.0], [1.0])  # rounds must pair up
