"""Long-tail profiles, ClassCounts and many/medium/few groups."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ltaug.data import ClassCounts, exp_profile, select_indices, step_profile


def test_cifar10_r100_formula_exactly():
    counts = exp_profile(5000, 10, 100)
    assert counts == [int(math.floor(5000 * 0.01 ** (c / 9))) for c in range(10)]
    assert counts[0] == 5000 and counts[-1] == 50
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_cifar100_r100_groups_35_35_30():
    cc = ClassCounts(tuple(exp_profile(500, 100, 100)))
    g = cc.groups("thresholds")
    assert (len(g["many"]), len(g["medium"]), len(g["few"])) == (35, 35, 30)
    assert g["many"][-1] == 34 and g["few"][0] == 70
    assert cc.counts[34] == 102 and cc.counts[35] == 98 and cc.counts[69] == 20 and cc.counts[70] == 19


def test_group_boundaries_are_exact():
    cc = ClassCounts((101, 100, 20, 19))
    assert cc.groups("thresholds") == {"many": [0], "medium": [1, 2], "few": [3]}


def test_terciles_and_auto():
    cc = ClassCounts((60, 50, 40, 30, 20, 10))
    assert cc.groups("terciles") == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    assert cc.groups("auto") == cc.groups("terciles")  # thresholds would leave "many" empty
    big = ClassCounts((500, 90, 5))
    assert big.groups("auto") == big.groups("thresholds")


def test_step_profile():
    assert step_profile(100, 4, 10) == [100, 100, 10, 10]
    assert step_profile(100, 10, 100, 0.3) == [100] * 7 + [1] * 3


def test_selection_is_seeded_per_class_like_the_cifar_lt_code():
    labels = np.repeat(np.arange(3), 10)
    a = select_indices(labels, [10, 5, 2], seed=0)
    b = select_indices(labels, [10, 5, 2], seed=0)
    assert np.array_equal(a, b) and len(a) == 17
    rng = np.random.RandomState(0)  # the reference protocol: one global RNG, classes in order
    expect = []
    for c, n in enumerate([10, 5, 2]):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        expect.append(idx[:n])
    assert np.array_equal(a, np.concatenate(expect))
    assert not np.array_equal(a, select_indices(labels, [10, 5, 2], seed=1))


def test_class_counts_value_object():
    cc = ClassCounts.from_labels([0, 0, 1, 2, 2, 2], 4)
    assert cc.counts == (2, 1, 3, 0) and cc.total == 6 and cc.num_classes == 4
    assert np.isclose(cc.frequencies().sum(), 1.0)
    with pytest.raises(ValueError, match="out of range"):
        ClassCounts.from_labels([0, 5], 3)
    assert hash(cc) == hash(ClassCounts((2, 1, 3, 0)))
