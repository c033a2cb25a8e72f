"""The paper's claims as data: one :class:`Finding` per claim, each a test against a drawn null.

Every verdict comes from :func:`analysis.report.protocol.judge` (PAPER.md, "How a finding is judged"):
z-scores of the effect against a null the toolkit draws (:mod:`analysis.metrics.nulls`), the share of covered
modules where z ≥ 3, and the effect next to the paper's own. The functions ``claim_*`` turn plain numbers
into a :class:`Finding` and are unit-tested for each outcome; :func:`findings` pulls the numbers out of a
computed :class:`~analysis.report.compute.ReportData`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np

from analysis.metrics.nulls import diagonal_phi_draws, phi11_null, z_score
from analysis.report.protocol import (FAILS, HOLDS, N_DRAWS, NOT_COMPUTED, NOT_REPRODUCED, PARTLY, REPRODUCES,
                                      VERDICTS, Z_MIN, inherit, judge, n_holding)

__all__ = ["Finding", "findings", "claim_phi11", "claim_q_over_v", "claim_table7", "claim_amplification",
           "claim_fig8", "claim_cause", "check_random_pair", "check_table7", "near_ties",
           "tied_modules", "swapped_modules",
           "PAPER_PHI11", "PAPER_T7", "SEED_DIAG_N", "CHECK_RTOL", "CHECK_RANDOM_TOL", "NEAR_TIE_GAP",
           "REPRODUCES", "PARTLY", "NOT_REPRODUCED", "NOT_COMPUTED", "HOLDS", "FAILS", "VERDICTS"]

# -- the paper's numbers and the report's own constants (fixed before any data was seen) --------------
PAPER_PHI11 = 0.5          # Fig. 3 / 6: "the top direction is shared: φ > 0.5 at i = j = 1"
PAPER_T7 = {4: (0.32, 0.02), 64: (1.90, 0.33)}  # Table 7, ΔWq: ‖UᵀWV‖ of ΔW and of random, per r
SEED_DIAG_N = 16           # Fig. 4 / 7: "ΔWq shares more directions", measured on mean φ(i, i), i ≤ 16
CHECK_RTOL = 1e-6          # Table 7 check: case (2) vs √Σσ² of a full SVD of W, relative
CHECK_RANDOM_TOL = 0.15    # Table 7 check: case (3), RMS over draws / closed form, within 15 %
NEAR_TIE_GAP = 0.1         # marker, not a verdict: top two singular values within 10 % make the top direction
                           # ill-defined, so φ(1, 1) may dip while the top-2 subspaces agree


@dataclass(frozen=True)
class Finding:
    """One claim of the paper beside our numbers, its null and the protocol's verdict.

    Attributes
    ----------
    id : str
        Stable key, e.g. ``"fig3_same_seed"``.
    figure : str
        The paper's figure or table, e.g. ``"Fig. 3"``.
    paper : str
        What the paper claims.
    measured : str
        What we measured, with the numbers.
    rule : str
        The test, in words.
    verdict : str
        One of :data:`VERDICTS`.
    effect : float
        The effect (main case, or the median over covered modules).
    null_mean, null_sd : float
        Its null's mean and standard deviation.
    z : float
        The main case's z-score (or the median over covered modules).
    n_modules, n_holding : int
        Covered modules, and those where z ≥ 3.
    conditions : str
        Which adapters, layers and basis (same seed or not).
    """

    id: str
    figure: str
    paper: str
    measured: str
    rule: str
    verdict: str
    effect: float = math.nan
    null_mean: float = math.nan
    null_sd: float = math.nan
    z: float = math.nan
    n_modules: int = 0
    n_holding: int = 0
    conditions: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"finding {self.id!r}: verdict {self.verdict!r} is not one of {sorted(VERDICTS)}")

    def to_dict(self) -> dict:
        """The record for ``findings.json`` (NaN becomes None)."""
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _f(x, nd=2):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}"


def _z(x):
    return "–" if x is None or not math.isfinite(x) else f"{x:+.1f}"


def _short(module):
    return module.rsplit(".", 1)[-1]


# -- claims: plain numbers -> a Finding --------------------------------------------------------------

def claim_phi11(id, figure, paper, phi11, d, *, conditions, aggregate=False, labels=None, ties=()):
    """Fig. 3 / 6: the top direction is shared, φ(1, 1) against two random lines (closed form).

    Parameters
    ----------
    id, figure, paper : str
    phi11 : (n,) array_like of float
        φ(1, 1) in each covered module (NaN: zero update).
    d : (n,) array_like of int
        The dimension of each module's space.
    conditions : str
    aggregate : bool
        Many layers: 90 % of the modules suffice.
    labels : list of str, optional
        Module labels for the text (default: none, the text gives the share).
    ties : iterable of str
        Labels of modules whose top two singular values nearly tie (marked in the text).

    Returns
    -------
    Finding
        Effect: the median φ(1, 1). The ratio rule compares φ with half the paper's (:data:`PAPER_PHI11`):
        the median φ for an aggregate claim, the smallest φ where every module must hold.
    """
    phi = np.asarray(phi11, dtype=float)
    nulls = [phi11_null(x) for x in np.asarray(d, dtype=int)]
    z = np.array([z_score(p, m, s) for p, (m, s) in zip(phi, nulls)])
    effect = float(np.nanmedian(phi)) if np.isfinite(phi).any() else math.nan
    m, s = (float(np.median([n[0] for n in nulls])), float(np.median([n[1] for n in nulls]))) if nulls else (
        math.nan, math.nan)
    # the ratio rule on φ itself: the median over many layers, the smallest where every module must hold
    ratio = effect if aggregate else (float(np.nanmin(phi)) if np.isfinite(phi).any() else math.nan)
    verdict = judge(z, aggregate=aggregate, ratio=ratio, paper_ratio=PAPER_PHI11)
    ties = set(ties)
    if labels is not None and len(labels) <= 4:
        meas = "; ".join(f"{lab}: φ(1,1) = {_f(p)}, z = {_z(zz)}" + (" (top two σ nearly tie)" if lab in ties else "")
                         for lab, p, zz in zip(labels, phi, z))
    else:
        meas = (f"median φ(1,1) = {_f(effect)} over {len(phi)} modules, z ≥ {Z_MIN:g} in {n_holding(z)}"
                + (f"; top two σ nearly tie at {', '.join(sorted(ties))}" if ties else ""))
    meas += f" (random lines: {_f(m, 4)} ± {_f(s, 4)})"
    rule = (f"z ≥ {Z_MIN:g} against two random lines (closed form) in "
            + ("≥ 90 % of the modules" if aggregate else "every module")
            + f", and {'the median' if aggregate else 'every'} φ(1,1) ≥ half the paper's {PAPER_PHI11:g}")
    return Finding(id, figure, paper, meas, rule, verdict, effect, m, s, float(np.nanmedian(z)) if z.size else
                   math.nan, len(z), n_holding(z), conditions)


@functools.lru_cache(maxsize=None)
def _diag_null(d, n, seed):
    draws = diagonal_phi_draws(d, n, n=N_DRAWS, seed=seed).mean(axis=1)  # mean φ(i, i), i ≤ n, per draw
    return float(draws.mean()), float(draws.std(ddof=1))


def claim_q_over_v(id, figure, paper, mq, mv, null_sd, *, conditions, aggregate=False, labels=None):
    """Fig. 4 / 7: across seeds ΔWq shares more directions than ΔWv.

    The effect is the difference of mean φ(i, i), i ≤ :data:`SEED_DIAG_N`, q minus v; its null is the
    difference of two independent random-subspace values (mean 0 for equal d, sd √(sd_q² + sd_v²)).

    Parameters
    ----------
    mq, mv : (n,) array_like of float
        Mean φ(i, i) of q and v at each covered layer.
    null_sd : (n,) array_like of float
        The sd of the difference under the null at each layer.
    labels : list of str, optional
        Layer labels for the text.
    """
    mq, mv, sd = (np.asarray(x, dtype=float) for x in (mq, mv, null_sd))
    z = (mq - mv) / sd
    verdict = judge(z, aggregate=aggregate)
    labels = labels or [str(i) for i in range(len(z))]
    meas = "; ".join(f"{lab}: q {_f(a, 3)} vs v {_f(b, 3)}, z = {_z(zz)}" for lab, a, b, zz in zip(labels, mq, mv, z))
    return Finding(id, figure, paper, meas,
                   f"(mean φ(i,i) of q − of v, i ≤ {SEED_DIAG_N}) / its null sd ≥ {Z_MIN:g} at "
                   + ("≥ 90 % of the layers" if aggregate else "every layer") + " (the paper gives no number)",
                   verdict, float(np.median(mq - mv)), 0.0, float(np.median(sd)), float(np.median(z)), len(z),
                   n_holding(z), conditions)


def claim_table7(id, paper, r, proj_delta, null_mean, null_sd, *, conditions, main_r=4, figure="Table 7"):
    """Table 7: ΔW correlates with W more than random directions do.

    Parameters
    ----------
    r : (n,) array_like of int
        The ranks covered.
    proj_delta : (n,) array_like of float
        ‖Uᵀ W V‖_F with U, V of ΔW, per rank.
    null_mean, null_sd : (n,) array_like of float
        The same over Haar-random U, V (≥ 1,000 draws).
    main_r : int
        The paper's main case (r = 4); when it is not covered, no main case.
    figure : str

    Returns
    -------
    Finding
        Ratio rule: ours / the paper's (:data:`PAPER_T7`) at each rank the paper gives, the smallest of them.
    """
    r = [int(x) for x in r]
    pd_, m, s = (np.asarray(x, dtype=float) for x in (proj_delta, null_mean, null_sd))
    z = (pd_ - m) / s
    main = r.index(main_r) if main_r in r else None
    ratios = [(pd_[i] / m[i]) / (PAPER_T7[k][0] / PAPER_T7[k][1]) for i, k in enumerate(r) if k in PAPER_T7]
    verdict = judge(z, main=main, ratio=min(ratios) if ratios else None, paper_ratio=1.0 if ratios else None)
    i = main if main is not None else 0
    meas = "; ".join(f"r = {k}: {_f(a, 3)} vs {_f(b, 3)} ± {_f(c, 3)} ({_f(a / b)}×, z = {_z(zz)})"
                     for k, a, b, c, zz in zip(r, pd_, m, s, z))
    rule = (f"z ≥ {Z_MIN:g} against ≥ 1,000 Haar-random U, V at every r (r = {main_r} is the main case), and the "
            "ratio to random ≥ half the paper's (r = 4: 16×, so ≥ 8×; r = 64: 5.8×, so ≥ 2.9×)")
    return Finding(id, figure, paper, "‖UᵀWV‖ of ΔW vs random: " + meas, rule, verdict, float(pd_[i]),
                   float(m[i]), float(s[i]), float(z[i]), len(z), n_holding(z), conditions)


def claim_amplification(id, parent, r, amplification, amp_random, *, conditions, main_r=4):
    """Table 7's amplification factor, derived from ‖UᵀWV‖: it inherits the parent claim's verdict.

    Parameters
    ----------
    parent : Finding
        The :func:`claim_table7` finding on the same rows.
    r, amplification, amp_random : (n,) array_like
        Per rank, ‖ΔW‖_F / ‖UᵀWV‖_F with U, V of ΔW, and with random U, V (mean projection).
    """
    r = [int(x) for x in r]
    i = r.index(main_r) if main_r in r else 0
    amp, rnd = np.asarray(amplification, dtype=float), np.asarray(amp_random, dtype=float)
    meas = ", ".join(f"r = {k}: {_f(a)} (random directions of the same norm: {_f(b)})" for k, a, b in zip(r, amp, rnd))
    if parent.verdict == NOT_REPRODUCED:
        meas += (". ‖UᵀWV‖ of ΔW is at chance in the main case, so these factors are what random directions of "
                 "the same norm give, not an amplification of W's directions; their fall with r is mechanical")
    return Finding(id, "Table 7", "ΔW amplifies directions W has but does not emphasise, strongly at small r: "
                                  "≈ 21.5 (r = 4) vs ≈ 1.9 (r = 64)", meas,
                   f"inherits the verdict of ‖UᵀWV‖ above random ({parent.id})", inherit(parent.verdict),
                   float(amp[i]), float(rnd[i]), math.nan, parent.z, parent.n_modules, parent.n_holding, conditions)


def claim_fig8(id, labels, phi_rr, null_mean, null_sd, *, conditions):
    """Fig. 8: ΔW's top-r directions overlap W's top-r more than random subspaces, φ(r, r) against Haar draws.

    Parameters
    ----------
    labels : list of str
        One per covered case (rank and side).
    phi_rr, null_mean, null_sd : (n,) array_like of float
    """
    p, m, s = (np.asarray(x, dtype=float) for x in (phi_rr, null_mean, null_sd))
    z = (p - m) / s
    meas = "; ".join(f"{lab}: φ = {_f(a)} vs {_f(b, 3)} (z = {_z(zz)})" for lab, a, b, zz in zip(labels, p, m, z))
    return Finding(id, "Fig. 8", "ΔW's top directions overlap W's top ones only a little (φ ≈ 0.2 at most) and "
                                 "a larger r picks up more of W's emphasised directions", meas,
                   f"φ(r, r) between W's and ΔW's top-r directions: z ≥ {Z_MIN:g} against 1,000 Haar-random r-frames "
                   "at every r and side (the paper gives no ratio)", judge(z), float(np.median(p)),
                   float(np.median(m)), float(np.median(s)), float(np.median(z)), len(z), n_holding(z), conditions)


def claim_cause(verdicts):
    """What the shared top direction of Fig. 3 comes from, named from the four (data, init) combinations.

    Parameters
    ----------
    verdicts : Mapping[(bool, bool), str]
        ``(same data order, same initialisation)`` -> the protocol's verdict of φ(1,1) over every layer for
        that combination (an r = low run against r = high seed 0).

    Returns
    -------
    str
        A sentence naming the cause the verdicts point to.
    """
    holds = {k: v == REPRODUCES for k, v in verdicts.items()}
    both, data_only, init_only = holds.get((True, True)), holds.get((True, False)), holds.get((False, True))
    if both is None or data_only is None or init_only is None:
        return "not all combinations of data order and initialisation were trained: no cause named"
    if not both:
        return "not even the pair sharing both seeds reproduces: there is no shared direction to explain"
    if init_only and not data_only:
        return "the shared initialisation: it holds when only the initialisation seed is shared, not the data order"
    if data_only and not init_only:
        return "the shared data order: it holds when only the data-order seed is shared, not the initialisation"
    if data_only and init_only:
        return "either seed alone: sharing the data order or the initialisation is enough"
    return "the two together: it holds only when both the data order and the initialisation are shared"


def check_random_pair(mean_diag, null_mean, null_sd, *, n):
    """Fig. 4's random panel as a check of the null: |z| < 3 for two Gaussian matrices."""
    z = z_score(mean_diag, null_mean, null_sd)
    ok = math.isfinite(z) and abs(z) < Z_MIN
    return Finding("fig4_random", "Fig. 4", "two random Gaussian matrices share nothing beyond chance",
                   f"mean φ(i,i), i ≤ {n}: {_f(mean_diag, 4)} vs null {_f(null_mean, 4)} ± {_f(null_sd, 4)} "
                   f"(z = {_z(z)})", f"|z| < {Z_MIN:g} (a check of the null, not a claim)", HOLDS if ok else FAILS,
                   mean_diag, null_mean, null_sd, z, 1, int(ok), "two independent Gaussian matrices")


def check_table7(err, ratios, n_draws):
    """Table 7's closed-form checks: case (2) = √Σσ² of W, case (3) RMS ≈ ‖W‖_F r / √(d_out d_in)."""
    ratios = np.asarray(ratios, dtype=float)
    ok = err <= CHECK_RTOL and bool(np.all(np.abs(ratios - 1) < CHECK_RANDOM_TOL))
    return Finding("t7_checks", "Table 7", "checks: case (2) = √(σ₁²+…+σ_r²) of W; case (3) ≈ ‖W‖_F r / √(d_out d_in)",
                   f"case (2) vs √Σσ² from a full SVD of W: max relative difference {err:.1e}; case (3), RMS over "
                   f"{n_draws} draws / closed form: {ratios.min():.3f} – {ratios.max():.3f}",
                   f"≤ {CHECK_RTOL:.0e} and within {100 * CHECK_RANDOM_TOL:g} % (checks of the computation)",
                   HOLDS if ok else FAILS, conditions="every rank and module at the focus layer")


def near_ties(sigma_a, sigma_b):
    """True when either adapter's top two singular values are within :data:`NEAR_TIE_GAP` (relative)."""
    for s in (sigma_a, sigma_b):
        s = np.asarray(s, dtype=float)
        if s.size >= 2 and s[0] > 0 and (s[0] - s[1]) / s[0] < NEAR_TIE_GAP:
            return True
    return False


# -- extracting the numbers from a ReportData ------------------------------------------------------

def _mod(data, suffix):
    return next((m for m in data.modules if m.endswith(suffix)), None)


def _layer_label(name):
    from analysis.core.adapter import split_name

    layer, module = split_name(name)
    return f"layer {layer} {_short(module)}"


def tied_modules(a, b, side, names):
    """Names of the modules where either adapter's top two singular values (on ``side``) nearly tie.

    Parameters
    ----------
    a, b : Adapter or None
        The pair (None: nothing is marked).
    side : {"A", "B", "input", "output"}
    names : iterable of str
    """
    if a is None or b is None:
        return []
    ma, mb = a.expanded(), b.expanded()
    return [n for n in names if n in ma and n in mb
            and near_ties(ma[n].side_singular_values(side), mb[n].side_singular_values(side))]


def swapped_modules(sweep, side, names=None):
    """Names of the modules where the top direction of one adapter lies closer to the other's second direction
    than to its first (the top two directions swapped order).

    cos² between the first of one and the second of the other is φ(1, 2) − φ(1, 1) (or φ(2, 1) − φ(1, 1)),
    since φ(1, 2) = cos²(u₁, v₁) + cos²(u₁, v₂).
    """
    out = []
    for n in names if names is not None else list(sweep.results):
        res = sweep.results[n][side]
        if getattr(res, "zero", False) or min(res.phi.shape) < 2:
            continue
        if max(res.phi[0, 1], res.phi[1, 0]) - res.phi[0, 0] > res.phi[0, 0]:
            out.append(n)
    return out


def _phi11_rows(sweep, side, names):
    rows = [(n, sweep.results[n][side]) for n in names if n in sweep.results]
    rows = [(n, r) for n, r in rows if not getattr(r, "zero", False) and r.phi11 is not None]
    return [n for n, _ in rows], [r.phi11 for _, r in rows], [r.d for _, r in rows]


def _fig3(data, mods):
    cfg = data.config
    out = []
    focus = [data.name(m) for m in mods]
    same = (f"{data.say('low')} vs {data.say('high')}"
            + ("" if cfg.pairs else " (same data order and initialisation seed)"))
    pairs = [("same_seed" if not cfg.pairs else "rank_pair", data.rank_pair, same),
             ("cross_seed", data.cross_pair, f"{data.say('low_other')} vs {data.say('high')} (different seeds)")]
    paper = "r = 8 and r = 64 share their top direction: φ(1,1) > 0.5 for ΔWq and ΔWv (layer 48)"
    who = {"same_seed": (data.adapter("low"), data.adapter("high")), "rank_pair": (data.adapter("low"),
                                                                                   data.adapter("high")),
           "cross_seed": (data.adapter("low_other"), data.adapter("high"))}
    for key, pair, cond in pairs:
        if pair is None:
            if key != "cross_seed":
                out.append(Finding(f"fig3_{key}", "Fig. 3", paper, "checkpoints missing", "", NOT_COMPUTED))
            continue
        for side, basis in (("A", "A's right-singular vectors (the paper's basis)"),
                            ("input", "ΔW's right-singular vectors")):
            names, phi, d = _phi11_rows(pair, side, focus)
            ties = {_layer_label(n) for n in tied_modules(*who[key], side, names)}
            suffix = "" if side == "A" else "_dW"
            out.append(claim_phi11(f"fig3_{key}{suffix}", "Fig. 3" + ("" if side == "A" else " (variant)"), paper,
                                   phi, d,
                                   conditions=f"{cond}; layer {cfg.layer}; basis: {basis}",
                                   labels=[_layer_label(n) for n in names], ties=ties))
        names, phi, d = _phi11_rows(pair, "A", list(pair.results))
        ties = {_layer_label(n) for n in tied_modules(*who[key], "A", names)}
        out.append(claim_phi11(f"fig6_{key}", "Fig. 6", "the same holds at layers 1, 32, 64, 96 of 96", phi, d,
                               conditions=f"{cond}; every layer and module; basis: A", aggregate=True, ties=ties))
    return out


def _fig4(data, q, v):
    if data.seed_pair is None or q is None or v is None:
        return []
    cfg, pair, n = data.config, data.seed_pair, SEED_DIAG_N
    paper = "across two seeds (r = 64) ΔWq shares more directions than ΔWv (higher intrinsic rank of ΔWq)"
    cond = f"{data.say('seed_a')} vs {data.say('seed_b')}"

    def stats(layers, side):
        mq, mv, sd = [], [], []
        for L in layers:
            rq, rv = pair.results[data.name(q, L)][side], pair.results[data.name(v, L)][side]
            k = min(n, *rq.phi.shape, *rv.phi.shape)
            mq.append(float(np.mean(np.diag(rq.phi)[:k])))
            mv.append(float(np.mean(np.diag(rv.phi)[:k])))
            sq, sv = _diag_null(rq.d, k, cfg.seed)[1], _diag_null(rv.d, k, cfg.seed + 1)[1]
            sd.append(math.hypot(sq, sv))
        return mq, mv, sd

    out = []
    for side in ("A", "input"):
        mq, mv, sd = stats([cfg.layer], side)
        out.append(claim_q_over_v(f"fig4{'' if side == 'A' else '_dW'}", "Fig. 4" + ("" if side == "A" else " (variant)"),
                                  paper, mq, mv, sd,
                                  conditions=f"{cond}; layer {cfg.layer}; basis {side}",
                                  labels=[f"layer {cfg.layer}"]))
    mq, mv, sd = stats(list(cfg.layers), "A")
    out.append(claim_q_over_v("fig7", "Fig. 7", "the same at layers 1, 32, 64, 96 of 96", mq, mv, sd,
                              conditions=f"{cond}; layers {', '.join(map(str, cfg.layers))}; basis A",
                              labels=[f"layer {L}" for L in cfg.layers]))
    rnd = data.random_sim[data.modules[0]]
    k = min(n, *rnd.phi.shape)
    m, s = _diag_null(rnd.d, k, cfg.seed + 2)
    out.append(check_random_pair(float(np.mean(np.diag(rnd.phi)[:k])), m, s, n=k))
    return out


def _table7(data, q):
    t = data.table7
    if t is None or not len(t) or q is None:
        return []
    tq = t[t["module"] == q].sort_values("r")
    cond = (f"ΔWq at layer {data.config.layer}, {', '.join(data.text[lab] for lab in data.table_labels)}, "
            f"{data.config.n_random_table} draws")
    parent = claim_table7("t7_random", "ΔW correlates with W more than a random matrix: ‖UᵀWV‖ 0.32 vs 0.02 "
                                       "(r = 4), 1.90 vs 0.33 (r = 64)",
                          tq["r"], tq["proj_delta"], tq["proj_random"], tq["proj_random_std"], conditions=cond)
    amp = claim_amplification("t7_amp", parent, tq["r"], tq["amplification"], tq["fro"] / tq["proj_random"],
                              conditions=cond)
    checks = [(row.proj_w, math.sqrt(float(np.sum(data.w_spectra[row.module][:int(row['rank'])] ** 2))))
              for _, row in t.iterrows() if row.module in data.w_spectra] if data.w_spectra else []
    err = max((abs(a - b) / b for a, b in checks), default=math.nan)
    out = [parent, amp, check_table7(err, t["proj_random_rms"] / t["proj_random_expected"],
                                     data.config.n_random_table)]
    lr = data.long_run
    if lr is not None and len(lr):
        last = lr[lr["step"] == lr.groupby("run")["step"].transform("max")]
        last = last[last["layer"] == data.config.layer].sort_values("r")
        if len(last):
            steps = ", ".join(f"r = {r}: step {s}" for r, s in zip(last["r"], last["step"]))
            out.append(claim_table7("t7_long", "the same after a longer fine-tune (not in the paper: its runs "
                                               "were trained to convergence)",
                                    last["r"], last["proj_delta"], last["null_mean"], last["null_sd"],
                                    figure="Table 7 (over training)",
                                    conditions=f"ΔWq at layer {data.config.layer}, long runs, last checkpoint "
                                               f"({steps}), {data.config.n_random_table} draws"))
    return out


def _fig8(data, q):
    if not data.overlaps or q is None:
        return []
    labels, phi, m, s = [], [], [], []
    for side in ("output", "input"):
        for lab, o in data.overlaps.get((q, side), {}).items():
            if o.zero:
                continue
            draws = diagonal_phi_draws(o.d, o.k, n=N_DRAWS, seed=data.config.seed)[:, o.k - 1]
            labels.append(f"{lab}, {side}")
            phi.append(float(o.phi[o.k - 1, o.k - 1]))
            m.append(float(draws.mean()))
            s.append(float(draws.std(ddof=1)))
    if not labels:
        return []
    return [claim_fig8("fig8", labels, phi, m, s,
                       conditions=f"ΔWq at layer {data.config.layer}, W's and ΔW's top-r singular directions, "
                                  "both sides")]


def _init(data, mods):
    """What the shared top direction comes from: each (data, init) combination against r = high seed 0."""
    cfg = data.config
    if not data.init_pairs:
        return []
    hi_data, hi_init = (cfg.seeds[0], cfg.seeds[0])
    out, verdicts = [], {}
    for lab, pair in data.init_pairs.items():
        ds, is_ = data.init_seeds.get(lab, (None, None))
        names, phi, d = _phi11_rows(pair, "A", list(pair.results))
        same = (ds == hi_data, is_ == hi_init)
        cond = (f"{lab} (data-order seed {ds}, init seed {is_}) vs r = {cfg.high} seed {cfg.seeds[0]}: "
                f"{'same' if same[0] else 'different'} data order, {'same' if same[1] else 'different'} "
                "initialisation; every layer and module; basis A")
        f = claim_phi11(f"fig3_cause_{lab}", "Fig. 3 (cause)",
                        "(not in the paper) which shared seed makes r = 8 and r = 64 share their top direction",
                        phi, d, conditions=cond, aggregate=True)
        verdicts[same] = f.verdict
        out.append(f)
    cause = claim_cause(verdicts)
    return [Finding(f.id, f.figure, f.paper, f"{f.measured}. Cause named by the four combinations: {cause}",
                    f.rule, f.verdict, f.effect, f.null_mean, f.null_sd, f.z, f.n_modules, f.n_holding, f.conditions)
            for f in out]


def findings(data):
    """The paper's claims, our numbers, their nulls and the protocol's verdict for each.

    Parameters
    ----------
    data : ReportData

    Returns
    -------
    list of Finding
        In the README's order: Fig. 3 / 6 (same seed, different seeds, the cause), Fig. 4 / 7, Table 7, Fig. 8.
    """
    from dataclasses import replace

    q, v = _mod(data, "q_proj"), _mod(data, "v_proj")
    mods = [m for m in (q, v) if m is not None] or list(data.modules)
    fig3, cause = _fig3(data, mods), _init(data, mods)
    if cause:  # the same-seed verdicts name what the data-vs-init runs measured as the cause
        why = cause[0].measured.rsplit("Cause named by the four combinations: ", 1)[-1]
        fig3 = [replace(f, measured=f"{f.measured}. Measured cause (Fig. 3 (cause)): {why}")
                if f.id in ("fig3_same_seed", "fig6_same_seed") else f for f in fig3]
    return fig3 + cause + _fig4(data, q, v) + _table7(data, q) + _fig8(data, q)
