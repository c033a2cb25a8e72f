"""The paper's claims as data: one :class:`Finding` per claim, judged by a small pure rule.

Every threshold a verdict or a note depends on is a named constant in the
block below, with the words of the rule it serves. Each rule is a pure
function of plain numbers (``rule_*``), unit-tested for each outcome it can
give; :func:`findings` only pulls the numbers out of a computed
:class:`~analysis.report.compute.ReportData`, calls the rules and words the
records. :func:`notes` writes the README's "Reading these results" list; a
note states a conclusion only when its own numbers support it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "Finding", "findings", "notes",
    "REPRODUCES", "PARTLY", "NOT_REPRODUCED", "NOT_COMPUTED", "HOLDS", "FAILS",
    "HOLDS_ACROSS_SEEDS", "PARTLY_ACROSS_SEEDS", "NOT_ACROSS_SEEDS", "VERDICTS",
    "PHI11_SHARED", "REST_DIRECTIONS", "REST_DROP", "SEED_DIAG_N", "RANDOM_MAX_DEV", "T7_OVER_RANDOM",
    "T7_SHARE_OF_W", "AMP_SMALL_R", "AMP_FALL", "AMP_LARGE", "CHECK_RTOL", "CHECK_RANDOM_TOL", "FIG8_LOW",
    "LOSS_SPREAD_SHARE", "TOP1_DOMINANT", "SAME_SEED_SHARE", "FAR_ABOVE_NULL", "SHORT_TRAINING_EPOCHS",
    "A_MOVED_LITTLE", "SWAP_PHI11_BELOW", "SWAP_TOP2_ABOVE",
    "rule_all_some_none", "rule_top_direction_shared", "rule_top_direction_every_layer",
    "rule_top_direction_across_seeds", "rule_rest_is_noise", "rule_q_over_v", "rule_q_over_v_every_layer",
    "rule_random_matrix", "rule_t7_over_random", "rule_t7_not_top", "rule_amp_falls", "rule_amp_large",
    "rule_t7_checks", "rule_fig8_low", "rule_fig8_grow", "rule_loss_flat",
]

# -- verdict vocabulary ------------------------------------------------------------------------------
REPRODUCES, PARTLY, NOT_REPRODUCED, NOT_COMPUTED = "reproduces", "partly", "does not reproduce", "not computed"
HOLDS, FAILS = "check holds", "check FAILS"  # the closed-form checks of Table 7
HOLDS_ACROSS_SEEDS = "holds across seeds"  # the cross-seed control of Fig. 3 (not in the paper)
PARTLY_ACROSS_SEEDS = "partly holds across seeds"
NOT_ACROSS_SEEDS = "does not hold across seeds"
VERDICTS = frozenset({REPRODUCES, PARTLY, NOT_REPRODUCED, NOT_COMPUTED, HOLDS, FAILS,
                      HOLDS_ACROSS_SEEDS, PARTLY_ACROSS_SEEDS, NOT_ACROSS_SEEDS})

# -- thresholds: every constant a verdict or a note depends on ---------------------------------------
PHI11_SHARED = 0.5         # Fig. 3 / 6: "the top direction is shared: φ(1,1) > 0.5"
REST_DIRECTIONS = 8        # Fig. 3: "the rest look like noise", judged on φ(i,i) for i = 2…8
REST_DROP = 0.5            # Fig. 3: "mean φ(i,i) over i = 2…8 below half of φ(1,1)"
SEED_DIAG_N = 16           # Fig. 4 / 7: "mean φ(i,i), i ≤ 16, larger for q than for v"
RANDOM_MAX_DEV = 0.1       # Fig. 4, random panel: "|φ − null| < 0.1 everywhere"
T7_OVER_RANDOM = 1.5       # Table 7: ‖UᵀWV‖ of ΔW / of random, "ratio > 1.5 for every r"
T7_SHARE_OF_W = 0.2        # Table 7: ‖UᵀWV‖ of ΔW / of W, "below 20 % for every r"
AMP_SMALL_R = 4            # Table 7: the paper's small rank, r = 4 (the smallest r when 4 was not trained)
AMP_FALL = 3.0             # Table 7: "amplification at r = 4 above 3× that at the largest r"
AMP_LARGE = 5.0            # Table 7: "amplification at r = 4 above 5"
CHECK_RTOL = 1e-6          # Table 7 checks: case (2) vs √Σσ² of a full SVD of W, "≤ 1e-6" relative
CHECK_RANDOM_TOL = 0.15    # Table 7 checks: case (3), RMS over draws / closed form, "within 15 %"
FIG8_LOW = 0.25            # Fig. 8: "φ(r, r) ≤ 0.25 for every r, both sides" (paper: φ ≈ 0.2 at most)
LOSS_SPREAD_SHARE = 0.25   # Table 6 / 18: "spread over r below a quarter of the gain over the base model"
TOP1_DOMINANT = 0.5        # note: "dominated by one direction": median top-1 share of ‖ΔW‖²_F above 0.5
SAME_SEED_SHARE = 0.5      # note: "largely a same-seed effect": cross-seed median φ(1,1) below half the same-seed one
FAR_ABOVE_NULL = 10.0      # note: "still far above the random 1/d": cross-seed median φ(1,1) above 10 / d
SHORT_TRAINING_EPOCHS = 1.0  # note: "Training is short": every adapter saw less than one pass over its data
A_MOVED_LITTLE = 0.3       # note: "A moved little": median ‖A − A₀‖_F / ‖A₀‖_F below 0.3
SWAP_PHI11_BELOW = 0.2     # note: on ΔW's vectors φ(1,1) "collapses" (below 0.2) ...
SWAP_TOP2_ABOVE = 0.5      # ... while φ(1,2) or φ(2,1) is above 0.5: the top two directions swapped order


@dataclass(frozen=True)
class Finding:
    """One claim of the paper beside our numbers and the verdict of its rule.

    Attributes
    ----------
    id : str
        Stable key, e.g. ``"fig3_A"``, ``"t7_amp"``.
    figure : str
        The paper's figure or table, e.g. ``"Fig. 3"``.
    paper : str
        What the paper claims.
    measured : str
        What we measured, with the numbers.
    rule : str
        The rule the verdict applies, in words.
    verdict : str
        One of :data:`VERDICTS`.
    """

    id: str
    figure: str
    paper: str
    measured: str
    rule: str
    verdict: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"finding {self.id!r}: verdict {self.verdict!r} is not one of {sorted(VERDICTS)}")

    def to_dict(self) -> dict:
        """The record as a dict with keys ``key, figure, paper, measured, rule, verdict`` (``key`` is ``id``)."""
        d = asdict(self)
        return {"key": d.pop("id"), **d}


# -- rules: pure functions of plain numbers -> a verdict ---------------------------------------------

def rule_all_some_none(flags):
    """Every flag true: reproduces; some: partly; none: does not reproduce (an empty list: reproduces).

    >>> rule_all_some_none([True, False])
    'partly'
    """
    flags = [bool(x) for x in flags]
    return REPRODUCES if all(flags) else (PARTLY if any(flags) else NOT_REPRODUCED)


def _top_shared(phi11):
    return phi11 is not None and phi11 > PHI11_SHARED


def _layer_shares_top(phi11s):
    return all(_top_shared(x) for x in phi11s)


def rule_top_direction_shared(phi11):
    """Fig. 3: φ(1,1) > :data:`PHI11_SHARED` in every module (``phi11``: one float or None per module).

    >>> rule_top_direction_shared([0.8, 0.3])
    'partly'
    """
    return rule_all_some_none(_top_shared(x) for x in phi11)


def rule_top_direction_every_layer(phi11_by_layer):
    """Fig. 6: the top direction shared by every module, at every shown layer.

    ``phi11_by_layer``: per layer, the φ(1,1) (float or None) of each module.
    """
    return rule_all_some_none(_layer_shares_top(layer) for layer in phi11_by_layer)


def rule_top_direction_across_seeds(phi11):
    """Fig. 3 control (different seeds): :func:`rule_top_direction_shared` in the cross-seed words."""
    words = {REPRODUCES: HOLDS_ACROSS_SEEDS, PARTLY: PARTLY_ACROSS_SEEDS, NOT_REPRODUCED: NOT_ACROSS_SEEDS}
    return words[rule_top_direction_shared(phi11)]


def _rest_drops(diag):
    diag = np.asarray(diag, dtype=float)
    return diag.size >= 2 and float(np.mean(diag[1:REST_DIRECTIONS])) < REST_DROP * diag[0]


def rule_rest_is_noise(diag_by_module):
    """Fig. 3: in every module, mean φ(i,i) over i = 2…8 below :data:`REST_DROP` × φ(1,1).

    ``diag_by_module``: per module the diagonal φ(i,i), i = 1, 2, … (fewer than two entries fail).
    """
    return REPRODUCES if all(_rest_drops(d) for d in diag_by_module) else NOT_REPRODUCED


def _q_wins(mq, mv):
    return mq > mv


def rule_q_over_v(mq, mv):
    """Fig. 4: mean φ(i,i), i ≤ 16, across seeds larger for ΔWq (``mq``) than for ΔWv (``mv``)."""
    return REPRODUCES if _q_wins(mq, mv) else NOT_REPRODUCED


def rule_q_over_v_every_layer(means):
    """Fig. 7: :func:`rule_q_over_v` at every shown layer; ``means``: one ``(mq, mv)`` per layer."""
    return rule_all_some_none(_q_wins(mq, mv) for mq, mv in means)


def rule_random_matrix(max_dev):
    """Fig. 4, random panel: ``max |φ − null|`` below :data:`RANDOM_MAX_DEV`."""
    return REPRODUCES if max_dev < RANDOM_MAX_DEV else NOT_REPRODUCED


def rule_t7_over_random(ratios):
    """Table 7: ‖UᵀWV‖ of ΔW over that of a random matrix above :data:`T7_OVER_RANDOM`, per r."""
    return rule_all_some_none(np.asarray(ratios, dtype=float) > T7_OVER_RANDOM)


def rule_t7_not_top(fractions):
    """Table 7: ‖UᵀWV‖ of ΔW over that of W itself below :data:`T7_SHARE_OF_W`, per r."""
    return rule_all_some_none(np.asarray(fractions, dtype=float) < T7_SHARE_OF_W)


def rule_amp_falls(amp_small, amp_large_r):
    """Table 7: amplification at the small r above :data:`AMP_FALL` × that at the largest r.

    Above it: reproduces; above 1× only: partly; otherwise: does not reproduce.
    """
    if amp_small > AMP_FALL * amp_large_r:
        return REPRODUCES
    return PARTLY if amp_small > amp_large_r else NOT_REPRODUCED


def rule_amp_large(amp_small, amp_max):
    """Table 7: amplification at the small r above :data:`AMP_LARGE` (partly: only at some other r)."""
    if amp_small > AMP_LARGE:
        return REPRODUCES
    return PARTLY if amp_max > AMP_LARGE else NOT_REPRODUCED


def rule_t7_checks(err, ratios):
    """Table 7 checks: case (2) relative error ≤ :data:`CHECK_RTOL` (NaN fails) and every case (3)
    RMS / closed-form ratio within :data:`CHECK_RANDOM_TOL` of 1."""
    ok = err <= CHECK_RTOL and bool(np.all(np.abs(np.asarray(ratios, dtype=float) - 1) < CHECK_RANDOM_TOL))
    return HOLDS if ok else FAILS


def rule_fig8_low(phi_rr_by_side):
    """Fig. 8: φ(r, r) ≤ :data:`FIG8_LOW` for every r, on each side (``{side: [φ(r, r) per r]}``).

    Sides without values are left out.
    """
    return rule_all_some_none(all(p <= FIG8_LOW for p in v) for v in phi_rr_by_side.values() if len(v))


def _grows(excess):
    return len(excess) > 0 and excess[-1] > excess[0]


def rule_fig8_grow(excess_by_side):
    """Fig. 8: excess dimensions r·(φ(r, r) − r/d) larger at the largest r than at the smallest, per side.

    ``excess_by_side``: ``{side: [excess per r, in increasing r]}``; sides without values are left out.
    """
    return rule_all_some_none(_grows(v) for v in excess_by_side.values() if len(v))


def rule_loss_flat(losses, base_loss):
    """Table 6 / 18: spread of the validation loss over r below :data:`LOSS_SPREAD_SHARE` × the gain
    over the base model (no base loss: does not reproduce)."""
    losses = list(losses)
    spread = max(losses) - min(losses)
    gain = (base_loss - min(losses)) if isinstance(base_loss, (int, float)) else math.nan
    return REPRODUCES if spread < LOSS_SPREAD_SHARE * gain else NOT_REPRODUCED


# -- extracting the numbers from a ReportData ------------------------------------------------------

def _f(x, nd=2):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}"


def _sci(x):
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _part(x):
    return {0.5: "half", 0.25: "a quarter"}.get(x, f"{x:g}")


def _short(module):
    return module.rsplit(".", 1)[-1]


def _mod(data, suffix):
    return next((m for m in data.modules if m.endswith(suffix)), None)


def _res(sweep, data, module, side, layer=None):
    return sweep.results[data.name(module, layer)][side]


def _diag_mean(res, n):
    n = min(n, *res.phi.shape)
    return float(np.mean(np.diag(res.phi)[:n])) if n else math.nan


def _losses(data):
    """Validation loss per seed-0 rank and of the base model (None if no manifest has it)."""
    cfg = data.config
    losses = {r: data.manifests.get(f"r{r}_seed{cfg.seeds[0]}", {}).get("val_loss_adapter") for r in cfg.ranks}
    losses = {r: x for r, x in losses.items() if isinstance(x, (int, float))}
    base = next((m.get("val_loss_base") for m in data.manifests.values() if "val_loss_base" in m), None)
    return losses, base


def _fig3(data, mods):
    cfg, pair = data.config, data.rank_pair
    if pair is None:
        return [Finding("fig3_A", "Fig. 3", "top direction shared", "checkpoints missing", "", NOT_COMPUTED)]
    t = f"{PHI11_SHARED:g}"
    out = []
    for side, what in (("A", "the paper's basis (A's right-singular vectors)"),
                       ("input", "ΔW's right-singular vectors")):
        vals = {m: _res(pair, data, m, side).phi11 for m in mods}
        meas = "; ".join(f"{_short(m)}: φ(1,1) = {_f(x)}" for m, x in vals.items())
        d = _res(pair, data, mods[0], side).d
        out.append(Finding(f"fig3_{side}", "Fig. 3",
                           "r = 8 and r = 64 share their top direction: φ(1,1) > 0.5 for ΔWq and ΔWv (layer 48)",
                           f"layer {cfg.layer}, {what}: {meas} (random: 1/d = {1 / d:.4f})",
                           f"φ(1,1) > {t} for every module", rule_top_direction_shared(vals.values())))
    by_layer = [[_res(pair, data, m, "A", L).phi11 for m in mods] for L in cfg.layers]
    n_ok = sum(_layer_shares_top(x) for x in by_layer)
    fr = pair.frame
    frac = float(np.mean(fr["phi11_A"] > PHI11_SHARED)) if len(fr) else math.nan
    out.append(Finding("fig6", "Fig. 6", "the same holds at layers 1, 32, 64, 96 of 96",
                       f"φ(1,1) > {t} for all modules at {n_ok} of {len(by_layer)} layers {list(cfg.layers)} (A basis); "
                       f"over all {fr['layer'].nunique()} layers and modules: {100 * frac:.0f} % of φ(1,1) > {t}, "
                       f"median {_f(fr['phi11_A'].median())}",
                       f"φ(1,1) > {t} at every shown layer", rule_top_direction_every_layer(by_layer)))
    if data.cross_pair is not None:
        vals = {m: _res(data.cross_pair, data, m, "A").phi11 for m in mods}
        med = data.cross_pair.frame.groupby("module")["phi11_A"].median()
        out.append(Finding("fig3_cross", "Fig. 3 (control)",
                           f"(not in the paper) the same comparison without a shared seed: r = {cfg.low} "
                           f"seed {cfg.seeds[1]} vs r = {cfg.high} seed {cfg.seeds[0]}",
                           f"layer {cfg.layer}, A basis: "
                           + "; ".join(f"{_short(m)}: φ(1,1) = {_f(x)}" for m, x in vals.items())
                           + "; median over layers: " + ", ".join(f"{_short(m)} {_f(x)}" for m, x in med.items()),
                           f"φ(1,1) > {t} for every module", rule_top_direction_across_seeds(vals.values())))
    res = {m: _res(pair, data, m, "A") for m in mods}
    meas = "; ".join(f"{_short(m)}: φ(i,i) for i = 1, 2, 4, 8: "
                     + ", ".join(_f(r.phi[i - 1, i - 1]) if i <= min(r.phi.shape) else "–" for i in (1, 2, 4, 8))
                     for m, r in res.items())
    out.append(Finding("fig3_rest", "Fig. 3",
                       "beyond the top direction the overlap is small (noise): a very low rank suffices",
                       f"layer {cfg.layer}, A basis: {meas}",
                       f"mean φ(i,i) over i = 2…{REST_DIRECTIONS} below {_part(REST_DROP)} of φ(1,1)",
                       rule_rest_is_noise(np.diag(r.phi) for r in res.values())))
    return out


def _fig4(data, q, v):
    if data.seed_pair is None or q is None or v is None:
        return []
    cfg, pair, n = data.config, data.seed_pair, SEED_DIAG_N
    out = []
    for side in ("A", "input"):
        rq, rv = _res(pair, data, q, side), _res(pair, data, v, side)
        mq, mv = _diag_mean(rq, n), _diag_mean(rv, n)
        out.append(Finding(f"fig4_{side}", "Fig. 4",
                           "across two seeds (r = 64) ΔWq shares more directions than ΔWv (higher intrinsic rank of ΔWq)",
                           f"layer {cfg.layer}, basis {side}: mean φ(i,i) over i ≤ {n}: q {_f(mq, 3)} vs "
                           f"v {_f(mv, 3)}; φ(1,1): q {_f(rq.phi11)} vs v {_f(rv.phi11)}; directions "
                           f"shared beyond chance (principal cosines² of the top-i prefixes above random "
                           f"mean + 3 sd, max over i ≤ 64): q {rq.shared_dims()}, v {rv.shared_dims()}",
                           f"mean φ(i,i), i ≤ {n}, larger for q than for v", rule_q_over_v(mq, mv)))
    means = [(_diag_mean(_res(pair, data, q, "A", L), n), _diag_mean(_res(pair, data, v, "A", L), n))
             for L in cfg.layers]
    out.append(Finding("fig7", "Fig. 7", "the same at layers 1, 32, 64, 96 of 96",
                       f"q > v (mean φ(i,i), i ≤ {n}, A basis) at {sum(_q_wins(*m) for m in means)} of {len(means)} "
                       f"layers {list(cfg.layers)}",
                       "q > v at every shown layer", rule_q_over_v_every_layer(means)))
    rnd = data.random_sim[data.modules[0]]
    dev = float(np.abs(rnd.phi - rnd.null).max())
    out.append(Finding("fig4_random", "Fig. 4", "two random Gaussian matrices share nothing beyond chance",
                       f"max |φ − max(i,j)/d| = {dev:.3f}, φ(1,1) = {_f(rnd.phi11, 4)}, null 1/d = {1 / rnd.d:.4f}",
                       f"|φ − null| < {RANDOM_MAX_DEV:g} everywhere", rule_random_matrix(dev)))
    return out


def _table7(data, q):
    t = data.table7
    if t is None or not len(t) or q is None:
        return []
    tq = t[t["module"] == q].set_index("r")
    over = tq["proj_delta"] / tq["proj_random"]
    frac_w = tq["proj_delta"] / tq["proj_w"]
    amp = tq["amplification"]
    hi_r = max(amp.index)
    r4 = AMP_SMALL_R if AMP_SMALL_R in amp.index else min(amp.index)
    mono = bool(np.all(np.diff(amp.to_numpy()) < 0))
    checks = [(row.proj_w, math.sqrt(float(np.sum(data.w_spectra[row.module][:int(row['rank'])] ** 2))))
              for _, row in t.iterrows() if row.module in data.w_spectra] if data.w_spectra else []
    err = max((abs(a - b) / b for a, b in checks), default=math.nan)
    rat = t["proj_random_rms"] / t["proj_random_expected"]
    return [
        Finding("t7_random", "Table 7",
                "ΔW correlates with W more than a random matrix: ‖UᵀWV‖ 0.32 vs 0.02 (r = 4), 1.90 vs 0.33 (r = 64)",
                f"ΔWq, layer {data.config.layer}: ‖UᵀWV‖ of ΔW / of random = "
                + ", ".join(f"{_f(o, 2)}× (r = {r})" for r, o in over.items()),
                f"ratio > {T7_OVER_RANDOM:g} for every r", rule_t7_over_random(over.to_numpy())),
        Finding("t7_notop", "Table 7",
                "… but ΔW does not repeat W's top directions: 0.32 vs 21.67 (1.5 %), 1.90 vs 37.71 (5 %)",
                "‖UᵀWV‖ of ΔW / of W = " + ", ".join(f"{100 * x:.1f} % (r = {r})" for r, x in frac_w.items()),
                f"below {100 * T7_SHARE_OF_W:g} % for every r", rule_t7_not_top(frac_w.to_numpy())),
        Finding("t7_amp", "Table 7", "the amplification factor falls as r grows: ≈ 21.5 (r = 4) vs ≈ 1.9 (r = 64)",
                "amplification ‖ΔWq‖/‖UᵀWqV‖ = " + ", ".join(f"{_f(a, 2)} (r = {r})" for r, a in amp.items()),
                f"amplification at r = {r4} above {AMP_FALL:g}× that at r = {hi_r}",
                rule_amp_falls(amp[r4], amp[hi_r])),
        Finding("t7_amp_size", "Table 7",
                "… and is large at small r: ΔW strongly amplifies directions W has but does not emphasise "
                "(21.5 at r = 4)",
                f"amplification at r = {r4}: {_f(amp[r4], 2)}; largest over r: {_f(amp.max(), 2)} "
                f"(r = {amp.idxmax()}); decreasing in r: {'yes' if mono else 'no'}",
                f"amplification at r = {r4} above {AMP_LARGE:g}", rule_amp_large(amp[r4], float(amp.max()))),
        Finding("t7_checks", "Table 7",
                "checks: case (2) = √(σ₁²+…+σ_r²) of W; case (3) ≈ ‖W‖_F r / √(d_out d_in)",
                f"case (2) vs √Σσ² from a full SVD of W: max relative difference {err:.1e}; case (3), RMS over "
                f"{data.config.n_random_table} draws / closed form: {rat.min():.3f} – {rat.max():.3f}",
                f"≤ {_sci(CHECK_RTOL)} and within {100 * CHECK_RANDOM_TOL:g} %", rule_t7_checks(err, rat.to_numpy())),
    ]


def _fig8(data, q):
    if not data.overlaps or q is None:
        return []
    parts, phi_rr, excess = [], {}, {}
    for side in ("output", "input"):
        res = data.overlaps.get((q, side), {})
        vals = {lab: (float(o.phi[o.k - 1, o.k - 1]), o.k / o.d, o.k) for lab, o in res.items() if not o.zero}
        if not vals:
            continue
        # excess dimensions: how many of W's top-k directions lie in ΔW's span beyond chance
        exc = {lab: k * (p - n) for lab, (p, n, k) in vals.items()}
        parts.append(f"{side} side, φ(r, r) (null r/d; excess dims r·(φ − r/d)): "
                     + ", ".join(f"{lab}: {_f(p)} ({_f(n, 3)}; {_f(exc[lab], 1)})" for lab, (p, n, _) in vals.items()))
        phi_rr[side] = [p for p, _, _ in vals.values()]
        excess[side] = list(exc.values())
    return [
        Finding("fig8_low", "Fig. 8", "ΔW's top directions barely overlap W's top ones (φ ≈ 0.2 at most)",
                f"ΔWq, layer {data.config.layer}, W's top-r vs ΔW's top-r directions: " + "; ".join(parts),
                f"φ(r, r) ≤ {FIG8_LOW:g} for every r, both sides", rule_fig8_low(phi_rr)),
        Finding("fig8_grow", "Fig. 8", "a larger r picks up more of W's emphasised directions",
                "excess dims at the largest r vs the smallest: "
                + ", ".join(f"{s}: {'larger' if _grows(ex) else 'not larger'}" for s, ex in excess.items()),
                "more of W's top-r directions inside ΔW's span beyond chance, r·(φ(r, r) − r/d), at the largest r, "
                "on both sides (φ itself grows with r by chance alone)", rule_fig8_grow(excess)),
    ]


def _table18(data):
    losses, base = _losses(data)
    if not losses:
        return []
    return [Finding("t18", "Table 6 / 18",
                    "very small r already suffices (GPT-2 E2E validation loss 1.23 → 1.16 from r = 1 to 16)",
                    f"validation loss: base {_f(base, 3)}; "
                    + ", ".join(f"r = {r}: {_f(x, 3)}" for r, x in losses.items()),
                    f"spread over r below {_part(LOSS_SPREAD_SHARE)} of the gain over the base model",
                    rule_loss_flat(losses.values(), base))]


def findings(data):
    """The paper's claims, our numbers and a verdict for each.

    Parameters
    ----------
    data : ReportData

    Returns
    -------
    list of Finding
        In the README's order: Fig. 3 / 6, Fig. 4 / 7, Table 7, Fig. 8, Table 6 / 18.
    """
    q, v = _mod(data, "q_proj"), _mod(data, "v_proj")
    mods = [m for m in (q, v) if m is not None] or list(data.modules)
    return _fig3(data, mods) + _fig4(data, q, v) + _table7(data, q) + _fig8(data, q) + _table18(data)


# -- notes: what the numbers say beyond the verdicts -----------------------------------------------

def _advice_note(data):
    fr = data.advice.frame
    parts = [f"{_short(m)} median {g['advised'].median():g} (range {g['advised'].min()}–{g['advised'].max()}, "
             f"{int(g['capped'].sum())} of {len(g)} at the cap)" for m, g in fr.groupby("module", sort=True)]
    r0, pat = data.advice.rank_pattern()
    losses, base = _losses(data)
    flat = bool(losses) and rule_loss_flat(losses.values(), base) == REPRODUCES
    return ("Rank advice from the seed pair (rank_advice_*.png): the directions two r = 64 trainings agree on, "
            "per module: " + "; ".join(parts) + f". As a PEFT config: r = {r0} with {len(pat)} rank_pattern "
            "entries. Everything beyond these few directions differs between the seeds as random subspaces do"
            + (", in line with Table 6 / 18 (very small r suffices)." if flat else "."))


def _movement_note(data):
    mv = [(lab, m["A_movement"]["all"]["median"]) for lab, m in sorted(data.manifests.items())
          if isinstance(m.get("A_movement"), dict) and "all" in m["A_movement"]]
    if not mv:
        return None
    small = [lab for lab, x in mv if x < A_MOVED_LITTLE]
    txt = ("How far A moved from its random initialisation (median ‖A − A₀‖_F / ‖A₀‖_F over modules): "
           + ", ".join(f"{lab} {x:.2f}" for lab, x in mv) + ". PEFT initialises A at random and B at 0. ")
    if small:
        return txt + (f"In {', '.join(small)} A moved little, so its row space (the paper's basis) is largely its "
                      "seed-dependent initialisation; ΔW's singular vectors (the ΔW-basis variants) weigh it by what "
                      "B learnt.")
    return txt + ("A moved by a large fraction of its initial norm, so the A basis (the paper's) reflects "
                  "training, not only initialisation.")


def _top1_note(data):
    top = [(lab, float(sw.frame["top1_energy"].median())) for lab, sw in sorted(data.sweeps.items())
           if "top1_energy" in sw.frame and len(sw.frame)]
    if not top:
        return None
    txt = ("Share of ‖ΔW‖²_F in ΔW's top singular direction (median over modules): "
           + ", ".join(f"{lab} {x:.2f}" for lab, x in top) + ".")
    dom = [lab for lab, x in top if x > TOP1_DOMINANT]
    if len(dom) == len(top):
        return txt + (" The updates are dominated by one direction whatever r is: this is why φ(1,1) is high and "
                      "φ(i, j) falls like 1/min(i, j) beyond it (Fig. 3), and why large-r updates have "
                      "a small amplification: their extra directions carry little norm.")
    rest = [lab for lab, _ in top if lab not in dom]
    if dom:
        return txt + (f" Only {', '.join(dom)} {'is' if len(dom) == 1 else 'are'} dominated by one direction "
                      f"(a share above {TOP1_DOMINANT:g}); {', '.join(rest)} spread their norm over several "
                      "directions.")
    return txt + (f" No update is dominated by one direction (every share is at most {TOP1_DOMINANT:g}): the norm "
                  "is spread over several directions.")


def _size_note(data):
    t, q = data.table7, _mod(data, "q_proj")
    if t is None or q is None or not len(t):
        return None
    tq = t[t["module"] == q]
    rel = ", ".join(f"{100 * n / w:.1f} % (r = {r})" for r, n, w in zip(tq["r"], tq["fro"], tq["w_norm"]))
    return (f"Relative size of the update at layer {data.config.layer}, ‖ΔWq‖_F / ‖Wq‖_F: {rel}; in the "
            "paper 6.91 / 61.95 = 11 % (r = 4) and 3.57 / 61.95 = 5.8 % (r = 64). A smaller update "
            "against a larger W gives a smaller amplification factor for the same geometry.")


def _seed_note(data):
    """The rank pair against the control pair; "a same-seed effect" only where the numbers say so."""
    if data.cross_pair is None or data.rank_pair is None:
        return None
    cfg = data.config
    a = data.rank_pair.frame.groupby("module")["phi11_A"].median()
    c = data.cross_pair.frame.groupby("module")["phi11_A"].median()
    d = data.rank_pair.frame.groupby("module")["d_in"].max()
    s = data.seed_pair.frame.groupby("module")["phi11_A"].median() if data.seed_pair is not None else {}
    mods = [m for m in a.index if m in c.index]
    if not mods:
        return None
    txt = (f"The rank pair of Fig. 3 / 6 (r = {cfg.low} and r = {cfg.high}, both seed {cfg.seeds[0]}) shares "
           "its seed, hence its data order (and initialisation stream). With different seeds "
           f"(r = {cfg.low} seed {cfg.seeds[1]} vs r = {cfg.high} seed {cfg.seeds[0]}, the control row) "
           f"the median φ(1,1) over layers {'falls' if all(c[m] < a[m] for m in mods) else 'goes'} from "
           + ", ".join(f"{_short(m)} {a[m]:.2f} to {c[m]:.2f}" for m in mods))
    same = [m for m in mods if c[m] < SAME_SEED_SHARE * a[m]]
    if len(same) < len(mods):
        others = ", ".join(_short(m) for m in mods if m not in same)
        if same:
            return txt + (": on these adapters the shared top direction of Fig. 3 is largely a same-seed effect for "
                          f"{', '.join(map(_short, same))} but not for {others} (its cross-seed median stays at or "
                          f"above {SAME_SEED_SHARE:g} × the same-seed one).")
        return txt + (": the shared top direction of Fig. 3 is not largely a same-seed effect here (every "
                      f"cross-seed median stays at or above {SAME_SEED_SHARE:g} × the same-seed one).")
    close = all(m in s and abs(c[m] - s[m]) < abs(c[m] - a[m]) for m in mods)  # nearer the seed pair's
    far = all(m in d and c[m] > FAR_ABOVE_NULL / d[m] for m in mods)
    return txt + ((", close to the seed pair of Fig. 4" if close else "")
                  + ": on these adapters the shared top direction of Fig. 3 is largely a same-seed effect"
                  + (", though still far above the random 1/d." if far else
                     f", and without the shared seed it is not {FAR_ABOVE_NULL:g}× above the random 1/d."))


def _swap_note(data):
    swaps = []
    for sweep in (data.rank_pair, data.seed_pair):
        if sweep is None:
            continue
        for name, by_side in sweep.results.items():
            res = by_side.get("input")
            if res is None or res.zero or min(res.phi.shape) < 2:
                continue
            if res.phi[0, 0] < SWAP_PHI11_BELOW and max(res.phi[0, 1], res.phi[1, 0]) > SWAP_TOP2_ABOVE:
                swaps.append(f"{name.replace('model.layers.', 'layer ').replace('.self_attn.', ' ')} "
                             f"(φ(1,1) = {res.phi[0, 0]:.2f}, φ(1,2) = {res.phi[0, 1]:.2f}, "
                             f"φ(2,1) = {res.phi[1, 0]:.2f})")
    if not swaps:
        return None
    return ("On ΔW's own singular vectors φ(1,1) collapses where one adapter's top two singular values are "
            "close and their order differs between the adapters; the top-2 subspaces still agree: "
            + "; ".join(sorted(set(swaps))) + ". These are the dips in layers_phi11.png (ΔW basis).")


def _epochs(manifest):
    seen, n = manifest.get("examples_seen"), manifest.get("n_train")
    ok = isinstance(seen, (int, float)) and isinstance(n, (int, float)) and n > 0
    return seen / n if ok else None


def _training_note(data):
    """Training length; "short" only when every adapter saw less than one pass over its training data."""
    steps = {m.get("steps") for m in data.manifests.values() if m.get("steps")}
    if not steps:
        return None
    run = (f"{', '.join(map(str, sorted(steps)))} steps, batch "
           f"{next(iter(data.manifests.values())).get('batch_size', '?')}")
    epochs = [e for e in map(_epochs, data.manifests.values()) if e is not None]
    if epochs and max(epochs) < SHORT_TRAINING_EPOCHS:
        return (f"Training is short ({run}) on a 135M-parameter model, versus GPT-3 175B in the paper: findings "
                "that need a long, converged fine-tune may not appear.")
    seen = f" ({max(epochs):.1f} passes over the training data at most)" if epochs else ""
    return f"Training ran {run}{seen} on a 135M-parameter model, versus GPT-3 175B in the paper."


def _gqa_note(data):
    v = _mod(data, "v_proj")
    if not data.w_spectra or v is None or not data.adapters:
        return None
    d_out, d_in = next(iter(data.adapters.values())).expanded()[data.name(v)].shape
    if d_out >= d_in:
        return None
    return (f"Wv is {d_out} × {d_in} (grouped-query attention): it has only {d_out} input-side singular "
            f"directions, so on Fig. 8's input side for ΔWv the curves stop at i = {d_out} and reach "
            f"{d_out}/{d_in} at most.")


def notes(data):
    """The README's "Reading these results" list.

    Parameters
    ----------
    data : ReportData

    Returns
    -------
    list of str
        One paragraph per note; each states a conclusion only where its numbers
        pass the named threshold (:data:`TOP1_DOMINANT`, :data:`SAME_SEED_SHARE`,
        :data:`SHORT_TRAINING_EPOCHS`, ...).
    """
    out = [_advice_note(data)] if data.advice is not None and len(data.advice.frame) else []
    for note in (_movement_note, _top1_note, _size_note, _seed_note, _swap_note, _training_note, _gqa_note):
        out.append(note(data))
    return [n for n in out if n]
