"""Resize by kohya's dynamic criteria (against a re-implementation of sd-scripts' networks/resize_lora.py written
here from that file), by a file size (against brute force), and a folder of adapters in one call."""

import itertools
import json

import numpy as np
import pytest

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from analysis import load_adapter  # noqa: E402
from analysis.resize import main  # noqa: E402
from analysis.sweeps.resize import resize_adapter  # noqa: E402

# ------------------------------------------------------------------ sd-scripts' resize_lora.py, re-implemented
# (kohya-ss/sd-scripts networks/resize_lora.py at 48d368f: index_sv_*, rank_resize, merge_* / extract_*)
MIN_SV = 1e-6


def _kohya_index(S, method, param):
    if method == "sv_ratio":
        index = int(torch.sum(S > S[0] / param).item())
    elif method == "sv_cumulative":
        cum = torch.cumsum(S, dim=0) / float(torch.sum(S))
        index = int(torch.searchsorted(cum, param)) + 1
    else:
        cum = torch.cumsum(S.pow(2), dim=0) / float(torch.sum(S.pow(2)))
        index = int(torch.searchsorted(cum, param ** 2)) + 1
    return max(1, min(index, len(S) - 1))


def kohya_resize(sd, new_rank, method, param):
    """{module: (new_rank, new_alpha, up @ down * alpha / rank)} as sd-scripts' resize computes them (float32)."""
    out = {}
    for key, down in sd.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        up = sd[name + ".lora_up.weight"].float()
        down = down.float()
        alpha = sd.get(name + ".alpha")
        old_rank = down.shape[0]
        scale = 1.0 if alpha is None else float(alpha) / old_rank
        W = up.reshape(up.shape[0], -1) @ down.reshape(old_rank, -1)  # merge_linear / merge_conv
        U, S, Vh = torch.linalg.svd(W)
        rank = _kohya_index(S, method, param) + 1
        if S[0] <= MIN_SV:
            rank = 1
        elif rank > new_rank:
            rank = new_rank
        new_alpha = float(scale * rank)
        lora_up = U[:, :rank] @ torch.diag(S[:rank])
        lora_down = Vh[:rank, :]
        out[name] = (rank, new_alpha, (lora_up @ lora_down).double().numpy() * new_alpha / rank)
    return out


def _kohya_file(path, seed=0, zero=False):
    """A kohya LoRA / LoCon file: linear and conv modules, decaying spectra, alpha != rank."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    shapes = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": ((8, 40), (40, 8)),
              "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": ((8, 24), (40, 8)),
              "lora_unet_mid_block_attentions_0_proj_in": ((6, 40), (40, 6)),
              "lora_unet_down_blocks_0_resnets_0_conv1": ((8, 16, 3, 3), (32, 8, 1, 1)),
              "lora_te_text_model_encoder_layers_0_mlp_fc1": ((8, 32), (64, 8))}
    for i, (name, (ds, us)) in enumerate(shapes.items()):
        r = ds[0]
        decay = torch.tensor([0.6 ** (j * (0.5 + 0.3 * i)) for j in range(r)])
        down = torch.randn(ds, generator=g)
        up = torch.randn(us, generator=g) * decay.reshape(1, r, *([1] * (len(us) - 2))) * 0.2
        if zero and i == 0:
            up = torch.zeros(us)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        sd[f"{name}.alpha"] = torch.tensor(float(r) / 2 + i)
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "8",
                                       "ss_network_alpha": "4.0", "ss_training_comment": "trained by hand"})
    return sd


@pytest.mark.parametrize("method,params", [("sv_ratio", (1.5, 4.0, 30.0)), ("sv_fro", (0.5, 0.9, 0.99)),
                                           ("sv_cumulative", (0.3, 0.7, 0.95))])
@pytest.mark.parametrize("cap", [4, 16])
def test_kohya_dynamic_ranks_equal_sd_scripts(tmp_path, method, params, cap):
    src = tmp_path / "lora.safetensors"
    sd = _kohya_file(src, seed=1, zero=True)
    for param in params:
        want = kohya_resize(sd, cap, method, param)
        out = tmp_path / f"{method}_{param}.safetensors"
        assert main([str(src), f"--{method.replace('_', '-')}", str(param), "--max-rank", str(cap), "--out",
                     str(out), "--quiet"]) == 0
        got = load_file(str(out))
        for name, (rank, alpha, W) in want.items():
            assert got[f"{name}.lora_down.weight"].shape[0] == rank, (name, param)
            assert float(got[f"{name}.alpha"]) == pytest.approx(alpha, rel=1e-6)
            r = got[f"{name}.lora_down.weight"].shape[0]
            mine = (got[f"{name}.lora_up.weight"].double().reshape(-1, r)
                    @ got[f"{name}.lora_down.weight"].double().reshape(r, -1)).numpy() * alpha / r
            scale = max(np.abs(W).max(), 1e-30)
            assert np.abs(mine - W).max() <= 1e-5 * scale, (name, param)
        with safe_open(str(out), framework="np") as f:
            meta = f.metadata()
        assert meta["ss_network_dim"] == "Dynamic" and meta["ss_network_alpha"] == "Dynamic"
        assert meta["ss_training_comment"].startswith(f"resized ({method} {param:g})")
        assert meta["ss_training_comment"].endswith("trained by hand")


def test_kohya_rules_on_a_peft_adapter(tmp_path):
    """The same rules on a PEFT adapter: the spectrum of B @ A (the scale does not change the ranks)."""
    from conftest import make_peft_adapter

    make_peft_adapter(tmp_path / "p", r=6, seed=2, alpha=3)
    ad = load_adapter(tmp_path / "p")
    res = resize_adapter(ad, sv_fro=0.8, max_rank=5)
    for name, lr in ad.items():
        S = torch.linalg.svd(torch.from_numpy(lr.lora_B @ lr.lora_A))[1]
        rank = min(_kohya_index(S, "sv_fro", 0.8) + 1, 5)
        assert res.modules[name].r == rank
        U, s, Vt = np.linalg.svd(lr.delta())
        np.testing.assert_allclose(res.modules[name].delta(), (U[:, :rank] * s[:rank]) @ Vt[:rank],
                                   atol=1e-9 * s[0])


def _brute(spectra, costs, budget):
    best = -1.0
    names = list(spectra)
    for ks in itertools.product(*[range(1, len(spectra[n]) + 1) for n in names]):
        if sum(k * costs[n] for k, n in zip(ks, names)) <= budget:
            best = max(best, sum(float(np.sum(spectra[n][:k] ** 2)) for k, n in zip(ks, names)))
    return best


def test_size_greedy_is_optimal_for_equal_costs_and_fits(tmp_path):
    from analysis.sweeps.resize_criteria import size_ranks

    rng = np.random.default_rng(0)
    spectra = {f"m{i}": np.sort(rng.exponential(size=5))[::-1] * (i + 1) for i in range(3)}
    costs = dict.fromkeys(spectra, 10.0)
    for budget in (30, 55, 80, 120, 150):
        ks = size_ranks(spectra, costs, budget)
        got = sum(float(np.sum(spectra[n][:k] ** 2)) for n, k in ks.items())
        assert sum(k * 10 for k in ks.values()) <= budget
        assert got == pytest.approx(_brute(spectra, costs, budget), rel=1e-12)
    with pytest.raises(ValueError, match="larger size"):
        size_ranks(spectra, costs, 20)


def test_size_writes_a_file_that_fits(tmp_path):
    from conftest import make_peft_adapter

    make_peft_adapter(tmp_path / "p", r=8, seed=3, hidden=64, layers=3)
    full = (tmp_path / "p" / "adapter_model.safetensors").stat().st_size
    target = full * 0.45 / 1e6
    js = tmp_path / "s.json"
    assert main([str(tmp_path / "p"), "--size", f"{target:.6f}", "--out", str(tmp_path / "small"), "--quiet",
                 "--json", str(js)]) == 0
    size = (tmp_path / "small" / "adapter_model.safetensors").stat().st_size
    assert size <= target * 1e6 and size > 0.3 * full  # fits, and uses most of the budget
    rec = json.loads(js.read_text())
    assert rec["bytes"] == size and rec["criterion"].startswith("size")
    ks = {m["name"]: m["k"] for m in rec["modules"]}
    assert len(set(ks.values())) > 1  # per-module ranks, not one rank everywhere
    assert main([str(tmp_path / "p"), "--size", "0.0001", "--out", str(tmp_path / "tiny")]) == 2


def test_a_folder_of_adapters_in_one_call(tmp_path, capsys):
    from conftest import make_peft_adapter

    folder = tmp_path / "many"
    make_peft_adapter(folder / "a", r=4, seed=0)
    make_peft_adapter(folder / "b", r=4, seed=1)
    _kohya_file(folder / "k.safetensors", seed=2)
    js = tmp_path / "all.json"
    assert main([str(folder), "--rank", "2", "--out", str(tmp_path / "out"), "--json", str(js), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "b", "k.safetensors"]
    for name in ("a", "b"):
        assert json.loads((tmp_path / "out" / name / "adapter_config.json").read_text())["r"] == 2
    assert load_file(str(tmp_path / "out" / "k.safetensors"))[
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"].shape[0] == 2
    assert len(json.loads(js.read_text())["results"]) == 3
    assert capsys.readouterr().out.count("wrote ") == 3


def test_bad_criteria_one_line(tmp_path, capsys):
    src = tmp_path / "k.safetensors"
    _kohya_file(src)
    for argv, msg in ((["--sv-fro", "-1"], "sv_fro"), (["--rank", "2", "--max-rank", "3"], "max_rank"),
                      ([], "expected one of --rank")):
        assert main([str(src), *argv, "--out", str(tmp_path / "o.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err
    with pytest.raises(SystemExit):
        main([str(src), "--sv-fro", "0.5", "--sv-ratio", "2", "--out", str(tmp_path / "o.safetensors")])
