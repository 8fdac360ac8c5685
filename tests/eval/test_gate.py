"""The minority-guidance quality gate's rule: the largest scale within 2 points of unguided class consistency and
10 % of its precision; the unguided row is required."""
import pytest

from ltaug.config import ConfigError, with_values, Config
from ltaug.eval.gate import choose_scale


def row(scale, p, cc):
    return {"scale": scale, "precision": p, "class_consistency": cc, "avg_knn": 1.0 + scale}


def test_largest_scale_within_both_floors():
    rows = [row(0.3, 0.75, 0.885), row(0.0, 0.80, 0.90), row(0.1, 0.78, 0.89), row(0.2, 0.70, 0.91),
            row(0.4, 0.79, 0.87)]
    gate = choose_scale(rows)
    assert gate["precision_floor"] == pytest.approx(0.72) and gate["class_consistency_floor"] == pytest.approx(0.88)
    assert [r["scale"] for r in gate["rows"]] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert [r["passes"] for r in gate["rows"]] == [True, True, False, True, False]   # 0.2: precision; 0.4: consistency
    assert gate["chosen_scale"] == 0.3


def test_nothing_passes_means_unguided_and_scale_zero_is_required():
    assert choose_scale([row(0.0, 0.8, 0.9), row(0.5, 0.5, 0.5)])["chosen_scale"] == 0.0
    with pytest.raises(ValueError, match="unguided"):
        choose_scale([row(0.1, 0.8, 0.9)])


def test_negative_scale_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="eval.minority_scales"):
        with_values(Config(), {"eval.minority_scales": [0.1, -0.2]})
