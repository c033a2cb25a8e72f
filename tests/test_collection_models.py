"""Collections that mix base models, and inputs that are no adapter: grouped and named before any work.

The folder holds real PEFT adapters of two tiny Llamas (hidden 32 and hidden 48: the same module names, other
shapes), one adapter of the first Llama on other modules (k_proj, o_proj: nothing in common with the rest),
a README.md and a folder of notes. PEFT's own modules are the oracle for shapes and for ΔW.
"""

import json
import os

import numpy as np
import pytest

import analysis.sweeps.collection as collection
from analysis.errors import AdapterError
from analysis.sweeps.collection import collection_similarity
from analysis.sweeps.models import group_by_model, not_an_adapter, read_shapes

from conftest import make_peft_adapter

Q0 = "model.layers.0.self_attn.q_proj"
ADAPTERS = {"ko": dict(r=2, seed=3, targets=("k_proj", "o_proj")), "s1": dict(r=2, seed=0), "s2": dict(r=4, seed=1),
            "s3": dict(r=3, seed=2), "w1": dict(r=2, seed=5, hidden=48), "w2": dict(r=3, seed=6, hidden=48)}


def _peft_modules(model):
    """{module name: (ΔW from PEFT's get_delta_weight, base weight shape)}."""
    out = {}
    for n, mod in model.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            out[n.removeprefix("base_model.model.")] = (mod.get_delta_weight("default").detach().double().numpy(),
                                                        tuple(mod.base_layer.weight.shape))
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    peft = {name: _peft_modules(make_peft_adapter(root / name, **kw)) for name, kw in ADAPTERS.items()}
    (root / "README.md").write_text("# adapters\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("train more\n")
    return root, peft


def _paths(root, names):
    return [str(root / n) for n in names]


def test_grouping_rules():
    q, v, k = "l0.q_proj", "l0.v_proj", "l0.k_proj"
    # a q+v adapter bridges a q-only and a v-only group: one model
    g = group_by_model([{q: (4, 4)}, {v: (2, 4)}, {q: (4, 4), v: (2, 4)}])
    assert [x.members for x in g.groups] == [(0, 1, 2)] and g.apart == ()
    # partial overlap joins (the group's module map grows); one contradicting module keeps apart although
    # the other shared module agrees
    g = group_by_model([{q: (4, 4)}, {q: (4, 4), v: (2, 4)}, {q: (4, 4), v: (3, 4)}, {k: (4, 4)}])
    assert [x.members for x in g.groups] == [(0, 1), (2,), (3,)]
    assert g.groups[0].shapes == {q: (4, 4), v: (2, 4)}
    assert [(x["models"], x["reason"]) for x in g.apart] == [(("A", "B"), "shape"), (("A", "C"), "disjoint"),
                                                            (("B", "C"), "disjoint")]
    assert g.apart[0]["module"] == v and g.apart[0]["shape_a"] == (2, 4) and g.apart[0]["shape_b"] == (3, 4)
    assert (g.apart[0]["adapter_a"], g.apart[0]["adapter_b"]) == (1, 2)
    # an adapter that fits two contradicting groups joins the first; they stay apart
    g = group_by_model([{q: (4, 4), v: (2, 4)}, {q: (4, 4), v: (3, 4)}, {q: (4, 4)}])
    assert [x.members for x in g.groups] == [(0, 2), (1,)]


def test_shapes_come_from_the_header(mixed, monkeypatch):
    from analysis.io.safetensors_file import SafetensorsFile

    root, peft = mixed

    def no_read(self, key):
        raise AssertionError(f"factor {key} read for its shape")

    monkeypatch.setattr(SafetensorsFile, "read", no_read)
    for name in ("s1", "w1", "ko"):
        assert read_shapes(str(root / name)) == {n: shape for n, (_, shape) in peft[name].items()}
    assert not_an_adapter(str(root / "README.md")) == "a .md file, not a checkpoint"
    assert "no adapter_config.json" in not_an_adapter(str(root / "notes"))
    assert not_an_adapter(str(root / "s1")) is None and not_an_adapter(str(root / "missing")) is None


def test_each_model_compared_apart(mixed):
    root, peft = mixed
    names = list(ADAPTERS)
    res = collection_similarity(_paths(root, names), mixed_models="split", k=2)
    groups = [[names[i] for i in g.members] for g in res.groups]
    assert groups == [["ko"], ["s1", "s2", "s3"], ["w1", "w2"]]
    model = {n: gi for gi, grp in enumerate(groups) for n in grp}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if model[a] != model[b]:  # never a number across models, per module either
                assert np.isnan(res.similarity[i, j]) and np.isnan(res.cosine[i, j]) and res.shared[i, j] == 0
                assert np.isnan(res.module_similarity[:, i, j]).all() and np.isnan(res.module_cosine[:, i, j]).all()
                continue
            common = sorted(peft[a].keys() & peft[b].keys())
            assert res.shared[i, j] == len(common) > 0
            ip = sum(float(np.sum(peft[a][n][0] * peft[b][n][0])) for n in common)
            na = sum(float(np.sum(peft[a][n][0] ** 2)) for n in common)
            nb = sum(float(np.sum(peft[b][n][0] ** 2)) for n in common)
            assert res.cosine[i, j] == pytest.approx(ip / np.sqrt(na * nb), rel=1e-5, abs=1e-6)
            m = res.module_names.index(Q0) if Q0 in common else None
            if m is not None:  # one module name, two shapes: each model's pairs in the same slice
                Da, Db = peft[a][Q0][0], peft[b][Q0][0]
                want = float(np.sum(Da * Db) / np.sqrt(np.sum(Da * Da) * np.sum(Db * Db)))
                assert res.module_cosine[m, i, j] == pytest.approx(want, rel=1e-5, abs=1e-6)
    d = res.groups_dict()
    assert [g["adapters"] for g in d["groups"]] == [_paths(root, grp) for grp in groups]
    assert [g["modules"] for g in d["groups"]] == [len(peft["ko"]), len(peft["s1"]), len(peft["w1"])]
    apart = {tuple(x["groups"]): x for x in d["not_compared"]}
    assert apart[("A", "B")]["reason"] == apart[("A", "C")]["reason"] == "no module in common"
    bc = apart[("B", "C")]
    assert bc["reason"] == "different shapes" and bc["module"] == Q0
    assert bc["shapes"] == {"B": list(peft["s1"][Q0][1]), "C": list(peft["w1"][Q0][1])}
    assert peft["s1"][Q0][1] != peft["w1"][Q0][1]
    assert bc["adapters"] == {"B": str(root / "s1"), "C": str(root / "w1")}
    # by default, a library call refuses mixed shapes, naming the module and both shapes
    with pytest.raises(AdapterError, match="mixed_models='split'") as e:
        collection_similarity(_paths(root, ["s1", "w1"]))
    assert str(root / "w1") in str(e.value) and f"key '{Q0}'" in str(e.value)


def _refuse_work(monkeypatch):
    calls = []

    def summarise(*a, **k):
        calls.append(a)
        raise AssertionError("summarised before the inputs were checked")

    monkeypatch.setattr(collection, "summarise_adapter", summarise)
    return calls


def test_bad_inputs_named_before_any_work(mixed, tmp_path, monkeypatch):
    root, _ = mixed
    calls = _refuse_work(monkeypatch)
    with pytest.raises(AdapterError) as e:
        collection_similarity(_paths(root, ["s1", "README.md", "s2"]))
    msg = str(e.value)
    assert msg.startswith(str(root / "README.md")) and "not an adapter" in msg and "\n" not in msg
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    for mode in ("error", "skip"):  # a broken checkpoint is never skipped
        with pytest.raises(AdapterError) as e:
            collection_similarity([str(root / "s1"), str(bad), str(tmp_path / "missing")], not_adapters=mode)
        msg = str(e.value)
        assert msg.startswith(str(bad)) and f"(and 1 more bad input: {tmp_path / 'missing'})" in msg
    assert calls == []


def test_inputs_that_are_no_adapter_are_skipped(mixed):
    root, _ = mixed
    lines = []
    res = collection_similarity(_paths(root, ["README.md", "s1", "notes", "s2"]), not_adapters="skip",
                                notes=lines.append)
    assert res.labels == tuple(_paths(root, ["s1", "s2"]))
    assert [p for p, _ in res.skipped] == _paths(root, ["README.md", "notes"])
    assert len(lines) == 1 and "skipped 2 inputs" in lines[0] and "README.md (a .md file" in lines[0]
    with pytest.raises(ValueError, match="at least two adapters, got 1 after skipping 1"):
        collection_similarity(_paths(root, ["README.md", "s1"]), not_adapters="skip")


def test_cli_on_a_glob_of_the_folder(mixed, tmp_path, capsys, monkeypatch):
    from analysis.cli.collection import main

    root, _ = mixed
    glob = sorted(str(root / f) for f in os.listdir(root))  # what the shell gives for root/*
    out = tmp_path / "c.json"
    assert main([*glob, "--json", str(out)]) == 0
    cap = capsys.readouterr()
    notes = cap.err.strip().splitlines()
    assert len(notes) == 2, cap.err
    assert notes[0].startswith("note: skipped 2 inputs that are no adapter") and "README.md" in notes[0]
    assert notes[1].startswith("note: 3 models") and "B/C: different shapes" in notes[1]
    assert "3 models: A = ko, B = s1, s2, s3, C = w1, w2" in cap.out and "     -" in cap.out
    d = json.loads(out.read_text())
    kept = [p for p in glob if not p.endswith(("README.md", "notes"))]
    assert d["adapters"] == kept and [s["path"] for s in d["skipped"]] == _paths(root, ["README.md", "notes"])
    assert [g["adapters"] for g in d["groups"]] == [_paths(root, ["ko"]), _paths(root, ["s1", "s2", "s3"]),
                                                   _paths(root, ["w1", "w2"])]
    i, j = kept.index(str(root / "s1")), kept.index(str(root / "w1"))
    assert d["similarity"][i][j] is None and d["cosine"][j][i] is None and d["modules"][Q0]["cosine"][i][j] is None
    assert d["similarity"][i][kept.index(str(root / "s2"))] is not None
    # --one-model refuses, one line naming the adapter, the module and both shapes
    assert main([*glob, "--one-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[-1].startswith(f"error: {root / 'w1'}: key '{Q0}'") and "(32, 32)" in err[-1]
    # the notes come before the heavy work
    _refuse_work(monkeypatch)
    assert main(glob) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("note: skipped") and err[1].startswith("note: 3 models") and "internal error" in err[2]
