"""``python -m analysis.inspect``: one adapter at a glance, on every format the readers know.

Oracles: PEFT's own ``get_delta_weight`` (LoRA, rsLoRA, DoRA, AdaLoRA, LoHa, LoKr, VeRA), loralib's merge,
sd-scripts' merge formula, LyCORIS's ``get_weight``, and for diffusers PEFT's layers that wrote the file; each
dense ΔW decomposed by ``numpy.linalg.svd`` in float64. ``‖W‖`` from the base model's own tensors; DoRA's
effective update from PEFT's merge; saved heads against :func:`analysis.io.peft.non_lora_tensors`; metadata
against what the test wrote.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest

import torch  # noqa: E402
peft = pytest.importorskip("peft")
from peft import (AdaLoraConfig, LoHaConfig, LoKrConfig, LoraConfig, VeraConfig,  # noqa: E402
                  get_peft_model)
from safetensors.torch import save_file  # noqa: E402

from analysis.cli.inspect import main  # noqa: E402
from analysis.cli.inspect_figures import spectrum_figure  # noqa: E402

from conftest import peft_deltas  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
RTOL = 1e-6  # float32 factors; PEFT's LoHa multiplies by a float32 scalar (relative rounding ~6e-8)
TARGETS = ["q_proj", "v_proj"]
BASE_NAME = "tiny-org/tiny-llama-cls"


# ---------------------------------------------------------------------------- oracles

def _measures(D):
    """‖ΔW‖_F, effective rank, stable rank and k50 / k90 / k99 of a dense ΔW, from numpy's SVD (float64)."""
    s = np.linalg.svd(np.asarray(D, dtype=np.float64).reshape(D.shape[0], -1), compute_uv=False)
    tot = float(np.sum(s * s))
    if tot == 0:
        return {"fro": 0.0, "effective_rank": 0.0, "stable_rank": 0.0, "rank_e50": 0, "rank_e90": 0, "rank_e99": 0}
    p = s[s > 0] / s.sum()
    cum = np.cumsum(s * s) / tot
    return {"fro": float(np.sqrt(tot)), "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
            "stable_rank": tot / float(s[0]) ** 2,
            **{f"rank_e{int(100 * e)}": int(np.argmax(cum >= e - 1e-12)) + 1 for e in (0.5, 0.9, 0.99)}}


def _check_modules(doc, want, *, scale_known=True):
    """Every module's numbers in ``doc`` (the --json) against the dense oracle ``want`` {name: ΔW}."""
    mods = {m["name"]: m for m in doc["modules"]}
    assert set(mods) == set(want)
    for name, D in want.items():
        ref, got = _measures(D), mods[name]
        for k in ("rank_e50", "rank_e90", "rank_e99"):
            assert got[k] == ref[k], (name, k)
        for k in ("effective_rank", "stable_rank"):
            assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-9), (name, k)
        if scale_known:
            assert got["fro"] == pytest.approx(ref["fro"], rel=RTOL, abs=1e-12), name
            assert got["zero"] == (ref["fro"] == 0), name
        else:
            assert got["fro"] is None, name


def _run(args, capsys):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _inspect(path, tmp_path, capsys, *extra):
    """``(the --json document, standard output)`` of one successful run."""
    target = tmp_path / f"out{len(list(tmp_path.glob('out*.json')))}.json"
    code, out, err = _run([path, "--json", target, *extra], capsys)
    assert code == 0, err
    return json.loads(target.read_text()), out


# ---------------------------------------------------------------------------- PEFT fixtures

def _llama(cls="LlamaForSequenceClassification", layers=2):
    import transformers

    torch.manual_seed(1234)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   num_labels=3, pad_token_id=0)
    return getattr(transformers, cls)(cfg)


def _randomise(model, seed, *, keep_zero=()):
    """Every trainable LoRA-family factor random (PEFT zeroes one at init); DoRA magnitudes and heads as made."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not p.requires_grad or "magnitude" in n or "modules_to_save" in n or any(z in n for z in keep_zero):
                continue
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


ZERO = "model.layers.1.self_attn.v_proj"
PEFT_CASES = {
    "lora": LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="SEQ_CLS"),
    "rslora": LoraConfig(r=4, lora_alpha=8, target_modules=[*TARGETS, "embed_tokens"], use_rslora=True,
                         rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 6}),
    "dora": LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=True),
    "adalora": AdaLoraConfig(init_r=6, target_r=4, total_step=10, lora_alpha=8, target_modules=TARGETS),
    "loha": LoHaConfig(r=3, alpha=5, target_modules=TARGETS, init_weights=False),
    "lokr": LoKrConfig(r=2, alpha=3, target_modules=TARGETS),
    "vera": VeraConfig(r=4, target_modules=TARGETS, save_projection=True),
}
METHOD = {"lora": "LoRA", "rslora": "LoRA (rsLoRA", "dora": "LoRA (DoRA", "adalora": "AdaLoRA", "loha": "LoHa",
          "lokr": "LoKr", "vera": "VeRA"}


@pytest.fixture(scope="module")
def peft_set(tmp_path_factory):
    """One folder per PEFT method on one tiny Llama, its base model folder, and the oracles."""
    root = tmp_path_factory.mktemp("peft")
    base = _llama()
    base.save_pretrained(root / "base")
    weights = {n.removesuffix(".weight"): p.detach().double().numpy() for n, p in base.named_parameters()}
    out = {"root": root, "base": root / "base", "W": weights, "deltas": {}, "models": {}}
    for i, (case, cfg) in enumerate(PEFT_CASES.items()):
        m = copy.deepcopy(base)
        m.name_or_path = BASE_NAME
        model = _randomise(get_peft_model(m, copy.deepcopy(cfg)), 10 + i,
                           keep_zero=("1.self_attn.v_proj.lora_B",) if case == "lora" else ())
        model.save_pretrained(root / case)
        out["deltas"][case] = peft_deltas(model)
        out["models"][case] = model
    return out


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_methods_against_peft(peft_set, tmp_path, capsys, case):
    doc, text = _inspect(peft_set["root"] / case, tmp_path, capsys)
    _check_modules(doc, peft_set["deltas"][case])
    a = doc["adapter"]
    assert a["reader"] == "peft" and a["format"] == "PEFT" and a["method"].startswith(METHOD[case])
    assert "adapter_config.json" in a["recognised"] and "adapter_model.safetensors" in a["recognised"]
    assert a["base_model"]["name"] == BASE_NAME and "base_model_name_or_path" in a["base_model"]["source"]
    cfg = json.loads((peft_set["root"] / case / "adapter_config.json").read_text())
    assert doc["config"] == cfg  # every field of the config, as written
    assert doc["config"]["peft_version"] == peft.__version__ and f"peft_version {peft.__version__}" in text
    files = {f["name"]: f["bytes"] for f in a["files"]}
    for n, b in files.items():
        assert (peft_set["root"] / case / n).stat().st_size == b
    assert a["bytes"] == sum(files.values()) and a["dtypes"] == {"float32": sum(a["dtypes"].values())}
    assert f"PEFT {METHOD[case]}" in text.splitlines()[1]
    from analysis.io.peft import non_lora_tensors

    saved = non_lora_tensors(peft_set["root"] / case)  # what PEFT saves beside the factors, by the reader's rule
    assert {s["key"]: tuple(s["shape"]) for s in doc["saved"]} == {
        k.removeprefix("base_model.model."): v.shape for k, v in saved.items()}


def test_peft_ranks_patterns_zero_and_heads(peft_set, tmp_path, capsys):
    doc, text = _inspect(peft_set["root"] / "lora", tmp_path, capsys)
    assert doc["zero_modules"] == [ZERO] and "1 of 4 modules have dW = 0" in text
    assert doc["adapter"]["task_type"] == "SEQ_CLS" and "task     SEQ_CLS" in text
    assert [s["key"] for s in doc["saved"]] == ["score.weight"]  # the SEQ_CLS head PEFT keeps trainable
    assert "score.weight 3x32 float32" in text.split("saved", 1)[1].splitlines()[0]
    assert doc["ranks"] == [{"r": 4, "alpha": 8.0, "scale": 2.0, "modules": 4}]
    doc, text = _inspect(peft_set["root"] / "rslora", tmp_path, capsys)
    combos = {(c["r"], c["alpha"]): (c["scale"], c["modules"]) for c in doc["ranks"]}
    assert combos == {(4, 6.0): (pytest.approx(6 / 2), 2), (2, 8.0): (pytest.approx(8 / 2 ** 0.5), 2),
                      (4, 8.0): (pytest.approx(8 / 2), 1)}  # rsLoRA: alpha / sqrt(r)
    assert "rank_pattern" in text and "alpha_pattern" in text
    # PEFT saves the base embedding beside an embedding LoRA (save_embedding_layers="auto")
    assert [s["key"] for s in doc["saved"]] == ["model.embed_tokens.base_layer.weight"]
    emb = next(m for m in doc["modules"] if m["name"] == "model.embed_tokens")  # a module outside the layers
    assert emb["layer"] is None and emb["kind"] == "embedding" and emb["role"] == "embedding"
    assert [m["layer"] for m in doc["modules"] if m is not emb] == [0, 0, 1, 1]


def test_base_ratios_and_dora_effective(peft_set, tmp_path, capsys):
    W = peft_set["W"]
    for case in ("lora", "dora"):
        doc, text = _inspect(peft_set["root"] / case, tmp_path, capsys, "--base", peft_set["base"])
        for m in doc["modules"]:
            w = float(np.linalg.norm(W[m["name"]]))
            assert m["w_norm"] == pytest.approx(w, rel=1e-12)
            assert m["rel_norm"] == pytest.approx(_measures(peft_set["deltas"][case][m["name"]])["fro"] / w, rel=RTOL)
        assert "|dW|/|W|" in text and doc["adapter"]["base_model"]["given"] == str(peft_set["base"])
    merged = copy.deepcopy(peft_set["models"]["dora"]).double().merge_and_unload()  # PEFT's own DoRA merge
    for m in doc["modules"]:
        eff = merged.get_submodule(m["name"]).weight.detach().numpy() - W[m["name"]]
        assert m["dora"] and m["dora_fro"] == pytest.approx(float(np.linalg.norm(eff)), rel=1e-6)


def test_one_screen_for_sixty_modules(tmp_path, capsys, monkeypatch):
    model = _randomise(get_peft_model(_llama("LlamaForCausalLM", layers=30), LoraConfig(r=8, lora_alpha=16,
                                                                                        target_modules=TARGETS)), 3)
    import shutil

    model.save_pretrained(tmp_path / "runs" / "r8_seed0")
    for other in ("r1_seed0", "r8_seed1"):
        shutil.copytree(tmp_path / "runs" / "r8_seed0", tmp_path / "runs" / other)
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(["runs/r8_seed0"], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) <= 40 and max(map(len, lines)) <= 110, out
    table = out.split("modules by stack and role", 1)[1].splitlines()
    rows = [ln for ln in table if ln.startswith("decoder")]
    assert len(rows) == 2 and all(" 0-29 " in r and " 30 " in r for r in rows)
    assert "largest |dW|_F" in out and "next:" in out
    assert "python -m analysis.subspace runs/r8_seed0 runs/r8_seed1\n" in out  # the sibling run, by its name


# ---------------------------------------------------------------------------- loralib

@pytest.fixture(scope="module")
def loralib_file(tmp_path_factory):
    lora = pytest.importorskip("loralib")
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = lora.Embedding(11, 8, r=4, lora_alpha=32)
            self.c_attn = lora.MergedLinear(8, 24, r=4, lora_alpha=32, enable_lora=[True, False, True],
                                            fan_in_fan_out=True)
            self.lm_head = lora.Linear(8, 5, r=4, lora_alpha=32)

    torch.manual_seed(0)
    model = Tiny()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("loralib") / "model.pt"
    torch.save({"model_state_dict": model.state_dict()}, path)
    mods = {n: m for n, m in model.named_modules() if isinstance(m, lora.LoRALayer)}
    before = {n: m.weight.detach().clone() for n, m in mods.items()}
    model.eval()  # loralib merges lora_B @ lora_A into the weight
    merged = {n: (m.weight.detach() - before[n]).double().numpy() for n, m in mods.items()}
    full = merged.pop("c_attn").T  # fan_in_fan_out: stored (in, out)
    merged["c_attn:q"], merged["c_attn:v"] = full[:8], full[16:]
    return path, merged


def test_loralib_needs_alpha_said_so(loralib_file, tmp_path, capsys):
    path, want = loralib_file
    doc, text = _inspect(path, tmp_path, capsys)
    assert "pass --alpha A" in text and "--alpha ALPHA" in text
    _check_modules(doc, want, scale_known=False)  # the ranks do not depend on the unknown scale
    assert doc["adapter"]["format"] == "loralib" and "loralib" in doc["adapter"]["recognised"]
    doc, text = _inspect(path, tmp_path, capsys, "--alpha", "32")
    _check_modules(doc, want)
    assert "pass --alpha" not in text and "--alpha 32" in text


# ---------------------------------------------------------------------------- kohya, LyCORIS, diffusers

KOHYA = {"lora_te_text_model_encoder_layers_0_self_attn_q_proj": ((4, 16), (16, 4), 2.0),
         "lora_te_text_model_encoder_layers_1_self_attn_q_proj": ((4, 16), (16, 4), 2.0),
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k": ((4, 24), (10, 4), 8.0),
         "lora_unet_down_blocks_0_resnets_0_conv1": ((3, 6, 3, 3), (10, 3, 1, 1), 6.0)}
KOHYA_META = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
              "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors", "ss_base_model_version": "sd_v1",
              "ss_learning_rate": "0.0001", "ss_num_epochs": "10", "ss_seed": "42",
              "ss_tag_frequency": json.dumps({"data": {f"tag{i}": i for i in range(200)}}),
              "ss_training_comment": "a comment, with commas"}


def test_kohya_metadata_and_numbers(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    sd, want = {}, {}
    for name, (down, up, alpha) in KOHYA.items():
        d, u = torch.randn(down, generator=g), torch.randn(up, generator=g)
        sd |= {f"{name}.lora_down.weight": d, f"{name}.lora_up.weight": u, f"{name}.alpha": torch.tensor(alpha)}
        # sd-scripts: W += up @ down · alpha / dim (a conv's kernel flattened to (out, in·kh·kw))
        want[name] = (u.double().reshape(up[0], -1) @ d.double().reshape(down[0], -1)).numpy() * alpha / down[0]
    save_file(sd, str(tmp_path / "style.safetensors"), metadata=KOHYA_META)
    doc, text = _inspect(tmp_path / "style.safetensors", tmp_path, capsys)
    _check_modules(doc, want)
    assert doc["metadata"] == KOHYA_META  # every field, as written
    a = doc["adapter"]
    assert a["format"] == "kohya sd-scripts" and a["method"].startswith("LoRA") and "lora_down" in a["recognised"]
    assert a["base_model"]["name"] == "v1-5-pruned-emaonly.safetensors" and a["components"] == ["te", "unet"]
    assert "ss_sd_model_name=v1-5-pruned-emaonly.safetensors" in text and "ss_seed=42" in text
    meta_lines = [ln for ln in text.splitlines() if ln.startswith("metadata") or ln.startswith(" " * 9 + "ss_")]
    assert 1 <= len(meta_lines) <= 4 and "more fields in --json" not in text  # 10 fields fit
    assert all(len(ln) <= 110 for ln in text.splitlines() if not ln.startswith("    python -m"))
    assert "--out style-e90.safetensors" in text
    from _layout import text_problems

    from analysis.io import load_adapter
    from analysis.io.inventory import adapter_files
    from analysis.sweeps.inspect import inspect_adapter

    ad = load_adapter(tmp_path / "style.safetensors")
    fig = spectrum_figure(inspect_adapter(ad, files=adapter_files(ad, tmp_path / "style.safetensors")))
    assert text_problems(fig) == []  # three groups in two stacks: a legend of roles and stacks
    assert {t.get_text() for t in fig.axes[1].get_legend().get_texts()} == {
        "attention q (text_encoder)", "attention k (unet down)", "other (unet down)"}
    doc, text = _inspect(tmp_path / "style.safetensors", tmp_path, capsys, "--layers", "1", "--modules", "q_proj")
    assert [m["name"] for m in doc["modules"]] == ["lora_te_text_model_encoder_layers_1_self_attn_q_proj"]


def test_lycoris_loha_against_lycoris(tmp_path, capsys):
    pytest.importorskip("lycoris")
    import logging

    from lycoris import create_lycoris
    from torch import nn

    logging.getLogger("lycoris").setLevel(logging.ERROR)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(16, 24)
            self.fc = nn.Linear(64, 64)
            self.conv = nn.Conv2d(8, 16, 3)

        def forward(self, x):
            return self.q(x)

    torch.manual_seed(0)
    net = create_lycoris(Tiny(), 1.0, linear_dim=2, linear_alpha=1.5, conv_dim=2, conv_alpha=1.5, algo="loha")
    net.apply_to()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    meta = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "loha", "conv_dim": "2"})}
    net.save_weights(str(tmp_path / "loha.safetensors"), None, meta)
    want = {}
    for m in net.loras:  # what LyCORIS's wrapped layer adds
        m.double()
        with torch.no_grad():
            want[m.lora_name] = m.get_weight(m.shape).double().numpy()
    doc, text = _inspect(tmp_path / "loha.safetensors", tmp_path, capsys)
    _check_modules(doc, want)
    assert doc["adapter"]["format"] == "LyCORIS" and doc["adapter"]["method"] == "LoHa"
    assert "hada_w1_a" in doc["adapter"]["recognised"] and "LyCORIS LoHa" in text
    assert doc["metadata"] == meta and 'ss_network_args={"algo": "loha"' in text


def test_diffusers_file(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2)
    cfg = LoraConfig(r=2, lora_alpha=6, target_modules=["to_q", "to_k", "to_out.0"], init_lora_weights=False)
    unet.add_adapter(copy.deepcopy(cfg))
    _randomise(unet, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diffusers.StableDiffusionPipeline.save_lora_weights(tmp_path / "d", unet_lora_layers=get_peft_model_state_dict(unet),
                                                            unet_lora_adapter_metadata=cfg.to_dict())
    doc, text = _inspect(tmp_path / "d" / "pytorch_lora_weights.safetensors", tmp_path, capsys)
    _check_modules(doc, peft_deltas(unet))
    a = doc["adapter"]
    assert a["format"] == "diffusers" and a["components"] == ["unet"] and "unet." in a["recognised"]
    assert json.loads(doc["metadata"]["lora_adapter_metadata"])["unet.r"] == 2


# ---------------------------------------------------------------------------- outputs and errors

@pytest.mark.slow
def test_json_byte_identical_and_figure(peft_set, tmp_path, capsys):
    from _layout import text_problems

    from analysis.io import load_adapter
    from analysis.io.inventory import adapter_files
    from analysis.sweeps.inspect import inspect_adapter

    path = peft_set["root"] / "loha"
    for i in (1, 2):
        code, _, err = _run([path, "--base", peft_set["base"], "--json", tmp_path / f"{i}.json", "--out",
                             tmp_path / f"fig{i}"], capsys)
        assert code == 0, err
    assert (tmp_path / "1.json").read_bytes() == (tmp_path / "2.json").read_bytes()
    png = (tmp_path / "fig1" / "spectrum.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    ad = load_adapter(path)
    fig = spectrum_figure(inspect_adapter(ad, files=adapter_files(ad, path)))
    assert text_problems(fig) == []


def test_bad_input_one_line(peft_set, tmp_path, capsys):
    cases = [tmp_path / "missing", tmp_path / "bad.safetensors"]
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for p in cases:
        code, out, err = _run([p], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and str(p) in err, err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    code, out, err = _run([peft_set["root"] / "lora", "--out", tmp_path / "taken"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--force" in err
    code, out, err = _run([peft_set["root"] / "lora", "--base", peft_set["root"] / "lokr"], capsys)
    assert code == 2 and err.count("\n") == 1 and "lokr" in err, err
    other = _llama("LlamaForCausalLM", layers=1)  # a base without layer 1: the module is named
    other.save_pretrained(tmp_path / "small")
    capsys.readouterr()  # (transformers' progress bar)
    code, out, err = _run([peft_set["root"] / "lora", "--base", tmp_path / "small"], capsys)
    assert code == 2 and err.count("\n") == 1 and "model.layers.1.self_attn" in err, err
    code, out, err = _run([peft_set["root"] / "lora", "--layers", "7"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--layers 7" in err, err
