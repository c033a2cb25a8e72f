"""The report's claims, each judged by the amended protocol: every outcome each claim can give, on synthetic numbers,
the power of each test against a planted effect (found when planted, not when absent), and z consistent with every
record's own numbers.

The numbers are literals on both sides of each boundary (p = 0.00135, half the paper's effect, 90 % of the layers,
power 0.8), so a claim wired to the wrong null, an inverted direction or a moved constant makes a test fail.
"""

import dataclasses
import math

import numpy as np
import pytest
from scipy.stats import beta, norm

from analysis.metrics.nulls import phi11_null
from analysis.metrics.tails import BetaNull, DrawsNull, SquareGaussianNull
from analysis.report import findings as F
from analysis.report.findings import (FAILS, HOLDS, INCONCLUSIVE, NOT_APPLICABLE, NOT_REPRODUCED, PARTLY, REPRODUCES,
                                      Finding, findings)

D = 576
M, S = phi11_null(D)  # random lines in R^576: mean 1/576, sd ≈ 0.00245
A = norm.sf(3.0)


def _phi_at(p, d=D):  # φ(1, 1) whose tail probability against random lines in R^d is p
    return float(beta.isf(p, 0.5, (d - 1) / 2))


def test_constants_are_the_documented_ones():
    assert (F.PAPER_PHI11, F.PAPER_FIG8_PHI, F.SEED_DIAG_N, F.CHECK_RTOL, F.CHECK_RANDOM_TOL, F.NEAR_TIE_GAP) == (
        0.5, 0.2, 16, 1e-6, 0.15, 0.1)
    assert F.PAPER_T7 == {4: (0.32, 0.02), 64: (1.90, 0.33)} and F.PAPER_T7_WNORM == 61.95


@pytest.mark.parametrize("phi, verdict", [
    ([0.25, 0.9], REPRODUCES),              # every module far above random and ≥ half the paper's 0.5
    ([0.24, 0.9], PARTLY),                  # far above random, but one φ below half the paper's
    ([_phi_at(0.01), 0.9], PARTLY),         # one module at chance
    ([_phi_at(0.01), _phi_at(0.3)], NOT_REPRODUCED),  # none, with power 1: the paper's 0.5 is unmistakable at d = 576
    ([1e-7, 1e-7], NOT_REPRODUCED)])
def test_top_direction_shared(phi, verdict):
    f = F.claim_phi11("fig3", "Fig. 3", "paper", phi, [D, D], conditions="same seed", labels=["q", "v"])
    assert f.verdict == verdict and f.power == 1.0
    assert f.n_modules == 2 and f.n_holding == sum(beta.sf(p, 0.5, (D - 1) / 2) <= A / 2 for p in phi)
    weakest = int(np.argmin(phi))  # the headline of an every-module claim is its weakest module
    assert f.effect == phi[weakest] and f.null_mean == pytest.approx(1 / D) and f.null_sd == pytest.approx(S)
    assert f.p_tail == pytest.approx(float(beta.sf(phi[weakest], 0.5, (D - 1) / 2)))


def test_a_tiny_width_cannot_show_the_papers_phi():
    d = 4  # Beta(1/2, 3/2): φ = 0.5 has a tail of about 0.2, so the planted effect is never significant
    f = F.claim_phi11("fig3", "Fig. 3", "paper", [0.3, 0.3], [d, d], conditions="", labels=["q", "v"])
    assert f.power < 0.05 and f.verdict == INCONCLUSIVE


def test_top_direction_over_layers_needs_ninety_percent_after_holm():
    many = [0.6] * 9 + [M]
    assert F.claim_phi11("fig6", "Fig. 6", "p", many, [D] * 10, conditions="", aggregate=True).verdict == REPRODUCES
    fewer = [0.6] * 8 + [M] * 2
    assert F.claim_phi11("fig6", "Fig. 6", "p", fewer, [D] * 10, conditions="", aggregate=True).verdict == PARTLY
    small = [0.2] * 10  # every layer far above chance, the median below half the paper's φ
    assert F.claim_phi11("fig6", "Fig. 6", "p", small, [D] * 10, conditions="", aggregate=True).verdict == PARTLY
    # raw p ≤ 0.00135 but not after Holm over 40 layers (needs 0.00135 / 40): one such layer is chance ...
    one = [_phi_at(A / 2)] + [M] * 39
    f = F.claim_phi11("fig6", "Fig. 6", "p", one, [D] * 40, conditions="", aggregate=True)
    assert f.n_holding == 0 and f.n_exceed == 1 and f.verdict == NOT_REPRODUCED
    # ... three are more than chance gives
    three = [_phi_at(A / 2)] * 3 + [M] * 37
    f = F.claim_phi11("fig6", "Fig. 6", "p", three, [D] * 40, conditions="", aggregate=True)
    assert f.n_holding == 0 and f.n_exceed == 3 and f.verdict == PARTLY
    assert f.correction.startswith("Holm over 40") and len(f.per_layer) == 40


def test_ties_are_marked_in_the_text():
    f = F.claim_phi11("fig3", "Fig. 3", "p", [0.9, 0.1], [D, D], conditions="", labels=["q", "v"], ties={"v"})
    assert "v: φ(1,1) = 0.10 (top two σ nearly tie)" in f.measured and "q: φ(1,1) = 0.90;" in f.measured
    assert f.measured.count("nearly tie") == 1


def _diff_nulls(n, sd=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return [DrawsNull.of(rng.normal(0.0, sd, 20000)) for _ in range(n)]


@pytest.mark.parametrize("mq, mv, verdict", [
    ([0.30, 0.30], [0.10, 0.10], REPRODUCES),   # q above v by 20 null sds at every layer
    ([0.30, 0.10], [0.10, 0.10], PARTLY),       # at one layer only
    ([0.10, 0.10], [0.30, 0.30], NOT_REPRODUCED),  # the opposite direction, significantly
    ([0.101, 0.10], [0.10, 0.101], INCONCLUSIVE)])  # nothing either way, and no number to plant: power unknown
def test_one_role_shares_more(mq, mv, verdict):
    f = F.claim_more_shared("fig7", "Fig. 7", "p", mq, mv, _diff_nulls(2), conditions="", labels=["0", "1"],
                            aggregate=False)
    assert f.verdict == verdict and f.power is None and "detects a difference of about" in f.measured


def _t7_nulls(means, sds):
    return [SquareGaussianNull(m * m + s * s, (2 * m * s) ** 2) for m, s in zip(means, sds)]


def test_table7_power_is_the_papers_share_of_w_planted():
    # at the paper's own geometry (‖W‖ = 61.95, random 0.02 ± 0.005 at r = 4) the paper's 0.32 is unmistakable
    paper_geometry = _t7_nulls([0.02, 0.33], [0.005, 0.01])
    f = F.claim_table7("t7", "p", [4, 64], [0.021, 1.90], paper_geometry, [61.95, 61.95], conditions="")
    assert f.power == 1.0 and f.verdict == NOT_REPRODUCED  # r = 4 at chance with full power
    # here random directions capture more of W than the paper's ΔW did: the paper's effect is invisible
    narrow = _t7_nulls([0.5, 3.0], [0.05, 0.1])
    f = F.claim_table7("t7", "p", [4, 64], [0.5, 3.0], narrow, [61.95, 61.95], conditions="")
    assert f.power == 0.0 and f.verdict == INCONCLUSIVE
    f = F.claim_table7("t7", "p", [4, 64], [0.32, 1.90], paper_geometry, [61.95, 61.95], conditions="")
    assert f.verdict == REPRODUCES and f.effect == 0.32 and f.z == pytest.approx((0.32 - f.null_mean) / f.null_sd)


def test_power_is_the_share_of_planted_draws_found():
    # one module, null N(0, 1) from many draws, the paper's effect μ planted: power = P(N(μ, 1) ≥ z_{1-α})
    rng = np.random.default_rng(3)
    null = DrawsNull.of(rng.standard_normal(400_000))
    for mu in (2.0, 3.0, 4.5):
        f = F.claim_modules("x", "X", "p", [0.0], [null], conditions="", rule="", measured="", plants=[mu], seed=1)
        want = float(norm.sf(norm.isf(A) - mu))
        assert f.power == pytest.approx(want, abs=0.04)
    f = F.claim_modules("x", "X", "p", [0.0], [null], conditions="", rule="", measured="", plants=[0.0], seed=1)
    assert f.power < 0.01  # nothing planted: found at the level's rate only


def test_table7_main_rank_and_ratio():
    nulls = _t7_nulls([0.1, 0.1, 0.1], [0.01, 0.01, 0.01])
    f = F.claim_table7("t7", "p", [1, 4, 64], [0.2, 0.802, 0.29], nulls, [61.95] * 3, conditions="")
    assert f.verdict == REPRODUCES  # r = 4: just above 8× = half of 16×; r = 64: 2.9× ≥ half of 5.76×
    f = F.claim_table7("t7", "p", [1, 4, 64], [0.2, 0.798, 0.29], nulls, [61.95] * 3, conditions="")
    assert f.verdict == PARTLY  # r = 4 ratio just below half the paper's (r = 1: no paper ratio, not applied)
    assert f.power == 0.0  # here the paper's 0.32 would be only 3.2× random: its effect could never reproduce
    f = F.claim_table7("t7", "p", [1, 4, 64], [0.2, 0.1, 0.29], nulls, [61.95] * 3, conditions="")
    assert f.verdict == INCONCLUSIVE and f.effect == 0.1  # the main case r = 4 at chance, without power
    paper = _t7_nulls([0.01, 0.02, 0.33], [0.003, 0.005, 0.01])
    f = F.claim_table7("t7", "p", [1, 4, 64], [0.2, 0.02, 1.9], paper, [61.95] * 3, conditions="")
    assert f.verdict == NOT_REPRODUCED and f.power == 1.0  # at the paper's own geometry: a real failure


@pytest.mark.parametrize("parent", [REPRODUCES, PARTLY, NOT_REPRODUCED, INCONCLUSIVE])
def test_amplification_inherits_and_shows_random(parent):
    p = Finding("t7", "Table 7", "p", "m", "r", parent, n_modules=3, n_holding=1, power=0.3)
    f = F.claim_amplification("amp", p, [4, 64], [6.0, 0.2], [5.0, 0.25], conditions="")
    assert f.verdict == parent and f.effect == 6.0 and f.null_mean == 5.0 and f.power == 0.3
    assert "random directions of the same norm: 5.00" in f.measured
    assert ("what random directions of the same norm give" in f.measured) == (parent in (NOT_REPRODUCED,
                                                                                          INCONCLUSIVE))


def test_fig8_cells():
    nulls = [BetaNull(j / 2, (D - j) / 2) for j in (1, 16)]
    assert F.claim_fig8("fig8", ["a", "b"], [0.5, 0.5], nulls, conditions="").verdict == REPRODUCES
    assert F.claim_fig8("fig8", ["a", "b"], [0.5, 16 / D], nulls, conditions="").verdict == PARTLY
    f = F.claim_fig8("fig8", ["a", "b"], [1 / D, 16 / D], nulls, conditions="")
    assert f.verdict == NOT_REPRODUCED and f.power == 1.0


@pytest.mark.parametrize("holds, cause", [
    ({(True, True): 1, (True, False): 1, (False, True): 0, (False, False): 0}, "the shared data order"),
    ({(True, True): 1, (True, False): 0, (False, True): 1, (False, False): 0}, "the shared initial A"),
    ({(True, True): 1, (True, False): 1, (False, True): 1, (False, False): 0}, "either one alone"),
    ({(True, True): 1, (True, False): 0, (False, True): 0, (False, False): 0}, "the two together"),
    ({(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}, "no shared direction"),
    ({(True, True): 1, (True, False): 1, (False, True): 1, (False, False): 1}, "even when nothing is shared"),
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
    assert {"id", "figure", "paper", "measured", "null_mean", "null_sd", "z", "n_modules", "n_holding", "conditions",
            "verdict", "power", "p_tail", "correction", "per_layer", "main_case"} <= set(d)
    assert d["z"] is None and d["effect"] == 0.7
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.verdict = PARTLY
    with pytest.raises(ValueError, match="not one of"):
        Finding("x", "Fig. 3", "p", "m", "r", "sort of")
    with pytest.raises(ValueError, match="is not"):  # z must be the record's own (effect - mean) / sd
        Finding("x", "Fig. 3", "p", "m", "r", PARTLY, effect=1.0, null_mean=0.5, null_sd=0.1, z=4.0)
    assert F.not_applicable("x", "Fig. 3", "p", "not applicable: no q").verdict == NOT_APPLICABLE


def _z_consistent(f):
    if None in (f.effect, f.null_mean, f.null_sd, f.z) or not all(
            math.isfinite(x) for x in (f.effect, f.null_mean, f.null_sd, f.z)):
        return True
    return f.z == pytest.approx((f.effect - f.null_mean) / f.null_sd, rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_findings_on_a_computed_report(tiny_report):
    fs = findings(tiny_report)
    assert fs and all(isinstance(f, Finding) for f in fs)
    assert len({f.id for f in fs}) == len(fs)
    by_id = {f.id: f for f in fs}
    assert {"fig3_same_seed", "fig3_same_seed_dW", "fig6_same_seed", "fig3_cross_seed", "fig4", "fig7", "fig7_all",
            "fig4_random", "t7_random", "t7_amp", "t7_checks", "fig8", "fig8_grid", "t7_layers_q_r4",
            "t7_layers_v_r4"} <= set(by_id)
    assert by_id["t7_checks"].verdict == HOLDS
    assert by_id["t7_amp"].verdict == by_id["t7_random"].verdict
    assert by_id["fig6_same_seed"].n_modules == int(np.sum(~(tiny_report.rank_pair.frame["zero_a"]
                                                             | tiny_report.rank_pair.frame["zero_b"])))
    for f in fs:
        assert _z_consistent(f), f.id
        if f.verdict in (REPRODUCES, PARTLY, NOT_REPRODUCED, INCONCLUSIVE):
            assert f.conditions and ("power" in f.measured or f.id.startswith("t7_amp")), f.id
            assert "width d = " in f.conditions or f.id.startswith("fig3_cause"), f.id
        if f.verdict == NOT_REPRODUCED:  # never without power, unless the effect is significantly the other way
            assert (f.power is not None and f.power >= 0.8) or f.p_tail >= 1 - 0.00135 or f.id.startswith(
                ("fig4", "fig7")), f.id


def test_findings_twice_on_the_same_data_are_the_same(tiny_report):
    """The shared nulls that a tail extends (claims.diff_null) start from the same draws in every call: a second
    call, after the cached nulls were extended, gives the same records (it did not: 1,000 vs 22,224 draws)."""
    from analysis.report.claims import diff_null

    first = F.findings(tiny_report)
    for args in [(d, k, d, k, s) for d in (8, 16, 32, 64, 576) for k in (1, 2, 4, 8) for s in (0,)]:
        diff_null(*args).resolve(10.0, 1e-5)  # as a far effect would, in an earlier call
    second = F.findings(tiny_report)
    assert [dataclasses.asdict(f) for f in first] == [dataclasses.asdict(f) for f in second]
