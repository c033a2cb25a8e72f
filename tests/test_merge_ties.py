"""PEFT's pruning merges (TIES, DARE, magnitude prune; factor-wise and *_svd) against ``add_weighted_adapter``
itself, with the same seed; vanishing merges; kohya files merged into a kohya file that sd-scripts' formula and
lycoris-lora read.

Tolerances (relative to the largest entry of PEFT's merged ΔW): factor-wise methods 1e-6 (the element-wise
stage is PEFT's float32 arithmetic op for op; the difference is B′A′ formed in float64 here, float32 there);
``*_svd`` methods 1e-4 (PEFT takes a float32 SVD of the pruned matrix, here a float64 one).
"""

import json
import math

import numpy as np
import pytest

import torch  # noqa: E402
pytest.importorskip("peft")

from analysis.core import Adapter, LowRank  # noqa: E402
from analysis.errors import AdapterError  # noqa: E402
from analysis.io import load_adapter  # noqa: E402
from analysis.sweeps.merge import merge_adapters  # noqa: E402
from analysis.sweeps.merge_methods import DENSE_METHODS, forward_order  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
WEIGHTS = (0.7, -0.4, 1.3)
PRUNING = ("ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd", "magnitude_prune",
           "magnitude_prune_svd")


def _tol(method):
    return 1e-4 if method in DENSE_METHODS else 1e-6


def _llama(targets=("q_proj", "v_proj")):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1234)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=24, n_layer=2, n_head=2))


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(1234)
    return OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                    num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=16))


def _save(base, out, *, r, seed, alpha, targets, fan_in_fan_out=False):
    """A PEFT adapter with trained-looking factors (A from PEFT's init, B random)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                                            fan_in_fan_out=fan_in_fan_out))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(str(out))


@pytest.fixture(scope="module")
def llama_trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("ties")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the model's order
    for name, seed, alpha in (("a", 0, 8), ("b", 1, 16), ("c", 2, 4)):
        _save(_llama(), root / name, r=4, seed=seed, alpha=alpha, targets=targets)
    return root


FAMILIES = {"gpt2": (_gpt2, ("c_attn", "c_proj", "c_fc"), True),  # Conv1D: fan_in_fan_out
            "opt": (_opt, ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"), False)}  # k, v, q defined first


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_pair(request, tmp_path_factory):
    make, targets, fan = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(f"ties_{request.param}")
    for name, seed in (("a", 0), ("b", 1)):
        _save(make(), root / name, r=3, seed=seed, alpha=6, targets=targets, fan_in_fan_out=fan)
    return make, fan, root


def _deltas(model, adapter):
    return {n.replace("base_model.model.", ""): m.get_delta_weight(adapter).detach().double().numpy()
            for n, m in model.named_modules()
            if hasattr(m, "get_delta_weight") and adapter in getattr(m, "lora_A", {})}


def _peft(base, root, names, weights, method, seed, **kw):
    """PEFT's own merge (the oracle) after torch.manual_seed(seed); ΔW in the layer's stored orientation."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(root / names[0]), adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(str(root / n), adapter_name=n)
    torch.manual_seed(seed)
    model.add_weighted_adapter(list(names), list(weights), "merged", combination_type=method, **kw)
    return _deltas(model, "merged"), [n for n, _ in model.base_model.model.named_modules()]


def _max_rel(res, theirs, *, transpose=False):
    worst = 0.0
    for m, D in theirs.items():
        ours = res.modules[m].delta()
        ours = ours.T if transpose else ours
        worst = max(worst, float(np.abs(ours - D).max() / np.abs(D).max()))
    return worst


def _written_in_peft(path):
    """Our written adapter loaded by PEFT itself: {module: ΔW}."""
    from peft import PeftModel

    return _deltas(PeftModel.from_pretrained(_llama(), str(path), adapter_name="ours"), "ours")


@pytest.mark.parametrize("method", PRUNING)
def test_pruning_merges_equal_peft_with_the_same_seed(llama_trio, tmp_path, method):
    names = ("a", "b", "c")
    theirs, _ = _peft(_llama(), llama_trio, names, WEIGHTS, method, 11, density=0.4)
    ads = [load_adapter(llama_trio / n) for n in names]
    res = merge_adapters(ads, weights=WEIGHTS, method=method, density=0.4, seed=11)
    assert set(res.modules) == set(theirs) and len(theirs) == 14
    assert _max_rel(res, theirs) < _tol(method)
    res.write(tmp_path / "ours")  # and what was written, loaded by PEFT
    written = _written_in_peft(tmp_path / "ours")
    assert set(written) == set(theirs)
    assert max(float(np.abs(written[m] - D).max() / np.abs(D).max()) for m, D in theirs.items()) < _tol(method)
    # the result does not depend on the number of jobs (DARE draws in PEFT's order, in the caller's thread)
    par = merge_adapters(ads, weights=WEIGHTS, method=method, density=0.4, seed=11, jobs=3)
    for m, lr in res.modules.items():
        np.testing.assert_array_equal(par.modules[m].lora_A, lr.lora_A)
        np.testing.assert_array_equal(par.modules[m].lora_B, lr.lora_B)
    if method.startswith("dare"):  # another seed is another merge: the seed is what made them equal
        other = merge_adapters(ads, weights=WEIGHTS, method=method, density=0.4, seed=12)
        assert _max_rel(other, theirs) > 1e-2


@pytest.mark.parametrize("method", ["ties", "dare_ties_svd"])
def test_frequency_sign_election_and_density_one(llama_trio, method):
    names = ("a", "b", "c")
    theirs, _ = _peft(_llama(), llama_trio, names, WEIGHTS, method, 3, density=0.7, majority_sign_method="frequency")
    res = merge_adapters([load_adapter(llama_trio / n) for n in names], weights=WEIGHTS, method=method, density=0.7,
                         majority_sign_method="frequency", seed=3)
    assert _max_rel(res, theirs) < _tol(method)
    theirs, _ = _peft(_llama(), llama_trio, names, WEIGHTS, method, 3, density=1.0)  # nothing pruned, nothing drawn
    res = merge_adapters([load_adapter(llama_trio / n) for n in names], weights=WEIGHTS, method=method, density=1.0)
    assert _max_rel(res, theirs) < _tol(method)


def test_dare_draws_follow_the_model_order(family_pair):
    """GPT-2's Conv1D layers (fan_in_fan_out: masks drawn on ΔW as the layer stores it; blocks c_attn, c_proj,
    c_fc) and OPT's attention (k_proj, v_proj, q_proj, out_proj, then fc1, fc2): the draws in the model's order;
    an explicit module_order gives the same."""
    make, fan, root = family_pair
    for method in ("dare_linear_svd", "dare_ties"):
        theirs, order = _peft(make(), root, ("a", "b"), (1.0, 0.6), method, 5, density=0.5)
        ads = [load_adapter(root / n) for n in ("a", "b")]
        res = merge_adapters(ads, weights=(1.0, 0.6), method=method, density=0.5, seed=5)
        assert _max_rel(res, theirs, transpose=fan) < _tol(method)
        given = merge_adapters(ads, weights=(1.0, 0.6), method=method, density=0.5, seed=5, module_order=order)
        assert _max_rel(given, theirs, transpose=fan) < _tol(method)
    names = list(load_adapter(root / "a"))
    assert forward_order(names) == [n for n in order if n in names]


def test_report_numbers_against_dense_float64(llama_trio):
    names = ("a", "b", "c")
    ads = [load_adapter(llama_trio / n) for n in names]
    res = merge_adapters(ads, weights=WEIGHTS, method="ties_svd", density=0.5, rank=3)
    fr = res.frame.set_index("name")
    proj = res.projections.set_index(["name", "adapter"])
    for m, lr in res.modules.items():
        Ds = [a[m].delta() for a in ads]
        exact = sum(w * D for w, D in zip(WEIGHTS, Ds))
        M = lr.delta()
        assert fr.loc[m, "norm2_merged"] == pytest.approx(np.sum(M * M), rel=1e-9)
        assert fr.loc[m, "rel_error"] == pytest.approx(np.linalg.norm(M - exact) / np.linalg.norm(exact), rel=1e-6)
        assert np.linalg.matrix_rank(M, tol=1e-9 * np.abs(M).max()) == 3
        for lab, D in zip(res.labels, Ds):
            assert proj.loc[(m, lab), "inner_merged"] == pytest.approx(np.sum(M * D), rel=1e-7, abs=1e-12)
            assert proj.loc[(m, lab), "inner_sum"] == pytest.approx(np.sum(exact * D), rel=1e-7, abs=1e-12)


def test_bad_settings(llama_trio, tmp_path):
    from conftest import make_peft_adapter

    a, b = load_adapter(llama_trio / "a"), load_adapter(llama_trio / "b")
    with pytest.raises(ValueError, match="needs a density"):
        merge_adapters([a, b], method="ties")
    with pytest.raises(ValueError, match="density"):
        merge_adapters([a, b], method="dare_linear", density=0)
    with pytest.raises(ValueError, match="density applies"):
        merge_adapters([a, b], method="svd", density=0.5)
    with pytest.raises(ValueError, match="majority_sign_method"):
        merge_adapters([a, b], method="ties", density=0.5, majority_sign_method="mean")
    make_peft_adapter(tmp_path / "r2", r=2, seed=3, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                              "up_proj", "down_proj"))
    with pytest.raises(AdapterError, match="ties needs one rank.*ties_svd"):
        merge_adapters([a, load_adapter(tmp_path / "r2")], method="ties", density=0.5)
    merge_adapters([a, load_adapter(tmp_path / "r2")], method="ties_svd", density=0.5)  # dense: any ranks


def _same(seed=0):
    rng = np.random.default_rng(seed)
    mods = {f"model.layers.{i}.self_attn.q_proj": LowRank(rng.standard_normal((2, 12)), rng.standard_normal((10, 2)),
                                                          0.5, name=f"model.layers.{i}.self_attn.q_proj")
            for i in range(2)}
    return Adapter(mods, path=f"same{seed}", format="peft")


@pytest.mark.parametrize("method", ["svd", "cat", "dare_linear"])
def test_exact_cancellation_reports_zero_and_writes_nothing(tmp_path, method):
    a = _same()
    kw = {"density": 0.5} if method == "dare_linear" else {}
    res = merge_adapters([a, a], weights=[-1, 1], method=method, **kw)
    if method != "dare_linear":  # DARE's two draws differ: its merge does not vanish
        assert res.cancelled == tuple(a) and not res.modules
        assert res.summary()["energy_kept_pooled"] == 0.0 and res.summary()["norm2_sum_pooled"] == 0.0
        assert (res.frame["energy_kept"] == 0).all() and res.frame["cancelled"].all()
        with pytest.raises(AdapterError, match="vanishes in every module"):
            res.write(tmp_path / "m")
        assert not (tmp_path / "m").exists()
    # one module cancels, the other does not: that one is left out, said in a note
    b = Adapter({**dict(a.items()), "model.layers.1.self_attn.q_proj": _same(1)["model.layers.1.self_attn.q_proj"]},
                path="mixed", format="peft")
    res = merge_adapters([a, b], weights=[-1, 1], method="svd")
    assert res.cancelled == ("model.layers.0.self_attn.q_proj",) and list(res.modules) == [
        "model.layers.1.self_attn.q_proj"]
    assert any("vanish" in n for n in res.notes)


def test_cli_cancelling_merge_exit_2_one_line(tmp_path, capsys, llama_trio):
    from analysis.cli.merge import main

    a = str(llama_trio / "a")
    assert main([a, a, "--weights", "-1", "1", "--method", "svd", "--out", str(tmp_path / "m")]) == 2
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and "vanishes in every module" in cap.err and "nothing was written" in cap.err
    assert "energy kept 0.0000" in cap.out and "vanish" in cap.out
    assert not (tmp_path / "m").exists()
    js = tmp_path / "t.json"
    assert main([a, str(llama_trio / "b"), "--method", "dare_ties", "--density", "0.5", "--seed", "4", "--out",
                 str(tmp_path / "d"), "--json", str(js), "--quiet", "--jobs", "2"]) == 0
    rec = json.loads(js.read_text())
    assert rec["settings"]["seed"] == 4 and rec["settings"]["density"] == 0.5
    assert {"scale", "pairs", "adapters", "lines"} <= set(rec["advice"])
    assert "advice:" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ kohya files
def _kohya_files(tmp_path, algos=("locon", "locon")):
    """kohya files of one tiny UNet written by lycoris-lora (LoCon or LoHa)."""
    pytest.importorskip("lycoris")
    pytest.importorskip("diffusers")
    from lycoris import create_lycoris
    from safetensors.torch import load_file, save_file
    from test_formats_kohya_base import tiny_unet

    out = []
    for seed, algo in zip((1, 2), algos):
        net = create_lycoris(tiny_unet(), 1.0, linear_dim=2, linear_alpha=1.0, conv_dim=2, conv_alpha=1.0, algo=algo)
        net.apply_to()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, p in net.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        net.save_weights(str(tmp_path / "raw.safetensors"), None, {})
        sd = load_file(str(tmp_path / "raw.safetensors"))
        path = tmp_path / f"k{seed}_{algo}.safetensors"
        save_file({"lora_unet_" + k.removeprefix("lycoris_"): v for k, v in sd.items()}, str(path),
                  metadata={"ss_network_module": "networks.lora", "ss_network_dim": "2", "ss_network_alpha": "1.0",
                            "ss_training_comment": "trained"})
        out.append(path)
    return out


def test_kohya_merge_writes_kohya_that_sd_scripts_and_lycoris_read(tmp_path):
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import load_file
    from test_formats_kohya_base import _lycoris_applied, _sd_scripts_merge

    paths = _kohya_files(tmp_path)
    ads = [load_adapter(p) for p in paths]
    res = merge_adapters(ads, weights=[1.0, -0.5], method="svd", rank=3)
    assert res.format == "kohya"
    out = tmp_path / "merged.safetensors"
    cfg = res.write(out)
    sd = load_file(str(out))
    applied = _lycoris_applied(out, tmp_path)
    assert set(applied) == set(ads[0]) and cfg["modules"] == len(ads[0])
    for name in ads[0]:
        exact = ads[0][name].delta() - 0.5 * ads[1][name].delta()  # dense float64 Σ wᵢ ΔWᵢ
        U, S, Vt = np.linalg.svd(exact, full_matrices=False)
        k = min(3, S.size)
        want = (U[:, :k] * S[:k]) @ Vt[:k]  # Eckart–Young
        scale = np.abs(want).max()
        assert np.abs(_sd_scripts_merge(sd, name) - want).max() < 1e-5 * scale, name
        assert np.abs(applied[name] - want).max() < 1e-5 * scale, name
    with safe_open(str(out), framework="np") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] in ("3", "Dynamic") and meta["ss_network_alpha"] in ("3.0", "Dynamic")
    ranks = {sd[f"{n}.lora_down.weight"].shape[0] for n in ads[0]}
    assert meta["ss_network_dim"] == (str(ranks.pop()) if len(ranks) == 1 else "Dynamic")
    assert meta["ss_training_comment"].startswith("merged (svd)") and meta["ss_training_comment"].endswith("trained")
    data = out.read_bytes()  # sd-webui-additional-networks' hash: SHA-256 of everything after the header
    n = int.from_bytes(data[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + n:]).hexdigest()
    # mixing kohya names with base names is refused before any work
    with pytest.raises(AdapterError, match="kohya"):
        merge_adapters([ads[0], _same()], method="cat")


def test_locon_and_loha_merged_into_one_kohya_file_with_the_base(tmp_path):
    """A LyCORIS LoHa (conv factors stored flattened: the base gives the kernel) merged with a LoCon."""
    from analysis.cli.merge import main
    from safetensors.torch import load_file
    from test_formats_kohya_base import _lycoris_applied, _sd_scripts_merge, tiny_unet

    paths = _kohya_files(tmp_path, ("locon", "loha"))
    tiny_unet().save_pretrained(tmp_path / "unet")
    base = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    ads = [load_adapter(p) for p in paths]
    out = tmp_path / "both.safetensors"
    with pytest.raises(AdapterError, match="--base"):
        merge_adapters(ads, method="svd", rank=4).write(out)
    assert main([*map(str, paths), "--method", "svd", "--rank", "4", "--base", str(base), "--out", str(out),
                 "--quiet"]) == 0
    sd = load_file(str(out))
    applied = _lycoris_applied(out, tmp_path)
    for name in ads[0]:
        U, S, Vt = np.linalg.svd(ads[0][name].delta() + ads[1][name].delta(), full_matrices=False)
        want = (U[:, :4] * S[:4]) @ Vt[:4]
        assert np.abs(_sd_scripts_merge(sd, name) - want).max() < 1e-5 * np.abs(want).max(), name
        assert np.abs(applied[name] - want).max() < 1e-5 * np.abs(want).max(), name


@pytest.mark.slow
def test_shipped_task_adapters_against_peft():
    """The four shipped task adapters (SmolLM2-shaped) on a random Llama of SmolLM2's configuration."""
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    names = ["r8_seed0", "word_r8_seed0", "hypernym_r8_seed0", "synonyms_r8_seed0"]
    weights = (1.0, 0.5, -0.3, 0.8)
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                        max_position_embeddings=2048, tie_word_embeddings=True))
    model = PeftModel.from_pretrained(base, f"checkpoints/{names[0]}", adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(f"checkpoints/{n}", adapter_name=n)
    ads = [load_adapter(f"checkpoints/{n}") for n in names]
    for method in PRUNING:
        torch.manual_seed(7)
        model.add_weighted_adapter(names, list(weights), method, combination_type=method, density=0.4)
        theirs = _deltas(model, method)
        model.delete_adapter(method)
        res = merge_adapters(ads, weights=weights, method=method, density=0.4, seed=7, jobs=2)
        assert len(theirs) == 60 and _max_rel(res, theirs) < _tol(method), method
        assert math.isfinite(res.summary()["ratio_pooled"])
