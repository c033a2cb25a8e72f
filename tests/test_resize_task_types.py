"""resize of real PEFT adapters of every task type: PEFT loads the result, heads and config carried over."""

import json

import numpy as np
import pytest

import torch  # noqa: E402
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from analysis import load_adapter  # noqa: E402
from analysis.resize import main  # noqa: E402

TASKS = {
    "CAUSAL_LM": "LlamaForCausalLM",
    "SEQ_CLS": "LlamaForSequenceClassification",
    "TOKEN_CLS": "LlamaForTokenClassification",
    "QUESTION_ANS": "LlamaForQuestionAnswering",
    "FEATURE_EXTRACTION": "LlamaModel",
}


def _model(cls_name):
    torch.manual_seed(7)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   num_labels=3, pad_token_id=0)
    return getattr(transformers, cls_name)(cfg).eval()


@pytest.mark.parametrize("task", list(TASKS))
def test_resized_adapter_loads_in_peft_for_every_task_type(tmp_path, task):
    model = peft.get_peft_model(_model(TASKS[task]), peft.LoraConfig(
        task_type=task, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # train-like: B off zero, and the task head (modules_to_save) changed
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    src, out = tmp_path / "src", tmp_path / "out"
    model.save_pretrained(str(src))
    assert main([str(src), "--rank", "2", "--out", str(out), "--quiet"]) == 0

    cfg_src = json.loads((src / "adapter_config.json").read_text())
    cfg_out = json.loads((out / "adapter_config.json").read_text())
    for key in ("task_type", "modules_to_save", "base_model_name_or_path"):
        assert cfg_out.get(key) == cfg_src.get(key), key
    loaded = peft.PeftModel.from_pretrained(_model(TASKS[task]), str(out)).eval()  # no KeyError on the head
    ids = torch.tensor([[1, 5, 9, 3, 2]])
    src_model = peft.PeftModel.from_pretrained(_model(TASKS[task]), str(src)).eval()
    # the heads (modules_to_save) are identical; the LoRA part is the rank-2 truncation
    heads = {n: p for n, p in loaded.named_parameters() if "modules_to_save" in n}
    assert (len(heads) > 0) == bool(cfg_src.get("modules_to_save"))
    ref = dict(src_model.named_parameters())
    for n, p in heads.items():
        torch.testing.assert_close(p, ref[n])
    a, b = load_adapter(out), load_adapter(src)
    for name in a:
        U, S, V = b[name].svd()
        want = (U[:, :2] * S[:2]) @ V[:, :2].T
        np.testing.assert_allclose(a[name].delta(), want, atol=1e-5)
    with torch.no_grad():
        assert torch.isfinite(loaded(input_ids=ids)[0]).all()
