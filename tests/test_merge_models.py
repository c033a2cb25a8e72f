"""Merges of real PEFT adapters of several architectures and task types: refusals, saved modules, PEFT loads.

Oracles: PEFT itself (each source adapter and the merged one loaded with ``PeftModel.from_pretrained``; their
``get_delta_weight`` and ``modules_to_save`` parameters), dense float64 numpy for Σ wᵢ ΔWᵢ and its rank-K SVD
truncation, and PEFT's documented ``linear`` combination of the factors.
"""

import json
import shutil
import warnings

import numpy as np
import pytest

import torch  # noqa: E402
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from analysis import load_adapter  # noqa: E402
from analysis.errors import AdapterError  # noqa: E402
from analysis.sweeps.merge import MergeWarning, merge_adapters  # noqa: E402

WEIGHTS = (0.7, 0.3)


# ---------------------------------------------------------------------------------------------------------------
# tiny models and adapters
# ---------------------------------------------------------------------------------------------------------------

def _bert_cfg(hidden=16):
    return transformers.BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=3)


MODELS = {  # name -> (class, config factory)
    "bert_seq": ("BertForSequenceClassification", _bert_cfg),
    "bert_tok": ("BertForTokenClassification", _bert_cfg),
    "bert_wide": ("BertForSequenceClassification", lambda: _bert_cfg(hidden=32)),
    "roberta_seq": ("RobertaForSequenceClassification", lambda: transformers.RobertaConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40, num_labels=3, pad_token_id=1)),
    "distil_seq": ("DistilBertForSequenceClassification", lambda: transformers.DistilBertConfig(
        vocab_size=40, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=32, num_labels=3)),
    "gpt2": ("GPT2LMHeadModel", lambda: transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2,
                                                                 n_positions=32)),
}


def _model(kind):
    cls, cfg = MODELS[kind]
    torch.manual_seed(1234)  # one base model per kind, as for checkpoints of one run
    return getattr(transformers, cls)(cfg()).eval()


def _make(out, kind, task, *, seed, targets=("query", "value"), r=4, alpha=8, head_seed=None, **lora_kw):
    """Save a PEFT LoRA of ``kind`` whose trainable tensors (factors, heads, biases, tokens) are seeded random.

    ``head_seed`` seeds the tensors that are not LoRA factors separately (equal seeds: identical heads).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(_model(kind), peft.LoraConfig(
            task_type=task, r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, **lora_kw))
    g = torch.Generator().manual_seed(seed)
    gh = torch.Generator().manual_seed(seed if head_seed is None else head_seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                gen = g if ("lora_A" in n or "lora_B" in n) else gh
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(out))
    return out


def _load(kind, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(_model(kind), str(path)).eval()


def _deltas(model):
    """{module: ΔW (d_out, d_in) float64} from PEFT's get_delta_weight (Conv1D transposed to nn.Linear's)."""
    out = {}
    for n, mod in model.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            d = mod.get_delta_weight("default").detach().double().numpy()
            out[n.removeprefix("base_model.model.")] = d.T if mod.fan_in_fan_out else d
    return out


def _saved(model):
    """{saved key: tensor} of PEFT's loaded modules_to_save / trainable tokens, keyed as PEFT saves them."""
    out = {}
    for n, p in model.named_parameters():
        if ".modules_to_save.default." in n:
            out[n.replace(".modules_to_save.default.", ".")] = p.detach().double().numpy()
        elif n.endswith("trainable_tokens_delta.default"):
            out[n.removesuffix(".default")] = p.detach().double().numpy()
    return out


def _factors(model):
    """{module: (A (r, d_in), B (d_out, r), scaling)} as PEFT holds them (nn.Linear orientation)."""
    out = {}
    for n, mod in model.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            A = mod.lora_A["default"].weight.detach().double().numpy()
            B = mod.lora_B["default"].weight.detach().double().numpy()
            out[n.removeprefix("base_model.model.")] = (A, B, float(mod.scaling["default"]))
    return out


# ---------------------------------------------------------------------------------------------------------------
# method × task type: PEFT loads every merged adapter, with the deltas and heads the merge says it wrote
# ---------------------------------------------------------------------------------------------------------------

TASKS = {  # task -> (model kind, targets, heads option)
    "CAUSAL_LM": ("gpt2", ("c_attn",), None),  # GPT-2 Conv1D: fan_in_fan_out; no saved modules
    "SEQ_CLS": ("roberta_seq", ("query", "value"), "mean"),  # two checkpoints of one RoBERTa classifier run
    "TOKEN_CLS": ("bert_tok", ("query", "value"), "first"),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_models")
    out = {}
    for task, (kind, targets, _) in TASKS.items():
        out[task] = [_make(root / f"{task}_{i}", kind, task, seed=10 * i + 1, targets=targets, alpha=alpha)
                     for i, alpha in enumerate((8, 4))]
    return out


def _oracle(method, srcs, rank=None):
    """What the merge must write, from PEFT's view of the sources: {module: ΔW} in float64."""
    fac = [_factors(m) for m in srcs]
    out = {}
    for n in fac[0]:
        exact = sum(w * s * (B @ A) for w, (A, B, s) in zip(WEIGHTS, (f[n] for f in fac)))  # Σ wᵢ sᵢ Bᵢ Aᵢ
        if method == "cat":
            out[n] = exact
        elif method == "svd":
            U, S, Vt = np.linalg.svd(exact)
            k = rank or max(f[n][0].shape[0] for f in fac)
            out[n] = (U[:, :k] * S[:k]) @ Vt[:k]
        else:  # PEFT's linear: A = Σ sign(w s) √|w s| Aᵢ, B = Σ √|w s| Bᵢ
            A = sum(np.sign(w * s) * np.sqrt(abs(w * s)) * A for w, (A, B, s) in zip(WEIGHTS, (f[n] for f in fac)))
            B = sum(np.sqrt(abs(w * s)) * B for w, (A, B, s) in zip(WEIGHTS, (f[n] for f in fac)))
            out[n] = B @ A
    return out


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("method", ["linear", "cat", "svd"])
def test_merged_adapter_loads_in_peft(sources, tmp_path, method, task):
    kind, _, heads = TASKS[task]
    paths = sources[task]
    res = merge_adapters([load_adapter(p) for p in paths], weights=WEIGHTS, method=method, heads=heads)
    res.write(tmp_path / "out")
    cfg_src = json.loads((paths[0] / "adapter_config.json").read_text())
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["task_type"] == cfg_src["task_type"] == task
    assert cfg["modules_to_save"] == cfg_src["modules_to_save"]

    loaded = _load(kind, tmp_path / "out")  # no KeyError on the head
    srcs = [_load(kind, p) for p in paths]
    got = _deltas(loaded)
    assert set(got) == set(res.modules) == set(_deltas(srcs[0])) and got
    oracle = _oracle(method, srcs)
    for n, lr in res.modules.items():
        scale = np.abs(oracle[n]).max()
        np.testing.assert_allclose(got[n], lr.delta(), atol=1e-6 * scale, rtol=0)  # what the merge says it wrote
        np.testing.assert_allclose(got[n], oracle[n], atol=2e-6 * scale, rtol=0)  # what it should have written

    heads_got, heads_src = _saved(loaded), [_saved(m) for m in srcs]
    assert set(heads_got) == set(res.saved.tensors) == set(heads_src[0])
    assert bool(heads_got) == (task != "CAUSAL_LM")
    for k, v in heads_got.items():
        if heads == "mean":  # Σ wᵢ Tᵢ / Σ wᵢ
            want = sum(w * h[k] for w, h in zip(WEIGHTS, heads_src)) / sum(WEIGHTS)
            assert not np.allclose(heads_src[0][k], heads_src[1][k])  # the test would not see a wrong pick
        else:
            want = heads_src[0][k]
        np.testing.assert_allclose(v, want, atol=1e-6, rtol=0)
        np.testing.assert_allclose(v, res.saved.tensors[k], atol=0, rtol=0)
    ids = torch.tensor([[1, 5, 9, 3, 2]])
    with torch.no_grad():
        assert torch.isfinite(loaded(input_ids=ids).logits).all()


def test_identical_heads_carried_and_differing_refused(tmp_path):
    a = _make(tmp_path / "a", "bert_seq", "SEQ_CLS", seed=1, head_seed=7)
    b = _make(tmp_path / "b", "bert_seq", "SEQ_CLS", seed=2, head_seed=7)  # same head: a frozen-head run
    c = _make(tmp_path / "c", "bert_seq", "SEQ_CLS", seed=3, head_seed=8)
    res = merge_adapters([load_adapter(a), load_adapter(b)], method="cat")
    assert res.saved.how == "identical"
    res.write(tmp_path / "ab")
    loaded, src = _saved(_load("bert_seq", tmp_path / "ab")), _saved(_load("bert_seq", a))
    assert set(loaded) == {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} == set(src)
    for k in src:
        np.testing.assert_array_equal(loaded[k], src[k])
    for method in ("linear", "cat", "svd"):
        with pytest.raises(AdapterError) as e:
            merge_adapters([load_adapter(a), load_adapter(c)], method=method)
        msg = str(e.value)
        assert "--heads first|mean" in msg and "base_model.model.classifier" in msg and str(a) in msg
        assert str(c) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="weights >= 0"):
        merge_adapters([load_adapter(a), load_adapter(c)], method="cat", weights=[1.0, -0.5], heads="mean")
    with pytest.raises(ValueError, match="heads must be"):
        merge_adapters([load_adapter(a), load_adapter(c)], method="cat", heads="last")


def test_other_saved_tensors_bias_and_trainable_tokens(tmp_path):
    # bias="all": every bias of the model is saved; trainable tokens: rows of the embedding
    a = _make(tmp_path / "a", "bert_seq", "SEQ_CLS", seed=1, bias="all", trainable_token_indices=[3, 5])
    b = _make(tmp_path / "b", "bert_seq", "SEQ_CLS", seed=2, bias="all", trainable_token_indices=[3, 5])
    with pytest.raises(AdapterError, match="--heads first"):
        merge_adapters([load_adapter(a), load_adapter(b)], method="svd", rank=2)
    res = merge_adapters([load_adapter(a), load_adapter(b)], weights=WEIGHTS, method="svd", rank=2, heads="mean")
    keys = set(res.saved.tensors)
    assert any(k.endswith("token_adapter.trainable_tokens_delta") for k in keys)
    assert "base_model.model.bert.encoder.layer.1.output.dense.bias" in keys
    res.write(tmp_path / "ab")
    cfg = json.loads((tmp_path / "ab" / "adapter_config.json").read_text())
    assert cfg["bias"] == "all" and cfg["trainable_token_indices"] == [3, 5]
    loaded = _load("bert_seq", tmp_path / "ab")
    srcs = [_load("bert_seq", p) for p in (a, b)]
    state = {k: v.detach().double().numpy() for k, v in loaded.state_dict().items()}
    src_states = [{k: v.detach().double().numpy() for k, v in m.state_dict().items()} for m in srcs]
    # a plain (not wrapped) bias, the trainable-token rows and the head: weighted means of the sources'
    for k in ("base_model.model.bert.encoder.layer.1.output.dense.bias",
              "base_model.model.bert.embeddings.word_embeddings.token_adapter.trainable_tokens_delta.default",
              "base_model.model.classifier.modules_to_save.default.weight"):
        want = sum(w * s[k] for w, s in zip(WEIGHTS, src_states)) / sum(WEIGHTS)
        assert not np.allclose(src_states[0][k], src_states[1][k])
        np.testing.assert_allclose(state[k], want, atol=1e-6, rtol=0)
    # different token rows cannot be combined; bias="none" against bias="all": tensors missing from one
    c = _make(tmp_path / "c", "bert_seq", "SEQ_CLS", seed=3, bias="all", trainable_token_indices=[4, 6])
    with pytest.raises(AdapterError, match="trainable_token_indices"):
        merge_adapters([load_adapter(a), load_adapter(c)], method="cat", heads="mean")
    d = _make(tmp_path / "d", "bert_seq", "SEQ_CLS", seed=4)
    with pytest.raises(AdapterError, match="got none"):
        merge_adapters([load_adapter(d), load_adapter(a)], method="cat", heads="mean")
    # heads="first": exactly the first adapter's saved tensors and config fields
    res = merge_adapters([load_adapter(d), load_adapter(a)], method="cat", heads="first")
    res.write(tmp_path / "da")
    cfg = json.loads((tmp_path / "da" / "adapter_config.json").read_text())
    assert cfg["bias"] == "none" and cfg["trainable_token_indices"] is None
    got, want = _saved(_load("bert_seq", tmp_path / "da")), _saved(_load("bert_seq", d))
    assert set(got) == set(want) == set(res.saved.tensors)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


# ---------------------------------------------------------------------------------------------------------------
# refusals of adapters of different models, warnings, partial modules
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return {
        "distil": _make(root / "distil", "distil_seq", "SEQ_CLS", seed=1, targets=("q_lin", "v_lin")),
        "roberta": _make(root / "roberta", "roberta_seq", "SEQ_CLS", seed=2),
        "bert": _make(root / "bert", "bert_seq", "SEQ_CLS", seed=3, head_seed=9),
        "bert_q": _make(root / "bert_q", "bert_seq", "SEQ_CLS", seed=4, head_seed=9, targets=("query",)),
        "wide": _make(root / "wide", "bert_wide", "SEQ_CLS", seed=5),
    }


def test_cli_refuses_different_models(zoo, tmp_path, capsys):
    from analysis.cli.merge import main

    out = tmp_path / "m"
    for method in ("linear", "cat", "svd"):
        assert main([str(zoo["distil"]), str(zoo["roberta"]), "--method", method, "--out", str(out)]) == 2
        cap = capsys.readouterr()
        assert cap.err.count("\n") == 1 and "Traceback" not in cap.err and cap.out == ""
        assert str(zoo["distil"]) in cap.err and str(zoo["roberta"]) in cap.err and "no module in common" in cap.err
    # same module names, other shapes: the first mismatching module and both shapes
    assert main([str(zoo["bert"]), str(zoo["wide"]), "--method", "cat", "--heads", "first", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(zoo["bert"]) in err and str(zoo["wide"]) in err
    assert "key 'bert.encoder.layer.0.attention.self.query'" in err and "(16, 16)" in err and "(32, 32)" in err
    assert not out.exists()
    # the API raises the same, before reading any saved tensor
    with pytest.raises(AdapterError, match="different models"):
        merge_adapters([load_adapter(zoo["roberta"]), load_adapter(zoo["distil"])], method="cat", heads="first")


def test_cli_other_base_name_warns_once_and_partial_modules_noted(zoo, tmp_path, capsys):
    from analysis.cli.merge import main

    other = tmp_path / "renamed"
    shutil.copytree(zoo["bert"], other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/models/bert-tiny-copy"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    a_cfg = json.loads((zoo["bert_q"] / "adapter_config.json").read_text())
    assert a_cfg["base_model_name_or_path"] is None  # unset against a name: no warning for this pair
    # bert_q (query only) first: different base names -> one warning; value modules only in `other`
    named = tmp_path / "named"
    shutil.copytree(zoo["bert_q"], named)
    cfg_q = dict(a_cfg, base_model_name_or_path="/models/bert-tiny")
    (named / "adapter_config.json").write_text(json.dumps(cfg_q))
    out = tmp_path / "m"
    assert main([str(named), str(other), "--method", "cat", "--out", str(out), "--json", str(tmp_path / "r.json")]) == 0
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and cap.err.startswith("warning: ") and "/models/bert-tiny-copy" in cap.err
    assert "2 of 4 modules are in only some adapters" in cap.out  # the two value modules of 4
    assert "zero update" in cap.out and "saved tensors (e.g." in cap.out and "identical" in cap.out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["settings"]["heads"] is None and len(rep["warnings"]) == 1 and rep["saved_modules"]["how"] == "identical"
    # the module only in `other` is its own update; the shared ones the sum (PEFT's view of both sources)
    got = _deltas(_load("bert_seq", out))
    d_q, d_o = _deltas(_load("bert_seq", named)), _deltas(_load("bert_seq", other))
    assert set(got) == set(d_o) and set(d_q) < set(d_o)
    for n in got:
        want = d_o[n] + d_q.get(n, 0)
        np.testing.assert_allclose(got[n], want, atol=1e-6 * np.abs(want).max(), rtol=0)
    # the API: a MergeWarning
    with pytest.warns(MergeWarning, match="different base models"):
        merge_adapters([load_adapter(named), load_adapter(other)], method="cat")


def test_cli_heads(zoo, tmp_path, capsys):
    from analysis.cli.merge import main

    pair = [str(zoo["bert"]), str(zoo["roberta"])]
    assert main(pair + ["--method", "cat", "--out", str(tmp_path / "x")]) == 2  # different models first
    capsys.readouterr()
    ab = [str(zoo["bert"]), str(tmp_path / "b2")]
    _make(tmp_path / "b2", "bert_seq", "SEQ_CLS", seed=6, head_seed=10)
    out = tmp_path / "m"
    assert main(ab + ["--method", "svd", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--heads first|mean" in err and not out.exists()
    assert main(ab + ["--method", "svd", "--weights", "1", "-1", "--heads", "mean", "--out", str(out)]) == 2
    assert "weights >= 0" in capsys.readouterr().err
    assert main(ab + ["--method", "svd", "--heads", "mean", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "averaged with weights 0.5, 0.5" in text and "2 saved tensors" in text and "mean)" in text
    got = _saved(_load("bert_seq", out))
    src = [_saved(_load("bert_seq", p)) for p in ab]
    for k in src[0]:
        np.testing.assert_allclose(got[k], (src[0][k] + src[1][k]) / 2, atol=1e-6, rtol=0)


def test_refused_updates_and_in_memory_heads(tmp_path):
    a = _make(tmp_path / "a", "bert_seq", "SEQ_CLS", seed=1)
    dora = _make(tmp_path / "dora", "bert_seq", "SEQ_CLS", seed=2, use_dora=True)
    with pytest.raises(AdapterError, match="DoRA"):
        merge_adapters([load_adapter(a), load_adapter(dora)], method="cat", heads="first")
    lb = _make(tmp_path / "lb", "bert_seq", "SEQ_CLS", seed=3, lora_bias=True)
    with pytest.raises(AdapterError, match="lora_B.bias"):
        merge_adapters([load_adapter(a), load_adapter(lb)], method="cat", heads="first")
    # an adapter read from a live model: its head cannot be read, so it is refused rather than dropped
    from analysis.io.peft_live import from_peft_model

    live = from_peft_model(_load("bert_seq", a))
    with pytest.raises(AdapterError, match="save_pretrained"):
        merge_adapters([live, load_adapter(a)], method="cat")


def test_writer_refuses_a_config_whose_saved_tensors_are_not_given(tmp_path):
    from analysis.io.peft_writer import write_peft_adapter

    a = load_adapter(_make(tmp_path / "a", "bert_seq", "SEQ_CLS", seed=1))
    mods = {n: lr for n, lr in a.items()}
    with pytest.raises(AdapterError, match="KeyError"):
        write_peft_adapter(tmp_path / "out", mods, lora_alpha=8, config=a.config)
    assert not (tmp_path / "out").exists()
    # a causal LM config without saved modules needs none
    write_peft_adapter(tmp_path / "lm", mods, lora_alpha=8, config=dict(a.config, task_type="CAUSAL_LM",
                                                                          modules_to_save=None))


def test_non_lora_tensors_leave_out_other_methods_factors(tmp_path):
    from analysis.io.peft import non_lora_tensors

    base = _model("bert_seq")
    for name, cfg in (("loha", peft.LoHaConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])),
                      ("lokr", peft.LoKrConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])),
                      ("vera", peft.VeraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = peft.get_peft_model(_model("bert_seq"), cfg)
            m.save_pretrained(str(tmp_path / name))
        # the keys PEFT saves for the head, from PEFT's own state dict of the wrapped classifier
        want = {f"base_model.model.classifier.{k}" for k in base.classifier.state_dict()}
        assert set(non_lora_tensors(tmp_path / name)) == want, name
