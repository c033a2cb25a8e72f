"""LyCORIS files (LoHa, LoKr, LoCon; ``lycoris_`` and kohya ``lora_unet_`` / ``lora_te_`` prefixes).

Oracle: lycoris-lora itself. Files are written by ``create_lycoris(...).save_weights`` and read back by
LyCORIS's own loaders (``create_lycoris_from_weights``, and ``lycoris.kohya.create_network_from_weights``
for the kohya prefixes); the update LyCORIS applies is the module's ``get_weight(shape)`` (its wrapped
layer's output minus the frozen layer's, checked below), computed in float64.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import torch  # noqa: E402
lycoris = pytest.importorskip("lycoris")
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402

from analysis.errors import AdapterError, UnsupportedAdapterError  # noqa: E402
from analysis.io import load_adapter  # noqa: E402

logging.getLogger("lycoris").setLevel(logging.ERROR)

#: largest |ΔW − oracle| / max |oracle| allowed: float32 factors, float64 products on both sides
TOL = 1e-12


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 24)
        self.fc = nn.Linear(64, 64)
        self.conv = nn.Conv2d(8, 16, 3)
        self.pw = nn.Conv2d(8, 8, 1)

    def forward(self, x):  # (n, 16) -> (n, 24)
        return self.q(x)


CASES = {
    "loha": dict(algo="loha"),
    "loha_tucker": dict(algo="loha", use_tucker=True),
    "lokr": dict(algo="lokr", factor=4),
    "lokr_both": dict(algo="lokr", decompose_both=True, factor=8),
    "lokr_tucker": dict(algo="lokr", use_tucker=True, factor=2),
    "lokr_full": dict(algo="lokr", full_matrix=True),
    "locon_tucker": dict(algo="locon", use_tucker=True),
}


def _write(path, case, *, alpha=1.5, seed=0, rename=None):
    """Build a LyCORIS network on Tiny, give every factor random values, save it.

    Returns the file and the trainer-side oracle ``{module name: ΔW}`` (float64, the layer's weight
    shape): each module's ``get_weight`` on the in-memory network that was saved.
    """
    from lycoris import create_lycoris

    torch.manual_seed(seed)
    net = create_lycoris(Tiny(), 1.0, linear_dim=2, linear_alpha=alpha, conv_dim=2, conv_alpha=alpha,
                         **CASES[case])
    net.apply_to()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    net.save_weights(str(path), None, {"ss_network_module": "lycoris.kohya"})
    prefix = "lycoris_" if rename is None else rename
    if rename is not None:
        sd = load_file(str(path))
        save_file({rename + k.removeprefix("lycoris_"): v for k, v in sd.items()}, str(path))
    return path, {prefix + m.lora_name.removeprefix("lycoris_"): _applied(m) for m in net.loras}


def _applied(m):
    """The update a LyCORIS module adds to its layer's weight, float64, in the layer's weight shape."""
    m.double()
    with torch.no_grad():
        if hasattr(m, "get_weight"):  # LoHa, LoKr (get_diff_weight would apply the scale twice)
            return m.get_weight(m.shape).double().numpy()
        return m.get_diff_weight(shape=m.shape)[0].double().numpy()  # LoCon


def _oracle(path, prefix):
    """``{module name: ΔW (float64, the layer's weight shape)}`` as LyCORIS loads and applies the file."""
    model = Tiny().double()
    if prefix == "lycoris_":
        from lycoris.wrapper import create_lycoris_from_weights

        net, _ = create_lycoris_from_weights(1.0, str(path), model)
        mods = net.loras
    else:
        from lycoris.kohya import create_network_from_weights

        unet, te = (model, None) if prefix == "lora_unet_" else (nn.Module(), model)
        net, _ = create_network_from_weights(1.0, str(path), None, te, unet)
        mods = net.unet_loras + net.text_encoder_loras
    return {m.lora_name: _applied(m) for m in mods}


def _max_rel(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("prefix", ["lycoris_", "lora_unet_", "lora_te_"])
def test_delta_matches_lycoris(tmp_path, case, prefix):
    p, want = _write(tmp_path / "a.safetensors", case, rename=None if prefix == "lycoris_" else prefix)
    if case not in ("lokr_both", "lokr_tucker"):
        # (lycoris-lora 4.1.3 cannot reload these two: make_module_from_state_dict infers the wrong
        # factor for the conv and fails in copy_; the trainer-side oracle still holds)
        loaded = _oracle(p, prefix)  # LyCORIS's loaders read the file back to the trainer's update
        assert set(loaded) == set(want)
        assert all(_max_rel(loaded[n], want[n]) < TOL for n in want)
    ad = load_adapter(p)
    assert ad.format == "kohya" and set(ad) == set(want) and len(want) == 4
    for name, W in want.items():
        lr = ad[name]
        got = lr.delta()
        assert got.shape == (W.shape[0], int(np.prod(W.shape[1:]))), name
        assert _max_rel(got, W.reshape(got.shape)) < TOL, name
        if lr.weight_shape is not None:
            assert tuple(lr.weight_shape) == W.shape
        U, S, V = lr.svd()  # exact: the SVD of the factored form reproduces the oracle, and its rank
        assert _max_rel((U * S) @ V.T, W.reshape(got.shape)) < 1e-10, name
        assert lr.rank == np.linalg.matrix_rank(W.reshape(got.shape)), name
        assert lr.meta["algo"] == CASES[case]["algo"].replace("locon", "lora")


@pytest.mark.parametrize("algo", ["locon", "loha"])
@pytest.mark.parametrize("on_output", [True, False])
def test_dora_wd_against_lycoris_merge(tmp_path, algo, on_output):
    """LyCORIS DoRA (dora_wd): the directional part is the module's update; with the base, the merged weight
    W' = (W + ΔW) · m / (‖W + ΔW‖ + eps) equals LyCORIS's own weight_decompose, row or input-channel norms."""
    from lycoris import create_lycoris
    from lycoris.functional.general import weight_decompose

    from analysis.io.dora import dora_effective, dora_weight

    torch.manual_seed(0)
    model = Tiny()
    net = create_lycoris(model, 1.0, linear_dim=2, linear_alpha=1.5, conv_dim=2, conv_alpha=1.5, algo=algo,
                         dora_wd=True, wd_on_output=on_output)
    net.apply_to()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in net.named_parameters():
            p.copy_(p + torch.randn(p.shape, generator=g) * 0.3)
    net.save_weights(str(tmp_path / "d.safetensors"), None, {"ss_network_module": "lycoris.kohya"})
    ad = load_adapter(tmp_path / "d.safetensors")
    base = {}
    for m in net.loras:
        m.double()
        W = m.org_weight.detach().double()
        with torch.no_grad():
            diff = torch.as_tensor(_applied(m))  # the update before the decomposition
            merged = weight_decompose(W + diff, m.dora_scale.double(), 1, on_output).numpy()
        lr = ad[m.lora_name]
        W2 = W.numpy().reshape(W.shape[0], -1)
        base[m.lora_name.removeprefix("lycoris_")] = W.numpy()
        assert lr.meta["dora"] and lr.meta["dora_norm"] == ("row" if on_output else "column")
        assert _max_rel(lr.delta(), diff.numpy().reshape(W2.shape)) < TOL, m.lora_name
        got = dora_weight(lr, W2)
        assert _max_rel(got, merged.reshape(W2.shape)) < 1e-12, m.lora_name
    eff = dora_effective(ad, {f"lycoris_{k}": v for k, v in base.items()}, rank=4)
    assert all(eff[n].meta["update"].startswith("effective") for n in ad)


def test_get_weight_is_what_the_layer_adds(tmp_path):
    """The oracle itself: LyCORIS's wrapped layer adds get_weight (not get_diff_weight, which scales twice)."""
    from lycoris.wrapper import create_lycoris_from_weights

    p, _ = _write(tmp_path / "a.safetensors", "loha")
    model = Tiny().double()
    x = torch.randn(5, 16, dtype=torch.float64)
    before = model(x)
    net, _ = create_lycoris_from_weights(1.0, str(p), model)
    net.apply_to()
    net.double()
    with torch.no_grad():
        added = (model(x) - before).numpy()
    lr = load_adapter(p)["lycoris_q"]
    np.testing.assert_allclose(added, x.numpy() @ lr.delta().T, rtol=1e-10, atol=1e-12)
    assert lr.scale == 1.5 / 2


@pytest.mark.parametrize("case,rank", [("loha", 4), ("lokr", 8)])
def test_ranks_are_the_product_bounds(tmp_path, case, rank):
    """LoHa: rank ≤ r² (r = 2); LoKr on q (24 × 16): W1 (4, 4) full times a rank-2 W2: rank 4 · 2."""
    lr = load_adapter(_write(tmp_path / "a.safetensors", case)[0])["lycoris_q"]
    assert lr.r == 4 if case == "loha" else lr.r >= rank
    assert lr.rank == rank


def test_alpha_rules(tmp_path):
    """Zero alpha means alpha = r; a LoKr with two full halves has scale 1 whatever alpha says.

    (A missing alpha is read as alpha = r too, as LyCORIS's module does; its file loader cannot load such a
    file at all, so there is no oracle for it.)
    """
    p, want = _write(tmp_path / "a.safetensors", "lokr_full", alpha=3.0)
    ad = load_adapter(p)
    assert ad["lycoris_q"].scale == 1.0
    assert _max_rel(ad["lycoris_q"].delta(), want["lycoris_q"]) < TOL
    sd = load_file(str(_write(tmp_path / "b.safetensors", "loha", alpha=3.0)[0]))
    sd["lycoris_q.alpha"] = torch.tensor(0.0)
    save_file(sd, str(tmp_path / "c.safetensors"))
    want = _oracle(tmp_path / "c.safetensors", "lycoris_")
    ad = load_adapter(tmp_path / "c.safetensors")
    assert ad["lycoris_q"].scale == 1.0 and ad["lycoris_fc"].scale == 3.0 / 2
    for name in ("lycoris_q", "lycoris_fc"):
        assert _max_rel(ad[name].delta(), want[name]) < TOL
    del sd["lycoris_fc.alpha"]
    save_file(sd, str(tmp_path / "d.safetensors"))
    assert load_adapter(tmp_path / "d.safetensors")["lycoris_fc"].scale == 1.0


def _one_line(e, *words):
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("edit,key,err,words", [
    (lambda sd: sd.pop("lycoris_q.hada_w2_b"), "lycoris_q.hada_w1_a", AdapterError, ["hada_w2_b"]),
    (lambda sd: sd.__setitem__("lycoris_q.hada_w1_b", torch.ones(3, 16)), "lycoris_q.hada_w1_b", AdapterError,
     ["(r, in)", "r = 2"]),
    (lambda sd: sd.__setitem__("lycoris_q.hada_w2_a", torch.ones(20, 2)), "lycoris_q.hada_w2_b", AdapterError,
     ["one shape"]),
    (lambda sd: sd.__setitem__("lycoris_q.dora_scale", torch.ones(5, 1)), "lycoris_q.dora_scale",
     AdapterError, ["DoRA scale", "(24, 1…)", "(5, 1)"]),
    (lambda sd: sd.__setitem__("lycoris_q.oft_blocks", torch.ones(4, 6, 6)), "lycoris_q.oft_blocks",
     UnsupportedAdapterError, ["OFT"]),
    (lambda sd: sd.__setitem__("lycoris_q.hada_w1_a", torch.full((24, 2), float("nan"))), "lycoris_q.hada_w1_a",
     AdapterError, ["NaN"]),
])
def test_bad_files_one_line(tmp_path, edit, key, err, words):
    sd = load_file(str(_write(tmp_path / "a.safetensors", "loha")[0]))
    edit(sd)
    p = tmp_path / "bad.safetensors"
    save_file(sd, str(p))
    with pytest.raises(err) as e:
        load_adapter(p)
    _one_line(e, str(p), f"key '{key}'", *words)


def test_lokr_bad_inner_dimension(tmp_path):
    sd = load_file(str(_write(tmp_path / "a.safetensors", "lokr")[0]))
    sd["lycoris_q.lokr_w2_b"] = torch.ones(3, 4)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(AdapterError) as e:
        load_adapter(tmp_path / "bad.safetensors")
    _one_line(e, "bad.safetensors", "key 'lycoris_q.lokr_w2_b'", "(r, d…)")
