"""The one vocabulary of *sides*: which singular vectors a comparison or a basis is about.

A LoRA update ΔW = s · B A (d_out × d_in) has four bases:

- ``"A"``: the right-singular vectors of ``lora_A`` (its row space, in R^d_in): the paper's basis of Fig. 3 / 4;
- ``"B"``: the left-singular vectors of ``lora_B`` (its column space, in R^d_out);
- ``"input"``: the right-singular vectors of ΔW itself (R^d_in), ordered by ΔW's singular values;
- ``"output"``: the left-singular vectors of ΔW (R^d_out).

A dense matrix W has two: ``"output"`` (left, R^d_out) and ``"input"`` (right, R^d_in); ``"left"`` / ``"right"``
are accepted as their aliases (:data:`ALIASES`), as linear algebra names them (the intruder dimensions of
Shuttleworth et al. are written that way). ``"both"`` (rank advice) means the smaller of ``"input"`` and
``"output"``.
"""

from __future__ import annotations

__all__ = ["FACTOR_SIDES", "MATRIX_SIDES", "ALIASES", "canonical_side"]

#: The bases of a LoRA update.
FACTOR_SIDES = ("A", "B", "input", "output")
#: The bases of a dense matrix (W, or ΔW formed).
MATRIX_SIDES = ("output", "input")
#: Other names of the same sides.
ALIASES = {"left": "output", "right": "input"}


def canonical_side(side: str) -> str:
    """The side's name in this vocabulary (``"left"`` -> ``"output"``); others unchanged.

    >>> canonical_side("left"), canonical_side("A")
    ('output', 'A')
    """
    return ALIASES.get(side, side)
