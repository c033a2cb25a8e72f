"""Shared fixtures: tiny real PEFT adapters built from configs (no downloads)."""

import pytest


def make_peft_adapter(out, *, r=4, seed=0, alpha=8, targets=("q_proj", "v_proj"), layers=2,
                      zero_b=False, hidden=32):
    """Save a real PEFT LoRA of a tiny random Llama to ``out``; return the PEFT model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)  # the same base model for every adapter
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=32)
    base = LlamaForCausalLM(cfg)
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                            lora_dropout=0.0))
    if not zero_b:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(str(out))
    return model



def peft_deltas(model):
    """PEFT's own ``get_delta_weight`` of every adapted layer (the oracle), float64, in the layer's weight shape;
    ``model`` is left as it is."""
    import copy

    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = copy.deepcopy(model).double()
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, BaseTunerLayer):
            with torch.no_grad():
                out[n.removeprefix("base_model.model.")] = m.get_delta_weight("default").double().numpy()
    return out

@pytest.fixture(scope="session")
def peft_pair(tmp_path_factory):
    """Two real PEFT adapters (r=2 and r=4) of the same tiny Llama."""
    root = tmp_path_factory.mktemp("pair")
    make_peft_adapter(root / "r2", r=2, seed=0)
    make_peft_adapter(root / "r4", r=4, seed=1)
    return root / "r2", root / "r4"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny report set: checkpoints r{1,2,4}_seed0 and r{2,4}_seed1 plus a matching synthetic base."""
    from _synthetic import write_base_for

    root = tmp_path_factory.mktemp("report")
    ck = root / "checkpoints"
    for r, s in [(1, 0), (2, 0), (4, 0), (2, 1), (4, 1)]:
        make_peft_adapter(ck / f"r{r}_seed{s}", r=r, seed=10 * r + s)
    write_base_for(ck / "r1_seed0", root / "base.safetensors")
    return root


@pytest.fixture(scope="session")
def tiny_report(tiny):
    """The report computed on :func:`tiny` (layer 1, layers 0 and 1, ranks 1, 2, 4, pair 2 vs 4)."""
    from analysis.report import ReportConfig, compute_report

    return compute_report(ReportConfig(checkpoints=str(tiny / "checkpoints"), base=str(tiny / "base.safetensors"),
                                       layer=1, layers=(0, 1), ranks=(1, 2, 4), low=2, high=4))


@pytest.fixture(autouse=True, scope="session")
def _private_svd_cache(tmp_path_factory):
    """Keep the persistent SVD cache of base weights (analysis.sweeps.svd_cache) out of the user's folder."""
    import os

    old = os.environ.get("LORA_SUBSPACE_CACHE")
    os.environ["LORA_SUBSPACE_CACHE"] = str(tmp_path_factory.mktemp("svd-cache"))
    yield
    if old is None:
        os.environ.pop("LORA_SUBSPACE_CACHE", None)
    else:
        os.environ["LORA_SUBSPACE_CACHE"] = old


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Tiny models of ten architecture families with planted PEFT / kohya adapters (see tests/corpus.py)."""
    from corpus import build_corpus

    return build_corpus(tmp_path_factory.mktemp("corpus"))
