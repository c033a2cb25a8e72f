"""The README's notes: each states a conclusion only when its own numbers pass its named threshold."""

from types import SimpleNamespace

import pandas as pd

from analysis.report import notes as N
from analysis.report.notes import notes


def _data(**kw):
    cfg = SimpleNamespace(low=8, high=64, seeds=(0, 1), ranks=(1, 8), layer=15, pairs=())
    base = dict(config=cfg, advice=None, manifests={}, sweeps={}, table7=None, modules=[], adapters={},
                rank_pair=None, seed_pair=None, cross_pair=None, w_spectra={}, collection=None,
                collection_meta={}, merge=None, layer=15, role_kind=lambda role: None, stacks=lambda: ["decoder"],
                say=lambda role: {"seed_a": "r = 64, seed 0", "seed_b": "r = 64, seed 1"}.get(role, "?"))
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
        return SimpleNamespace(frame=pd.DataFrame({"name": [f"model.layers.0.{m}" for m in mods], "module": mods,
                                                   "phi11_A": vals, "d_in": [d, d]}), results={})
    return _data(rank_pair=pair(same), cross_pair=pair(cross), seed_pair=pair(seed))


def test_seed_note_says_same_seed_effect_only_below_half():
    [n] = notes(_pairs([0.72, 0.73], [0.15, 0.33], [0.17, 0.41]))
    assert n.endswith("falls from ΔWq 0.72 to 0.15, ΔWv 0.73 to 0.33, close to the seed pair of Fig. 4: on "
                      "these adapters the shared top direction of Fig. 3 is largely a same-seed effect, though "
                      "still far above the random 1/d.")
    [n] = notes(_pairs([0.72, 0.80], [0.37, 0.41], [0.17, 0.41]))   # 0.37 ≥ 0.72 / 2: not a same-seed effect
    assert "is not largely a same-seed effect here" in n and "is largely a same-seed effect" not in n
    [n] = notes(_pairs([0.72, 0.80], [0.35, 0.41], [0.17, 0.41]))   # q below half, v not
    assert "largely a same-seed effect for ΔWq but not for ΔWv" in n
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
    adv = SimpleNamespace(frame=pd.DataFrame({"name": ["model.layers.0.self_attn.q_proj"], "module": ["q_proj"],
                                              "advised": [3], "capped": [False]}),
                          rank_pattern=lambda: (3, {}))
    flat = {"r1_seed0": {"val_loss_adapter": 3.0, "val_loss_base": 4.0}, "r8_seed0": {"val_loss_adapter": 2.9}}
    steep = {"r1_seed0": {"val_loss_adapter": 3.5, "val_loss_base": 4.0}, "r8_seed0": {"val_loss_adapter": 2.9}}
    assert notes(_data(advice=adv, manifests=flat))[0].endswith("in line with Table 6 / 18 (very small r suffices).")
    assert notes(_data(advice=adv, manifests=steep))[0].endswith("differs between the seeds as random subspaces do.")


def test_loss_note_says_flat_only_below_a_quarter_of_the_gain():
    flat = {"r1_seed0": {"val_loss_adapter": 3.0, "val_loss_base": 4.0}, "r8_seed0": {"val_loss_adapter": 2.9}}
    steep = {"r1_seed0": {"val_loss_adapter": 3.5, "val_loss_base": 4.0}, "r8_seed0": {"val_loss_adapter": 2.9}}
    [n] = notes(_data(manifests=flat))
    assert "small r suffices here too" in n and "no null" in n
    [n] = notes(_data(manifests=steep))
    assert "the rank matters here" in n


def test_thresholds_are_the_documented_ones():
    assert (N.TOP1_DOMINANT, N.SAME_SEED_SHARE, N.FAR_ABOVE_NULL, N.SHORT_TRAINING_EPOCHS) == (0.5, 0.5, 10, 1)
    assert (N.A_MOVED_LITTLE, N.SWAP_PHI11_BELOW, N.SWAP_TOP2_ABOVE, N.LOSS_SPREAD_SHARE) == (0.3, 0.2, 0.5, 0.25)


def test_collection_note_names_what_groups_first():
    import numpy as np

    meta = {f"{t}_s{s}": {"task": t, "rank": 8, "seeds": (s, s)} for t in ("define", "word") for s in (0, 1)}
    labs = list(meta)

    def col(task_cos, seed_cos):
        c = np.full((4, 4), 0.05)
        for i, a in enumerate(labs):
            for j, b in enumerate(labs):
                if i != j and meta[a]["task"] == meta[b]["task"]:
                    c[i, j] = task_cos
                elif i != j and meta[a]["seeds"] == meta[b]["seeds"]:
                    c[i, j] = seed_cos
        return SimpleNamespace(cosine=c, similarity=c)

    [n] = notes(_data(collection=col(0.3, 0.1), collection_meta=meta))
    assert "they group by tasks first" in n and "same task, other seed: cosine 0.30" in n
    [n] = notes(_data(collection=col(0.1, 0.3), collection_meta=meta))
    assert "they group by seeds first" in n
