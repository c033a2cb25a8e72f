"""Shared helpers of the plotting functions (no computation of metrics here)."""

from __future__ import annotations

import numpy as np

__all__ = ["get_ax", "index_ticks", "module_label", "MODULE_LABELS"]

#: Short labels for module names, in the paper's notation.
MODULE_LABELS = {"q_proj": "ΔW_q", "v_proj": "ΔW_v", "k_proj": "ΔW_k", "o_proj": "ΔW_o",
                 "c_attn:q": "ΔW_q", "c_attn:v": "ΔW_v"}


def get_ax(ax):
    """Return ``ax``, or a new Axes on a new Figure (object API: no pyplot state)."""
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=(5, 4), layout="constrained").add_subplot()


def module_label(module):
    """``self_attn.q_proj`` -> ``ΔW_q`` (mathtext), else the last name component."""
    tail = str(module).rsplit(".", 1)[-1]
    lab = MODULE_LABELS.get(tail)
    if lab is None:
        return tail
    return "$\\Delta W_" + lab[-1] + "$"


def index_ticks(k, *, max_ticks=9):
    """1-based tick positions for an axis of k entries: 1 and round steps after it."""
    if k <= max_ticks:
        return np.arange(1, k + 1)
    for step in (2, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100, 128, 200, 256, 500, 1000):
        if k / step <= max_ticks - 1:
            break
    return np.concatenate([[1], np.arange(step, k + 1, step)])
