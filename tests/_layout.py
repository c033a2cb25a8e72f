"""Helpers for figure tests: text boxes that overlap or leave the canvas, and big synthetic report inputs."""

import json

import numpy as np

#: Twelve module kinds per layer: attention, MLP, cross-attention, an expert.
TWELVE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
          "mlp.up_proj", "mlp.down_proj", "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj",
          "cross_attn.o_proj", "block_sparse_moe.experts.0.w1")


def text_problems(fig, *, tol=1.0):
    """Texts of ``fig`` that leave the canvas, and pairs of texts whose boxes overlap (by more than ``tol`` px).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    tol : float
        Pixels of overlap (in each direction) tolerated.

    Returns
    -------
    list of str
        One line per problem, naming the texts (empty: none).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    drawn = []
    original = Text.draw

    def record(self, renderer):  # only texts that are really drawn (ticks outside the view limits are not)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        return original(self, renderer)

    canvas = FigureCanvasAgg(fig)  # a Figure built with the object API has no drawing canvas of its own
    Text.draw = record
    try:
        canvas.draw()
    finally:
        Text.draw = original
    renderer = canvas.get_renderer()
    boxes = []
    for t in dict.fromkeys(drawn):
        bb = t.get_window_extent(renderer)
        if bb.width <= 0 or bb.height <= 0:
            continue
        boxes.append((t.get_text().replace("\n", " ")[:50], bb))
    out = []
    W, H = fig.bbox.width, fig.bbox.height
    for txt, bb in boxes:
        if bb.x0 < -tol or bb.y0 < -tol or bb.x1 > W + tol or bb.y1 > H + tol:
            out.append(f"leaves the canvas: {txt!r} {tuple(round(v) for v in bb.extents)} of {round(W)}x{round(H)}")
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i][1], boxes[j][1]
            dx = min(a.x1, b.x1) - max(a.x0, b.x0)
            dy = min(a.y1, b.y1) - max(a.y0, b.y0)
            if dx > tol and dy > tol:
                out.append(f"overlap: {boxes[i][0]!r} and {boxes[j][0]!r}")
    return out


def write_big_pair(root, *, layers, modules=TWELVE, ranks=(2, 4, 4), d=24, d_kv=12, seed=0,
                   names=("a-run-with-a-rather-long-name-of-forty-c", "another-run-with-a-long-name-of-forty-ch",
                          "a-third-run-with-a-long-name-of-forty-ch")):
    """PEFT adapters (rank pair + seed pair) on ``layers`` layers × ``modules`` kinds, and a base with those weights.

    Returns
    -------
    (list of pathlib.Path, pathlib.Path)
        The adapter folders (small rank, large rank, large rank again) and the base ``.safetensors``.
    """
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    shapes = {m: ((d_kv if m.endswith(("k_proj", "v_proj")) else d), d) for m in modules}
    base = {}
    for L in range(layers):
        for m in modules:
            do, di = shapes[m]
            q = min(do, di)
            U = np.linalg.qr(rng.standard_normal((do, q)))[0]
            V = np.linalg.qr(rng.standard_normal((di, q)))[0]
            base[f"model.layers.{L}.{m}.weight"] = ((U * 0.8 ** np.arange(q)) @ V.T).astype(np.float32)
    base_path = root / "base.safetensors"
    save_file(base, str(base_path))
    shared = {(L, m): rng.standard_normal(shapes[m][1]) for L in range(layers) for m in modules}
    paths = []
    for name, r in zip(names, ranks):
        tensors = {}
        for L in range(layers):
            for m in modules:
                do, di = shapes[m]
                A = rng.standard_normal((r, di)).astype(np.float32)
                A[0] = 3 * shared[(L, m)]  # a shared top direction in every module
                B = rng.standard_normal((do, r)).astype(np.float32) * 0.1
                key = f"base_model.model.model.layers.{L}.{m}"
                tensors[f"{key}.lora_A.weight"] = A
                tensors[f"{key}.lora_B.weight"] = B
        folder = root / name
        folder.mkdir(parents=True)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": targets, "task_type": "CAUSAL_LM",
             "base_model_name_or_path": "synthetic"}))
        paths.append(folder)
    return paths, base_path
