"""What every sweep shares: which adapters it accepts, and a progress bar over modules."""

from __future__ import annotations

from analysis.core.adapter import Adapter
from analysis.errors import AdapterError

__all__ = ["progress", "require_adapter"]


def progress(iterable, *, enabled, total=None, desc="modules"):
    """``iterable``, wrapped in a tqdm progress bar on standard error when ``enabled``.

    Parameters
    ----------
    iterable : iterable
    enabled : bool
    total : int, optional
        Length, when ``iterable`` has none.
    desc : str

    Returns
    -------
    iterable
    """
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="mod", leave=False)


def require_adapter(adapter, *, base_names=None):
    """Check that ``adapter`` is an :class:`~analysis.Adapter`, and optionally that its names are the base's.

    Parameters
    ----------
    adapter : object
    base_names : str, optional
        What needs the module names of the base model (e.g. ``"resize"``): kohya files keep kohya's
        underscore names, which are refused then.

    Returns
    -------
    Adapter

    Raises
    ------
    TypeError
        If ``adapter`` is not an Adapter.
    AdapterError
        If ``base_names`` is given and the names are kohya's.
    """
    if not isinstance(adapter, Adapter):
        raise TypeError(f"expected an analysis.Adapter, got {type(adapter).__name__}; "
                        "read one with analysis.load_adapter(path)")
    if base_names and adapter.format == "kohya":
        raise AdapterError(f"kohya module names (lora_unet_…, lora_te_…) are not the base model's module names, "
                           f"which {base_names} needs; it works on PEFT and loralib adapters", path=adapter.path)
    return adapter
