"""The t intervals every comparison and bench verdict rests on, checked against values worked out by hand."""
import math

from kd.report.stats import mean_interval, paired_difference


def test_mean_interval_is_the_t_interval_of_the_mean():
    d = mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert d["n"] == 3 and d["mean"] == 2.0
    assert math.isclose(d["low"], 2 - 4.303 / math.sqrt(3)) and math.isclose(d["high"], 2 + 4.303 / math.sqrt(3))
    assert d["excludes_zero"] is False
    assert mean_interval([2.0, 2.1, 1.9])["excludes_zero"] is True
    one = mean_interval([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["low"]) and one["excludes_zero"] is None


def test_paired_difference_uses_only_the_shared_seeds():
    a, b = {0: 10.0, 1: 12.0, 2: 11.0, 9: 99.0}, {0: 9.0, 1: 10.0, 2: 8.0}
    assert paired_difference(a, b) == mean_interval([1.0, 2.0, 3.0])
