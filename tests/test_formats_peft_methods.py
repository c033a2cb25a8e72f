"""PEFT LoHa, LoKr and VeRA adapters, checked against PEFT's own ``get_delta_weight`` (float64)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import torch  # noqa: E402
peft = pytest.importorskip("peft")
from peft import LoHaConfig, LoKrConfig, VeraConfig, get_peft_model  # noqa: E402
from torch import nn  # noqa: E402

from analysis.errors import AdapterError, UnsupportedAdapterError  # noqa: E402
from analysis.io import load_adapter  # noqa: E402

from conftest import peft_deltas  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TOL = 1e-12  # max |ΔW − PEFT's| / max |PEFT's|: float32 factors, float64 on both sides
#: PEFT's LoHa multiplies by ``torch.tensor(alpha / r)``, a float32 scalar: its rounding (≤ eps32 / 2)
LOHA_TOL = 6e-8


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 24)
        self.v = nn.Linear(16, 24)
        self.fc = nn.Linear(64, 64)
        self.conv = nn.Conv2d(8, 16, 3)
        self.pw = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.v(x)


def _build(cfg, seed=0):
    torch.manual_seed(seed)
    model = get_peft_model(Tiny(), cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # every factor random (PEFT zeroes one of them at init)
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _max_rel(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def _check(ad, want, tol=TOL):
    assert set(ad) == set(want)
    for name, W in want.items():
        lr = ad[name]
        W2 = W.reshape(W.shape[0], -1)
        assert lr.delta().shape == W2.shape, name
        assert _max_rel(lr.delta(), W2) < tol, name
        U, S, V = lr.svd()
        assert _max_rel((U * S) @ V.T, lr.delta()) < 1e-10, name  # the factored SVD is exact
        assert lr.rank == np.linalg.matrix_rank(W2), name
        if lr.weight_shape is not None:
            assert tuple(lr.weight_shape) == W.shape, name


CONFIGS = {
    "loha": LoHaConfig(r=3, alpha=5, target_modules=["q", "fc", "conv", "pw"], init_weights=False),
    "loha_effective_conv": LoHaConfig(r=2, alpha=3, target_modules=["q", "conv"], use_effective_conv2d=True,
                                      rank_pattern={"q": 4}, alpha_pattern={"conv": 7}),
    "lokr": LoKrConfig(r=2, alpha=3, target_modules=["q", "fc", "conv", "pw"]),
    "lokr_both": LoKrConfig(r=2, alpha=3, target_modules=["fc", "conv"], decompose_both=True, decompose_factor=8),
    "lokr_effective_conv": LoKrConfig(r=2, alpha=3, target_modules=["conv"], use_effective_conv2d=True,
                                      decompose_factor=2),
    "lokr_full": LoKrConfig(r=16, alpha=3, target_modules=["q", "fc"]),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_matches_peft(tmp_path, case):
    model = _build(CONFIGS[case])
    model.save_pretrained(tmp_path)
    ad = load_adapter(tmp_path)
    algo = case.split("_")[0]
    _check(ad, peft_deltas(model), LOHA_TOL if algo == "loha" else TOL)
    assert all(lr.meta["algo"] == algo and lr.meta["peft_type"] == algo.upper() for lr in ad.values())


def test_patterns_and_ranks(tmp_path):
    model = _build(CONFIGS["loha_effective_conv"])
    model.save_pretrained(tmp_path)
    ad = load_adapter(tmp_path)
    assert ad["q"].scale == 3 / 4 and ad["q"].meta["r"] == 4 and ad["q"].r == 16  # face-splitting: r² columns
    assert ad["conv"].scale == 7 / 2 and ad["conv"].kind == "conv" and ad["conv"].weight_shape == (16, 8, 3, 3)


def test_lokr_rank_is_the_product(tmp_path):
    model = _build(CONFIGS["lokr_both"])
    model.save_pretrained(tmp_path)
    fc = load_adapter(tmp_path)["fc"]  # W1 = (8, 2) @ (2, 8), W2 = (8, 2) @ (2, 8): rank 2 · 2
    assert fc.meta["w1_shape"] == (8, 8) and fc.rank == 4 and fc.r == 4


@pytest.mark.parametrize("targets", [["q", "v"], ["q", "v", "fc"]])
def test_vera_matches_peft(tmp_path, targets):
    model = _build(VeraConfig(r=4, target_modules=targets, save_projection=True))
    model.save_pretrained(tmp_path)
    want = peft_deltas(model)
    ad = load_adapter(tmp_path)
    if targets == ["q", "v"]:  # one input width: exact
        _check(ad, want)
        assert all(lr.meta["algo"] == "vera" for lr in ad.values())
    else:  # d_in is not stored: layers narrower than vera_A get its full width; their own columns are exact
        for name, W in want.items():
            got = ad[name].delta()
            assert _max_rel(got[:, : W.shape[1]], W) < TOL, name
        assert ad["fc"].shape == (64, 64) and ad["q"].shape == (24, 64)
        assert any("vera_A's width" in n for n in ad.notes)


def test_vera_without_projection_refused(tmp_path):
    model = _build(VeraConfig(r=4, target_modules=["q"], save_projection=False))
    model.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedAdapterError) as e:
        load_adapter(tmp_path)
    msg = str(e.value)
    assert "save_projection" in msg and "adapter_model.safetensors" in msg and "\n" not in msg


def test_without_config_refused_and_bad_rank(tmp_path):
    model = _build(CONFIGS["loha"])
    model.save_pretrained(tmp_path / "a")
    shutil.copy(tmp_path / "a" / "adapter_model.safetensors", tmp_path / "w.safetensors")
    with pytest.raises(UnsupportedAdapterError) as e:
        load_adapter(tmp_path / "w.safetensors")
    assert "adapter_config.json" in str(e.value) and "hada_w1_a" in str(e.value)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["r"] = 5
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError) as e:
        load_adapter(tmp_path / "a")
    msg = str(e.value)
    assert "expected rank 5" in msg and "hada_w1_b" in msg and "\n" not in msg
