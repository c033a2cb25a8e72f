"""Training trajectories: drift, norm growth, effective rank and "present from", against dense float64 numpy."""

import numpy as np
import pytest

from analysis.core import Adapter, LowRank
from analysis.errors import AdapterError
from analysis.sweeps.trajectory import checkpoint_steps, phi11_null, trajectory

NAME = "model.layers.3.self_attn.q_proj"


def _run(seed=0, d_out=20, d_in=16, r=3):
    """Five checkpoints; the final top input direction v is absent (orthogonal) at steps 100, 200 and the top
    direction from step 300 on."""
    rng = np.random.default_rng(seed)
    V, _ = np.linalg.qr(rng.standard_normal((d_in, d_in)))
    U, _ = np.linalg.qr(rng.standard_normal((d_out, d_out)))
    steps = []
    for t, step in enumerate((100, 200, 300, 400, 500)):
        if t < 2:
            cols = [1, 2, 3]  # v = V[:, 0] absent
            S = np.array([1.0, 0.5, 0.2]) * (t + 1)
        else:
            cols = [0, 1 + t % 2, 4]
            S = np.array([3.0, 1.0, 0.3]) * t + rng.uniform(0, 0.1, 3)
        B = U[:, :r] * S  # (d_out, r)
        A = V[:, cols].T + 0.0  # (r, d_in)
        mix, _ = np.linalg.qr(rng.standard_normal((r, r)))  # the factors are not singular vectors
        lr = LowRank(mix.T @ A, B @ mix, scale=0.5, name=NAME)
        steps.append((step, Adapter({NAME: lr}, path=f"ck-{step}", format="peft")))
    return steps


def _dense(lr):
    return lr.scale * lr.lora_B.astype(float) @ lr.lora_A.astype(float)


def test_trajectory_matches_dense():
    steps = _run()
    tr = trajectory(steps, k=2)
    fr = tr.frame.set_index("step")
    Dfin = _dense(steps[-1][1][NAME])
    _, Sf, Vtf = np.linalg.svd(Dfin)
    prev = None
    for step, ad in steps:
        D = _dense(ad[NAME])
        _, S, Vt = np.linalg.svd(D)
        phi_fin = np.linalg.norm(Vt[:2] @ Vtf[:2].T) ** 2 / 2
        assert fr.loc[step, "drift_final"] == pytest.approx(1 - phi_fin, abs=1e-10)
        assert fr.loc[step, "phi_final"] == pytest.approx(float(Vt[0] @ Vtf[0]) ** 2, abs=1e-10)
        assert fr.loc[step, "norm"] == pytest.approx(np.linalg.norm(D), rel=1e-12)
        assert fr.loc[step, "norm_growth"] == pytest.approx(np.linalg.norm(D) / np.linalg.norm(Dfin), rel=1e-12)
        p = S[S > 1e-12 * S[0]] / S[S > 1e-12 * S[0]].sum()
        assert fr.loc[step, "effective_rank"] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-9)
        if prev is None:
            assert np.isnan(fr.loc[step, "drift_previous"])
        else:
            want = 1 - np.linalg.norm(Vt[:2] @ prev[:2].T) ** 2 / 2
            assert fr.loc[step, "drift_previous"] == pytest.approx(want, abs=1e-10)
        prev = Vt
    pf = tr.present_from.set_index("name")
    assert pf.loc[NAME, "step"] == 300
    assert pf.loc[NAME, "threshold"] == pytest.approx(phi11_null(16)[2])
    assert list(fr["present"]) == [False, False, True, True, True]


def test_phi11_null_by_monte_carlo():
    rng = np.random.default_rng(0)
    d = 12
    x = rng.standard_normal((20000, d))
    c2 = (x[:, 0] ** 2) / np.sum(x * x, axis=1)  # cos² with a fixed direction
    mean, sd, thr = phi11_null(d)
    assert np.mean(c2) == pytest.approx(mean, rel=0.03)
    assert np.std(c2) == pytest.approx(sd, rel=0.03)
    assert thr == pytest.approx(mean + 3 * sd)


def test_checkpoint_folders_are_ordered_by_number(tmp_path):
    for s in (1000, 200, 30):
        (tmp_path / f"checkpoint-{s}").mkdir()
    (tmp_path / "checkpoint-final").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert [s for s, _ in checkpoint_steps(tmp_path)] == [30, 200, 1000]
    with pytest.raises(AdapterError, match="checkpoint-N"):
        checkpoint_steps(tmp_path / "checkpoint-30")
    with pytest.raises(ValueError, match="at least two"):
        trajectory(_run()[:1])


def test_trajectory_plot_draws_one_line_per_module_type():
    from matplotlib.figure import Figure

    from analysis.plotting.collection import plot_trajectory

    tr = trajectory(_run(), k=1)
    art = plot_trajectory(tr.frame, y="drift_final", ax=Figure().add_subplot(), null=0.1)
    assert len(art.lines) == 1 and len(art.bands) == 1 and art.null is not None
    np.testing.assert_allclose(art.lines[0].get_ydata(), tr.frame.sort_values("step")["drift_final"])
    with pytest.raises(ValueError, match="missing"):
        plot_trajectory(tr.frame.drop(columns=["module"]))
