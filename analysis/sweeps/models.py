"""Which adapters of a collection belong to one base model, told from their module names and shapes.

An adapter says nothing about its base model but the names of the modules it updates and the shapes of
their ΔW. Two adapters *belong together* when they have at least one module name in common and every
name they share has the same ΔW shape there. A *model* is a group of adapters built from that relation:

- adapters are taken in the order given; each joins the first group whose modules (the union over its
  members) it shares a name with and contradicts nowhere, else it starts a group;
- partial overlaps join: an adapter on q_proj and v_proj joins a group of q_proj-only adapters, and the
  group's module map grows by v_proj; when the new adapter also fits later groups (a q_proj, v_proj
  adapter bridging a q_proj-only group and a v_proj-only group), those groups are merged into the first
  unless their module maps contradict each other;
- a shape contradiction on any shared name keeps two adapters apart, even if their other shared modules
  agree: equal q_proj shapes do not make a Llama-7B and a Llama-13B adapter comparable;
- adapters with no module in common stay apart (nothing to compare), even if they are for one base.

Shapes are the only evidence: two base models of one architecture and size (a base and its instruct
tune) cannot be told apart here.

The shapes come from a cheap first pass (:func:`header_task`: a PEFT safetensors file's header, nothing
else), which also names the inputs that are no adapter (a README caught by a glob) before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from analysis.core.adapter import Adapter, natural_key
from analysis.errors import AdapterError, format_error
from analysis.io.lazy import LazyAdapter
from analysis.io.peft import is_peft_dir
from analysis.io.tensors import TENSOR_SUFFIXES
from analysis.sweeps.sources import open_source

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

__all__ = ["ModelGroup", "ModelGrouping", "group_by_model", "header_task", "not_an_adapter", "read_shapes",
           "screen_headers", "describe_models", "describe_skipped"]


@dataclass(frozen=True)
class ModelGroup:
    """Adapters of one model.

    Attributes
    ----------
    name : str
        ``"A"``, ``"B"``, … in order of each group's first adapter.
    members : tuple of int
        Positions of its adapters in the collection, ascending.
    shapes : dict
        ``{module name: (d_out, d_in)}``: every module any member has (their union).
    """

    name: str
    members: tuple
    shapes: dict

    def example(self) -> tuple[str, tuple[int, ...]]:
        """``(name, (d_out, d_in))`` of the group's first module in natural order."""
        n = min(self.shapes, key=natural_key)
        return n, self.shapes[n]


@dataclass(frozen=True)
class ModelGrouping:
    """The models of a collection and why each pair of them was kept apart.

    Attributes
    ----------
    groups : tuple of ModelGroup
    apart : tuple of dict
        One per pair of groups (in order): ``{"models": (name_a, name_b), "reason": "shape" | "disjoint"}``;
        for ``"shape"`` also ``"module"`` (the first contradicting name, natural order), ``"shape_a"``,
        ``"shape_b"`` and ``"adapter_a"``, ``"adapter_b"`` (positions of the first members showing them).
    """

    groups: tuple
    apart: tuple = ()

    def of(self) -> dict[int, int]:
        """``{position: group index}`` for every adapter."""
        return {i: g for g, grp in enumerate(self.groups) for i in grp.members}

    @property
    def conflicts(self) -> tuple[dict[str, Any], ...]:
        """The entries of :attr:`apart` kept apart by a shape contradiction."""
        return tuple(x for x in self.apart if x["reason"] == "shape")


def _letters(i):
    """0 -> ``A``, 25 -> ``Z``, 26 -> ``AA``."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(65 + r) + out
    return out


def _contradiction(x, y):
    """The first name (natural order) two module maps give different shapes, else None."""
    bad = [n for n in x.keys() & y.keys() if tuple(x[n]) != tuple(y[n])]
    return min(bad, key=natural_key) if bad else None


def group_by_model(shape_maps: Sequence[Mapping[str, tuple[int, ...]]]) -> ModelGrouping:
    """Group adapters into models by their module names and ΔW shapes (rules in the module docstring).

    Parameters
    ----------
    shape_maps : sequence of Mapping[str, tuple of int]
        Per adapter, ``{module name: (d_out, d_in)}`` (all its modules, before any filter).

    Returns
    -------
    ModelGrouping

    Examples
    --------
    >>> g = group_by_model([{"q": (4, 4)}, {"q": (8, 8)}, {"q": (4, 4), "v": (2, 4)}, {"k": (4, 4)}])
    >>> [(x.name, x.members) for x in g.groups]
    [('A', (0, 2)), ('B', (1,)), ('C', (3,))]
    >>> [(x["models"], x["reason"]) for x in g.apart]
    [(('A', 'B'), 'shape'), (('A', 'C'), 'disjoint'), (('B', 'C'), 'disjoint')]
    """
    maps = [{str(n): tuple(int(d) for d in s) for n, s in m.items()} for m in shape_maps]
    groups: list[list[Any]] = []  # [members (list), union map (dict)]
    for i, m in enumerate(maps):
        fits = [g for g in groups if g[1].keys() & m.keys() and _contradiction(g[1], m) is None]
        if not fits:
            groups.append([[i], dict(m)])
            continue
        first = fits[0]
        first[0].append(i)
        first[1].update(m)
        for g in fits[1:]:  # groups this adapter bridges: one model unless their maps contradict
            if _contradiction(first[1], g[1]) is None:
                first[0].extend(g[0])
                first[1].update(g[1])
                groups.remove(g)
    out = tuple(ModelGroup(_letters(k), tuple(sorted(mem)), shp) for k, (mem, shp) in enumerate(groups))
    apart = []
    for x in range(len(out)):
        for y in range(x + 1, len(out)):
            a, b = out[x], out[y]
            n = _contradiction(a.shapes, b.shapes)
            if n is None:
                apart.append({"models": (a.name, b.name), "reason": "disjoint"})
                continue
            ia = next(i for i in a.members if maps[i].get(n) == a.shapes[n])
            ib = next(i for i in b.members if maps[i].get(n) == b.shapes[n])
            apart.append({"models": (a.name, b.name), "reason": "shape", "module": n, "shape_a": a.shapes[n],
                          "shape_b": b.shapes[n], "adapter_a": ia, "adapter_b": ib})
    return ModelGrouping(out, tuple(apart))


# ---------------------------------------------------------------------------------------------- inputs

def _suffix(path):
    return os.path.splitext(str(path).rstrip("/"))[1].lower()


def _dir_has_checkpoint(path):
    if is_peft_dir(path):
        return True
    for e in os.scandir(path):
        if e.is_file() and _suffix(e.name) in TENSOR_SUFFIXES:
            return True
        if e.is_dir() and is_peft_dir(e.path):
            return True
    return False


def not_an_adapter(src: str | os.PathLike[str] | Adapter) -> str | None:
    """Why a source is plainly no adapter (a README caught by a glob, a folder of notes), else None.

    Only what the path itself tells: a file whose suffix is none of the checkpoint suffixes, a folder with
    no ``adapter_config.json``, no checkpoint file and no adapter subfolder. A path that looks like a
    checkpoint but cannot be read is not judged here (the reader names its problem), nor is a missing
    path or a Hugging Face repo id.

    Parameters
    ----------
    src : str, os.PathLike or Adapter
        A local path or an fsspec URL (``s3://…``).

    Returns
    -------
    str or None
        E.g. ``"a .md file, not a checkpoint"``.
    """
    if isinstance(src, Adapter):
        return None
    s = os.fspath(src) if isinstance(src, os.PathLike) else str(src)
    if "://" in s:
        import fsspec

        fs, root = fsspec.core.url_to_fs(s)
        isfile = fs.isfile(root)
    elif os.path.isdir(s):
        return None if _dir_has_checkpoint(s) else \
            "a folder with no adapter_config.json, no checkpoint file and no adapter subfolder"
    else:
        isfile = os.path.isfile(s)
    suffix = _suffix(s)
    if isfile and suffix not in TENSOR_SUFFIXES:
        return f"a {suffix} file, not a checkpoint" if suffix else "a file without a checkpoint suffix"
    return None


def _shapes_of(ad):
    if isinstance(ad, LazyAdapter) and ad.shapes is not None:  # from the file header: nothing read
        return ad.shapes
    return {n: tuple(int(x) for x in lr.shape) for n, lr in ad.expanded().items()}


def read_shapes(src: str | os.PathLike[str] | Adapter, *,
                alpha: float | None = None) -> dict[str, tuple[int, ...]]:
    """Module names and ΔW shapes of one adapter, without reading its factors where the format allows.

    Parameters
    ----------
    src : str, os.PathLike or Adapter
        As for :func:`~analysis.sweeps.sources.open_source`: a PEFT safetensors adapter is read from its
        header only; an eager format (loralib, kohya) or a URL's copy is read whole.
    alpha : float, optional
        As for :func:`~analysis.sweeps.sources.open_source`; shapes do not depend on it, but given, the
        opened adapter is the one the next tasks of this process reuse.

    Returns
    -------
    dict
        ``{name: (d_out, d_in)}`` for every module (merged projections split), no filter applied.
    """
    with open_source(src, alpha=alpha) as ad:
        return {n: tuple(int(x) for x in sh) for n, sh in _shapes_of(ad).items()}


def header_task(src: str | os.PathLike[str] | Adapter, *, alpha: float | None = None) -> dict[str, Any]:
    """The first task of a collection graph: one input's module names and shapes, or why there are none.

    Bad input is returned, not raised, so that the client names every bad input at once, before any work.

    Parameters
    ----------
    src : str, os.PathLike or Adapter
    alpha : float, optional

    Returns
    -------
    dict
        ``{"shapes": {name: (d_out, d_in)}}``, ``{"skip": why}`` (plainly no adapter, see
        :func:`not_an_adapter`) or ``{"error": one line naming the file}``.
    """
    try:
        why = not_an_adapter(src)
        if why is not None:
            return {"skip": why}
        return {"shapes": read_shapes(src, alpha=alpha)}
    except (AdapterError, OSError, ValueError) as e:
        msg = " ".join(str(e).split())
        if isinstance(e, OSError) and getattr(e, "filename", None) and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
        return {"error": msg}


def screen_headers(heads: Sequence[dict[str, Any]], labels: Sequence[str], *,
                   not_adapters: str = "error") -> tuple[list[int], tuple[tuple[str, str], ...]]:
    """Check the results of :func:`header_task`: the positions kept, and ``((label, why), …)`` skipped.

    Parameters
    ----------
    heads : sequence of dict
        :func:`header_task`'s results, one per input.
    labels : sequence of str
        The inputs as given.
    not_adapters : {"error", "skip"}
        What to do with an input that is plainly no adapter.

    Returns
    -------
    keep : list of int
    skipped : tuple of (str, str)

    Raises
    ------
    AdapterError
        One line: the first bad input's problem, and how many more there are (named, up to three).
    """
    bad, skipped, keep = [], [], []
    for i, (lab, h) in enumerate(zip(labels, heads)):
        if "error" in h:
            bad.append((lab, h["error"]))
        elif "skip" in h and not_adapters == "error":
            bad.append((lab, format_error(lab, None, f"not an adapter: {h['skip']}; expected a PEFT folder or a "
                                                     f"checkpoint file ({', '.join(TENSOR_SUFFIXES)})")))
        elif "skip" in h:
            skipped.append((lab, h["skip"]))
        else:
            keep.append(i)
    if bad:
        more = [lab for lab, _ in bad[1:]]
        tail = (f" (and {len(more)} more bad input{'s' if len(more) > 1 else ''}: {', '.join(more[:3])}"
                + (" …" if len(more) > 3 else "") + ")") if more else ""
        raise AdapterError(bad[0][1] + tail)
    return keep, tuple(skipped)


# ---------------------------------------------------------------------------------------------- notes

def _short(label):
    return os.path.basename(os.path.normpath(str(label))) or str(label)


def _shape_text(shape):
    return "x".join(str(int(d)) for d in shape)


def describe_models(grouping: ModelGrouping, labels: Sequence[str], *, limit: int = 3) -> str:
    """One line naming the models of a collection and why each pair of them is not compared.

    Parameters
    ----------
    grouping : ModelGrouping
    labels : sequence of str
        The adapters (positions as in ``grouping``).
    limit : int
        Adapters named per model.

    Returns
    -------
    str
        E.g. ``"2 models (by module names and shapes; pairs across models are not compared): A (3 adapters:
        r8_seed0, r8_seed1, r64_seed0; 60 modules, the first model.layers.0.self_attn.q_proj 576x576), B (…);
        A/B: different shapes (… 576x576 in r8_seed0, 2048x2048 in big)"``.
    """
    parts = []
    for g in grouping.groups:
        names = [_short(labels[i]) for i in g.members]
        who = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
        n, sh = g.example()
        parts.append(f"{g.name} ({len(names)} adapter{'s' if len(names) > 1 else ''}: {who}; {len(g.shapes)} "
                     f"modules, the first {n} {_shape_text(sh)})")
    why = []
    for x in grouping.apart:
        a, b = x["models"]
        if x["reason"] == "shape":
            why.append(f"{a}/{b}: different shapes ({x['module']} {_shape_text(x['shape_a'])} in "
                       f"{_short(labels[x['adapter_a']])}, {_shape_text(x['shape_b'])} in "
                       f"{_short(labels[x['adapter_b']])})")
        else:
            why.append(f"{a}/{b}: no module in common")
    return (f"{len(grouping.groups)} models (by module names and shapes; pairs across models are not compared): "
            + ", ".join(parts) + "; " + ", ".join(why[:6]) + (" …" if len(why) > 6 else ""))


def describe_skipped(skipped: Sequence[tuple[str, str]], *, limit: int = 4) -> str:
    """One line naming the inputs skipped as no adapter: ``"skipped 1 input that is no adapter: x/README.md
    (a .md file, not a checkpoint)"``."""
    n = len(skipped)
    return (f"skipped {n} input{'s' if n > 1 else ''} that {'are' if n > 1 else 'is'} no adapter: "
            + ", ".join(f"{p} ({why})" for p, why in skipped[:limit]) + (" …" if n > limit else ""))
