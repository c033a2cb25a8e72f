"""PEFT ``adapter_config.json``: reading, validation, per-module rank and α.

Everything here mirrors PEFT (checked against peft 0.21): the rank / alpha
pattern matching of ``peft.utils.other.get_pattern_key``, the scaling of
``LoraLayer.update_layer`` (``lora_alpha / r``, or ``lora_alpha / √r`` with
``use_rslora``) and the list of configurations whose update is not ``s · B A``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.core.patterns import compile_pattern
from analysis.errors import AdapterError, UnsupportedAdapterError

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable
    from typing import Any

__all__ = ["CONFIG_NAME", "PeftSettings", "adalora_rank", "get_pattern_key", "parse_settings", "pattern_matches",
           "read_config"]

CONFIG_NAME = "adapter_config.json"

#: init_lora_weights values (prefixes, lower case) that move the base weight W at
#: initialisation; PEFT converts them on save (path_initial_model_for_weight_conversion)
#: into a plain LoRA of rank 2r and resets init_lora_weights to True.
_MUTATING_INITS = ("pissa", "corda", "olora", "lora_ga")

#: Config entries of LoRA variants whose update is not s·B·A: (key, explanation).
_REFUSED_VARIANTS = (
    ("arrow_config", "Arrow routes each token to a mixture of several LoRA experts; there is no single ΔW"),
    ("use_bdlora", "BD-LoRA stores a block-diagonal lora_A or lora_B whose layout differs from plain LoRA"),
    ("use_qalora", "QA-LoRA pools the input in groups before lora_A; its update is not s·B·A on the full input"),
    ("kasa_config", "KaSA truncates the base weight's SVD and inserts learned singular values between B and A"),
    ("target_parameters", "LoRA on raw parameters (target_parameters, e.g. MoE experts) stores stacked "
                          "per-expert factors"),
)


@dataclass(frozen=True)
class PeftSettings:
    """What a LoRA / AdaLoRA config says about every module.

    Attributes
    ----------
    path : str
        The ``adapter_config.json`` (named in errors).
    peft_type : {"LORA", "ADALORA"}
    r, alpha : int, float
        Default rank and ``lora_alpha`` (AdaLoRA: ``init_r`` and ``lora_alpha``).
    use_rslora, fan_in_fan_out : bool
    rank_pattern, alpha_pattern : dict
        LoRA: pattern → rank / α. AdaLoRA: ``rank_pattern`` maps
        ``<module>.lora_E`` to a boolean mask over the ``init_r`` triplets.
    notes : tuple of str
        Accepted quirks a user should know about.
    """

    path: str
    peft_type: str = "LORA"
    r: int = 8
    alpha: float = 8.0
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    notes: tuple = ()

    def rank_alpha(self, name: str) -> tuple[int, float, str | None, str | None]:
        """``(r, alpha, r_key, alpha_key)`` of LoRA module ``name`` (PEFT's pattern rule)."""
        r_key = get_pattern_key(self.rank_pattern, name, self.path, "rank_pattern")
        a_key = get_pattern_key(self.alpha_pattern, name, self.path, "alpha_pattern")
        r = self.rank_pattern.get(r_key, self.r)
        alpha = self.alpha_pattern.get(a_key, self.alpha)
        return (r, alpha, r_key if r_key in self.rank_pattern else None,
                a_key if a_key in self.alpha_pattern else None)

    def scale(self, r: int, alpha: float) -> float:
        """PEFT's ``scaling``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def pattern_matches(pattern: str, name: str, *, what: str = "pattern") -> bool:
    """PEFT's matching rule: ``pattern`` is a regular expression matching a dot-separated suffix of ``name``.

    The match runs with a time bound (:mod:`analysis.core.patterns`): a pattern that backtracks for ever
    (nested quantifiers) is refused instead of hanging.

    Parameters
    ----------
    pattern : str
    name : str
    what : str
        Where the pattern came from, for messages.

    Returns
    -------
    bool

    Raises
    ------
    ValueError
        If ``pattern`` is not a valid regular expression, or does not finish matching ``name`` within
        :data:`~analysis.core.patterns.PATTERN_SECONDS` (:class:`~analysis.core.patterns.PatternTimeout`).

    Examples
    --------
    >>> pattern_matches("q_proj", "model.layers.0.self_attn.q_proj"), pattern_matches("proj", "model.q_proj")
    (True, False)
    """
    return compile_pattern(pattern, what, r"(.*\.)?({})$").match(name) is not None


def get_pattern_key(pattern_keys: Iterable[str], key_to_match: str, path: str | None = None,
                    what: str = "rank_pattern") -> str:
    """PEFT's ``get_pattern_key``: the first pattern matching a module name.

    A pattern ``p`` matches ``name`` when ``re.match(rf"(.*\\.)?({p})$", name)``
    succeeds, i.e. ``p`` is a regular expression matching a dot-separated
    suffix of the name. Patterns are tried in the config's order, each with a
    time bound (see :func:`pattern_matches`).

    Parameters
    ----------
    pattern_keys : iterable of str
    key_to_match : str
        Module name in the base model (``model.layers.0.self_attn.q_proj``).
    path : str, optional
        The file the patterns come from, named in errors.
    what : str
        The config key (or option) holding them, named in errors.

    Returns
    -------
    str
        The matching pattern, or ``key_to_match`` itself when none matches
        (as PEFT does).

    Raises
    ------
    AdapterError
        A pattern is not a regular expression, or does not finish matching within the time bound.
    """
    for key in pattern_keys:
        try:
            match = pattern_matches(key, key_to_match, what=what)
        except (re.error, ValueError) as e:  # not a regular expression, or a PatternTimeout
            msg = str(e)[len(what) + 2:] if str(e).startswith(f"{what}: ") else str(e)
            raise AdapterError(msg, path=path, key=what) from None
        if match:
            return key
    return key_to_match


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``adapter_config.json`` as a dict; AdapterError if not a JSON object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AdapterError(f"cannot read the config: {type(e).__name__}: {e}", path=path) from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise AdapterError(f"expected a JSON object, got invalid JSON ({e.msg} at line {e.lineno} "
                           f"column {e.colno})", path=path) from None
    except RecursionError:
        raise AdapterError("expected a configuration, got JSON nested too deeply to read", path=path) from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"expected a JSON object, got a JSON {type(cfg).__name__}", path=path)
    return cfg


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: The largest |α| read from a config: below it the update's norm s ‖B A‖ (s = α / r) stays within float64 for
#: any float32 factors (‖B A‖ < 1e90); beyond, a norm could overflow to Inf and be written as null.
MAX_ALPHA = 1e100


def _is_alpha(v):
    return _is_number(v) and abs(v) <= MAX_ALPHA


def _get(cfg, key, check, expected, path, default):
    v = cfg.get(key, default)
    if v is None:
        v = default
    if not check(v):
        raise AdapterError(f"expected {expected}, got {v!r}", path=path, key=key)
    return v


def _pattern(cfg, key, check, expected, path):
    pat = cfg.get(key) or {}
    if not isinstance(pat, dict):
        raise AdapterError(f"expected an object mapping module patterns to values, got {pat!r}",
                           path=path, key=key)
    for k, v in pat.items():
        if not check(v):
            raise AdapterError(f"expected {expected} for pattern {k!r}, got {v!r}", path=path, key=key)
    return dict(pat)


def _check_supported(cfg, path, peft_type):
    if peft_type not in ("LORA", "ADALORA"):
        raise UnsupportedAdapterError(
            f"expected a LoRA or AdaLoRA adapter, got peft_type {peft_type!r}: its update is not "
            "s·B·A (only low-rank LoRA updates are supported)", path=path, key="peft_type")
    for key, why in _REFUSED_VARIANTS:
        if cfg.get(key):
            raise UnsupportedAdapterError(f"unsupported LoRA variant ({key} = {cfg[key]!r}): {why}",
                                          path=path, key=key)
    init = cfg.get("init_lora_weights", True)
    low = str(init).lower()
    if low == "loftq":
        raise UnsupportedAdapterError(
            "init_lora_weights = 'loftq' replaced the base weight W by its quantised version Q and "
            "initialised B, A so that Q + s·B·A ≈ W; the update against the original W is Q + s·B·A − W, "
            "which needs Q and W and is not of rank r", path=path, key="init_lora_weights")
    if isinstance(init, str) and low.startswith(_MUTATING_INITS):
        raise UnsupportedAdapterError(
            f"init_lora_weights = {init!r} moved the base weight at initialisation (W_res = W − s·B₀·A₀) "
            "and the adapter was not converted on save, so the true update against the original W is "
            "s·(B·A − B₀·A₀), which needs the initial factors B₀, A₀; re-save it with "
            "save_pretrained(..., path_initial_model_for_weight_conversion=...) to get a plain LoRA of "
            "rank 2r", path=path, key="init_lora_weights")


def _notes(cfg):
    notes = []
    if cfg.get("use_dora"):
        notes.append("DoRA: W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖ (norm per output row) is not W + low rank; each "
                     "module is read as its directional part s·B·A (meta['dora'], magnitude in meta['magnitude']); "
                     "analysis.dora_effective(adapter, base) gives the effective update W' − W")
    if cfg.get("alora_invocation_tokens"):
        notes.append("aLoRA: ΔW = s·B·A is applied only to tokens after the invocation sequence")
    if cfg.get("monteclora_config"):
        notes.append("MonteCLoRA: ΔW = s·B·A is the mean update (PEFT merges it so); the Monte Carlo "
                     "sampling of training is not represented")
    if cfg.get("layer_replication"):
        notes.append("layer_replication: module names refer to the replicated model's layers, which "
                     "share base weights with the original ones")
    if cfg.get("modules_to_save"):
        notes.append(f"modules_to_save {cfg['modules_to_save']!r}: those fully trained modules are not "
                     "low-rank and are not analysed")
    if cfg.get("trainable_token_indices"):
        notes.append("trainable_token_indices: the trained embedding rows are not low-rank and are not analysed")
    if cfg.get("bias") not in (None, "none"):
        notes.append(f"bias = {cfg['bias']!r}: trained biases shift the layer output, not W, and are ignored")
    return notes


def parse_settings(cfg: dict[str, Any], path: str | os.PathLike[str]) -> PeftSettings:
    """Validate a parsed ``adapter_config.json`` and return :class:`PeftSettings`.

    Parameters
    ----------
    cfg : dict
        The JSON object.
    path : str or Path
        The config file, named in errors.

    Returns
    -------
    PeftSettings

    Raises
    ------
    AdapterError
        A key has the wrong type or value (names the file and the key).
    UnsupportedAdapterError
        A non-LoRA method, a LoRA variant whose update is not ``s · B A``
        (Arrow, BD-LoRA, …), or a PiSSA / OLoRA / CorDA / LoRA-GA / LoftQ initialisation
        that changed the base weight and was not converted on save.
    """
    path = str(path)
    notes = []
    peft_type = cfg.get("peft_type")
    if peft_type is None:
        peft_type = "LORA"
        notes.append("adapter_config.json has no peft_type; read as LoRA")
    if not isinstance(peft_type, str):
        raise AdapterError(f"expected a string such as 'LORA', got {peft_type!r}", path=path, key="peft_type")
    peft_type = peft_type.upper()
    _check_supported(cfg, path, peft_type)
    notes += _notes(cfg)
    missing = [k for k in ("r" if peft_type == "LORA" else "init_r", "lora_alpha") if cfg.get(k) is None]
    if missing:
        notes.append(f"adapter_config.json lacks {' and '.join(missing)}: PEFT's defaults used")
    pos_int, pos_int_s = (lambda v: _is_int(v) and v > 0), "a positive integer"
    alpha = _get(cfg, "lora_alpha", _is_alpha, f"a finite number of magnitude at most {MAX_ALPHA:g} (the update's "
                 "norms are computed in float64)", path, 8)
    flags = {k: _get(cfg, k, lambda v: isinstance(v, bool), "true or false", path, False)
             for k in ("use_rslora", "fan_in_fan_out")}
    if peft_type == "ADALORA":
        init_r = _get(cfg, "init_r", pos_int, pos_int_s, path, 12)
        masks = _pattern(cfg, "rank_pattern",
                         lambda v: isinstance(v, list) and len(v) == init_r
                         and all(isinstance(b, bool) or b in (0, 1) for b in v),
                         f"a list of {init_r} booleans (init_r)", path)
        return PeftSettings(path, "ADALORA", init_r, float(alpha), False, flags["fan_in_fan_out"],
                            masks, {}, tuple(notes))
    r = _get(cfg, "r", pos_int, pos_int_s, path, 8)
    rank_pattern = _pattern(cfg, "rank_pattern", pos_int, pos_int_s, path)
    alpha_pattern = _pattern(cfg, "alpha_pattern", _is_alpha, f"a finite number of magnitude at most {MAX_ALPHA:g}",
                             path)
    return PeftSettings(path, "LORA", r, float(alpha), flags["use_rslora"], flags["fan_in_fan_out"],
                        rank_pattern, {k: float(v) for k, v in alpha_pattern.items()}, tuple(notes))


def adalora_rank(settings: PeftSettings, name: str) -> tuple[int, str | None]:
    """Expected stored rank of AdaLoRA module ``name`` and the pattern key used.

    PEFT saves ``rank_pattern`` keys as ``<module>.lora_E`` (the adapter name
    stripped; older saves may keep ``.lora_E.<adapter>``) and prunes the saved
    tensors to ``sum(mask)`` triplets.
    """
    for key, mask in settings.rank_pattern.items():
        head = key.split(".lora_E", 1)[0] if ".lora_E" in key else None
        if head == name:
            return int(sum(bool(b) for b in mask)), key
    return settings.r, None
