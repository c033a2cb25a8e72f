"""DoRA -> plain LoRA: the written update is the best rank-k approximation of W' − W, with W' from PEFT's own
merge (merge_and_unload of the DoRA model), and PEFT loads the written LoRA back (float64 model: tolerance
1e-6 of the largest entry, the adapter being stored in float32)."""

import copy
import json

import numpy as np
import pytest

import torch  # noqa: E402
pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from analysis.errors import AdapterError  # noqa: E402
from analysis.io import load_adapter  # noqa: E402
from analysis.resize import main  # noqa: E402
from analysis.sweeps.resize import resize_adapter  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 24)
        self.v = nn.Linear(16, 12)
        self.conv = nn.Conv2d(4, 6, 3)


def _base():
    torch.manual_seed(0)
    return Tiny().double()


def _layers(model):
    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


@pytest.fixture(scope="module")
def dora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dora2lora")
    model = get_peft_model(_base(), LoraConfig(r=3, lora_alpha=5, target_modules=["q", "v", "conv"], use_dora=True))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking factors and magnitudes
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(p + torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    model.save_pretrained(tmp / "adapter")
    base = {n: m.base_layer.weight.detach().numpy().copy() for n, m in _layers(model).items()}
    merged = copy.deepcopy(model).merge_and_unload()  # PEFT's own DoRA merge: W'
    mods = dict(merged.named_modules())
    effective = {n: (mods[n].weight.detach().numpy() - W).reshape(W.shape[0], -1) for n, W in base.items()}
    save_file({f"{n}.weight": torch.from_numpy(W) for n, W in base.items()}, str(tmp / "base.safetensors"))
    return tmp, base, effective


def _best(D, k):
    U, S, Vt = np.linalg.svd(D, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vt[:k], float(np.sum(S[:k] ** 2) / np.sum(S ** 2))


def _peft_deltas(path):
    """The written adapter loaded by PEFT on the base: {module: ΔW (d_out, d_in)}."""
    model = PeftModel.from_pretrained(_base(), str(path))
    assert not model.peft_config["default"].use_dora
    out = {}
    for n, m in _layers(model).items():
        D = m.get_delta_weight("default").detach().double().numpy()
        out[n] = D.reshape(D.shape[0], -1)
    return out


@pytest.mark.parametrize("k", [1, 2, 5])
def test_written_lora_is_the_best_rank_k_of_the_effective_update(dora, tmp_path, k):
    tmp, base, effective = dora
    ad = load_adapter(tmp / "adapter")
    res = resize_adapter(ad, rank=k, base=base)
    fr = res.frame.set_index("name")
    res.write(tmp_path / "lora")
    theirs = _peft_deltas(tmp_path / "lora")
    for name, D in effective.items():
        want, energy = _best(D, k)
        scale = np.abs(D).max()
        assert np.abs(res.modules[name].delta() - want).max() < 1e-6 * scale, name
        assert np.abs(theirs[name] - want).max() < 1e-6 * scale, name
        assert fr.loc[name, "energy"] == pytest.approx(energy, rel=1e-6)
        assert fr.loc[name, "update"] == "dora effective"
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["use_dora"] is False
    assert np.linalg.matrix_rank(effective["q"]) > 3  # W' − W is not of the DoRA's rank: it needed the base


def test_cli_with_base_file_energy_and_refusal_without(dora, tmp_path, capsys):
    tmp, base, effective = dora
    out = tmp_path / "e90"
    assert main([str(tmp / "adapter"), "--base", str(tmp / "base.safetensors"), "--energy", "0.9", "--out",
                 str(out)]) == 0
    text = capsys.readouterr().out
    assert "DoRA" in text and "W' − W" in text
    theirs = _peft_deltas(out)
    for name, D in effective.items():
        S = np.linalg.svd(D, compute_uv=False)
        k = int(np.searchsorted(np.cumsum(S ** 2) / np.sum(S ** 2), 0.9 - 1e-12) + 1)
        want, _ = _best(D, k)
        assert np.abs(theirs[name] - want).max() < 1e-6 * np.abs(D).max(), name
    # without the base: the table of the directional part, and no adapter written (one line naming --base)
    assert main([str(tmp / "adapter"), "--rank", "1", "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--base" in err and not (tmp_path / "no").exists()
    with pytest.raises(AdapterError, match="base"):
        resize_adapter(load_adapter(tmp / "adapter"), rank=1).write(tmp_path / "no")
    # the base alone keeps each module's rank r = 3
    assert main([str(tmp / "adapter"), "--base", str(tmp / "base.safetensors"), "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    theirs = _peft_deltas(tmp_path / "r")
    assert np.abs(theirs["v"] - _best(effective["v"], 3)[0]).max() < 1e-6 * np.abs(effective["v"]).max()
