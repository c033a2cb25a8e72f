"""Stability-based rank advice: planted shared directions, PEFT's rank_pattern, the CLI."""

import json

import numpy as np
import pytest

from analysis import Adapter
from analysis.sweeps.advice import advise_ranks
from analysis.rank import main

from _rank_tiny import lowrank_from, orthonormal, tiny_llama


def _planted_pair(rng, planted, r=6):
    """Two adapters of the tiny Llama's q/v shapes sharing ``planted[name]`` top directions."""
    shapes = {"model.layers.0.self_attn.q_proj": (32, 32), "model.layers.0.self_attn.v_proj": (16, 32),
              "model.layers.1.self_attn.q_proj": (32, 32), "model.layers.1.self_attn.v_proj": (16, 32)}
    a, b = {}, {}
    S = np.linspace(3, 1, r)
    for name, (dout, din) in shapes.items():
        k = planted[name]
        Ush, Vsh = orthonormal(rng, dout, k), orthonormal(rng, din, k)
        for out in (a, b):
            U = np.linalg.qr(np.hstack([Ush, rng.standard_normal((dout, r - k))]))[0]
            V = np.linalg.qr(np.hstack([Vsh, rng.standard_normal((din, r - k))]))[0]
            out[name] = lowrank_from(U, S, V, scale=2.0, name=name)
    return (Adapter(a, path="a", format="peft", config={"target_modules": ["q_proj", "v_proj"]}),
            Adapter(b, path="b", format="peft"))


def test_advice_recovers_planted_ranks_and_peft_applies_the_pattern():
    planted = {"model.layers.0.self_attn.q_proj": 1, "model.layers.0.self_attn.v_proj": 2,
               "model.layers.1.self_attn.q_proj": 3, "model.layers.1.self_attn.v_proj": 3}
    a, b = _planted_pair(np.random.default_rng(5), planted)
    adv = advise_ranks(a, b)
    fr = adv.to_frame().set_index("name")
    for name, k in planted.items():
        assert fr.loc[name, "shared_input"] == fr.loc[name, "shared_output"] == k
        assert fr.loc[name, "advised"] == k and not fr.loc[name, "capped"]
    cfg = adv.lora_config()
    assert cfg["r"] == 3 and cfg["target_modules"] == ["q_proj", "v_proj"]
    assert cfg["rank_pattern"] == {"layers.0.self_attn.q_proj": 1, "layers.0.self_attn.v_proj": 2}
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(**cfg, lora_alpha=8))
    got = {n.removeprefix("base_model.model."): m.r["default"] for n, m in model.named_modules()
           if hasattr(m, "lora_A") and isinstance(getattr(m, "r", None), dict)}
    assert got == planted
    # sides: the LoRA paper's A basis is also offered
    assert advise_ranks(a, b, side="output").frame["advised"].tolist() == [1, 2, 3, 3]


def test_advice_zero_update_gets_the_floor():
    rng = np.random.default_rng(6)
    a, b = _planted_pair(rng, dict.fromkeys(["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                             "model.layers.1.self_attn.q_proj",
                                             "model.layers.1.self_attn.v_proj"], 2))
    from analysis import LowRank

    z = {n: LowRank(lr.lora_A, np.zeros_like(lr.lora_B), 2.0, name=n) for n, lr in b.items()}
    adv = advise_ranks(a, Adapter(z, path="z", format="peft"), min_rank=1)
    assert adv.frame["zero"].all() and (adv.frame["advised"] == 1).all() and (adv.frame["shared"] == 0).all()
    with pytest.raises(ValueError, match="side"):
        advise_ranks(a, b, side="left")


def test_cli_on_real_peft_adapters(peft_pair, tmp_path, capsys):
    a, b = peft_pair
    js, png, csv = tmp_path / "adv.json", tmp_path / "adv.png", tmp_path / "adv.csv"
    assert main([str(a), str(b), "--json", str(js), "--plot", str(png), "--csv", str(csv), "--n-std", "2"]) == 0
    out = capsys.readouterr().out
    assert "q_proj" in out and "v_proj" in out and "PEFT: r =" in out
    rec = json.loads(js.read_text())
    assert set(rec["lora_config"]) == {"r", "rank_pattern", "target_modules"} and rec["n_std"] == 2.0
    assert len(rec["modules"]) == 4 and all(m["cap"] == 2 for m in rec["modules"])
    assert png.read_bytes()[:4] == b"\x89PNG" and csv.read_text().startswith("name,")
    # the advice JSON drives the resize tool
    from analysis.sweeps.resize import read_rank_pattern

    r, pat = read_rank_pattern(js)
    assert r == rec["lora_config"]["r"] and pat == rec["lora_config"]["rank_pattern"]


def test_cli_bad_input_is_one_line_exit_2(peft_pair, tmp_path, capsys):
    from conftest import make_peft_adapter

    a, _ = peft_pair
    assert main([str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err and "Traceback" not in err
    wide = tmp_path / "wide"
    make_peft_adapter(wide, r=2, hidden=48)
    capsys.readouterr()  # drop what building the model printed
    assert main([str(a), str(wide)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shape" in err
    assert main([str(a), str(a), "--n-std", "-1"]) == 2
    with pytest.raises(SystemExit) as e:
        main([str(a)])
    assert e.value.code == 2


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--side", "--n-std", "--min-rank", "--alpha", "--alpha-b", "--modules", "--layers", "--json",
                "--csv", "--plot", "--trials", "--seed", "--debug"):
        assert opt in text


def test_plot_advised_rank():
    from matplotlib.figure import Figure

    from analysis.plotting import plot_advised_rank

    planted = dict.fromkeys(["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                             "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"], 3)
    adv = advise_ranks(*_planted_pair(np.random.default_rng(7), planted, r=3))
    assert adv.frame["capped"].all()
    ax = Figure().add_subplot()
    art = plot_advised_rank(adv, ax=ax)
    assert art.ax is ax and len(art.extras) == 1 and ax.get_ylim()[0] == 0
    ys = sorted({float(y) for ln in art.lines if hasattr(ln, "get_ydata") for y in ln.get_ydata()})
    assert ys == [3.0]
    with pytest.raises(ValueError):
        plot_advised_rank(adv.frame.drop(columns="advised"))
