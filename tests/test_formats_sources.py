"""Where adapters come from: Hugging Face cache ids (a cache laid out by huggingface_hub itself in a
temporary HF_HOME) and live PEFT models (checked against the saved-and-loaded path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import torch  # noqa: E402
peft = pytest.importorskip("peft")
pytest.importorskip("huggingface_hub")
from peft import LoHaConfig, LoraConfig, VeraConfig, get_peft_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from torch import nn  # noqa: E402

import analysis  # noqa: E402
from analysis.errors import AdapterError  # noqa: E402
from analysis.io import load_adapter  # noqa: E402

from _fake_hub import COMMIT  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 24)
        self.v = nn.Linear(16, 24)

    def forward(self, x):
        return self.v(self.q(x))


def _model(cfg, seed=0, name="default", model=None):
    torch.manual_seed(seed)
    model = get_peft_model(Tiny(), cfg, adapter_name=name) if model is None else model
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and (name in n or "vera" in n):
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    return model


def _same(a, b):
    assert set(a) == set(b) and a.format == b.format
    for n in a:
        assert a[n].scale == b[n].scale and a[n].kind == b[n].kind, n
        np.testing.assert_array_equal(a[n].delta(), b[n].delta())


@pytest.mark.parametrize("cfg", [LoraConfig(r=3, lora_alpha=5, target_modules=["q", "v"], use_rslora=True),
                                 LoraConfig(r=2, lora_alpha=4, target_modules=["q"], use_dora=True),
                                 LoHaConfig(r=2, alpha=3, target_modules=["q", "v"]),
                                 VeraConfig(r=4, target_modules=["q", "v"], save_projection=True)],
                         ids=["lora", "dora", "loha", "vera"])
def test_from_peft_model_equals_saved_and_loaded(tmp_path, cfg):
    model = _model(cfg)
    model.save_pretrained(tmp_path)
    live = analysis.from_peft_model(model)
    _same(live, load_adapter(tmp_path))
    assert "PeftModel" in live.path
    state = analysis.from_state_dict(get_peft_model_state_dict(model), model.peft_config["default"])
    _same(state, live)


def test_from_peft_model_second_adapter_and_errors(tmp_path):
    model = _model(LoraConfig(r=2, lora_alpha=2, target_modules=["q"]))
    model.add_adapter("other", LoraConfig(r=4, lora_alpha=8, target_modules=["v"]))
    _model(None, seed=5, name="other", model=model)
    model.save_pretrained(tmp_path)
    _same(analysis.from_peft_model(model, adapter_name="other"), load_adapter(tmp_path, adapter_name="other"))
    with pytest.raises(AdapterError, match="no adapter named 'nope'.*default.*other"):
        analysis.from_peft_model(model, adapter_name="nope")
    with pytest.raises(AdapterError, match="expected a PEFT model"):
        analysis.from_peft_model(Tiny())


_HUB_SCRIPT = r'''
import json, os, sys
from pathlib import Path

repo, commit = "org/tiny-lora", sys.argv[1]  # in the cache _fake_hub.py filled
import analysis
out = {"cache": sorted(str(p.relative_to(os.environ["HF_HOME"])) for p in Path(os.environ["HF_HOME"]).rglob("*")
                       if p.is_file() or p.is_symlink())}
def dump(ad):
    return {n: [lr.scale, lr.delta().tolist()] for n, lr in ad.items()}
out["main"] = dump(analysis.load_adapter(repo))
out["commit"] = dump(analysis.load_adapter(repo, revision=commit))
out["sub"] = dump(analysis.load_adapter(repo, subfolder="second"))
errors = {}
for what, call in {"missing": lambda: analysis.load_adapter("org/not-cached"),
                   "revision": lambda: analysis.load_adapter(repo, revision="v9"),
                   "subfolder": lambda: analysis.load_adapter(repo, subfolder="nope"),
                   "base": lambda: analysis.open_base("org/no-base")}.items():
    try:
        call()
        errors[what] = None
    except analysis.AdapterError as e:
        errors[what] = str(e)
out["errors"] = errors
import contextlib, io
from analysis.cli.subspace import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    out["cli"] = main([repo, repo, "--base", "org/tiny-base"])  # ids as adapters and as --base
out["cli_out"] = buf.getvalue()
print(json.dumps(out))
'''


@pytest.mark.slow
def test_hub_ids_resolve_through_the_local_cache(tmp_path):
    first = _model(LoraConfig(r=2, lora_alpha=3, target_modules=["q", "v"]))
    first.save_pretrained(tmp_path / "repo")
    second = _model(LoraConfig(r=4, lora_alpha=4, target_modules=["q"]), seed=3)
    second.save_pretrained(tmp_path / "repo" / "second")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": os.getcwd()}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_HUB_OFFLINE", None)
    script = tmp_path / "hub.py"
    script.write_text(textwrap.dedent(_HUB_SCRIPT))
    from safetensors.torch import save_file

    (tmp_path / "base").mkdir()
    save_file({k: v.contiguous() for k, v in Tiny().state_dict().items()}, str(tmp_path / "base" / "model.safetensors"))
    fill = subprocess.run([sys.executable, os.path.join(HERE, "_fake_hub.py"), f"org/tiny-lora={tmp_path / 'repo'}",
                           f"org/tiny-base={tmp_path / 'base'}"], env=env, capture_output=True, text=True, timeout=300)
    assert fill.returncode == 0, fill.stderr[-2000:]
    run = subprocess.run([sys.executable, str(script), COMMIT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert any("models--org--tiny-lora/snapshots/" in p for p in out["cache"])  # huggingface_hub's own layout
    assert any("models--org--tiny-lora/refs/main" in p for p in out["cache"])
    for key, path in (("main", tmp_path / "repo"), ("commit", tmp_path / "repo"), ("sub", tmp_path / "repo" / "second")):
        want = load_adapter(path)
        assert set(out[key]) == set(want), key
        for n, (scale, delta) in out[key].items():
            assert scale == want[n].scale
            np.testing.assert_array_equal(np.array(delta), want[n].delta())
    err = out["errors"]
    assert "org/not-cached" in err["missing"] and "hf download org/not-cached" in err["missing"]
    assert "revision 'v9'" in err["revision"] and "--revision v9" in err["revision"]
    assert "no subfolder 'nope'" in err["subfolder"] and "second" in err["subfolder"]
    assert "org/no-base" in err["base"] and "cache" in err["base"]
    assert all("\n" not in e for e in err.values())
    assert out["cli"] == 0 and "W vs dW" in out["cli_out"]  # the W-vs-ΔW table: the base came from the cache


def test_local_paths_win_and_revision_needs_a_repo_id(tmp_path, monkeypatch):
    _model(LoraConfig(r=2, lora_alpha=3, target_modules=["q"])).save_pretrained(tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    assert set(load_adapter("org/name")) == {"q"}  # an existing folder shaped like an id is a path
    with pytest.raises(AdapterError, match="revision= applies to a Hugging Face repo id"):
        load_adapter(tmp_path / "org" / "name", revision="main")
    assert set(load_adapter(tmp_path / "org", subfolder="name")) == {"q"}
