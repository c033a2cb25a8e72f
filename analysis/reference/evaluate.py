"""Validation loss of adapters on the reference tasks, and of their exact merge (``python -m analysis.reference.evaluate``).

Merges the given task adapters with :func:`analysis.sweeps.merge.merge_adapters` (the exact best rank-K
approximation of Σ ΔWᵢ), writes the merged PEFT adapter, and measures the validation loss of the base model,
of each adapter and of the merge on every task, on the same held-out examples and with the same loss as the
training script (mean cross-entropy per target token, the first ``n_val`` validation examples of each task).
The results go into the merged adapter's ``manifest.json``.

Example::

    python -m analysis.reference.evaluate --merge checkpoints/r8_seed0 checkpoints/word_r8_seed0 \\
        checkpoints/hypernym_r8_seed0 checkpoints/synonyms_r8_seed0 --rank 8 --out checkpoints/merge_tasks_r8
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING

from analysis.io import load_adapter
from analysis.io.outputs import atomic_output, check_target, write_json
from analysis.reference.data import TASKS, WORDNET_DIR, manifest_task, read_task, split_examples
from analysis.reference.train import encode_examples, load_base, val_loss
from analysis.sweeps.merge import merge_adapters

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["evaluate", "TaskEvaluator", "main"]


def _task_of(path):
    """The reference task an adapter was trained on, from its manifest (``define`` without one)."""
    man = os.path.join(path, "manifest.json")
    if not os.path.exists(man):
        return "define"
    with open(man, encoding="utf-8") as fh:
        return manifest_task(json.load(fh))


class TaskEvaluator:
    """The base model and the encoded validation examples of some tasks, loaded once; losses on demand.

    Parameters
    ----------
    tasks : sequence of str, optional
        Tasks of :data:`analysis.reference.data.TASKS` (default: every task).
    n_val, max_len, threads, wordnet, tiny, seed
        As for :func:`evaluate`.
    """

    def __init__(self, tasks: Sequence[str] | None = None, *, n_val: int = 256, max_len: int = 48, threads: int = 2,
                 wordnet: str | os.PathLike[str] | None = None, tiny: bool = False, seed: int = 0) -> None:
        import torch

        torch.set_num_threads(threads)
        self.tasks = list(tasks or TASKS)
        self.base, self.tok, _ = load_base(tiny=tiny, seed=seed)
        self.base.requires_grad_(False)
        self.pairs = {}
        for task in self.tasks:
            _, val_ex = split_examples(read_task(task, wordnet or WORDNET_DIR))
            self.pairs[task] = encode_examples(val_ex[:n_val], self.tok, max_len)

    def base_losses(self, tasks: Sequence[str] | None = None) -> dict[str, float]:
        """``{task: loss}`` of the base model."""
        return {t: val_loss(self.base, self.pairs[t], self.tok.pad_id) for t in (tasks or self.tasks)}

    def adapter_losses(self, path: str | os.PathLike[str], tasks: Sequence[str] | None = None) -> dict[str, float]:
        """``{task: loss}`` of the base with the PEFT adapter at ``path`` (the base is left untouched)."""
        from peft import PeftModel

        model = PeftModel.from_pretrained(self.base, str(path))
        try:
            causal = model.base_model.model
            return {t: val_loss(causal, self.pairs[t], self.tok.pad_id) for t in (tasks or self.tasks)}
        finally:
            self.base = model.unload()  # the LoRA layers removed, the base weights untouched


def evaluate(adapters: Mapping[str, str | os.PathLike[str]], *, tasks: Sequence[str] | None = None, n_val: int = 256,
             max_len: int = 48, threads: int = 2, wordnet: str | os.PathLike[str] | None = None, tiny: bool = False,
             seed: int = 0) -> dict[str, dict[str, float]]:
    """Validation loss of the base model and of each adapter on each task.

    Parameters
    ----------
    adapters : Mapping[str, str]
        Label -> PEFT adapter folder (of SmolLM2-135M-Instruct, as the reference checkpoints).
    tasks : sequence of str, optional
        Tasks of :data:`analysis.reference.data.TASKS` (default: every task).
    n_val, max_len : int
        As in training: the first ``n_val`` validation examples, sequences cut to ``max_len`` tokens.
    threads : int
        torch threads.
    wordnet : str, optional
        Folder of the WordNet ``data.*`` files.
    tiny, seed : bool, int
        The tiny random Llama of the training script's smoke tests (``--tiny``) instead of SmolLM2.

    Returns
    -------
    dict
        ``{task: {"base": loss, label: loss, ...}}``.
    """
    ev = TaskEvaluator(tasks, n_val=n_val, max_len=max_len, threads=threads, wordnet=wordnet, tiny=tiny, seed=seed)
    out = {task: {"base": loss} for task, loss in ev.base_losses().items()}
    for label, path in adapters.items():
        for task, loss in ev.adapter_losses(path).items():
            out[task][label] = loss
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Merge adapters exactly, write the merge and its validation losses; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m analysis.reference.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--merge", nargs="+", required=True, metavar="ADAPTER", help="task adapters to merge (≥ 2)")
    p.add_argument("--rank", type=int, default=8, help="rank K of the merged adapter (default 8)")
    p.add_argument("--out", required=True, help="folder of the merged adapter (with manifest.json)")
    p.add_argument("--n-val", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true", help="replace --out")
    args = p.parse_args(argv)
    check_target(args.out, force=args.force)
    t0 = time.time()
    labels = [os.path.basename(os.path.normpath(a)) for a in args.merge]
    res = merge_adapters([load_adapter(a) for a in args.merge], method="svd", rank=args.rank, labels=labels)
    with atomic_output(args.out, force=args.force, folder=True) as merged:  # whole or not at all
        res.write(merged, force=True)
        tasks = list(dict.fromkeys(_task_of(a) for a in args.merge))
        losses = evaluate({**dict(zip(labels, args.merge)), "merged": merged}, tasks=tasks, n_val=args.n_val,
                          threads=args.threads)
        summary = res.summary()
        manifest = {"command": "python -m analysis.reference.evaluate " + shlex.join(argv or sys.argv[1:]),
                    "merged": labels, "tasks": {lab: _task_of(a) for lab, a in zip(labels, args.merge)},
                    "method": "svd", "rank": args.rank, "weights": [1.0] * len(labels),
                    "energy_kept": summary["energy_kept_pooled"], "ratio_pooled": summary["ratio_pooled"],
                    "n_val_eval": args.n_val, "val_loss": losses, "wall_time_s": round(time.time() - t0, 1)}
        write_json(os.path.join(merged, "manifest.json"), manifest, force=True)
    for task, row in losses.items():
        print(task, " ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
