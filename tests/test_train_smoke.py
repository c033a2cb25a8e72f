"""Smoke test of the reference training path on a tiny random Llama (no download)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from analysis.reference import train  # noqa: E402

WORDNET = "/usr/share/wordnet/data.noun"
_POS = {"noun": "n", "verb": "v", "adj": "s", "adv": "r"}


@pytest.fixture
def mini_wordnet(tmp_path):
    """A WordNet 3.0 data.* layout with 120 synthetic synsets per part of speech (when the Debian files are absent)."""
    if os.path.exists(WORDNET):
        return os.path.dirname(WORDNET)
    root = tmp_path / "wordnet"
    root.mkdir()
    for name, ss in _POS.items():
        lines = ["  1 This software and database is being provided ... (license header)"]
        for i in range(120):
            lemma = f"{name}_word{i}" + ("(a)" if ss == "s" else "")
            words = f"02 {lemma} 0 {name}_alias{i} 0" if i % 2 else f"01 {lemma} 0"
            ptrs = f"001 @ {10000000 + i - 1:08d} {ss} 0000" if i and name in ("noun", "verb") else "000"
            lines.append(f"{10000000 + i:08d} 03 {ss} {words} {ptrs} | a made-up {name} number {i}; "
                         f'"an example of {name} {i}"')
        (root / f"data.{name}").write_text("\n".join(lines) + "\n")
    return str(root)


@pytest.mark.slow
def test_tiny_training_writes_adapter_and_manifest(tmp_path, mini_wordnet):
    out = tmp_path / "r2_seed0"
    rc = train.main(["--tiny", "--rank", "2", "--seed", "0", "--steps", "2", "--batch-size", "4",
                     "--n-val", "8", "--wordnet", mini_wordnet, "--out", str(out)])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors", "checkpoint-0",
                                       "manifest.json"]

    tensors = safetensors_numpy.load_file(str(out / "adapter_model.safetensors"))
    a_keys = sorted(k for k in tensors if "lora_A" in k)
    b_keys = sorted(k for k in tensors if "lora_B" in k)
    # 2 layers x (q_proj, v_proj)
    assert len(a_keys) == len(b_keys) == 4
    assert all(tensors[k].dtype == np.float32 for k in tensors)
    assert all(tensors[k].shape[0] == 2 for k in a_keys)  # lora_A: (r, d_in)
    assert all(tensors[k].shape[1] == 2 for k in b_keys)  # lora_B: (d_out, r)
    assert any(np.abs(tensors[k]).max() > 0 for k in b_keys)  # B moved off zero

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 16
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]

    m = json.loads((out / "manifest.json").read_text())
    for key in ("command", "data_hash", "n_train", "n_val", "steps", "lr", "alpha", "rank", "seed",
                "batch_size", "max_len", "val_loss_base", "val_loss_adapter", "A_movement", "B_norm",
                "wall_time_s", "versions"):
        assert key in m, key
    assert m["steps"] == 2 and m["rank"] == 2 and m["seed"] == 0 and m["batch_size"] == 4
    assert len(m["data_hash"]) == 64
    assert m["n_val_eval"] == 8
    assert np.isfinite(m["val_loss_base"]) and np.isfinite(m["val_loss_adapter"])
    assert m["A_movement"]["all"]["max"] > 0
    assert m["command"].startswith("python -m analysis.reference.train --tiny")
    for pkg in ("torch", "transformers", "peft", "python"):
        assert m["versions"][pkg]


@pytest.mark.slow
def test_data_split_is_deterministic(mini_wordnet):
    from analysis.reference.data import data_hash, read_wordnet, split_examples

    ex = read_wordnet(mini_wordnet)
    tr1, va1 = split_examples(ex)
    tr2, va2 = split_examples(list(reversed(ex)))
    assert set(va1) == set(va2) and va1 == va2  # val is sorted by digest
    assert data_hash(tr1) == data_hash(list(reversed(tr2)))
    assert not set(va1) & set(tr1)
    e = va1[0]
    assert e.prompt.startswith('Define "') and e.prompt.endswith("):")
    assert "_" not in e.lemma and '; "' not in e.gloss


def test_import_does_not_pull_training_deps():
    code = ("import sys, analysis.reference, analysis.reference.train; "
            "bad = [m for m in ('transformers', 'peft', 'gguf') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stdout + res.stderr


def _tiny_kwargs(mini_wordnet, **kw):
    return {**dict(tiny=True, rank=2, seed=0, steps=6, batch_size=4, n_val=8, wordnet=mini_wordnet), **kw}


@pytest.mark.slow
def test_interrupted_run_resumes_bit_for_bit(tmp_path, mini_wordnet, monkeypatch):
    """A run stopped after its step-4 checkpoint and restarted ends with exactly the uninterrupted weights."""
    kw = _tiny_kwargs(mini_wordnet, save_steps=(2, 4), state_every=1)
    train.train_one(out=str(tmp_path / "ref"), state_dir=str(tmp_path / "s1"), **kw)
    orig, calls = train._loss, {"n": 0}

    def fail_at_step_5(*a, **k):  # calls: base val, steps 1-2, val@2, steps 3-4, val@4, step 5
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(train, "_loss", fail_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train.train_one(out=str(tmp_path / "run"), state_dir=str(tmp_path / "s2"), **kw)
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint-0", "checkpoint-2", "checkpoint-4"]
    monkeypatch.setattr(train, "_loss", orig)
    m = train.train_one(out=str(tmp_path / "run"), state_dir=str(tmp_path / "s2"), **kw)
    assert m["resumed"] == [{"at_step": 4, "optimizer": "restored"}]
    assert [s for s, _ in m["val_loss"]] == [2, 4, 6]
    a = safetensors_numpy.load_file(str(tmp_path / "ref" / "checkpoint-6" / "adapter_model.safetensors"))
    b = safetensors_numpy.load_file(str(tmp_path / "run" / "checkpoint-6" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not os.listdir(tmp_path / "s2")  # the resumable state is removed once the run is done


@pytest.mark.slow
def test_lost_state_resumes_from_last_checkpoint_with_fresh_optimizer(tmp_path, mini_wordnet):
    kw = _tiny_kwargs(mini_wordnet, steps=4, save_steps=(2,))
    train.train_one(out=str(tmp_path / "run"), state_dir=str(tmp_path / "s"), **kw)
    first = json.loads((tmp_path / "run" / "checkpoint-4" / "manifest.json").read_text())
    assert first["resumed"] == []
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoint-4")
    os.remove(tmp_path / "run" / "manifest.json")
    m = train.train_one(out=str(tmp_path / "run"), state_dir=str(tmp_path / "s"), **kw)
    assert m["resumed"] == [{"at_step": 2, "optimizer": "fresh (saved state not found)"}]
    with pytest.raises(ValueError, match="other settings"):
        train.train_one(out=str(tmp_path / "run"), state_dir=str(tmp_path / "s"), **{**kw, "lr": 1e-4})


@pytest.mark.slow
def test_data_and_init_seeds_are_separate(tmp_path, mini_wordnet):
    """init_seed alone sets A's initialisation; data_seed alone sets the example order."""
    kw = _tiny_kwargs(mini_wordnet, steps=1)

    def A0_and_B(**seeds):
        out = tmp_path / "_".join(f"{k}{v}" for k, v in seeds.items())
        train.train_one(out=str(out), **kw, **seeds)
        t = safetensors_numpy.load_file(str(out / "adapter_model.safetensors"))
        return json.loads((out / "manifest.json").read_text()), t

    m00, t00 = A0_and_B(data_seed=0, init_seed=0)
    m01, t01 = A0_and_B(data_seed=0, init_seed=1)
    m10, t10 = A0_and_B(data_seed=1, init_seed=0)
    assert (m01["data_seed"], m01["init_seed"]) == (0, 1)
    key = next(k for k in t00 if "lora_B" in k)
    # one step of Adam moves every B entry by about lr whatever the data: compare A, which starts random
    akey = key.replace("lora_B", "lora_A")
    assert not np.allclose(t00[akey], t01[akey], atol=1e-2)   # another init
    assert np.allclose(t00[akey], t10[akey], atol=5e-3)       # same init, one step apart at most


@pytest.mark.slow
def test_wordnet_tasks(mini_wordnet):
    from analysis.reference.data import TASKS, read_task

    for task in TASKS:
        ex = read_task(task, mini_wordnet)
        assert ex and all(e.prompt and e.target.startswith(" ") for e in ex), task
    word = read_task("word", mini_wordnet)[0]
    assert word.prompt.startswith('Word for "') and "_" not in word.target
    with pytest.raises(ValueError, match="task must be one of"):
        read_task("nope", mini_wordnet)


@pytest.mark.slow
def test_evaluate_gives_the_training_runs_own_validation_loss(tmp_path, mini_wordnet):
    """``analysis.reference.evaluate`` reloads a saved adapter and measures what the training run measured on its
    live model at the end (an independent code path: PEFT's loader, not the trained modules)."""
    from analysis.reference.evaluate import evaluate

    out = tmp_path / "r2_seed0"
    assert train.main(["--tiny", "--rank", "2", "--seed", "0", "--steps", "3", "--batch-size", "4", "--n-val", "8",
                       "--wordnet", mini_wordnet, "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    got = evaluate({"a": str(out)}, tasks=["define"], n_val=8, tiny=True, seed=0, wordnet=mini_wordnet, threads=1)
    assert got["define"]["base"] == pytest.approx(man["val_loss_base"], rel=1e-5)
    assert got["define"]["a"] == pytest.approx(man["val_loss_adapter"], rel=1e-5)
    assert got["define"]["a"] < got["define"]["base"]


@pytest.mark.slow
def test_step0_adapter_and_a_shared_start(tmp_path, mini_wordnet):
    """Every run keeps its step-0 adapter; --init-a-from starts A as the first rows of another run's step-0 A (B = 0),
    which the report reads back from the two files; --init-only regenerates a finished run's step-0 adapter."""
    from analysis.report.compute import shared_start

    kw = _tiny_kwargs(mini_wordnet, steps=2)
    big, small, other = tmp_path / "r4", tmp_path / "r2_from_r4", tmp_path / "r2_own"
    train.train_one(out=str(big), **{**kw, "rank": 4})
    train.train_one(out=str(small), init_a_from=str(big / "checkpoint-0"), **{**kw, "seed": 1})
    train.train_one(out=str(other), **kw)
    a4 = safetensors_numpy.load_file(str(big / "checkpoint-0" / "adapter_model.safetensors"))
    a2 = safetensors_numpy.load_file(str(small / "checkpoint-0" / "adapter_model.safetensors"))
    keys = [k for k in a2 if "lora_A" in k]
    assert keys and all(np.array_equal(a2[k], a4[k][:2]) for k in keys)
    assert all(not a2[k.replace("lora_A", "lora_B")].any() for k in keys)  # B = 0 at step 0
    man = json.loads((small / "manifest.json").read_text())
    assert man["init_a_from"]["path"] == os.path.join("r4", "checkpoint-0") and len(man["init_a_from"]["sha256"]) == 64
    assert shared_start(str(small), str(big)) is True and shared_start(str(other), str(big)) is False
    assert shared_start(str(small), str(tmp_path / "missing")) is None
    # the step-0 adapter of a finished run, regenerated from its seed and checked against its manifest
    import shutil

    kept = safetensors_numpy.load_file(str(other / "checkpoint-0" / "adapter_model.safetensors"))
    shutil.rmtree(other / "checkpoint-0")
    train.main(["--tiny", "--rank", "2", "--seed", "0", "--steps", "2", "--batch-size", "4", "--n-val", "8",
                "--wordnet", mini_wordnet, "--out", str(other), "--init-only"])
    again = safetensors_numpy.load_file(str(other / "checkpoint-0" / "adapter_model.safetensors"))
    assert kept.keys() == again.keys() and all(np.array_equal(kept[k], again[k]) for k in kept)
    with pytest.raises(ValueError, match="does not reproduce"):  # another seed is not this run's start
        shutil.rmtree(other / "checkpoint-0")
        train.train_one(out=str(other), init_only=True, **{**kw, "seed": 5})
    with pytest.raises(ValueError, match="need at least 4 rows"):
        train.train_one(out=str(tmp_path / "too_big"), init_a_from=str(small / "checkpoint-0"), **{**kw, "rank": 4})
