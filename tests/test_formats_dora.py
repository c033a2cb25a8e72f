"""DoRA (PEFT ``use_dora``): the directional part s·B·A against PEFT's ``get_delta_weight``, and the
effective update W' − W against PEFT's own merge (``merge_and_unload``), in float64."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import torch  # noqa: E402
peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402

from analysis.errors import AdapterError  # noqa: E402
from analysis.io import load_adapter  # noqa: E402
from analysis.io.dora import dora_delta, dora_effective, dora_weight  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 24)
        self.v = nn.Linear(16, 12)
        self.conv = nn.Conv2d(4, 6, 3)


def _model(seed=0):
    torch.manual_seed(seed)
    model = get_peft_model(Tiny().double(), LoraConfig(r=3, lora_alpha=5, target_modules=["q", "v", "conv"],
                                                       use_dora=True))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # trained-looking factors and magnitudes (B = 0 and m = ‖W‖ at init)
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(p + torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return model


def _layers(model):
    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dora")
    model = _model()
    model.save_pretrained(tmp)
    base = {n: m.base_layer.weight.detach().numpy().copy() for n, m in _layers(model).items()}
    merged = copy.deepcopy(model).merge_and_unload()  # PEFT's own DoRA merge
    merged_w = {n: dict(merged.named_modules())[n].weight.detach().numpy() for n in base}
    directional = {n: m.get_delta_weight("default").detach().numpy() for n, m in _layers(model).items()}
    return tmp, base, merged_w, directional


def test_directional_part_matches_get_delta_weight(saved):
    tmp, base, _, directional = saved
    ad = load_adapter(tmp)
    assert set(ad) == set(base) and any("DoRA" in n for n in ad.notes)
    for name, D in directional.items():
        lr = ad[name]
        assert lr.meta["dora"] and lr.meta["magnitude"].shape == (D.shape[0],)
        np.testing.assert_allclose(lr.delta(), D.reshape(D.shape[0], -1), rtol=0, atol=1e-7 * np.abs(D).max())


def test_effective_update_matches_peft_merge(saved):
    tmp, base, merged, _ = saved
    ad = load_adapter(tmp)
    worst = 0.0
    for name, W in base.items():
        lr = ad[name]
        W2, M2 = W.reshape(W.shape[0], -1), merged[name].reshape(W.shape[0], -1)
        got = dora_weight(lr, W2)
        worst = max(worst, float(np.abs(got - M2).max() / np.abs(M2).max()))
        np.testing.assert_allclose(dora_delta(lr, W2), M2 - W2, rtol=0, atol=1e-6 * np.abs(M2).max())
        assert np.linalg.matrix_rank(M2 - W2) > lr.r  # W' − W is not of the adapter's rank
    assert worst < 1e-6  # float32 factors and magnitudes, float64 base: PEFT merges in float64 here


def test_dora_effective_adapter(saved):
    tmp, base, merged, _ = saved
    ad = load_adapter(tmp)
    full = dora_effective(ad, base, rank=12)  # every singular triplet of the 12 × 16 … updates
    for name, W in base.items():
        lr = full[name]
        W2, M2 = W.reshape(W.shape[0], -1), merged[name].reshape(W.shape[0], -1)
        if min(W2.shape) <= 12:
            np.testing.assert_allclose(lr.delta(), M2 - W2, rtol=0, atol=1e-6 * np.abs(M2).max())
            assert lr.meta["energy"] == pytest.approx(1.0)
        assert lr.meta["update"].startswith("effective") and lr.meta["directional"] is ad[name]
    top = dora_effective(ad, base)  # default: the module's r
    D = merged["q"] - base["q"]
    S = np.linalg.svd(D, compute_uv=False)
    np.testing.assert_allclose(top["q"].svd().S, S[:3], rtol=1e-6)
    assert top["q"].meta["energy"] == pytest.approx(float(np.sum(S[:3] ** 2) / np.sum(S ** 2)), rel=1e-6)


def test_bad_magnitude_one_line(tmp_path, saved):
    tmp = saved[0]
    sd = load_file(str(tmp / "adapter_model.safetensors"))
    key = "base_model.model.q.lora_magnitude_vector"
    sd[key] = torch.ones(5)
    (tmp_path / "adapter_config.json").write_text((tmp / "adapter_config.json").read_text())
    save_file(sd, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(AdapterError) as e:
        load_adapter(tmp_path)
    msg = str(e.value)
    assert "(24,)" in msg and f"key '{key}'" in msg and "adapter_model.safetensors" in msg and "\n" not in msg
    assert json.loads((tmp / "adapter_config.json").read_text())["use_dora"] is True


def test_resize_of_dora_refuses_to_write(saved, tmp_path):
    from analysis.sweeps.resize import resize_adapter

    res = resize_adapter(load_adapter(saved[0]), rank=1)  # the table: the directional part's spectrum
    assert len(res.frame) == 3
    with pytest.raises(AdapterError) as e:
        res.write(tmp_path / "out")
    assert "DoRA" in str(e.value) and "\n" not in str(e.value) and not (tmp_path / "out").exists()
