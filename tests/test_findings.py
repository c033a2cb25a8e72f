"""The report's claims, each judged by the protocol: every outcome each claim can give, on synthetic numbers.

The numbers are literals on both sides of each boundary (z = 3, half the paper's effect, 90 % of the layers), so
a claim wired to the wrong null, an inverted direction or a moved constant makes a test fail.
"""

import dataclasses
import math

import numpy as np
import pytest

from analysis.metrics.nulls import phi11_null
from analysis.report import findings as F
from analysis.report.findings import (FAILS, HOLDS, NOT_REPRODUCED, PARTLY, REPRODUCES, Finding, findings)

D = 576
M, S = phi11_null(D)  # random lines in R^576: mean 1/576, sd ≈ 0.00245


def _phi(z):  # φ(1, 1) with a given z against random lines in R^576
    return M + z * S


def test_constants_are_the_documented_ones():
    assert (F.PAPER_PHI11, F.SEED_DIAG_N, F.CHECK_RTOL, F.CHECK_RANDOM_TOL, F.NEAR_TIE_GAP) == (0.5, 16, 1e-6, 0.15, 0.1)
    assert F.PAPER_T7 == {4: (0.32, 0.02), 64: (1.90, 0.33)}


@pytest.mark.parametrize("phi, verdict", [
    ([0.25, 0.9], REPRODUCES),              # every module far above random and ≥ half the paper's 0.5
    ([0.24, 0.9], PARTLY),                  # far above random, but one φ below half the paper's
    ([_phi(2.9), 0.9], PARTLY),             # one module at chance
    ([_phi(2.9), _phi(1.0)], NOT_REPRODUCED),
    ([_phi(-4.0), _phi(-4.0)], NOT_REPRODUCED)])
def test_top_direction_shared(phi, verdict):
    f = F.claim_phi11("fig3", "Fig. 3", "paper", phi, [D, D], conditions="same seed", labels=["q", "v"])
    assert f.verdict == verdict
    assert f.null_mean == pytest.approx(1 / D) and f.null_sd == pytest.approx(S)
    assert f.n_modules == 2 and f.n_holding == sum(p >= _phi(3.0) for p in phi)


def test_top_direction_over_layers_needs_ninety_percent_and_the_median():
    many = [0.6] * 9 + [_phi(0.0)]
    assert F.claim_phi11("fig6", "Fig. 6", "p", many, [D] * 10, conditions="", aggregate=True).verdict == REPRODUCES
    fewer = [0.6] * 8 + [_phi(0.0)] * 2
    assert F.claim_phi11("fig6", "Fig. 6", "p", fewer, [D] * 10, conditions="", aggregate=True).verdict == PARTLY
    small = [0.2] * 10  # every layer far above chance, the median below half the paper's φ
    assert F.claim_phi11("fig6", "Fig. 6", "p", small, [D] * 10, conditions="", aggregate=True).verdict == PARTLY


def test_ties_are_marked_in_the_text():
    f = F.claim_phi11("fig3", "Fig. 3", "p", [0.9, 0.1], [D, D], conditions="", labels=["q", "v"], ties={"v"})
    assert "v: φ(1,1) = 0.10" in f.measured and "(top two σ nearly tie)" in f.measured
    assert "q: φ(1,1) = 0.90, z" in f.measured and f.measured.count("nearly tie") == 1


@pytest.mark.parametrize("mq, mv, verdict", [
    ([0.30, 0.30], [0.10, 0.10], REPRODUCES),   # q above v by many null sds at every layer
    ([0.30, 0.11], [0.10, 0.10], PARTLY),       # at one layer only
    ([0.10, 0.10], [0.30, 0.30], NOT_REPRODUCED)])  # the opposite
def test_q_shares_more_than_v(mq, mv, verdict):
    f = F.claim_q_over_v("fig7", "Fig. 7", "p", mq, mv, [0.01, 0.01], conditions="", labels=["0", "1"])
    assert f.verdict == verdict and f.null_mean == 0.0


def _t7(proj, r=(1, 4, 64)):
    return F.claim_table7("t7", "p", r, proj, [0.1, 0.1, 0.1], [0.01, 0.01, 0.01], conditions="")


@pytest.mark.parametrize("proj, verdict", [
    ([0.2, 0.8, 0.29], REPRODUCES),     # z ≥ 3 at every r; r = 4: 8× = half of 16×; r = 64: 2.9× ≥ half of 5.76×
    ([0.2, 0.79, 0.29], PARTLY),        # r = 4 ratio just below half the paper's
    ([0.2, 0.8, 0.28], PARTLY),         # r = 64 ratio below half the paper's
    ([0.12, 0.8, 0.29], PARTLY),        # z = 2 at r = 1
    ([0.2, 0.12, 0.29], NOT_REPRODUCED),  # the main case r = 4 at chance
    ([0.2, 0.05, 0.29], NOT_REPRODUCED)])  # r = 4 below random
def test_table7_above_random(proj, verdict):
    f = _t7(proj)
    assert f.verdict == verdict and f.effect == proj[1] and f.z == pytest.approx((proj[1] - 0.1) / 0.01)


def test_table7_without_the_main_rank_has_no_main_case():
    assert F.claim_table7("t7", "p", [1, 8], [0.2, 0.12], [0.1, 0.1], [0.01, 0.01], conditions="").verdict == PARTLY


@pytest.mark.parametrize("parent", [REPRODUCES, PARTLY, NOT_REPRODUCED])
def test_amplification_inherits_and_shows_random(parent):
    p = Finding("t7", "Table 7", "p", "m", "r", parent, z=1.0, n_modules=3, n_holding=1)
    f = F.claim_amplification("amp", p, [4, 64], [6.0, 0.2], [5.0, 0.25], conditions="")
    assert f.verdict == parent and f.effect == 6.0 and f.null_mean == 5.0
    assert "random directions of the same norm: 5.00" in f.measured
    assert ("what random directions of the same norm give" in f.measured) == (parent == NOT_REPRODUCED)


@pytest.mark.parametrize("phi, verdict", [([0.5, 0.5], REPRODUCES), ([0.5, 0.02], PARTLY), ([0.02, 0.02], NOT_REPRODUCED)])
def test_fig8_overlap_above_random(phi, verdict):
    assert F.claim_fig8("fig8", ["a", "b"], phi, [0.01, 0.01], [0.01, 0.01], conditions="").verdict == verdict


@pytest.mark.parametrize("holds, cause", [
    ({(True, True): 1, (True, False): 1, (False, True): 0, (False, False): 0}, "the shared data order"),
    ({(True, True): 1, (True, False): 0, (False, True): 1, (False, False): 0}, "the shared initialisation"),
    ({(True, True): 1, (True, False): 1, (False, True): 1, (False, False): 0}, "either seed alone"),
    ({(True, True): 1, (True, False): 0, (False, True): 0, (False, False): 0}, "the two together"),
    ({(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}, "no shared direction"),
    ({(True, True): 1, (False, False): 0}, "no cause named")])
def test_cause_is_named_from_the_combinations(holds, cause):
    assert cause in F.claim_cause({k: REPRODUCES if v else PARTLY for k, v in holds.items()})


def test_checks():
    assert F.check_random_pair(0.0150, 0.0148, 0.0018, n=16).verdict == HOLDS
    assert F.check_random_pair(0.03, 0.0148, 0.0018, n=16).verdict == FAILS
    assert F.check_table7(1e-7, [0.9, 1.1], 1000).verdict == HOLDS
    assert F.check_table7(2e-6, [1.0], 1000).verdict == FAILS
    assert F.check_table7(1e-7, [1.16], 1000).verdict == FAILS
    assert F.check_table7(math.nan, [1.0], 1000).verdict == FAILS


def test_near_ties():
    assert F.near_ties([1.0, 0.91], [1.0, 0.1]) and F.near_ties([1.0, 0.1], [2.0, 1.9])
    assert not F.near_ties([1.0, 0.89], [1.0]) and not F.near_ties([0.0, 0.0], [1.0, 0.5])


def test_finding_is_frozen_checked_and_json_ready():
    f = Finding("fig3", "Fig. 3", "paper", "measured", "rule", REPRODUCES, effect=0.7, z=math.nan)
    d = f.to_dict()
    assert {"id", "figure", "paper", "measured", "null_mean", "null_sd", "z", "n_modules", "n_holding",
            "conditions", "verdict"} <= set(d)
    assert d["z"] is None and d["effect"] == 0.7
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.verdict = PARTLY
    with pytest.raises(ValueError, match="not one of"):
        Finding("x", "Fig. 3", "p", "m", "r", "sort of")


def test_findings_on_a_computed_report(tiny_report):
    fs = findings(tiny_report)
    assert fs and all(isinstance(f, Finding) for f in fs)
    assert len({f.id for f in fs}) == len(fs)
    by_id = {f.id: f for f in fs}
    assert {"fig3_same_seed", "fig3_same_seed_dW", "fig6_same_seed", "fig3_cross_seed", "fig4", "fig7",
            "fig4_random", "t7_random", "t7_amp", "t7_checks", "fig8"} <= set(by_id)
    assert by_id["t7_checks"].verdict == HOLDS
    assert by_id["t7_amp"].verdict == by_id["t7_random"].verdict
    assert by_id["fig6_same_seed"].n_modules == int(np.sum(~(tiny_report.rank_pair.frame["zero_a"]
                                                             | tiny_report.rank_pair.frame["zero_b"])))
