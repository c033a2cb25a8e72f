"""The README's "Reading these results": what the numbers say beyond the verdicts.

A note states a conclusion only where its own numbers pass the named threshold below; these are
descriptive notes, not verdicts (the verdicts are :mod:`analysis.report.findings`, judged by
:mod:`analysis.report.protocol`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from analysis.io.roles import module_role

if TYPE_CHECKING:
    from collections.abc import Iterable

    from analysis.report.compute import ReportData

__all__ = ["notes", "TOP1_DOMINANT", "SAME_SEED_SHARE", "FAR_ABOVE_NULL", "SHORT_TRAINING_EPOCHS", "A_MOVED_LITTLE",
           "SWAP_PHI11_BELOW", "SWAP_TOP2_ABOVE", "LOSS_SPREAD_SHARE", "loss_flat", "losses"]

TOP1_DOMINANT = 0.5        # "dominated by one direction": median top-1 share of ‖ΔW‖²_F above 0.5
SAME_SEED_SHARE = 0.5      # "largely a same-seed effect": cross-seed median φ(1,1) below half the same-seed one
FAR_ABOVE_NULL = 10.0      # "still far above the random 1/d": cross-seed median φ(1,1) above 10 / d
SHORT_TRAINING_EPOCHS = 1.0  # "Training is short": every adapter saw less than one pass over its data
A_MOVED_LITTLE = 0.3       # "A moved little": median ‖A − A₀‖_F / ‖A₀‖_F below 0.3
SWAP_PHI11_BELOW = 0.2     # on ΔW's vectors φ(1,1) "collapses" (below 0.2) ...
SWAP_TOP2_ABOVE = 0.5      # ... while φ(1,2) or φ(2,1) is above 0.5: the top two directions swapped order
LOSS_SPREAD_SHARE = 0.25   # Table 6 / 18: "spread over r below a quarter of the gain over the base model"


def loss_flat(losses: Iterable[float], base_loss: float | None) -> bool:
    """Table 6 / 18 in words: the spread of the validation loss over r is below :data:`LOSS_SPREAD_SHARE` of
    the gain over the base model (no base loss: False). No null exists for it, so it is a note, not a verdict."""
    losses = list(losses)
    if not losses:
        return False
    spread = max(losses) - min(losses)
    gain = (base_loss - min(losses)) if isinstance(base_loss, (int, float)) else math.nan
    return bool(spread < LOSS_SPREAD_SHARE * gain)


def _f(x, nd=2):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}"


def _mod(data, role):
    """The module type playing ``role`` (``"q"``, ``"v"``) in the main stack, or None."""
    return data.role_kind(role)


def _short(kind):
    """A module type in words: its role label (``ΔWq``)."""
    from analysis.plotting.common import module_label  # local: the plotting package, +7 ms on report --help

    return module_label(kind, plain=True)


def _by_kind(frame):
    """A sweep frame whose ``module`` column holds each row's module type (unique across stacks)."""
    return frame.assign(module=[module_role(n).kind for n in frame["name"]])


def losses(data: ReportData) -> tuple[dict[int, float], float | None]:
    """Validation loss per seed-0 rank and of the base model (None if no manifest has it)."""
    cfg = data.config
    losses = {r: data.manifests.get(f"r{r}_seed{cfg.seeds[0]}", {}).get("val_loss_adapter") for r in cfg.ranks}
    losses = {r: x for r, x in losses.items() if isinstance(x, (int, float))}
    base = next((m.get("val_loss_base") for m in data.manifests.values() if "val_loss_base" in m), None)
    return losses, base


def _advice_note(data):
    fr = _by_kind(data.advice.frame)
    parts = [f"{_short(m)} median {g['advised'].median():g} (range {g['advised'].min()}–{g['advised'].max()}, "
             f"{int(g['capped'].sum())} of {len(g)} at the cap)" for m, g in fr.groupby("module", sort=True)]
    r0, pat = data.advice.rank_pattern()
    ls, base = losses(data)
    flat = bool(ls) and loss_flat(ls.values(), base)
    return (f"Rank advice from the seed pair (rank_advice_*.png): the directions {data.say('seed_a')} and "
            f"{data.say('seed_b')} agree on, per module: " + "; ".join(parts) + f". As a PEFT config: r = {r0} with {len(pat)} rank_pattern "
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
    t, q = data.table7, _mod(data, "q")
    if t is None or q is None or not len(t):
        return None

    tq = t[[module_role(n).kind == q for n in t["name"]]]
    rel = ", ".join(f"{100 * n / w:.1f} % (r = {r})" for r, n, w in zip(tq["r"], tq["fro"], tq["w_norm"]))
    return (f"Relative size of the update at layer {data.layer}, ‖ΔWq‖_F / ‖Wq‖_F: {rel}; in the "
            "paper 6.91 / 61.95 = 11 % (r = 4) and 3.57 / 61.95 = 5.8 % (r = 64). A smaller update "
            "against a larger W gives a smaller amplification factor for the same geometry.")


def _seed_note(data):
    """The rank pair against the control pair; "a same-seed effect" only where the numbers say so."""
    if data.cross_pair is None or data.rank_pair is None:
        return None
    cfg = data.config
    a = _by_kind(data.rank_pair.frame).groupby("module")["phi11_A"].median()
    c = _by_kind(data.cross_pair.frame).groupby("module")["phi11_A"].median()
    d = _by_kind(data.rank_pair.frame).groupby("module")["d_in"].max()
    s = (_by_kind(data.seed_pair.frame).groupby("module")["phi11_A"].median() if data.seed_pair is not None
         else {})
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
                pos = module_role(name)
                swaps.append(f"{pos.stack + ' ' if len(data.stacks()) > 1 else ''}layer {pos.layer} {_short(pos.kind)} "
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
    if not steps or data.config.pairs:  # the model's size is known only for the shipped setup
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
    q, v = _mod(data, "q"), _mod(data, "v")
    if not data.w_spectra or v is None or not data.adapters:
        return None
    some = {}
    for ad in data.adapters.values():
        some.update(ad.expanded())
    d_out, d_in = some[data._some_name(v)].shape
    if d_out >= d_in:
        return None
    why = ""
    if q is not None and some[data._some_name(q)].shape[0] > d_out:
        why = f" (grouped-query attention: Wq has {some[data._some_name(q)].shape[0]} rows)"
    return (f"Wv is {d_out} × {d_in}{why}: it has only {d_out} input-side singular directions, so on Fig. 8's "
            f"input side for ΔWv the curves stop at i = {d_out} and reach {d_out}/{d_in} at most.")


def _loss_note(data):
    ls, base = losses(data)
    if not ls:
        return None
    txt = (f"Table 6 / 18 (the paper: very small r already suffices; GPT-2 E2E validation loss 1.23 → 1.16 from "
           f"r = 1 to 16). Validation loss here: base model {_f(base, 3)}; "
           + ", ".join(f"r = {r}: {_f(x, 3)}" for r, x in ls.items()) + ". ")
    if loss_flat(ls.values(), base):
        return txt + (f"The spread over r is below {LOSS_SPREAD_SHARE:g} of the gain over the base model: small r "
                      "suffices here too (a description: no null exists for it, so it carries no verdict).")
    return txt + (f"The spread over r is not below {LOSS_SPREAD_SHARE:g} of the gain over the base model: the rank "
                  "matters here (a description, not a verdict).")


def _pair_groups(data):
    """Mean cosine and φ(1, 1) over the pairs of r = 8 task adapters: same task / other seed, same seed / other
    task, neither."""
    import numpy as np

    meta, col = data.collection_meta, data.collection
    labs = [lab for lab, m in meta.items() if m.get("rank") == 8 and m["seeds"][0] == m["seeds"][1]
            and m["seeds"][0] in (0, 1)]
    idx = {lab: i for i, lab in enumerate(meta)}
    groups = {"same task, other seed": [], "same seed, other task": [], "other task and seed": []}
    for a in range(len(labs)):
        for b in range(a + 1, len(labs)):
            ma, mb = meta[labs[a]], meta[labs[b]]
            same_task, same_seed = ma["task"] == mb["task"], ma["seeds"] == mb["seeds"]
            if same_task and same_seed:
                continue
            key = ("same task, other seed" if same_task else "same seed, other task" if same_seed
                   else "other task and seed")
            groups[key].append((col.cosine[idx[labs[a]], idx[labs[b]]], col.similarity[idx[labs[a]], idx[labs[b]]]))
    return {k: (float(np.mean([c for c, _ in v])), float(np.mean([p for _, p in v])), len(v))
            for k, v in groups.items() if v}


def _collection_note(data):
    if data.collection is None or not data.collection_meta:
        return None
    g = _pair_groups(data)
    if len(g) < 3:
        return None
    parts = "; ".join(f"{k}: cosine {c:.2f}, φ(1,1) {p:.2f} ({n} pairs)" for k, (c, p, n) in g.items())
    order = sorted(g, key=lambda k: -g[k][0])
    lead = ("tasks" if order[0] == "same task, other seed" else "seeds" if order[0] == "same seed, other task"
            else "neither")
    return (f"The collection (collection.png, {len(data.collection_meta)} adapters, means over the shared modules; "
            "random directions give a cosine of 0 ± 0.002 and φ(1,1) ≈ 0.002). Among the r = 8 task adapters "
            f"(four tasks × seeds 0 and 1): {parts}. By the cosine of the updates they group by {lead} first.")


def _merge_note(data):
    if data.merge is None:
        return None
    s = data.merge.summary()
    fr = data.merge.frame
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(s["verdicts"].items()))
    return (f"Merging {', '.join(data.merge.labels)} (exact sum of the updates, then its best rank-{data.merge.rank} "
            f"approximation from the stacked factors): ‖ΣΔW‖² / Σ‖ΔW‖² = {s['ratio_pooled']:.2f} pooled over "
            f"modules (1 = orthogonal; median per module {float(fr['ratio'].median()):.2f}); modules: {verdicts} "
            f"(z against random directions of the same norms, |z| ≥ 3); the rank-{data.merge.rank} merge keeps "
            f"{100 * s['energy_kept_pooled']:.1f} % of the summed update's energy. " + _merge_loss_text(data))


def _merge_loss_text(data):
    mc = data.merge_check
    if mc is None or mc["rows"] <= 2:
        ml = data.merge_losses or {}
        if not ml:
            return ("The validation losses of merged adapters are not measured here (run python -m "
                    "analysis.reference.merge_losses, see checkpoints/README.md).")
        rows = [f"{task}: base {v['base']:.3f}, its own adapter {v[lab]:.3f}, merged {v['merged']:.3f}"
                for lab, task in ml["tasks"].items()
                for v in [ml["val_loss"].get(task, {})] if {"base", lab, "merged"} <= set(v)]
        return (f"Validation loss per task (`{ml['folder']}`, {ml.get('n_val_eval', '?')} held-out examples each): "
                + "; ".join(rows) + ".")
    fr, checks = mc["table"], mc["checks"]
    worse = float((fr["increase"] > 0).mean())
    by = fr.groupby("weighting")["increase"].median()
    parts = [f"{c.predictor} ρ = {c.rho:+.2f} (z {c.z:+.1f}, p {c.p:.2g}: {c.verdict})" for c in checks.values()]
    d = checks.get("distance")
    detect = (f" With {d.n} losses the test detects a ρ of about {d.detectable:.2f} or more with power 0.8: a "
              "statistic that does not predict here is unlikely to reach that ρ, while a weaker relation could go "
              "unseen." if d is not None else "")
    return (f"Merge advice against measured losses (merge_losses.png, merge_advice.csv; table "
            f"benchmarks/merge_losses.csv from python -m analysis.reference.merge_losses): {fr['merge'].nunique()} "
            f"merged adapters of the task adapters (every subset of two or more, weights 1 and 1/n, methods "
            f"{', '.join(sorted(fr['method'].unique()))}), {len(fr)} (adapter, task) validation losses. "
            f"{100 * worse:.0f} % of them are worse than the task's own adapter (median increase "
            + ", ".join(f"{by[w]:+.2f} at weights {w}" for w in by.index)
            + "). Spearman ρ of each advice statistic against the loss increase, against a null that permutes the "
            f"increases within each task (10,000 draws; 'predicts' at the protocol's p ≤ 0.00135): {'; '.join(parts)}."
            f"{detect} Between weights 1 and 1/n, the weighting with the smaller advised distance had the smaller "
            f"measured increase in {100 * mc['agreement']:.0f} % of {len(mc['scale_choice'])} (subset, method) "
            f"cases (binomial p {mc['agreement_p']:.2g} against a coin flip"
            + (": not beyond chance at the protocol's level)" if not mc["agreement_p"] <= 0.00135 else ")")
            + ". What it cannot see: the statistics are weight-space geometry; how an update acts on another "
            "task's inputs is not in them.")


def notes(data: ReportData) -> list[str]:
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
    for note in (_collection_note, _merge_note, _loss_note, _movement_note, _top1_note, _size_note, _seed_note, _swap_note, _training_note, _gqa_note):
        out.append(note(data))
    return [n for n in out if n]
