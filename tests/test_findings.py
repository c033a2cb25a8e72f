"""The report's verdict rules, one test per rule and outcome, on synthetic numbers next to each threshold.

The numbers are literals on both sides of each threshold, so a rule that is
inverted or a threshold that is moved makes a test fail.
"""

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analysis.report import findings as F
from analysis.report.findings import (FAILS, HOLDS, HOLDS_ACROSS_SEEDS, NOT_ACROSS_SEEDS, NOT_REPRODUCED,
                                      PARTLY, PARTLY_ACROSS_SEEDS, REPRODUCES, Finding, findings, notes)

VOCABULARY = {"reproduces", "partly", "does not reproduce", "not computed", "check holds", "check FAILS",
              "holds across seeds", "partly holds across seeds", "does not hold across seeds"}


def test_vocabulary_is_the_documented_words():
    assert F.VERDICTS == VOCABULARY
    assert (REPRODUCES, PARTLY, NOT_REPRODUCED, F.NOT_COMPUTED) == (
        "reproduces", "partly", "does not reproduce", "not computed")
    assert (HOLDS, FAILS) == ("check holds", "check FAILS")


@pytest.mark.parametrize("flags, verdict", [
    ([True, True], REPRODUCES), ([True, False], PARTLY), ([False, False], NOT_REPRODUCED), ([], REPRODUCES)])
def test_rule_all_some_none(flags, verdict):
    assert F.rule_all_some_none(flags) == verdict


@pytest.mark.parametrize("phi11, verdict", [
    ([0.51, 0.9], REPRODUCES), ([0.51, 0.49], PARTLY), ([0.49, None], NOT_REPRODUCED),
    ([0.5, 0.5], NOT_REPRODUCED), ([0.45, 0.2], NOT_REPRODUCED)])
def test_rule_top_direction_shared(phi11, verdict):
    assert F.rule_top_direction_shared(phi11) == verdict


@pytest.mark.parametrize("by_layer, verdict", [
    ([[0.6, 0.51], [0.55, 0.9]], REPRODUCES),
    ([[0.6, 0.51], [0.55, 0.49]], PARTLY),
    ([[0.49, 0.9], [None, 0.9]], NOT_REPRODUCED),
    ([[0.5, 0.9], [0.9, 0.45]], NOT_REPRODUCED)])
def test_rule_top_direction_every_layer(by_layer, verdict):
    assert F.rule_top_direction_every_layer(by_layer) == verdict


@pytest.mark.parametrize("phi11, verdict", [
    ([0.51, 0.9], HOLDS_ACROSS_SEEDS), ([0.51, 0.49], PARTLY_ACROSS_SEEDS), ([0.49, 0.3], NOT_ACROSS_SEEDS)])
def test_rule_top_direction_across_seeds(phi11, verdict):
    assert F.rule_top_direction_across_seeds(phi11) == verdict


@pytest.mark.parametrize("diags, verdict", [
    ([[0.8] + [0.39] * 7], REPRODUCES),                      # mean over i = 2…8 just below half of 0.8
    ([[0.8] + [0.41] * 7], NOT_REPRODUCED),                  # just above
    ([[0.8] + [0.1] * 7 + [0.9] * 10], REPRODUCES),          # only i ≤ 8 counts
    ([[0.8] + [0.45] * 7 + [0.0] * 10], NOT_REPRODUCED),
    ([[0.8] + [0.1] * 7, [0.6] + [0.31] * 7], NOT_REPRODUCED),  # every module must drop
    ([[0.8, 0.2], [0.6, 0.29, 0.29]], REPRODUCES),
    ([[0.8]], NOT_REPRODUCED), ([[]], NOT_REPRODUCED)])      # no direction beyond the first: not shown
def test_rule_rest_is_noise(diags, verdict):
    assert F.rule_rest_is_noise(diags) == verdict


@pytest.mark.parametrize("mq, mv, verdict", [
    (0.2, 0.1, REPRODUCES), (0.1, 0.2, NOT_REPRODUCED), (0.1, 0.1, NOT_REPRODUCED), (math.nan, 0.1, NOT_REPRODUCED)])
def test_rule_q_over_v(mq, mv, verdict):
    assert F.rule_q_over_v(mq, mv) == verdict


@pytest.mark.parametrize("means, verdict", [
    ([(0.2, 0.1), (0.3, 0.29)], REPRODUCES), ([(0.2, 0.1), (0.1, 0.3)], PARTLY),
    ([(0.1, 0.2), (0.3, 0.3)], NOT_REPRODUCED)])
def test_rule_q_over_v_every_layer(means, verdict):
    assert F.rule_q_over_v_every_layer(means) == verdict


@pytest.mark.parametrize("dev, verdict", [(0.09, REPRODUCES), (0.1, NOT_REPRODUCED), (0.11, NOT_REPRODUCED)])
def test_rule_random_matrix(dev, verdict):
    assert F.rule_random_matrix(dev) == verdict


@pytest.mark.parametrize("ratios, verdict", [
    ([1.6, 2.0], REPRODUCES), ([1.6, 1.4], PARTLY), ([1.4, 0.8], NOT_REPRODUCED), ([1.5], NOT_REPRODUCED),
    ([math.nan, 2.0], PARTLY)])
def test_rule_t7_over_random(ratios, verdict):
    assert F.rule_t7_over_random(ratios) == verdict


@pytest.mark.parametrize("fractions, verdict", [
    ([0.19, 0.05], REPRODUCES), ([0.19, 0.21], PARTLY), ([0.21, 0.5], NOT_REPRODUCED), ([0.2], NOT_REPRODUCED)])
def test_rule_t7_not_top(fractions, verdict):
    assert F.rule_t7_not_top(fractions) == verdict


@pytest.mark.parametrize("small, large, verdict", [
    (3.1, 1.0, REPRODUCES), (2.9, 1.0, PARTLY), (3.0, 1.0, PARTLY), (1.0, 1.0, NOT_REPRODUCED),
    (0.5, 1.0, NOT_REPRODUCED)])
def test_rule_amp_falls(small, large, verdict):
    assert F.rule_amp_falls(small, large) == verdict


@pytest.mark.parametrize("small, largest, verdict", [
    (5.1, 5.1, REPRODUCES), (4.9, 20.0, PARTLY), (4.9, 4.9, NOT_REPRODUCED), (5.0, 5.0, NOT_REPRODUCED)])
def test_rule_amp_large(small, largest, verdict):
    assert F.rule_amp_large(small, largest) == verdict


@pytest.mark.parametrize("err, ratios, verdict", [
    (1e-7, [0.9, 1.14], HOLDS), (1e-6, [0.86], HOLDS), (2e-6, [1.0], FAILS), (1e-7, [0.84], FAILS),
    (1e-7, [1.0, 1.16], FAILS), (math.nan, [1.0], FAILS)])
def test_rule_t7_checks(err, ratios, verdict):
    assert F.rule_t7_checks(err, ratios) == verdict


@pytest.mark.parametrize("by_side, verdict", [
    ({"output": [0.1, 0.25], "input": [0.2]}, REPRODUCES),
    ({"output": [0.1, 0.26], "input": [0.2]}, PARTLY),
    ({"output": [0.3], "input": [0.1, 0.9]}, NOT_REPRODUCED),
    ({"output": [0.1], "input": []}, REPRODUCES)])               # a side without values is left out
def test_rule_fig8_low(by_side, verdict):
    assert F.rule_fig8_low(by_side) == verdict


@pytest.mark.parametrize("by_side, verdict", [
    ({"output": [0.0, 0.5, 1.0], "input": [-0.1, 0.3]}, REPRODUCES),
    ({"output": [0.0, 1.0], "input": [1.0, 0.0]}, PARTLY),
    ({"output": [1.0, 2.0, 1.0], "input": [2.0, 0.0]}, NOT_REPRODUCED),
    ({"output": [1.0], "input": []}, NOT_REPRODUCED)])
def test_rule_fig8_grow(by_side, verdict):
    assert F.rule_fig8_grow(by_side) == verdict


@pytest.mark.parametrize("losses, base, verdict", [
    ([3.24, 3.0], 4.0, REPRODUCES),        # spread 0.24 < a quarter of the gain 1.0
    ([3.26, 3.0], 4.0, NOT_REPRODUCED),    # spread 0.26
    ([3.0, 2.7], 3.5, NOT_REPRODUCED),
    ([3.0, 2.9], None, NOT_REPRODUCED)])   # no base loss: nothing to compare with
def test_rule_loss_flat(losses, base, verdict):
    assert F.rule_loss_flat(losses, base) == verdict


def test_finding_is_frozen_checked_and_dict_shaped():
    f = Finding("fig3_A", "Fig. 3", "paper", "measured", "rule", REPRODUCES)
    assert f.to_dict() == {"key": "fig3_A", "figure": "Fig. 3", "paper": "paper", "measured": "measured",
                           "rule": "rule", "verdict": "reproduces"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.verdict = PARTLY
    with pytest.raises(ValueError, match="not one of"):
        Finding("x", "Fig. 3", "p", "m", "r", "sort of")


def test_findings_on_a_computed_report(tiny_report):
    fs = findings(tiny_report)
    assert fs and all(isinstance(f, Finding) for f in fs)
    assert len({f.id for f in fs}) == len(fs)
    for f in fs:
        assert f.verdict in VOCABULARY, f
        assert set(f.to_dict()) == {"key", "figure", "paper", "measured", "rule", "verdict"}
        assert f.figure and f.paper and f.measured
    by_id = {f.id: f for f in fs}
    assert by_id["t7_checks"].verdict == "check holds"
    assert by_id["fig3_cross"].verdict in {"holds across seeds", "partly holds across seeds",
                                           "does not hold across seeds"}
    assert all(isinstance(n, str) and n for n in notes(tiny_report))


# -- notes state a conclusion only when their numbers support it ---------------------------------------

def _data(**kw):
    cfg = SimpleNamespace(low=8, high=64, seeds=(0, 1), ranks=(1, 8), layer=15)
    base = dict(config=cfg, advice=None, manifests={}, sweeps={}, table7=None, modules=[], adapters={},
                rank_pair=None, seed_pair=None, cross_pair=None, w_spectra={})
    return SimpleNamespace(**{**base, **kw})


def _top1(**shares):
    return _data(sweeps={lab: SimpleNamespace(frame=pd.DataFrame({"top1_energy": [x]})) for lab, x in shares.items()})


def test_top1_note_says_dominated_only_above_half():
    [n] = notes(_top1(r1_seed0=1.0, r8_seed0=0.51))
    assert "r1_seed0 1.00, r8_seed0 0.51." in n and "dominated by one direction whatever r is" in n
    [n] = notes(_top1(r1_seed0=1.0, r8_seed0=0.5))
    assert "whatever r is" not in n and "Only r1_seed0 is dominated by one direction" in n
    [n] = notes(_top1(r1_seed0=0.4, r8_seed0=0.3))
    assert "whatever r is" not in n and "No update is dominated by one direction" in n


def _pairs(same, cross, seed, d=576):
    mods = ["self_attn.q_proj", "self_attn.v_proj"]

    def pair(vals):
        return SimpleNamespace(frame=pd.DataFrame({"module": mods, "phi11_A": vals, "d_in": [d, d]}), results={})
    return _data(rank_pair=pair(same), cross_pair=pair(cross), seed_pair=pair(seed))


def test_seed_note_says_same_seed_effect_only_below_half():
    [n] = notes(_pairs([0.72, 0.73], [0.15, 0.33], [0.17, 0.41]))
    assert n.endswith("falls from q_proj 0.72 to 0.15, v_proj 0.73 to 0.33, close to the seed pair of Fig. 4: on "
                      "these adapters the shared top direction of Fig. 3 is largely a same-seed effect, though "
                      "still far above the random 1/d.")
    [n] = notes(_pairs([0.72, 0.80], [0.37, 0.41], [0.17, 0.41]))   # 0.37 ≥ 0.72 / 2: not a same-seed effect
    assert "is not largely a same-seed effect here" in n and "is largely a same-seed effect" not in n
    [n] = notes(_pairs([0.72, 0.80], [0.35, 0.41], [0.17, 0.41]))   # q below half, v not
    assert "largely a same-seed effect for q_proj but not for v_proj" in n
    [n] = notes(_pairs([0.72, 0.60], [0.75, 0.65], [0.17, 0.41]))   # cross above same: no "falls"
    assert "goes from" in n and "falls" not in n
    [n] = notes(_pairs([0.72, 0.73], [0.015, 0.016], [0.9, 0.9]))   # ≤ 10/d and nearer the rank pair
    assert "far above the random 1/d" not in n and "close to the seed pair" not in n
    assert "largely a same-seed effect, and without the shared seed it is not 10× above the random 1/d." in n


def _manifests(**m):
    return _data(manifests={"r8_seed0": {"steps": 180, "batch_size": 16, **m}})


def test_training_note_says_short_only_below_one_pass():
    [n] = notes(_manifests(examples_seen=2880, n_train=202850))
    assert n == ("Training is short (180 steps, batch 16) on a 135M-parameter model, versus GPT-3 175B in the "
                 "paper: findings that need a long, converged fine-tune may not appear.")
    [n] = notes(_manifests(examples_seen=303000, n_train=202000))
    assert "short" not in n and "1.5 passes over the training data" in n
    [n] = notes(_manifests())                                       # unknown data size: no judgement
    assert "short" not in n and n.startswith("Training ran 180 steps, batch 16 on")


def test_advice_note_cites_table18_only_when_the_loss_is_flat():
    adv = SimpleNamespace(frame=pd.DataFrame({"module": ["q_proj"], "advised": [3], "capped": [False]}),
                          rank_pattern=lambda: (3, {}))
    flat = {"r1_seed0": {"val_loss_adapter": 3.0, "val_loss_base": 4.0}, "r8_seed0": {"val_loss_adapter": 2.9}}
    steep = {"r1_seed0": {"val_loss_adapter": 3.5, "val_loss_base": 4.0}, "r8_seed0": {"val_loss_adapter": 2.9}}
    assert notes(_data(advice=adv, manifests=flat))[0].endswith("in line with Table 6 / 18 (very small r suffices).")
    assert notes(_data(advice=adv, manifests=steep))[0].endswith("differs between the seeds as random subspaces do.")


def test_thresholds_are_the_documented_ones():
    assert (F.PHI11_SHARED, F.REST_DIRECTIONS, F.REST_DROP, F.SEED_DIAG_N, F.RANDOM_MAX_DEV) == (0.5, 8, 0.5, 16, 0.1)
    assert (F.T7_OVER_RANDOM, F.T7_SHARE_OF_W, F.AMP_SMALL_R, F.AMP_FALL, F.AMP_LARGE) == (1.5, 0.2, 4, 3, 5)
    assert (F.CHECK_RTOL, F.CHECK_RANDOM_TOL, F.FIG8_LOW, F.LOSS_SPREAD_SHARE) == (1e-6, 0.15, 0.25, 0.25)
    assert (F.TOP1_DOMINANT, F.SAME_SEED_SHARE, F.FAR_ABOVE_NULL, F.SHORT_TRAINING_EPOCHS) == (0.5, 0.5, 10, 1)
    assert (F.A_MOVED_LITTLE, F.SWAP_PHI11_BELOW, F.SWAP_TOP2_ABOVE) == (0.3, 0.2, 0.5)


def test_fig4_mean_is_over_the_first_16_directions():
    phi = np.diag([1.0] * 8 + [0.0] * 56)                      # (64, 64): shared up to i = 8, then nothing
    assert F._diag_mean(SimpleNamespace(phi=phi), F.SEED_DIAG_N) == 0.5
    assert F._diag_mean(SimpleNamespace(phi=phi[:4, :]), F.SEED_DIAG_N) == 1.0   # capped at min(k1, k2)
