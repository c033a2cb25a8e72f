"""``python -m analysis.inspect ADAPTER``: one adapter at a glance, on one screen.

Exit codes: 0 on success, 2 on bad input (one line on standard error naming the file and the problem, no
traceback), 1 on an internal error.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import textwrap
from typing import TYPE_CHECKING

from analysis.cli.common import Parser, Table, base_path, check_outputs, fit, layer_str, provenance, run, write_json
from analysis.io import load_adapter
from analysis.io.inventory import adapter_files

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import TextIO

    from analysis.sweeps.inspect import Inspection

__all__ = ["main", "build_parser", "print_inspection", "next_commands"]

_EPILOG = """\
what it shows:
  format       the format, the update's method and how the format was recognised
  base         the base model the files name (PEFT base_model_name_or_path, kohya ss_sd_model_name ...)
  size         modules, layers, bytes on disk, stored dtypes
  rank         r, alpha and the scale of the modules (rank_pattern / alpha_pattern when set)
  zero         modules whose update is exactly zero (B = 0: untrained, or alpha = 0)
  saved        tensors saved beside the update (heads, modules_to_save, trainable tokens)
  config       the adapter's settings; metadata: the file header's fields (kohya ss_* training settings)
  the table    per module, or per stack and role when there are more than 12 modules (medians):
               |dW|_F      Frobenius norm of the update (scale included)
               eff.rank    entropy effective rank exp(H(s / sum s)) of its singular values s
               stable      stable rank |dW|_F^2 / sigma_1^2
               k50/k90/k99 directions holding 50 / 90 / 99 % of |dW|_F^2
               |dW|/|W|    with --base: |dW|_F / |W|_F of the frozen weight
               |W'-W|/|W|  with --base, DoRA modules: the effective update W' - W (the table's
                           numbers are of the directional part s B A)
  next         the commands worth running next on this adapter
--json writes all of it (every config and metadata field, every module with its singular values).

examples:
  python -m analysis.inspect checkpoints/r8_seed0
  python -m analysis.inspect checkpoints/r8_seed0 --base smollm2 --json r8.json --out r8-figures
  python -m analysis.inspect style.safetensors
  python -m analysis.inspect model.pt --alpha 32
"""

#: At most this many modules are listed one per line; more are summarised by stack and role.
MAX_MODULE_ROWS = 12
#: At most this many groups are listed by stack and role; more are pooled by role.
MAX_GROUP_ROWS = 16
_WIDTH = 110
_KEY = 9  # width of the left column of the header lines


def build_parser() -> Parser:
    p = Parser("analysis.inspect",
               description="One adapter at a glance: format, base model, task, target modules by role and layer,\n"
                           "r and alpha, scale, dtype, size, zero modules, saved heads, the files' metadata, and per\n"
                           "module |dW|_F, effective and stable rank and the directions holding 50 / 90 / 99 % of\n"
                           "|dW|_F^2; then the commands worth running next.",
               epilog=_EPILOG)
    p.add_argument("adapter", metavar="ADAPTER",
                   help="PEFT folder or file (LoRA, rsLoRA, DoRA, AdaLoRA, LoHa, LoKr, VeRA), loralib .pt/.bin "
                        "(with --alpha), kohya / LyCORIS .safetensors, diffusers pytorch_lora_weights.safetensors, "
                        "or a Hugging Face id in the local cache")
    p.add_base("Adds |dW|_F / |W|_F per module, read one weight at a time.")
    p.add_alpha(needed="Needed for |dW|_F, not for the ranks.")
    p.add_filters()
    p.add_argument("--json", dest="json_path", default=None, metavar="FILE",
                   help="write everything as JSON: the adapter's facts, every config and metadata field, the groups "
                        "and one record per module with its singular values")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write the spectrum figure (spectrum.png: singular values and energy kept by rank k) into "
                        "DIR; the folder is written whole or not at all")
    p.add_force()
    return p


# ---------------------------------------------------------------------------- text

def _g(x, nd=3):
    """A number in ``nd`` significant digits; ``-`` for None / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, (int,)) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e6):
        return str(int(x))
    return f"{x:.{nd}g}"


_NBSP = "\xa0"


def _size(n):
    """Bytes in words (``1.86 MB``); the space does not break a wrapped line."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n}{_NBSP}B" if unit == "B" else f"{n:.3g}{_NBSP}{unit}"
        n /= 1000


def _line(key, text, out):
    """``key`` in the left column, ``text`` wrapped to the screen width under it."""
    lines = textwrap.wrap(str(text), width=_WIDTH - _KEY - 1, break_on_hyphens=False) or [""]
    lines = [ln.replace(_NBSP, " ") for ln in lines]  # a number and its unit stay on one line
    print(f"{key:<{_KEY}}{lines[0]}", file=out)
    for ln in lines[1:]:
        print(" " * _KEY + ln, file=out)


def _value(v, width=48):
    """A config or metadata value, compact and cut to ``width`` characters."""
    import json

    if isinstance(v, (dict, list)):
        text = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    else:
        text = " ".join(str(v).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _base_line(ins):
    b = ins.base_model
    bits = []
    if b.get("name"):
        bits.append(f"{b['name']} ({b['source']})")
    else:
        bits.append("not named in the files")
    if b.get("architecture") and b.get("architecture") != b.get("name"):
        bits.append(f"architecture {b['architecture']}")
    if b.get("given"):
        bits.append(f"--base {b['given']}")
    return "; ".join(bits)


def _size_line(ins):
    fr = ins.frame
    layers = fr["layer"].dropna()
    stacks = sorted(set(fr["stack"]) - {""})
    where = f" on {layers.nunique()} layers" if len(layers) else ""
    if len(stacks) > 1:
        where += f" of {len(stacks)} stacks ({', '.join(stacks)})"
    files = ", ".join(f"{n} {_size(b)}" for n, b in ins.files)
    dt = ", ".join(f"{d} ({n} tensors)" for d, n in ins.dtypes.items())
    return f"{len(fr)} modules{where}; {_size(ins.bytes)} on disk ({files}); {dt}"


def _rank_line(ins):
    parts = []
    for c in ins.ranks[:4]:
        a = "alpha not stored" if c["alpha"] is None and c["scale"] is None else (
            f"alpha {_g(c['alpha'])}" if c["alpha"] is not None else "no alpha")
        s = "scale unknown" if c["scale"] is None else f"scale {_g(c['scale'])}"
        parts.append(f"r {c['r']}, {a}, {s} ({c['modules']} module{'s' if c['modules'] != 1 else ''})")
    if len(ins.ranks) > 4:
        parts.append(f"{len(ins.ranks) - 4} more combinations (--json)")
    text = "; ".join(parts)
    for key in ("rank_pattern", "alpha_pattern"):
        if ins.config.get(key):
            n = len(ins.config[key])
            text += f"; {key} {_value(ins.config[key], 60)} ({n} {'entry' if n == 1 else 'entries'})"
    if not ins.scale_known:
        text += ("; pass --alpha A (the format stores no alpha): |dW|_F needs it, the ranks below do not")
    if "LoHa" in ins.method:
        text += "; a LoHa's dW has rank up to r^2"
    if "LoKr" in ins.method:
        text += "; a LoKr's dW has rank rank(W1) * rank(W2)"
    return text


def _zero_line(ins):
    zero = ins.zero_modules
    if not zero:
        return "none (every module has a nonzero update)"
    return (f"{len(zero)} of {len(ins.frame)} modules have dW = 0 (B = 0: untrained, or alpha = 0): "
            + ", ".join(zero[:4]) + (" …" if len(zero) > 4 else ""))


def _saved_line(ins):
    mts = ins.config.get("modules_to_save") if ins.reader == "peft" else None
    head = f"modules_to_save {list(mts)}: " if mts else ""
    if not ins.saved:
        return head + "nothing beside the update" if not head else head + "none of them saved in the weights file"
    items = [f"{k} {'x'.join(map(str, s)) or 'scalar'} {d}" for k, (s, d) in list(ins.saved.items())[:6]]
    more = f" … ({len(ins.saved)} tensors)" if len(ins.saved) > 6 else ""
    return head + ", ".join(items) + more


#: PEFT config fields not repeated on the config line (shown elsewhere, or internal).
_CONFIG_SKIP = {"peft_type", "task_type", "base_model_name_or_path", "revision", "r", "lora_alpha", "alpha",
                "rank_pattern", "alpha_pattern", "auto_mapping", "megatron_core", "qalora_group_size", "inference_mode",
                "modules_to_save"}
#: kohya training settings shown first (the rest follow in file order).
_KOHYA_FIRST = ("ss_sd_model_name", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                "ss_network_alpha", "ss_network_args", "ss_output_name", "ss_training_comment", "ss_num_train_images",
                "ss_num_epochs", "ss_epoch", "ss_steps", "ss_max_train_steps", "ss_batch_size_per_device",
                "ss_gradient_accumulation_steps", "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr",
                "ss_lr_scheduler", "ss_lr_warmup_steps", "ss_optimizer", "ss_mixed_precision", "ss_resolution",
                "ss_clip_skip", "ss_noise_offset", "ss_min_snr_gamma", "ss_seed")
_MAX_META_LINES = 4


def _config_line(ins):
    if ins.reader == "kohya" or not ins.config:
        return None
    shown = {k: v for k, v in ins.config.items()
             if k not in _CONFIG_SKIP and v not in (None, False, "", [], {}) and not k.endswith("_config")}
    text = ", ".join(f"{k} {_value(v, 40)}" for k, v in shown.items())
    return f"{text} ({len(ins.config)} fields in --json)"


def _metadata_lines(ins):
    """The header metadata fields, packed into at most :data:`_MAX_META_LINES` lines."""
    meta = dict(ins.metadata)
    if ins.reader == "diffusers" and "lora_adapter_metadata" in meta:
        meta["lora_adapter_metadata"] = "(the config above)"
    if not meta:
        return []
    keys = [k for k in _KOHYA_FIRST if k in meta] + [k for k in meta if k not in _KOHYA_FIRST]
    width = _WIDTH - _KEY - 1
    lines, cur, shown = [], "", 0
    for k in keys:
        item = f"{k}={_value(meta[k], 40)}"
        if cur and len(cur) + 2 + len(item) > width:
            lines.append(cur)
            cur = ""
            if len(lines) == _MAX_META_LINES:
                break
        cur = f"{cur}, {item}" if cur else item
        shown += 1
    else:
        lines.append(cur)
    if len(lines) == _MAX_META_LINES and shown < len(keys):
        lines[-1] += f" … {len(keys) - shown} more fields in --json"
    return lines


def _table(headers, rows, right):
    """Text table lines (:class:`~analysis.cli.common.Table`, columns as wide as their cells): ``right`` the set
    of column indices aligned right."""
    t = Table.fitted(headers, rows, right=right)
    return [t.header_line().rstrip()] + [t.line(*(str(c) for c in r)).rstrip() for r in rows]


def _ks(row):
    return f"{_g(row['rank_e50'])}/{_g(row['rank_e90'])}/{_g(row['rank_e99'])}"


def _module_table(ins):
    fr = ins.frame
    base = "rel_norm" in fr
    headers = ["layer", "module", "role", "shape", "r", "|dW|_F", "eff.rank", "stable", "k50/k90/k99"]
    headers += ["|dW|/|W|"] if base else []
    dora = "dora_rel" in fr
    headers += ["|W'-W|/|W|"] if dora else []
    several = fr["stack"].nunique() > 1
    rows = []
    for row in fr.to_dict(orient="records"):
        role = row["role"] + (f"@{row['stack']}" if several and row["stack"] else "")
        cells = [layer_str(row["layer"]), fit(row["module"], 28), fit(role, 18), f"{row['d_out']}x{row['d_in']}",
                 row["r"]]
        if row["zero"]:
            cells += ["0 (zero)", "-", "-", "-"]
        else:
            cells += [_g(row["fro"]), _g(row["effective_rank"]), _g(row["stable_rank"]), _ks(row)]
        cells += [_g(row["rel_norm"])] if base else []
        cells += [_g(row["dora_rel"]) if row["dora"] else "-"] if dora else []
        rows.append(cells)
    return _table(headers, rows, {0, 4, 5, 6, 7, 8, 9, 10})


def _group_table(ins):
    fr = ins.frame
    by = ("stack", "role")
    g = ins.groups(by=by)
    if len(g) > MAX_GROUP_ROWS:
        by = ("role",)
        g = ins.groups(by=by)
    base = "rel_norm" in g
    headers = (["stack"] if "stack" in by else ["stacks"]) + ["role", "layers", "n", "shape", "r", "|dW|_F (min-max)",
                                                            "eff.rank", "stable", "k50/k90/k99"]
    headers += ["|dW|/|W|"] if base else []
    dora = "dora_rel" in g
    headers += ["|W'-W|/|W|"] if dora else []
    rows = []
    for row in g.to_dict(orient="records"):
        first = (row["stack"] or "-") if "stack" in by else len(row["stacks"].split(","))
        fro = "-" if math.isnan(row["fro"]) else f"{_g(row['fro'])} ({_g(row['fro_min'])}-{_g(row['fro_max'])})"
        if row["zero"]:
            fro += f", {row['zero']} zero"
        cells = [first, fit(row["label"], 22), fit(row["layers"], 14), row["modules"], fit(row["shapes"], 26),
                 row["r"], fro, _g(row["effective_rank"]), _g(row["stable_rank"]), _ks(row)]
        cells += [_g(row["rel_norm"])] if base else []
        cells += [_g(row["dora_rel"])] if dora else []
        rows.append(cells)
    title = ("modules by " + " and ".join(by) + f" ({len(fr)} modules; medians over the nonzero modules of each group)")
    return [title] + _table(headers, rows, {3, 7, 8, 9, 10, 11} | ({0} if "stack" not in by else set()))


def _extremes(ins):
    fr = ins.frame[~ins.frame["zero"]].dropna(subset=["fro"])
    if len(fr) < 2:
        return None
    hi, lo = fr.loc[fr["fro"].idxmax()], fr.loc[fr["fro"].idxmin()]
    return f"largest |dW|_F {_g(hi['fro'])} in {hi['name']}; smallest {_g(lo['fro'])} in {lo['name']}"


def print_inspection(ins: Inspection, args: argparse.Namespace, out: TextIO) -> None:
    """Print the one-screen summary of an adapter.

    Parameters
    ----------
    ins : Inspection
        From :func:`analysis.sweeps.inspect.inspect_adapter`.
    args : argparse.Namespace
        The command's arguments (for the commands worth running next).
    out : file
        Standard output, or standard error when standard output holds the JSON (``--json -``).
    """
    _line("adapter", ins.path, out)
    _line("format", f"{ins.label}; recognised from {ins.recognised}", out)
    _line("base", _base_line(ins), out)
    task = ins.task_type or ("not stored" + (f"; components {', '.join(ins.components)}" if ins.components else ""))
    _line("task", task, out)
    _line("size", _size_line(ins), out)
    _line("rank", _rank_line(ins), out)
    _line("zero", _zero_line(ins), out)
    _line("saved", _saved_line(ins), out)
    cfg = _config_line(ins)
    if cfg:
        _line("config", cfg, out)
    for i, ln in enumerate(_metadata_lines(ins)):
        _line("metadata" if i == 0 else "", ln, out)
    for note in ins.notes:
        _line("note", note, out)
    print("", file=out)
    if len(ins.frame) <= MAX_MODULE_ROWS:
        print("modules (k50/k90/k99: directions holding 50/90/99 % of |dW|_F^2)", file=out)
        lines = _module_table(ins)
    else:
        lines = _group_table(ins)
        lines[0] += "; k50/k90/k99: directions holding 50/90/99 % of |dW|_F^2"
        lines[0] = textwrap.fill(lines[0], _WIDTH)
    for ln in lines:
        print(ln, file=out)
    ext = _extremes(ins)
    if ext and len(ins.frame) > MAX_MODULE_ROWS:
        print(ext, file=out)
    print("", file=out)
    print("next:", file=out)
    for what, cmd in next_commands(ins, args):
        print(f"  {what}:", file=out)
        print(f"    {cmd}", file=out)


# ---------------------------------------------------------------------------- what to run next

def _stem(path):
    p = os.path.basename(os.path.normpath(str(path))) or "adapter"
    return os.path.splitext(p)[0] if os.path.isfile(path) else p


def _sibling(path, weights):
    """Another adapter beside ``path`` whose name is the closest to its own (``r8_seed0`` -> ``r8_seed1``), or None.

    Siblings: the folders beside a folder that hold a file named as its weights file
    (``adapter_model.safetensors``, ``pytorch_lora_weights.safetensors``), the files of the same suffix beside a file.
    """
    import difflib

    p = os.path.normpath(str(path))
    parent, name = os.path.dirname(p) or ".", os.path.basename(p)
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return None
    if os.path.isdir(p):
        others = [e for e in entries if e != name and os.path.isfile(os.path.join(parent, e, weights))]
    else:
        ext = os.path.splitext(name)[1]
        others = [e for e in entries if e != name and e.endswith(ext) and os.path.isfile(os.path.join(parent, e))]
    if not others:
        return None
    def closeness(e):  # the longest common prefix first (same rank, other seed), then similarity; ties: first name
        prefix = len(os.path.commonprefix([name, e]))
        return prefix, difflib.SequenceMatcher(None, name, e).ratio(), [-ord(c) for c in e]

    best = max(others, key=closeness)
    return os.path.join(os.path.dirname(str(path).rstrip("/")), best)


def next_commands(ins: Inspection, args: argparse.Namespace) -> list[tuple[str, str]]:
    """The commands worth running next on this adapter, as ``(what, command)`` pairs.

    Parameters
    ----------
    ins : Inspection
    args : argparse.Namespace
        The command's arguments (``adapter``, ``alpha``, ``base``).

    Returns
    -------
    list of (str, str)
    """
    q = shlex.quote(args.adapter)
    other = _sibling(args.adapter, ins.files[0][0]) if ins.files and os.path.exists(args.adapter) else None
    other = shlex.quote(other) if other else "OTHER"
    alpha = f" --alpha {_g(args.alpha)}" if args.alpha is not None else ("" if ins.scale_known else " --alpha ALPHA")
    base = f" --base {shlex.quote(args.base)}" if args.base else ""
    out = [("compare with another adapter of the same base model (another seed, rank or task)",
            f"python -m analysis.subspace {q} {other}{alpha}{base}"),
           ("the rank each module needs, from this and another run (another seed or a larger rank)",
            f"python -m analysis.rank {q} {other}{alpha}")]
    fr = ins.frame[~ins.frame["zero"]]
    if len(fr):
        k90, r = _g(float(fr["rank_e90"].median())), _g(float(fr["r"].median()))
        ext = ".safetensors" if ins.reader.startswith("kohya") else ""  # a kohya source is written back as a file
        target = shlex.quote(f"{_stem(args.adapter)}-e90{ext}")
        out.append((f"keep 90 % of |dW|_F^2 per module (median k90 = {k90} of r = {r}), exactly",
                    f"python -m analysis.resize {q} --energy 0.9 --out {target}{alpha}"))
    out.append(("a report page on this and another run of the same rank",
                f"python -m analysis.report --pair seed {q} {other} --out report{alpha}{base}"))
    if args.base:
        out.append(("directions of dW that are not in W (intruder dimensions)",
                    f"python -m analysis.intruders {q}{base}{alpha}"))
    else:
        out.append(("with the base model: |dW|_F / |W|_F per module, then the intruder dimensions",
                    f"python -m analysis.inspect {q} --base MODEL{alpha}"))
    return out


# ---------------------------------------------------------------------------- the command

def _body(args):
    from analysis.sweeps.inspect import ENERGIES, inspect_adapter  # local: the base readers, +23 ms on --help

    check_outputs(args, "json_path", "out")  # refused before any work
    adapter = load_adapter(args.adapter, alpha=args.alpha, lazy=True)
    files = adapter_files(adapter, args.adapter)
    if args.base is not None:
        from analysis.io.base import open_base  # local: +8 ms on --help

        with open_base(base_path(args)) as base:
            ins = inspect_adapter(adapter, path=args.adapter, files=files, base=base, base_label=args.base,
                                  modules=args.modules, layers=args.layers)
    else:
        ins = inspect_adapter(adapter, path=args.adapter, files=files, modules=args.modules, layers=args.layers)
    out = sys.stderr if args.json_path == "-" else sys.stdout  # with --json -, standard output holds the data only
    print_inspection(ins, args, out)
    if args.out:
        from analysis.cli.inspect_figures import write_spectrum_figure  # local: the plotting package, +13 ms on --help

        written = write_spectrum_figure(ins, args.out, force=args.force)
        print(f"figure: {os.path.join(args.out, written[0])}" if written else
              f"figure: none (every update is zero); {args.out} left empty", file=out)
    if args.json_path:
        head = provenance("inspect", inputs={"adapter": args.adapter, "base": args.base},
                          settings={"alpha": args.alpha, "modules": args.modules, "layers": args.layers,
                                    "energies": list(ENERGIES)})
        write_json(args.json_path, {**head, **ins.to_dict(),
                                    "next": [{"what": w, "command": c} for w, c in next_commands(ins, args)]},
                   force=args.force)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    return run(_body, build_parser().parse_args(argv))
