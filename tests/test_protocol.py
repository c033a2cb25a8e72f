"""The verdict protocol of PAPER.md ("How a finding is judged"): each outcome, on synthetic z-scores."""

import math

import pytest

from analysis.report import protocol as P
from analysis.report.protocol import NOT_COMPUTED, NOT_REPRODUCED, PARTLY, REPRODUCES, judge


def test_constants_are_the_papers():
    assert (P.Z_MIN, P.AGGREGATE_SHARE, P.RATIO_SHARE, P.N_DRAWS) == (3.0, 0.9, 0.5, 1000)
    assert P.PROTOCOL_VERDICTS == ("reproduces", "partly", "does not reproduce")


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
    assert judge([5.0] * 9 + [0.0], aggregate=False) == PARTLY
    assert judge([0.0] * 10, aggregate=True) == NOT_REPRODUCED


def test_the_main_case_decides_does_not_reproduce():
    assert judge([1.0, 9.0, 9.0], main=0) == NOT_REPRODUCED
    assert judge([9.0, 1.0, 9.0], main=0) == PARTLY
    assert judge([9.0, 9.0, 9.0], main=0) == REPRODUCES


@pytest.mark.parametrize("ratio, paper, verdict", [
    (8.0, 16.0, REPRODUCES),      # exactly half the paper's ratio
    (7.9, 16.0, PARTLY),          # below half: the effect holds but is smaller
    (None, 16.0, REPRODUCES),     # no number of ours: the rule is not applied
    (7.9, None, REPRODUCES)])     # the paper gives no number
def test_ratio_rule(ratio, paper, verdict):
    assert judge([4.0, 5.0], ratio=ratio, paper_ratio=paper) == verdict


def test_a_small_ratio_never_rescues_a_failed_main_case():
    assert judge([1.0], main=0, ratio=100.0, paper_ratio=1.0) == NOT_REPRODUCED


def test_derived_quantities_inherit():
    for v in P.PROTOCOL_VERDICTS:
        assert P.inherit(v) == v
