"""Merge advice from the interference statistics (against dense float64 numbers and closed forms), the check
against measured losses (Spearman ρ with a permutation null), the resumable measuring script and its figure."""

import os

import numpy as np
import pandas as pd
import pytest

from analysis.core import Adapter, LowRank
from analysis.sweeps.merge import merge_adapters
from analysis.sweeps.merge_advice import advice_vs_losses, merged_distances


def _disjoint(n, d_out=12, d_in=9, r=2, seed=0):
    """n adapters with exactly orthogonal updates of equal norm (disjoint output rows)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((r, d_in))
    out = []
    for i in range(n):
        B = np.zeros((d_out, r))
        B[3 * i: 3 * i + 3] = rng.standard_normal((3, r))
        B *= 1 / np.linalg.norm(B @ A)
        out.append(Adapter({"m.0.q": LowRank(A, B, 1.0, name="m.0.q")}, path=f"a{i}", format="peft"))
    return out


@pytest.mark.parametrize("n", [2, 3, 4])
def test_orthogonal_adapters_closed_forms(n):
    ads = _disjoint(n)
    adv = merge_adapters(ads, method="cat").advice()
    ad = adv.adapters
    np.testing.assert_allclose(ad["retained"], 1.0, atol=1e-12)  # the sum carries each own update whole
    np.testing.assert_allclose(ad["foreign"], n - 1, atol=1e-12)  # and the others' n − 1 units of energy
    np.testing.assert_allclose(ad["distance"], n - 1, atol=1e-12)
    assert adv.scale == pytest.approx(1 / n, rel=1e-12)  # the mean, for orthogonal equal norms
    np.testing.assert_allclose(ad["distance_at_scale"], 1 - 1 / n, atol=1e-12)
    assert set(adv.pairs["relation"]) == {"independent"} and np.allclose(adv.pairs["cosine"], 0)


def test_pairs_and_distances_against_dense():
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((2, 30)), rng.standard_normal((40, 2))
    lr = lambda a, b, s=1.0: Adapter({"m.0.q": LowRank(a, b, s, name="m.0.q")}, path=str(s), format="peft")  # noqa
    same, other = lr(A, B), lr(rng.standard_normal((2, 30)), rng.standard_normal((40, 2)), 0.7)
    close = lr(A + 0.1 * rng.standard_normal((2, 30)), B, 1.3)
    res = merge_adapters([same, other, close], weights=[1.0, 0.5, -1.0], method="svd", rank=2)
    adv = res.advice()
    rel = {(p.a, p.b): p.relation for p in adv.pairs.itertuples()}
    assert rel[("1.0", "1.3")] == "cancel" and rel[("1.0", "0.7")] == "independent"  # weights 1 and −1
    M = res.modules["m.0.q"].delta()
    for a, lab in zip((same, other, close), res.labels):
        D = a["m.0.q"].delta()
        row = adv.adapters.set_index("adapter").loc[lab]
        assert row["retained"] == pytest.approx(np.sum(M * D) / np.sum(D * D), rel=1e-9)
        assert row["distance"] == pytest.approx(np.sum((M - D) ** 2) / np.sum(D * D), rel=1e-9)
    # the same numbers from the written adapter (what the measured table is recomputed from)
    again = merged_distances(Adapter(res.modules, path="m", format="peft"), [same, other, close],
                             labels=res.labels).set_index("adapter")
    np.testing.assert_allclose(again.loc[list(res.labels), "distance"], adv.adapters["distance"], rtol=1e-9)
    assert any("suggested scale" in line for line in adv.lines)


def _table(rng, noise, n_per=30):
    rows = []
    for task in ("a", "b", "c"):
        x = rng.exponential(size=n_per)
        for xi in x:
            rows.append({"task": task, "distance": xi, "increase": 10 * ord(task) + xi + noise * rng.standard_normal()})
    return pd.DataFrame(rows)


def test_advice_check_sees_a_monotone_relation_and_not_noise():
    rng = np.random.default_rng(0)
    good = advice_vs_losses(_table(rng, 0.0), n_perm=2000)
    assert good.verdict == "predicts" and good.z > 3 and good.p < 1e-3
    assert all(v == pytest.approx(1.0) for v in good.per_task.values())
    t = _table(rng, 0.0)
    t["increase"] = rng.permutation(t["increase"].to_numpy())  # no relation at all
    t["increase"] += t["task"].map({"a": 0, "b": 100, "c": 200})
    bad = advice_vs_losses(t, n_perm=2000)
    assert bad.verdict != "predicts" and abs(bad.z) < 3
    assert abs(good.null_mean) < 0.1  # within-task permutations: the task offsets are not counted as a relation


def test_merge_plan_and_partial_line(tmp_path):
    from analysis.reference.merge_losses import COLUMNS, merge_plan, read_table

    plan = merge_plan(["define", "word", "hypernym", "synonyms"])
    assert len(plan) == 66 and len({p[0] for p in plan}) == 66
    assert sum(len(p[1]) for p in plan) == 168  # (merged adapter, task) rows
    t = tmp_path / "t.csv"
    t.write_text(",".join(COLUMNS) + "\n" + "merge,x," + "\n".join(["1"] * 1) + "\nmerge,half")  # killed mid-line
    rows = read_table(t)
    assert len(rows) == 1 and t.read_text().endswith("\n")


@pytest.mark.skipif(not os.path.exists("/usr/share/wordnet/data.noun"), reason="needs WordNet (wordnet-base)")
@pytest.mark.slow
def test_resumable_run_on_the_tiny_model(tmp_path):
    pytest.importorskip("peft")
    from matplotlib.figure import Figure

    from analysis.plotting.merge_advice import plot_merge_losses
    from analysis.reference.merge_losses import analyse, read_table, run
    from conftest import make_peft_adapter

    for i, task in enumerate(("define", "hypernym")):
        make_peft_adapter(tmp_path / "ck" / task, r=2, seed=i, alpha=4)
    kw = dict(out_root=str(tmp_path / "merged"), table=str(tmp_path / "t.csv"), checkpoints=str(tmp_path / "ck"),
              adapters={"define": "define", "hypernym": "hypernym"}, n_val=4, tiny=True, threads=1,
              methods=("svd", "ties"), log=lambda s: None)
    assert run(**kw) == 4 + 8  # base and own per task, then 4 merges x 2 tasks
    assert run(**kw) == 0  # resumed: nothing left
    rows = pd.DataFrame(read_table(tmp_path / "t.csv"))
    m = rows[rows["kind"] == "merge"]
    assert len(m) == 8 and set(m["method"]) == {"svd", "ties"}
    inc = m["loss"].astype(float) - m["loss_own"].astype(float)
    np.testing.assert_allclose(inc, m["increase"].astype(float), rtol=1e-12)
    assert len(os.listdir(tmp_path / "merged")) == 4
    res = analyse(tmp_path / "t.csv", n_perm=200)
    assert res["rows"] == 8 and "distance" in res["checks"]
    num = rows.assign(**{c: pd.to_numeric(rows[c], errors="coerce") for c in ("distance", "increase")})
    art = plot_merge_losses(num, ax=Figure().add_subplot(), check=res["checks"]["distance"])
    assert len(art["points"]) >= 4 and art["text"] is not None and art["zero"] is not None


def test_advice_level_is_the_protocols():
    from analysis.report.protocol import P_TAIL as protocol_level
    from analysis.sweeps.merge_advice import P_TAIL

    assert abs(P_TAIL - protocol_level) < 1e-15


def _measured_table(path, rng, *, partial=False):
    """A merge-loss table as analysis.reference.merge_losses writes it: the increase grows with the distance."""
    from analysis.reference.merge_losses import COLUMNS, merge_plan

    lines = [",".join(COLUMNS)]
    for name, subset, wt, method in merge_plan(["define", "word", "hypernym"]):
        for t in subset:
            dist = rng.exponential() * (len(subset) if wt == "1" else 1.0)
            row = {"kind": "merge", "merge": name, "subset": "+".join(subset), "n": len(subset), "weighting": wt,
                   "method": method, "task": t, "distance": dist, "foreign": dist / 2, "retained": 1.0,
                   "ratio_pooled": 1.1, "mean_cosine": rng.uniform(), "increase": dist + 0.1 * rng.standard_normal(),
                   "loss": 3 + dist}
            lines.append(",".join(str(row.get(c, "")) for c in COLUMNS))
    text = "\n".join(lines) + "\n" + ("merge,half-written" if partial else "")
    path.write_text(text)
    return text


@pytest.mark.slow
def test_report_reads_the_table_without_touching_it_and_draws_it(tmp_path):
    from analysis.report import figures as F
    from analysis.report.compute import ReportConfig, ReportData, _merge_check
    from analysis.report.notes import _merge_loss_text
    from tests._layout import text_problems

    t = tmp_path / "merge_losses.csv"
    text = _measured_table(t, np.random.default_rng(1), partial=True)
    data = ReportData(ReportConfig())
    data.merge_check = _merge_check(str(t), seed=0)
    assert t.read_text() == text  # the measuring run may still be appending: the report never rewrites it
    mc = data.merge_check
    assert mc["rows"] == len(mc["table"]) == (3 * 2 + 1 * 3) * 2 * 3  # 3 pairs and a triple; 2 weightings, 3 methods
    assert mc["checks"]["distance"].verdict == "predicts"
    assert mc["checks"]["mean_cosine"].verdict != "predicts"
    fig = F.fig_merge_losses(data)
    assert text_problems(fig) == []
    for ax in fig.axes:
        assert ax.get_xticklabels() and ax.get_yticklabels()
    note = _merge_loss_text(data)
    assert "distance ρ = +" in note and "predicts" in note and "benchmarks/merge_losses.csv" in note
