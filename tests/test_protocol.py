"""The verdict protocol of PAPER.md ("How a finding is judged", amended 2026-12-06): each outcome, on synthetic
p-values; the rules of 2026-12-02 alone (:func:`judge`) on synthetic z-scores."""

import math

import pytest
from scipy.stats import binom, gamma, norm

from analysis.report import protocol as P
from analysis.report.protocol import (INCONCLUSIVE, NOT_COMPUTED, NOT_REPRODUCED, PARTLY, REPRODUCES, assess,
                                      binomial_excess, holm, judge)

A = norm.sf(3.0)  # "z ≥ 3" as a tail probability


def test_constants_are_the_papers():
    assert (P.Z_MIN, P.AGGREGATE_SHARE, P.RATIO_SHARE, P.N_DRAWS, P.POWER_MIN) == (3.0, 0.9, 0.5, 1000, 0.8)
    assert P.P_TAIL == pytest.approx(A, rel=1e-12)
    assert P.PROTOCOL_VERDICTS == ("reproduces", "partly", "does not reproduce", "inconclusive")
    assert "2026-11-29" in P.HISTORY and "2026-12-02" in P.HISTORY and "2026-12-06" in P.HISTORY
    assert "after those numbers were known" in P.HISTORY
    assert "fixed before looking at any data" not in P.__doc__ and "stated here before any number" not in P.__doc__


@pytest.mark.parametrize("p, level, held", [
    ([0.0001, 0.0002, 0.5], 0.001, [True, True, False]),   # 0.0001 ≤ 0.001/3, 0.0002 ≤ 0.001/2
    ([0.0004, 0.00045, 0.0006], 0.001, [False, False, False]),  # 0.0004 > 0.001/3: nothing after it either
    ([0.5, 0.0003], 0.001, [False, True]),                 # order does not matter
    ([math.nan, 0.0001], 0.001, [False, True])])           # NaN never holds
def test_holm(p, level, held):
    assert holm(p, level=level).tolist() == held


def test_binomial_excess_against_the_binomial_law():
    p = [A / 2] * 3 + [0.5] * 27
    count, pb = binomial_excess(p)
    assert count == 3 and pb == pytest.approx(float(binom.sf(2, 30, A)), rel=1e-12)
    assert pb == pytest.approx(sum(math.comb(30, k) * A ** k * (1 - A) ** (30 - k) for k in range(3, 31)), rel=1e-9)
    assert binomial_excess([0.5, 0.4]) == (0, 1.0)


@pytest.mark.parametrize("p, kw, verdict", [
    ([1e-9, 1e-9], {}, REPRODUCES),                                  # every module after Holm
    ([1e-9, 0.01], {}, PARTLY),                                      # one holds
    ([0.01, 0.02], {"power": 0.95}, NOT_REPRODUCED),                 # none, and the test could have seen it
    ([0.01, 0.02], {"power": 0.5}, INCONCLUSIVE),                    # none, and it could not
    ([0.01, 0.02], {"power": None}, INCONCLUSIVE),                   # power unknown: it cannot be claimed absent
    ([0.9999, 0.99999], {"p_low": [1e-5, 1e-4], "power": None}, NOT_REPRODUCED),  # significantly the other way
    ([], {}, NOT_COMPUTED)])
def test_outcomes(p, kw, verdict):
    assert assess(p, **kw).verdict == verdict


def test_many_modules_need_holm_and_chance_exceedances_never_read_partly():
    one = [A / 2] + [0.5] * 29   # one raw exceedance among 30: what chance gives (p_binomial ≈ 0.04)
    a = assess(one, aggregate=True, power=0.9)
    assert a.n_holding == 0 and a.n_exceed == 1 and a.p_binomial > A and a.verdict == NOT_REPRODUCED
    few = [A / 2] * 3 + [0.5] * 27  # three raw exceedances, none after Holm (A / 2 > A / 30): more than chance
    a = assess(few, aggregate=True, power=0.9)
    assert a.n_holding == 0 and a.n_exceed == 3 and a.p_binomial <= A and a.verdict == PARTLY
    strong = [1e-8] * 3 + [0.5] * 27  # three hold after Holm
    assert assess(strong, aggregate=True).n_holding == 3 and assess(strong, aggregate=True).verdict == PARTLY
    assert assess([1e-8] * 27 + [0.5] * 3, aggregate=True).verdict == REPRODUCES  # 27 of 30 = 90 %
    assert assess([1e-8] * 26 + [0.5] * 4, aggregate=True).verdict == PARTLY
    assert "Holm over 30 modules" in assess(few).correction and assess([0.1]).correction == "none"


def test_the_main_case_decides():
    assert assess([0.5, 1e-9, 1e-9], main=0, power=0.9).verdict == NOT_REPRODUCED
    assert assess([0.5, 1e-9, 1e-9], main=0, power=0.1).verdict == INCONCLUSIVE
    assert assess([1e-9, 0.5, 1e-9], main=0).verdict == PARTLY
    assert assess([1e-9, 1e-9, 1e-9], main=0).verdict == REPRODUCES


@pytest.mark.parametrize("ratio, paper, verdict", [
    (8.0, 16.0, REPRODUCES),      # exactly half the paper's ratio
    (7.9, 16.0, PARTLY),          # below half: the effect holds but is smaller
    (None, 16.0, REPRODUCES),     # no number of ours: the rule is not applied
    (7.9, None, REPRODUCES)])     # the paper gives no number
def test_ratio_rule(ratio, paper, verdict):
    assert assess([1e-9, 1e-9], ratio=ratio, paper_ratio=paper).verdict == verdict


def test_gamma_tail_is_scipys():
    k, theta = 2.5, 0.3
    mean, sd = k * theta, math.sqrt(k) * theta
    assert P.gamma_tail(1.1, mean, sd) == pytest.approx(float(gamma.sf(1.1, k, scale=theta)), rel=1e-12)
    assert math.isnan(P.gamma_tail(1.0, 1.0, 0.0))


# -- the rules of 2026-12-02 alone, kept for comparison ------------------------------------------------------------

@pytest.mark.parametrize("z, verdict", [
    ([3.0, 10.0], REPRODUCES),             # z ≥ 3 everywhere (3.0 itself holds)
    ([2.99, 10.0], PARTLY),                # one module below
    ([2.99, 0.0], NOT_REPRODUCED),         # none
    ([-5.0, -4.0], NOT_REPRODUCED),        # the opposite direction
    ([math.nan, 4.0], PARTLY),             # NaN does not hold
    ([], NOT_COMPUTED)])
def test_every_module_must_hold(z, verdict):
    assert judge(z) == verdict


def test_aggregate_claims_need_ninety_percent():
    assert judge([5.0] * 9 + [0.0], aggregate=True) == REPRODUCES      # 9 of 10
    assert judge([5.0] * 8 + [0.0] * 2, aggregate=True) == PARTLY      # 8 of 10
    assert judge([0.0] * 10, aggregate=True) == NOT_REPRODUCED


def test_derived_quantities_inherit():
    for v in P.PROTOCOL_VERDICTS:
        assert P.inherit(v) == v


def test_a_few_holding_modules_do_not_rescue_an_opposite_majority():
    p = [1e-9] + [0.99999] * 29             # one layer in the paper's direction ...
    p_low = [0.5] + [1e-6] * 29             # ... the rest significantly the other way
    assert assess(p, p_low=p_low, aggregate=True).verdict == NOT_REPRODUCED
    assert assess(p, aggregate=True, power=0.9).verdict == PARTLY  # without the opposite tail: one holds


def test_reproduces_is_assess_saying_reproduces():
    """The power's inner test is the verdict's own rule (random p, mains, aggregates and ratios)."""
    import numpy as np

    from analysis.report.protocol import REPRODUCES, assess, reproduces

    rng = np.random.default_rng(0)
    for _ in range(3000):
        n = int(rng.integers(1, 12))
        p = 10.0 ** -rng.uniform(0, 6, size=n)
        p[rng.random(n) < 0.1] = np.nan
        kw = {"aggregate": bool(rng.random() < 0.5), "main": int(rng.integers(n)) if rng.random() < 0.5 else None,
              "ratio": float(rng.uniform(0, 2)) if rng.random() < 0.5 else None, "paper_ratio": 1.0}
        assert reproduces(p, **kw) == (assess(p, **kw).verdict == REPRODUCES)


def test_reproduces_rows_is_reproduces_on_each_row():
    import numpy as np

    from analysis.report.protocol import reproduces, reproduces_rows

    rng = np.random.default_rng(1)
    for m in (1, 2, 5, 30):
        p = 10.0 ** -rng.uniform(0, 7, size=(400, m))
        p[rng.random(p.shape) < 0.05] = np.nan
        ratio = rng.uniform(0, 2, size=400)
        ratio[::37] = np.nan
        for kw in ({}, {"aggregate": True}, {"main": m - 1}, {"aggregate": True, "main": 0}):
            got = reproduces_rows(p, ratio=ratio, paper_ratio=1.0, **kw)
            want = [reproduces(row, ratio=float(r), paper_ratio=1.0, **kw) for row, r in zip(p, ratio)]
            assert got.tolist() == want
            assert reproduces_rows(p, **kw).tolist() == [reproduces(row, **kw) for row in p]
