"""The paper's claims on computed adapters: the numbers pulled out of a :class:`~analysis.report.compute.ReportData`,
every module found by its role (:mod:`analysis.io.roles`), each claim judged by :mod:`analysis.report.claims`.

:func:`findings` gives one :class:`~analysis.report.record.Finding` per claim: Fig. 3 / 6 (same seed, different
seeds, the cause experiment), Fig. 4 / 7 (and the q / k / v / o control), Table 7 (the main case, every layer, over
training time), Fig. 8. The record and claim names are re-exported here.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from analysis.io.roles import module_role
from analysis.metrics.tails import BetaNull
from analysis.report.claims import (CHECK_RANDOM_TOL, CHECK_RTOL, FIG8_J, NEAR_TIE_GAP, PAPER_FIG8_PHI, PAPER_PHI11,
                                    PAPER_T7, PAPER_T7_WNORM, SEED_DIAG_N, check_random_pair, check_table7,
                                    claim_amplification, claim_cause, claim_fig8, claim_more_shared, claim_phi11,
                                    claim_table7, diff_null, mean_diag_draws, near_ties, overlap_null)
from analysis.report.protocol import (FAILS, HOLDS, INCONCLUSIVE, NOT_APPLICABLE, NOT_COMPUTED, NOT_REPRODUCED,
                                      PARTLY, REPRODUCES, VERDICTS)
from analysis.report.record import Finding, claim_modules, not_applicable

if TYPE_CHECKING:
    from collections.abc import Iterable

    from analysis.core.adapter import Adapter
    from analysis.report.compute import ReportData
    from analysis.sweeps.pair import PairSweep

__all__ = ["Finding", "findings", "attention_layout", "claim_modules", "claim_phi11", "claim_more_shared",
           "claim_table7", "claim_amplification", "claim_fig8", "claim_cause", "check_random_pair", "check_table7",
           "near_ties", "tied_modules", "swapped_modules", "not_applicable",
           "PAPER_PHI11", "PAPER_FIG8_PHI", "PAPER_T7", "PAPER_T7_WNORM", "SEED_DIAG_N", "CHECK_RTOL",
           "CHECK_RANDOM_TOL", "NEAR_TIE_GAP", "FIG8_J",
           "REPRODUCES", "PARTLY", "NOT_REPRODUCED", "INCONCLUSIVE", "NOT_APPLICABLE", "NOT_COMPUTED", "HOLDS",
           "FAILS", "VERDICTS"]


def _label(data, name):
    r = module_role(name)
    stack = f"{r.stack} " if len(data.stacks()) > 1 and r.stack else ""
    return f"{stack}layer {r.layer} {r.role if r.role != 'other' else r.module}"


def tied_modules(a: Adapter | None, b: Adapter | None, side: str, names: Iterable[str]) -> list[str]:
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


def swapped_modules(sweep: PairSweep, side: str, names: Iterable[str] | None = None) -> list[str]:
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


def _epochs(manifest):
    seen, n = manifest.get("examples_seen"), manifest.get("n_train")
    ok = isinstance(seen, (int, float)) and isinstance(n, (int, float)) and n > 0
    return seen / n if ok else None


def _training(data, labels):
    """"180 steps (1.4 % of an epoch)" from the manifests of ``labels``, or "training length not recorded"."""
    parts = []
    for lab in labels:
        man = data.manifests.get(lab) or {}
        steps, ep = man.get("steps"), _epochs(man)
        if steps:
            parts.append(f"{steps} steps" + (f" ({100 * ep:.1f} % of an epoch)" if ep is not None else ""))
    parts = list(dict.fromkeys(parts))
    return ", ".join(parts) if parts else "training length not recorded"


def attention_layout(data: ReportData) -> str:
    """The attention layout in words, from the shapes of the q and v modules of the main stack
    (``"grouped-query attention: Wq 576 × 576, Wv 192 × 576 (v is narrower)"``)."""
    q, v = data.role_kind("q"), data.role_kind("v")
    some = {}
    for ad in data.adapters.values():
        some.update({n: lr for n, lr in ad.expanded().items() if n not in some})
    if q is None or v is None:
        return "attention layout: no separate q and v modules"
    (qo, qi), (vo, vi) = some[data._some_name(q)].shape, some[data._some_name(v)].shape
    if vo < qo:
        return f"grouped-query attention: Wq {qo} × {qi}, Wv {vo} × {vi} (v is narrower)"
    return f"Wq {qo} × {qi}, Wv {vo} × {vi}"


def _width(data, kinds):
    some = {}
    for ad in data.adapters.values():
        some.update({n: lr for n, lr in ad.expanded().items() if n not in some})
    dims = sorted({some[data._some_name(k)].shape[1] for k in kinds if k is not None})
    return "width d = " + ", ".join(map(str, dims)) if dims else "width unknown"


def _cond(data, what, labels, kinds, *, pairs=1, extra=""):
    """A record's conditions: what it covers, training length (share of an epoch), width, pairs or runs, layout."""
    if pairs:
        count = f"{pairs} pair{'s' if pairs != 1 else ''} of runs"
    else:
        seeds = sorted({str(_seed_of(data, lab)) for lab in labels if _seed_of(data, lab) is not None})
        count = (f"one run per rank, seed {', '.join(seeds)}" if seeds else "one run per adapter")
    parts = [what, _training(data, labels) if labels else "", _width(data, kinds), count, attention_layout(data)]
    return "; ".join(p for p in parts + ([extra] if extra else []) if p)


def _seed_of(data, label):
    man = data.manifests.get(label) or {}
    return man.get("seed")


def _qv(data):
    return data.role_kind("q"), data.role_kind("v")


def _fig3(data):
    q, v = _qv(data)
    kinds = [k for k in (q, v) if k is not None]
    paper = "r = 8 and r = 64 share their top direction: φ(1,1) > 0.5 for ΔWq and ΔWv (layer 48)"
    if not kinds:
        reason = _no_qv_reason(data)
        return [not_applicable("fig3_rank_pair" if data.config.pairs else "fig3_same_seed", "Fig. 3", paper, reason),
                not_applicable("fig6_rank_pair" if data.config.pairs else "fig6_same_seed", "Fig. 6",
                               "the same holds at layers 1, 32, 64, 96 of 96", reason)]
    cfg = data.config
    out = []
    focus = [data.name(k) for k in kinds if (k, data.layer) in data._index]
    all_qv = [data.name(k, L) for k in data.kinds_of("q") + data.kinds_of("v") for L in data.layers_of(k)]
    pairs = [("same_seed" if not cfg.pairs else "rank_pair", data.rank_pair, ("low", "high")),
             ("cross_seed", data.cross_pair, ("low_other", "high"))]
    for key, pair, (ra, rb) in pairs:
        if pair is None:
            if key != "cross_seed":
                out.append(Finding(f"fig3_{key}", "Fig. 3", paper, "checkpoints missing", "", NOT_COMPUTED))
            continue
        who = (data.adapter(ra), data.adapter(rb))
        labs = [data.roles.get(ra), data.roles.get(rb)]
        same = ("same data order and initialisation seed" if key == "same_seed" else
                "different seeds" if key == "cross_seed" else "as given")
        head = f"{data.say(ra)} vs {data.say(rb)} ({same})"
        main_case = f"layer {data.layer} (the middle layer of the {data.main_stack or 'model'}), q and v, basis A"
        for side, basis in (("A", "A's right-singular vectors (the paper's basis)"),
                            ("input", "ΔW's right-singular vectors")):
            names, phi, d = _phi11_rows(pair, side, focus)
            ties = {_label(data, n) for n in tied_modules(*who, side, names)}
            suffix = "" if side == "A" else "_dW"
            out.append(claim_phi11(f"fig3_{key}{suffix}", "Fig. 3" + ("" if side == "A" else " (variant)"), paper,
                                   phi, d, labels=[_label(data, n) for n in names], ties=ties,
                                   layers=[split_layer(n) for n in names], main_case=main_case, seed=cfg.seed,
                                   conditions=_cond(data, f"{head}; layer {data.layer}; basis: {basis}", labs, kinds)))
        names, phi, d = _phi11_rows(pair, "A", all_qv)
        ties = {_label(data, n) for n in tied_modules(*who, "A", names)}
        out.append(claim_phi11(f"fig6_{key}", "Fig. 6", "the same holds at layers 1, 32, 64, 96 of 96", phi, d,
                               aggregate=True, ties=ties, labels=[_label(data, n) for n in names],
                               layers=[split_layer(n) for n in names], seed=cfg.seed,
                               main_case="every layer, q and v, basis A (beside the main case of Fig. 3)",
                               conditions=_cond(data, f"{head}; every layer; basis A", labs, kinds)))
    return out


def split_layer(name):
    return module_role(name).layer


def _no_qv_reason(data):
    roles = sorted({data.role_of(k).role for k in data.modules})
    if "qkv" in roles:
        return ("not applicable: the adapters hold one fused qkv update per layer (e.g. GPT-2's c_attn under PEFT), "
                "so ΔWq and ΔWv are not separate low-rank updates")
    return (f"not applicable: the adapters have no separate self-attention q and v modules (roles present: "
            f"{', '.join(roles)})")


def _stat_diag(res, n):
    k = min(n, *res.phi.shape)
    return float(np.mean(np.diag(res.phi)[:k])), k


def _more_shared_claims(data, pair, a_kind, b_kind, *, prefix, figure, paper, head, labs, names=("q", "v"),
                        layers_all=True):
    cfg = data.config
    if pair is None or a_kind is None or b_kind is None:
        return []
    out = []

    def stats(layers, side):
        ma, mb, nulls, labels, used = [], [], [], [], []
        for L in layers:
            na, nb = data.name(a_kind, L), data.name(b_kind, L)
            if na not in pair.results or nb not in pair.results:
                continue
            ra, rb = pair.results[na][side], pair.results[nb][side]
            if getattr(ra, "zero", False) or getattr(rb, "zero", False):
                continue
            xa, ka = _stat_diag(ra, SEED_DIAG_N)
            xb, kb = _stat_diag(rb, SEED_DIAG_N)
            ma.append(xa)
            mb.append(xb)
            nulls.append(diff_null(ra.d, ka, rb.d, kb, cfg.seed))
            labels.append(f"layer {L}")
            used.append(L)
        return ma, mb, nulls, labels, used

    common = sorted(set(data.layers_of(a_kind)) & set(data.layers_of(b_kind)))
    for side in ("A", "input"):
        ma, mb, nulls, labels, used = stats([data.layer], side)
        out.append(claim_more_shared(f"{prefix}{'' if side == 'A' else '_dW'}",
                                     figure + ("" if side == "A" else " (variant)"), paper, ma, mb, nulls,
                                     names=names, labels=labels, layers=used, main=0 if ma else None,
                                     main_case=f"layer {data.layer}, basis {side}",
                                     conditions=_cond(data, f"{head}; layer {data.layer}; basis {side}", labs,
                                                      [a_kind, b_kind])))
    spread = [L for L in data.layers if L in common]
    ma, mb, nulls, labels, used = stats(spread, "A")
    fig7 = figure.replace("Fig. 4", "Fig. 7")
    out.append(claim_more_shared(f"{prefix.replace('fig4', 'fig7')}", fig7,
                                 "the same at layers 1, 32, 64, 96 of 96", ma, mb, nulls, names=names,
                                 labels=labels, layers=used, main_case=f"layers {', '.join(map(str, spread))}",
                                 conditions=_cond(data, f"{head}; layers {', '.join(map(str, spread))}; basis A", labs,
                                                  [a_kind, b_kind])))
    if layers_all:
        ma, mb, nulls, labels, used = stats(common, "A")
        out.append(claim_more_shared(f"{prefix.replace('fig4', 'fig7')}_all", fig7,
                                     "the same at every layer (beyond the paper's four)", ma, mb, nulls, names=names,
                                     labels=labels, layers=used, aggregate=True, main_case="every layer, basis A",
                                     conditions=_cond(data, f"{head}; every layer; basis A", labs,
                                                      [a_kind, b_kind])))
    return out


def _fig4(data):
    q, v = _qv(data)
    paper = "across two seeds (r = 64) ΔWq shares more directions than ΔWv (higher intrinsic rank of ΔWq)"
    if data.seed_pair is None:
        return []
    if q is None or v is None:
        return [not_applicable("fig4", "Fig. 4", paper, _no_qv_reason(data))]
    labs = [data.roles.get("seed_a"), data.roles.get("seed_b")]
    out = _more_shared_claims(data, data.seed_pair, q, v, prefix="fig4", figure="Fig. 4", paper=paper,
                              head=f"{data.say('seed_a')} vs {data.say('seed_b')}", labs=labs)
    rnd = data.random_sim[q]
    k = min(SEED_DIAG_N, *rnd.phi.shape)
    draws = mean_diag_draws(rnd.d, k, data.config.seed + 2)
    out.append(check_random_pair(float(np.mean(np.diag(rnd.phi)[:k])), float(draws.mean()),
                                 float(draws.std(ddof=1)), n=k))
    return out


def _control(data):
    """Fig. 4 with matched shapes: q vs o (both d × d) and k vs v (both narrower under GQA), and q vs v again."""
    pair = data.control_pair
    if pair is None:
        return []
    kinds = {}
    for n in pair.results:
        r = module_role(n)
        if r.stack == data.main_stack or not data.main_stack:
            kinds.setdefault(r.role, r.kind)
    labs = list(data.config.control_runs)
    head = f"{labs[0]} vs {labs[1]} (r = 64 on q, k, v and o, two seeds)"
    out = []
    for a, b in (("q", "v"), ("q", "o"), ("k", "v"), ("o", "v"), ("q", "k")):
        if a in kinds and b in kinds:
            res = _more_shared_claims(
                _ControlView(data, pair), pair, kinds[a], kinds[b], prefix=f"fig4_control_{a}{b}",
                figure="Fig. 4 (control)", head=head, labs=labs, names=(a, b), layers_all=True,
                paper=f"(control, not in the paper) across two seeds ΔW{a} shares more directions than ΔW{b}")
            out += [r for r in res if r.id.endswith(("_all",)) or r.id == f"fig4_control_{a}{b}"]
    return out


class _ControlView:
    """A ReportData seen through the control pair's modules (names, layers and shapes of the q/k/v/o runs)."""

    def __init__(self, data, pair):
        self._data, self._pair = data, pair
        self._index = {}
        for n in pair.results:
            r = module_role(n)
            self._index.setdefault((r.kind, r.layer), n)
        self.config, self.layer, self.layers = data.config, data.layer, data.layers
        self.manifests, self.main_stack = data.manifests, data.main_stack
        self.adapters = data.control_adapters

    def name(self, kind, layer=None):
        return self._index[(kind, self.layer if layer is None else layer)]

    def layers_of(self, kind):
        return sorted(L for (k, L) in self._index if k == kind)

    def role_kind(self, role):
        return next((k for (k, _), n in self._index.items() if module_role(n).role == role), None)

    def _some_name(self, kind):
        return next(n for (k, _), n in self._index.items() if k == kind)

    def stacks(self):
        return self._data.stacks()


def _table7(data):
    q, v = _qv(data)
    paper = "ΔW correlates with W more than a random matrix: ‖UᵀWV‖ 0.32 vs 0.02 (r = 4), 1.90 vs 0.33 (r = 64)"
    t = data.t7_layers
    if t is None or not len(t):
        return []
    if q is None:
        return [not_applicable("t7_random", "Table 7", paper, _no_qv_reason(data))]
    cfg = data.config
    labs = list(data.table_labels)
    main_case = f"ΔWq at layer {data.layer} (the middle layer), r = 4 (the paper's; else the smallest rank)"
    tq = t[(t["kind"] == q) & (t["layer"] == data.layer)].sort_values("r")
    out = []
    if len(tq):
        nulls = [data.nulls[(n, int(k))] for n, k in zip(tq["name"], tq["k"])]
        cond = _cond(data, f"ΔWq at layer {data.layer}, {', '.join(data.series(lab) for lab in tq['adapter'])}",
                     labs, [q], pairs=0)
        parent = claim_table7("t7_random", paper, tq["r"], tq["proj_delta"], nulls, tq["w_norm"], conditions=cond,
                              main_case=main_case, seed=cfg.seed)
        out += [parent, claim_amplification("t7_amp", parent, tq["r"], tq["amplification"], tq["amp_random"],
                                            conditions=cond)]
    if data.table7 is not None and len(data.table7):
        t7 = data.table7
        checks = []
        for _, row in t7.iterrows():
            S = data.w_spectra.get(row["name"])
            if S is not None and int(row["rank"]) > 0:  # a zero update has no top-r directions
                checks.append((row.proj_w, math.sqrt(float(np.sum(S[:int(row['rank'])] ** 2)))))
        err = max((abs(a - b) / b for a, b in checks), default=math.nan)
        out.append(check_table7(err, t7["proj_random_rms"] / t7["proj_random_expected"], cfg.n_random_table))
    # every layer, per role and rank (with a Holm correction over the layers)
    for kind, role in ((q, "q"), (v, "v")):
        if kind is None:
            continue
        for r in sorted(t[t["kind"] == kind]["r"].unique()):
            g = t[(t["kind"] == kind) & (t["r"] == r)].sort_values("layer")
            if len(g) < 2:
                continue
            nulls = [data.nulls[(n, int(k))] for n, k in zip(g["name"], g["k"])]
            cond = _cond(data, f"ΔW{role} at every layer, r = {r}", labs, [kind], pairs=0)
            f = claim_table7(f"t7_layers_{role}_r{r}", f"the same for ΔW{role} at every layer (r = {r})", [r] * len(g),
                             g["proj_delta"], nulls, g["w_norm"], conditions=cond, aggregate=True,
                             figure="Table 7 (every layer)", labels=[f"layer {L}" for L in g["layer"]],
                             layers=[int(L) for L in g["layer"]], main_case=f"every layer of ΔW{role}, r = {r}",
                             seed=cfg.seed)
            out.append(f)
            out.append(claim_amplification(f"t7_amp_layers_{role}_r{r}", f, [r] * len(g), g["amplification"],
                                           g["amp_random"], conditions=cond, main_r=r))
    lr = data.long_run
    if lr is not None and len(lr):
        last = lr[lr["step"] == lr.groupby("run")["step"].transform("max")]
        lq = last[(last["kind"] == q) & (last["layer"] == data.layer)].sort_values("r")
        if len(lq):
            nulls = [data.nulls[(n, int(k))] for n, k in zip(lq["name"], lq["k"])]
            steps = ", ".join(f"r = {r}: step {s}" for r, s in zip(lq["r"], lq["step"]))
            runs = list(dict.fromkeys(lq["run"]))
            out.append(claim_table7("t7_long", "the same after a longer fine-tune (not in the paper: its runs were "
                                               "trained to convergence)", lq["r"], lq["proj_delta"], nulls,
                                    lq["w_norm"], figure="Table 7 (over training)", main_case=main_case,
                                    conditions=_cond(data, f"ΔWq at layer {data.layer}, long runs, last checkpoint "
                                                           f"({steps})", [], [q], pairs=0,
                                                     extra=_long_training(data, runs)), seed=cfg.seed))
        for run in dict.fromkeys(last["run"]):
            for kind, role in ((q, "q"), (v, "v")):
                g = last[(last["run"] == run) & (last["kind"] == kind)].sort_values("layer")
                if len(g) < 2:
                    continue
                nulls = [data.nulls[(n, int(k))] for n, k in zip(g["name"], g["k"])]
                r, step = int(g["r"].iloc[0]), int(g["step"].iloc[0])
                out.append(claim_table7(f"t7_long_layers_{role}_r{r}", f"ΔW{role} at every layer after {step} steps "
                                        f"(r = {r})", [r] * len(g), g["proj_delta"], nulls, g["w_norm"],
                                        figure="Table 7 (over training, every layer)", aggregate=True,
                                        labels=[f"layer {L}" for L in g["layer"]],
                                        layers=[int(L) for L in g["layer"]], seed=cfg.seed,
                                        main_case=f"every layer of ΔW{role}, last checkpoint",
                                        conditions=_cond(data, f"ΔW{role} at every layer, {run} at step {step}", [],
                                                         [kind], pairs=0, extra=_long_training(data, [run]))))
    return out


def _long_training(data, runs):
    parts = []
    for run in runs:
        path = os.path.join(data.config.checkpoints, run, "manifest.json")
        try:
            with open(path, encoding="utf-8") as fh:
                man = json.load(fh)
        except (OSError, ValueError):
            continue
        ep = _epochs(man)
        parts.append(f"{run}: {man.get('steps')} steps" + (f" ({100 * ep:.1f} % of an epoch)" if ep else ""))
    return "; ".join(parts)


def _fig8(data):
    q, _ = _qv(data)
    if not data.overlaps or q is None:
        return []
    cfg = data.config
    main_cells, grid_cells = ([], [], []), ([], [], [])
    for side in ("output", "input"):
        for lab, o in data.overlaps.get((q, side), {}).items():
            if o.zero:
                continue
            k, d = o.k, o.d
            # main case: φ(r, r), all of ΔW's directions against W's top-r
            main_cells[0].append(f"{lab}, {side}, φ({k},{k})")
            main_cells[1].append(float(o.phi[k - 1, k - 1]))
            main_cells[2].append(overlap_null(d, k, cfg.n_random_table, cfg.seed))
            # the grid: ΔW's top direction within W's top-j (Beta closed form)
            for j in FIG8_J:
                if j >= d or j > o.phi.shape[0]:
                    continue
                grid_cells[0].append(f"{lab}, {side}, top-1 in W's top-{j}")
                grid_cells[1].append(float(o.phi[j - 1, 0]) * 1.0)
                grid_cells[2].append(BetaNull(j / 2.0, (d - j) / 2.0, what=f"a random direction's share of a "
                                                                            f"{j}-dim subspace of R^{d}"))
    out = []
    cond = _cond(data, f"ΔWq at layer {data.layer}, W's and ΔW's singular directions, both sides",
                 list(data.table_labels), [q], pairs=0)
    if main_cells[0]:
        out.append(claim_fig8("fig8", *main_cells, conditions=cond, seed=cfg.seed,
                              main_case=f"φ(r, r) at layer {data.layer}, every rank and side"))
    if grid_cells[0]:
        out.append(claim_fig8("fig8_grid", *grid_cells, conditions=cond, aggregate=True, seed=cfg.seed,
                              main_case="ΔW's top direction within W's top-j, j = 1 … 256",
                              paper="(the paper's grid) ΔW's top direction lies in W's top-j directions more than a "
                                    "random direction does"))
    return out


def _init(data):
    """The cause experiment: each (data order, initial A) combination against each r = high partner."""
    cfg = data.config
    if not data.init_pairs:
        return []
    out = []
    for partner in dict.fromkeys(p for _, p in data.init_pairs):
        verdicts, cells = {}, {}
        for (lab, p), pair in data.init_pairs.items():
            if p != partner:
                continue
            meta = data.init_meta[(lab, p)]
            shared_a = meta["shared_A"]
            names, phi, d = _phi11_rows(pair, "A", list(pair.results))
            a_txt = ("initial A shared (rows of its step-0 A, checked from the files)" if shared_a
                     else "initial A not shared (checked from the step-0 files)" if shared_a is False
                     else "initial A not checked (no step-0 adapter)")
            cond = (f"{lab} (data-order seed {meta['data_seed']}, init seed {meta['init_seed']}) vs {partner}: "
                    f"{'same' if meta['shared_data'] else 'other'} data order, {a_txt}; every layer and module; "
                    f"basis A; {_training(data, [lab])}; width d = {', '.join(map(str, sorted(set(d))))}")
            f = claim_phi11(f"fig3_cause_{lab}_vs_{partner}", "Fig. 3 (cause)",
                            "(not in the paper) what makes r = 8 and r = 64 share their top direction: the data "
                            "order or the initial A", phi, d, conditions=cond, aggregate=True,
                            labels=[_label(data, n) for n in names], layers=[split_layer(n) for n in names],
                            main_case="every layer, basis A", seed=cfg.seed)
            out.append(f)
            if shared_a is not None:
                key = (bool(meta["shared_data"]), bool(shared_a))
                cells.setdefault(key, []).append(f.verdict)
        for key, vs in cells.items():
            verdicts[key] = REPRODUCES if all(v == REPRODUCES for v in vs) else vs[0]
        cause = claim_cause(verdicts)
        out = [replace(f, measured=f"{f.measured}. Cause named by the combinations against {partner}: {cause}")
               if f.id.endswith(f"_vs_{partner}") else f for f in out]
    return out


def findings(data: ReportData) -> list[Finding]:
    """The paper's claims, our numbers, their nulls, power and the protocol's verdict for each.

    Parameters
    ----------
    data : ReportData

    Returns
    -------
    list of Finding
        Fig. 3 / 6 (same seed, different seeds, the cause), Fig. 4 / 7 (and the q/k/v/o control), Table 7 (the
        main case, every layer, over training), Fig. 8.
    """
    diff_null.cache_clear()  # its nulls grow where a tail needs more draws: each call starts from the same draws
    fig3, cause = _fig3(data), _init(data)
    if cause:  # the same-seed verdicts name what the cause experiment measured
        why = cause[0].measured.rsplit("Cause named by the combinations against ", 1)[-1]
        fig3 = [replace(f, measured=f"{f.measured}. Measured cause (Fig. 3 (cause)) against {why}")
                if f.id in ("fig3_same_seed", "fig6_same_seed") else f for f in fig3]
    return fig3 + cause + _fig4(data) + _control(data) + _table7(data) + _fig8(data)
