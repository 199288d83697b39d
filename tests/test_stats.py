import math

import numpy as np
import pytest

from orandnet_lib.core.stats import describe_difference, format_p, ols, paired_difference


def test_paired_difference_by_hand():
    # seeds 0, 1, 2: a = (10, 20, 30), b = (11, 22, 33) -> differences d = (1, 2, 3)
    # mean 2; sample sd of d = sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1; se = 1 / sqrt(3)
    # t = 2 / (1 / sqrt(3)) = 2 sqrt(3) = 3.4641, df = 2
    # Student's t with 2 df has the closed form P(|T| > t) = 1 - t / sqrt(2 + t^2)
    #   = 1 - 3.4641 / sqrt(14) = 0.07418
    # 95 % interval: t_0.975(2) = 0.95 * sqrt(2 / (4 * 0.975 * 0.025)) = 4.3027 (same closed form),
    #   2 +- 4.3027 / sqrt(3) = 2 +- 2.4841
    d = paired_difference([10, 20, 30], [11, 22, 33])
    t = 2 * math.sqrt(3)
    t_crit = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))
    assert d["n"] == 3 and d["df"] == 2 and d["mean"] == pytest.approx(2.0)
    assert d["se"] == pytest.approx(1 / math.sqrt(3)) and d["t"] == pytest.approx(t)
    assert d["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert d["low"] == pytest.approx(2 - t_crit / math.sqrt(3)) and d["high"] == pytest.approx(2 + t_crit / math.sqrt(3))
    assert d["p"] == pytest.approx(0.07418, abs=1e-5)


def test_paired_difference_pairs_mappings_by_seed_and_is_not_the_unpaired_spread():
    a = {2: 30.0, 0: 10.0, 1: 20.0, 7: 99.0}  # seed 7 has no partner: left out
    b = {0: 11.0, 1: 22.0, 2: 33.0}
    d = paired_difference(a, b)
    assert d["n"] == 3 and d["mean"] == pytest.approx(2.0) and d["se"] == pytest.approx(1 / math.sqrt(3))
    # the unpaired sqrt(s_a^2 + s_b^2) would be about 15: pairing removes the seed effect
    assert d["se"] < 0.1 * math.sqrt(np.var([10, 20, 30], ddof=1) + np.var([11, 22, 33], ddof=1))
    wider = paired_difference([10, 20, 30], [11, 22, 33], confidence=0.99)
    assert wider["high"] - wider["low"] > d["high"] - d["low"]


def test_paired_difference_edge_cases():
    one = paired_difference([1.0], [3.0])
    assert one["n"] == 1 and one["mean"] == 2.0 and math.isnan(one["se"]) and math.isnan(one["p"])
    assert "no spread" in describe_difference(one)
    same = paired_difference([1.0, 2.0], [2.0, 3.0])  # the same difference on every seed
    assert same["se"] == 0.0 and same["t"] == math.inf and same["p"] == 0.0
    assert math.isnan(paired_difference([1.0, 2.0], [1.0, 2.0])["t"])
    with pytest.raises(ValueError, match="one of each per seed"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(TypeError):
        paired_difference({0: 1.0}, [1.0])
    text = describe_difference(paired_difference([10, 20, 30], [11, 22, 33]))
    assert "+2.0 ± 0.6" in text and "p = 0.07" in text and "do not separate" in text
    # differences 5.5, 4.5, 5.0: t = 5 / (0.5 / sqrt 3) = sqrt 300, and with 2 degrees of freedom
    # p = 1 - t / sqrt(t^2 + 2) = 0.0033: three decimals, where two would print "p = 0.00"
    text = describe_difference(paired_difference([0.0, 0.0, 0.0], [5.5, 4.5, 5.0]))
    assert "p = 0.003;" in text and "separate the two" in text


def test_p_values_read_as_prose_at_every_size():
    assert format_p(0.26) == "p = 0.26" and format_p(0.0048) == "p = 0.005"
    assert format_p(0.0004) == "p < 0.001" and format_p(float("nan")) == "p undefined"


def test_ols_recovers_an_exact_line_and_gives_textbook_standard_errors():
    x = [0.0, 1.0, 2.0, 3.0]
    fit = ols([1.0, 3.0, 5.0, 7.0], {"x": x})
    assert fit["coef"]["intercept"] == pytest.approx(1.0) and fit["coef"]["x"] == pytest.approx(2.0)
    assert fit["r2"] == pytest.approx(1.0) and fit["se"]["x"] == pytest.approx(0.0, abs=1e-9)
    # y = (0, 2, 1, 3): slope 0.8, intercept 0.3; residuals (-0.3, 0.9, -0.9, 0.3), s^2 = 1.8 / 2,
    # se(slope) = sqrt(s^2 / sum (x - mean)^2) = sqrt(0.9 / 5)
    fit = ols([0.0, 2.0, 1.0, 3.0], {"x": x})
    assert fit["coef"]["x"] == pytest.approx(0.8) and fit["coef"]["intercept"] == pytest.approx(0.3)
    assert fit["se"]["x"] == pytest.approx(np.sqrt(0.9 / 5)) and fit["dof"] == 2
    with pytest.raises(ValueError, match="collinear"):
        ols([1.0, 2.0, 3.0], {"a": [1, 2, 3], "b": [2, 4, 6]})
    assert np.isnan(ols([1.0, 2.0], {"x": [0.0, 1.0]})["se"]["x"])  # no residual degrees of freedom


def test_paper_numbers_live_in_one_module():
    from orandnet_lib.core import paper

    assert paper.ARXIV == "2406.19638" and paper.ARXIV in paper.CITATION
    assert paper.REPORTED["IRN"].segmentation_val == 63.5 and paper.REPORTED[paper.ORANDNET].segmentation_val == 70.3
    assert paper.GAIN == pytest.approx(6.8)
    assert paper.comparison()["baseline pseudo-mask mIoU (train)"] == 66.5


def test_ols_gives_the_t_interval_and_p_of_each_coefficient():
    # y = (0, 2, 1, 3) on x = (0, 1, 2, 3): slope 0.8, se sqrt(0.18), 2 residual df.
    # t = 0.8 / sqrt(0.18); t^2 = 32 / 9, and for 2 df P(|T| > t) = 1 - t / sqrt(2 + t^2)
    #   = 1 - sqrt((32/9) / (50/9)) = 1 - 0.8 = 0.2 exactly
    # 95 % interval: t_0.975(2) = 4.3027 (closed form as above), 0.8 +- 4.3027 sqrt(0.18)
    fit = ols([0.0, 2.0, 1.0, 3.0], {"x": [0.0, 1.0, 2.0, 3.0]})
    t_crit = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))
    assert fit["p"]["x"] == pytest.approx(0.2)
    assert fit["low"]["x"] == pytest.approx(0.8 - t_crit * math.sqrt(0.18))
    assert fit["high"]["x"] == pytest.approx(0.8 + t_crit * math.sqrt(0.18))
    assert fit["confidence"] == 0.95
    none_left = ols([1.0, 2.0], {"x": [0.0, 1.0]})  # no residual degrees of freedom: no interval
    assert math.isnan(none_left["low"]["x"]) and math.isnan(none_left["p"]["x"])


def test_describe_difference_with_no_common_seed():
    assert "nothing to compare" in describe_difference(paired_difference({0: 1.0}, {1: 2.0}))


def test_the_papers_gain_carries_its_context():
    from orandnet_lib.core import paper

    for words in (paper.DATASET, "ImageNet", "ResNet-50", "ViT", "one reported run", "interval"):
        assert words in paper.CONTEXT
    assert paper.CONTEXT in paper.gain_with_context()
    head = paper.headline_facts()
    assert head["context"] == paper.CONTEXT and head["orandnet_miou"] - head["baseline_miou"] == pytest.approx(head["gain"])
    assert paper.gain_with_context().startswith("paper +6.8 (")
