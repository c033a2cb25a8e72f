"""What every sweep shares: which adapters it accepts, and progress over modules (:mod:`analysis.sweeps.progress`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from analysis.core.adapter import Adapter
from analysis.errors import AdapterError
from analysis.sweeps.progress import as_progress

if TYPE_CHECKING:
    from collections.abc import Iterable

    from analysis.sweeps.progress import Progress

__all__ = ["progress", "require_adapter"]


def progress(iterable: Iterable[Any] | None, *, enabled: bool | Progress | None, total: int | None = None,
             desc: str = "modules") -> Any:
    """``iterable``, counted on standard error when ``enabled``: a bar on a terminal, lines in a log.

    Parameters
    ----------
    iterable : iterable or None
        None: a counter to advance by hand (``update()``, ``close()``), as a tqdm bar.
    enabled : bool, Progress or None
        ``False``: nothing; ``True``: a tqdm bar (the notebook widget in a notebook); a
        :class:`~analysis.sweeps.progress.Progress`: the command's reporter (a bar on a terminal, plain lines
        elsewhere, nested under its open stage); ``None``: the running command's reporter, if any.
    total : int, optional
        Length, when ``iterable`` has none.
    desc : str
        What is counted.

    Returns
    -------
    iterable, or a counter (``update()``, ``close()``) when ``iterable`` is None, or None when that is off
    """
    reporter = as_progress(enabled)
    if not reporter:
        return iterable
    if iterable is None:
        return reporter.counter(total=total, desc=desc)
    return reporter.track(iterable, total=total, desc=desc)


def require_adapter(adapter: object, *, base_names: str | None = None) -> Adapter:
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
