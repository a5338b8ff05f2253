"""smolsft/evaluation/stats.py against published values and against arithmetic done here,
independently of the code under test."""
import math

import pytest
from scipy import stats as sps

from smolsft.evaluation import stats


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics in
# Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity correction).
@pytest.mark.parametrize("k, n, low, high", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                             (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_matches_newcombe_1998(k, n, low, high):
    got = stats.prompt_interval(k, n)
    assert got["value"] == k / n and got["n"] == n and got["method"] == "wilson"
    assert got["ci95"] == pytest.approx([low, high], abs=5e-5)


def test_wilson_at_the_course_threshold():
    """22 of 100: the Wilson formula written out here (z from the normal quantile)."""
    z, p, n = sps.norm.ppf(0.975), 0.22, 100
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert stats.prompt_interval(22, 100)["ci95"] == pytest.approx([centre - half, centre + half], abs=1e-12)
    assert stats.versus_threshold(stats.prompt_interval(22, 100)["ci95"], 0.22) == "straddles"
    assert stats.versus_threshold([0.25, 0.4], 0.22) == "above"
    assert stats.versus_threshold([0.1, 0.2], 0.22) == "below"


# Fagerland, Lydersen, Laake (2013), BMC Med Res Methodol 13:91, Table 1 (airway
# hyper-responsiveness before/after stem cell transplantation): 1 and 7 discordant pairs,
# exact conditional McNemar p = 0.070 (= 2 * (1 + 8) / 2**8).
def test_mcnemar_textbook_case():
    before = [True] * 1 + [False] * 7 + [True] * 2 + [False] * 11  # 21 pairs: 1 broken, 7 fixed
    after = [False] * 1 + [True] * 7 + [True] * 2 + [False] * 11
    got = stats.paired_prompts(before, after)
    assert (got["n"], got["fixed"], got["broken"]) == (21, 7, 1)
    assert got["p_value"] == pytest.approx(18 / 256) and round(got["p_value"], 3) == 0.070
    assert got["diff"] == pytest.approx(6 / 21)
    assert got["ci95"][0] < 0 < got["ci95"][1]  # p > 0.05: the interval holds 0


def verdicts(fixed, broken, n, both=0):
    """(before, after) of n prompts: ``fixed`` fail -> pass, ``broken`` pass -> fail,
    ``both`` passed twice, the rest failed twice."""
    before = [False] * fixed + [True] * broken + [True] * both
    after = [True] * fixed + [False] * broken + [True] * both
    rest = n - len(before)
    return before + [False] * rest, after + [False] * rest


@pytest.mark.parametrize("fixed, broken, n, p", [(7, 4, 100, 0.5488), (0, 3, 50, 0.25), (12, 2, 100, 0.01294)])
def test_the_issues_demo_changes(fixed, broken, n, p):
    """Issue 37's figures: IFEval 7 fixed / 4 broken of 100 (p = 0.55), IFBench 0 / 3 of 50
    (p = 0.25): no change detectable; fp32 12 / 2 of 100 (p = 0.013): improved."""
    got = stats.paired_prompts(*verdicts(fixed, broken, n, both=19))
    assert got["p_value"] == pytest.approx(p, abs=1e-4)
    lo, hi = got["ci95"]
    # the exact conditional interval, from the Clopper-Pearson limits computed here
    m = fixed + broken
    a = sps.beta.ppf(0.025, fixed, broken + 1) if fixed else 0.0
    b = sps.beta.ppf(0.975, fixed + 1, broken) if broken else 1.0
    assert (lo, hi) == pytest.approx((m / n * (2 * a - 1), m / n * (2 * b - 1)))
    words = stats.change_words(got, bigger_set="a bigger set")
    if p > 0.05:
        assert lo < 0 < hi and words.startswith(f"no change detectable with {n} prompts (95% CI [")
        assert "a bigger set" in words and "prompts would detect" in words
    else:
        assert lo > 0 and words.startswith("improved (+10.0 points")


def test_prompts_to_detect_connor_1987():
    """n = (z_a sqrt(psi) + z_b sqrt(psi - delta^2))^2 / delta^2, worked here for 7 fixed,
    4 broken of 100 (psi 0.11, delta 0.03)."""
    za, zb = 1.959963984540054, 0.8416212335729143
    want = math.ceil((za * math.sqrt(0.11) + zb * math.sqrt(0.11 - 0.0009)) ** 2 / 0.0009)
    assert stats.prompts_to_detect(7, 4, 100) == want == 957
    assert stats.prompts_to_detect(3, 3, 100) is None


def test_nothing_changed():
    got = stats.paired_prompts([True, False, False], [True, False, False])
    assert (got["fixed"], got["broken"], got["diff"], got["ci95"], got["p_value"]) == (0, 0, 0.0, [0.0, 0.0], 1.0)
    assert "no prompt changed its verdict" in stats.change_words(got)


def test_clustered_se_one_value_per_cluster_is_the_ordinary_se():
    ys = [1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 1]
    mean, se, n = stats.clustered_mean([[y] for y in ys])
    assert (mean, n) == (0.5, 12) and se == pytest.approx(sps.sem(ys))


def test_clustered_se_of_identical_answers_is_the_se_of_the_prompt_means():
    """Three instructions per prompt, all with the prompt's verdict: the prompt, not the
    instruction, is the unit, so the SE is that of the 8 prompt means (not sqrt(3) smaller)."""
    prompt = [1, 1, 0, 1, 0, 0, 0, 1]
    got = stats.instruction_interval([[bool(p)] * 3 for p in prompt])
    assert got["value"] == 0.5 and got["n"] == 24 and got["prompts"] == 8
    assert got["se"] == pytest.approx(sps.sem(prompt))
    z = sps.norm.ppf(0.975)
    assert got["ci95"] == pytest.approx([0.5 - z * sps.sem(prompt), 0.5 + z * sps.sem(prompt)])
    naive = sps.sem([p for p in prompt for _ in range(3)])
    assert got["se"] > naive


def test_paired_instructions_clustered():
    before = [[True, False], [False, False], [True, True], [False]]
    after = [[True, True], [True, True], [True, False], [False]]
    got = stats.paired_instructions(before, after)
    # per-prompt sums of the changes: +1, +2, -1, 0 over 7 instructions, mean 2/7
    d, sizes, mean = [1, 2, -1, 0], [2, 2, 2, 1], 2 / 7
    se = math.sqrt(4 / 3 * sum((s - mean * m) ** 2 for s, m in zip(d, sizes))) / 7
    assert (got["n"], got["prompts"], got["fixed"], got["broken"]) == (7, 4, 3, 1)
    assert got["diff"] == pytest.approx(mean) and got["se"] == pytest.approx(se)
    assert got["p_value"] == pytest.approx(2 * sps.norm.sf(mean / se))
    with pytest.raises(ValueError, match="prompt 0 has 2 and 1"):
        stats.paired_instructions([[True, False]], [[True]])


def test_type_test_and_false_marks():
    assert stats.type_test(6, 0)["marked"] and stats.type_test(6, 0)["p_value"] == pytest.approx(2 / 64)
    assert not stats.type_test(3, 0)["marked"]
    assert stats.false_marks(25) == 1.25


def test_bad_input():
    with pytest.raises(ValueError):
        stats.prompt_interval(3, 0)
    with pytest.raises(ValueError, match="not one set of paired prompts"):
        stats.paired_prompts([True], [True, False])


def test_interval_excludes_zero_exactly_when_mcnemar_rejects():
    """The words read the interval; the interval must agree with the exact test for every
    split of up to 40 changed prompts."""
    for m in range(1, 41):
        for fixed in range(m + 1):
            got = stats.paired_prompts(*verdicts(fixed, m - fixed, m + 10))
            excludes = got["ci95"][0] > 0 or got["ci95"][1] < 0
            assert excludes == (got["p_value"] < 0.05), (fixed, m - fixed, got)
