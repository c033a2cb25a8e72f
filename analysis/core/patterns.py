"""User-given regular expressions, matched with a time bound.

Module patterns come from the user (``--modules``, ``resize --pattern``) or from a checkpoint's config
(``rank_pattern`` / ``alpha_pattern``). A pattern with nested quantifiers such as ``([a-z_.0-9]+)+!``
backtracks exponentially on a name it does not match: Python's ``re`` would then run for ever. Here every
match runs in the ``regex`` package with a time bound (:data:`PATTERN_SECONDS`); a pattern that does not
finish is refused with :class:`PatternTimeout`, naming the pattern and where it came from. The syntax is
checked with ``re`` (the module PEFT matches with), so what is accepted is what PEFT accepts.

Without the ``regex`` package, patterns with a repeat inside a repeat are refused before any match instead.
"""

from __future__ import annotations

import functools
import re

from analysis.errors import InputError

__all__ = ["PATTERN_SECONDS", "PatternTimeout", "BoundedPattern", "compile_pattern"]

#: Time bound of one match of a user-given pattern against one module name (seconds).
PATTERN_SECONDS = 1.0


class PatternTimeout(InputError):
    """A pattern did not finish matching a name within :data:`PATTERN_SECONDS`."""


def _nested_repeat(parsed, inside=False):
    """Whether a parsed ``re`` pattern has an unbounded repeat inside another repeat."""
    try:
        from re import _constants as C  # Python ≥ 3.11
    except ImportError:  # pragma: no cover
        import sre_constants as C  # noqa: N812

    repeats = {C.MAX_REPEAT, C.MIN_REPEAT} | ({C.POSSESSIVE_REPEAT} if hasattr(C, "POSSESSIVE_REPEAT") else set())
    for op, av in parsed:
        if op in repeats:
            lo, hi, sub = av
            many = hi is C.MAXREPEAT or hi > 1
            if many and inside:
                return True
            if _nested_repeat(sub, inside or many):
                return True
        elif op is C.SUBPATTERN:
            if _nested_repeat(av[-1], inside):
                return True
        elif op is C.BRANCH:
            if any(_nested_repeat(b, inside) for b in av[1]):
                return True
        elif op in (C.ASSERT, C.ASSERT_NOT):
            if _nested_repeat(av[1], inside):
                return True
    return False


class BoundedPattern:
    """A compiled pattern whose ``search`` / ``match`` give up after :data:`PATTERN_SECONDS`.

    Parameters
    ----------
    pattern : str
        The regular expression (``re`` syntax).
    what : str
        Where it came from, for messages: ``"--modules"``, ``"rank_pattern"`` …
    template : str, optional
        Wraps the pattern before compiling (``"(.*\\\\.)?({})$"``: PEFT's suffix rule).

    Raises
    ------
    ValueError
        The pattern is not a valid regular expression (naming ``what``).
    """

    def __init__(self, pattern: str, *, what: str = "pattern", template: str | None = None) -> None:
        self.pattern, self.what = pattern, what
        text = template.format(pattern) if template else pattern
        try:
            checked = re.compile(text)
        except (re.error, TypeError) as e:
            raise InputError(f"{what}: expected a regular expression, got {pattern!r} ({e})") from None
        try:
            import regex
        except ImportError:  # no time bound available: refuse what can run for ever
            regex = None
            try:
                try:
                    from re import _parser  # type: ignore[attr-defined]  # Python >= 3.11
                except ImportError:  # Python 3.10
                    import sre_parse as _parser

                parsed = _parser.parse(pattern)
            except Exception:  # noqa: BLE001 - the check is a safety net only
                parsed = None
            if parsed is not None and _nested_repeat(parsed):
                raise InputError(f"{what}: pattern {pattern!r} has a repeat inside a repeat (such as (a+)+), "
                                 "which can run for ever on a name it does not match; rewrite it without the "
                                 "nesting (or install the regex package, which bounds the matching time)")
        self._re = checked
        self._rx = None
        if regex is not None:
            try:
                self._rx = regex.compile(text)
            except regex.error:  # a construct regex reads otherwise: no bound, but re's own semantics
                self._rx = None

    def _run(self, method, name):
        if self._rx is None:
            return getattr(self._re, method)(name)
        try:
            return getattr(self._rx, method)(name, timeout=PATTERN_SECONDS)
        except TimeoutError:
            raise PatternTimeout(f"{self.what}: pattern {self.pattern!r} did not finish matching the module name "
                                 f"{name!r} within {PATTERN_SECONDS:g} s (nested quantifiers such as (a+)+ "
                                 "backtrack exponentially); simplify it") from None

    def search(self, name: str) -> re.Match[str] | None:
        """``re.search`` with the time bound: a match object or None."""
        return self._run("search", name)

    def match(self, name: str) -> re.Match[str] | None:
        """``re.match`` with the time bound: a match object or None."""
        return self._run("match", name)


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str, what: str = "pattern", template: str | None = None) -> BoundedPattern:
    """A cached :class:`BoundedPattern` (see there)."""
    return BoundedPattern(pattern, what=what, template=template)
