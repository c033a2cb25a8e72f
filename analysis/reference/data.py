"""WordNet 3.0 data for the reference adapters: definition modelling and three more tasks.

One example per (lemma, part of speech, gloss) of WordNet 3.0: the prompt is
``Define "<lemma>" (<part of speech>):`` and the target is the gloss, cut
before its first ``; "`` (the start of the quoted usage examples). Lemma
underscores become spaces; adjective markers such as ``(a)`` / ``(p)`` are
dropped. The split is a function of each example alone (a SHA-256 of its
prompt and target), so it does not depend on file order or on the seed.

The other tasks (:data:`TASKS`) read the same files: ``word`` (gloss → lemma),
``hypernym`` (lemma → the first lemma of each ``@`` / ``@i`` hypernym synset)
and ``synonyms`` (lemma → the other lemmas of its synset, synsets with two or
more lemmas only). They share the split rule and :func:`data_hash`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from analysis.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

__all__ = [
    "Example",
    "Synset",
    "TaskExample",
    "POS_NAMES",
    "TASKS",
    "WORDNET_DIR",
    "read_wordnet",
    "read_synsets",
    "read_task",
    "manifest_task",
    "split_examples",
    "data_hash",
]

#: Default location of the Debian ``wordnet-base`` data files.
WORDNET_DIR = "/usr/share/wordnet"

#: WordNet synset type → the part-of-speech word used in the prompt.
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}

_FILES = ("noun", "verb", "adj", "adv")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclass(frozen=True)
class Example:
    """One definition-modelling example.

    Attributes
    ----------
    lemma : str
        The word or phrase, underscores replaced by spaces.
    pos : str
        ``"noun"``, ``"verb"``, ``"adjective"`` or ``"adverb"``.
    gloss : str
        The definition (without usage examples).
    """

    lemma: str
    pos: str
    gloss: str

    @property
    def prompt(self) -> str:
        """str : ``Define "<lemma>" (<pos>):``."""
        return f'Define "{self.lemma}" ({self.pos}):'

    @property
    def target(self) -> str:
        """str : the gloss with a leading space (it follows the prompt)."""
        return " " + self.gloss

    def digest(self) -> str:
        """Return the SHA-256 hex digest of ``prompt + "\\n" + target``.

        Returns
        -------
        str
            64 hex characters; decides the split.
        """
        return hashlib.sha256(f"{self.prompt}\n{self.target}".encode("utf-8")).hexdigest()


def _clean_gloss(gloss):
    """Cut the usage examples off a WordNet gloss."""
    cut = gloss.find('; "')
    if cut >= 0:
        gloss = gloss[:cut]
    gloss = gloss.strip().rstrip(";").strip()
    return gloss


@dataclass(frozen=True)
class TaskExample:
    """One example of a task other than definition modelling: a prompt and its target.

    Attributes
    ----------
    prompt : str
    target : str
        With a leading space (it follows the prompt).
    """

    prompt: str
    target: str

    def digest(self) -> str:
        """Return the SHA-256 hex digest of ``prompt + "\\n" + target`` (decides the split)."""
        return hashlib.sha256(f"{self.prompt}\n{self.target}".encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Synset:
    """One parsed line of a WordNet ``data.*`` file.

    Attributes
    ----------
    key : tuple of (str, int)
        (synset type with ``s`` folded into ``a``, byte offset): what pointers name.
    pos : str
        Part-of-speech word used in prompts.
    lemmas : tuple of str
        Underscores replaced by spaces, adjective markers dropped, duplicates removed.
    hypernyms : tuple of (str, int)
        Keys of the ``@`` and ``@i`` pointer targets.
    gloss : str
        Without the quoted usage examples.
    """

    key: tuple
    pos: str
    lemmas: tuple
    hypernyms: tuple
    gloss: str


def _parse_line(line):
    """Parse one ``data.*`` line into (lemmas, pos, gloss), or None for header lines."""
    if not line or line[0] == " ":
        return None
    head, sep, gloss = line.partition(" | ")
    if not sep:
        return None
    fields = head.split()
    ss_type = fields[2]
    w_cnt = int(fields[3], 16)
    words = fields[4 : 4 + 2 * w_cnt : 2]
    lemmas = []
    for word in words:
        word = _ADJ_MARKER.sub("", word).replace("_", " ")
        if word not in lemmas:
            lemmas.append(word)
    return lemmas, POS_NAMES[ss_type], _clean_gloss(gloss)


def _parse_synset(line):
    """Parse one ``data.*`` line into a :class:`Synset`, or None for header lines."""
    parsed = _parse_line(line)
    if parsed is None:
        return None
    lemmas, pos, gloss = parsed
    fields = line.partition(" | ")[0].split()
    w_cnt = int(fields[3], 16)
    at = 4 + 2 * w_cnt
    p_cnt = int(fields[at])
    hypernyms = []
    for k in range(p_cnt):
        sym, off, ss = fields[at + 1 + 4 * k : at + 4 + 4 * k]
        if sym in ("@", "@i"):
            hypernyms.append(("a" if ss == "s" else ss, int(off)))
    ss_type = fields[2]
    return Synset(("a" if ss_type == "s" else ss_type, int(fields[0])), pos, tuple(lemmas), tuple(hypernyms), gloss)


def _data_lines(root):
    for name in _FILES:
        path = os.path.join(os.fspath(root), f"data.{name}")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: WordNet data file not found (install the Debian package wordnet-base)")
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                yield line.rstrip("\n")


def read_synsets(root: str | os.PathLike[str] = WORDNET_DIR) -> list[Synset]:
    """Read every synset of WordNet 3.0.

    Parameters
    ----------
    root : str or os.PathLike
        Folder holding ``data.noun``, ``data.verb``, ``data.adj``, ``data.adv``.

    Returns
    -------
    list of Synset
        In file order.
    """
    return [s for s in map(_parse_synset, _data_lines(root)) if s is not None]


def _unique(examples):
    seen, out = set(), []
    for ex in examples:
        if ex not in seen:
            seen.add(ex)
            out.append(ex)
    return out


def _word_task(synsets):
    for s in synsets:
        for lemma in s.lemmas:
            if s.gloss:
                yield TaskExample(f'Word for "{s.gloss}" ({s.pos}):', " " + lemma)


def _hypernym_task(synsets):
    first = {s.key: s.lemmas[0] for s in synsets if s.lemmas}
    for s in synsets:
        targets = [first[k] for k in s.hypernyms if k in first]
        if targets:
            for lemma in s.lemmas:
                yield TaskExample(f'Broader term for "{lemma}" ({s.pos}):', " " + ", ".join(targets))


def _synonym_task(synsets):
    for s in synsets:
        if len(s.lemmas) > 1:
            for lemma in s.lemmas:
                others = [x for x in s.lemmas if x != lemma]
                yield TaskExample(f'Synonyms of "{lemma}" ({s.pos}):', " " + ", ".join(others))


#: Task name → what it asks; ``define`` is the shipped definition modelling.
TASKS = {
    "define": 'Define "<lemma>" (<pos>): → gloss',
    "word": 'Word for "<gloss>" (<pos>): → lemma',
    "hypernym": 'Broader term for "<lemma>" (<pos>): → first lemma of each hypernym synset',
    "synonyms": 'Synonyms of "<lemma>" (<pos>): → the synset\'s other lemmas',
}


def manifest_task(manifest: Mapping[str, Any]) -> str:
    """The task (a key of :data:`TASKS`) a reference run's manifest records.

    The first seven runs' manifests describe definition modelling in words instead of naming it.

    >>> manifest_task({"task": "word"}), manifest_task({"task": "WordNet 3.0 definition modelling: ..."})
    ('word', 'define')
    """
    task = manifest.get("task", "define")
    return task if task in TASKS else "define"


def read_task(task: str, root: str | os.PathLike[str] = WORDNET_DIR) -> list[Example] | list[TaskExample]:
    """Every example of one task, in file order, duplicates removed.

    Parameters
    ----------
    task : {"define", "word", "hypernym", "synonyms"}
    root : str or os.PathLike
        WordNet ``data.*`` folder.

    Returns
    -------
    list of Example or TaskExample
    """
    if task not in TASKS:
        raise InputError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if task == "define":
        return read_wordnet(root)
    make = {"word": _word_task, "hypernym": _hypernym_task, "synonyms": _synonym_task}[task]
    return _unique(make(read_synsets(root)))


def read_wordnet(root: str | os.PathLike[str] = WORDNET_DIR) -> list[Example]:
    """Read every (lemma, pos, gloss) example of WordNet 3.0.

    Parameters
    ----------
    root : str or os.PathLike
        Folder holding ``data.noun``, ``data.verb``, ``data.adj``, ``data.adv``.

    Returns
    -------
    list of Example
        In file order (noun, verb, adj, adv; synset offset; word order),
        duplicates removed, empty glosses skipped.

    Raises
    ------
    FileNotFoundError
        If a data file is missing.
    """
    return _unique(Example(lemma, pos, gloss) for lemmas, pos, gloss in filter(None, map(_parse_line, _data_lines(root)))
                   if gloss for lemma in lemmas)


def split_examples(examples: Iterable[Example | TaskExample], *,
                   val_per_mille: int = 20) -> tuple[list[Example | TaskExample], list[Example | TaskExample]]:
    """Split examples deterministically by a hash of each example.

    Parameters
    ----------
    examples : list of Example
        All examples.
    val_per_mille : int
        Examples whose digest, read as an integer, is below this many
        thousandths go to validation.

    Returns
    -------
    train : list of Example
        In the input order.
    val : list of Example
        Sorted by digest (so "the first 256" is a fixed, unbiased set).
    """
    if not 0 < val_per_mille < 1000:
        raise InputError(f"val_per_mille must be in (0, 1000), got {val_per_mille}")
    train, val = [], []
    for ex in examples:
        d = ex.digest()
        if int(d[:12], 16) % 1000 < val_per_mille:
            val.append((d, ex))
        else:
            train.append(ex)
    val.sort(key=lambda t: t[0])
    return train, [ex for _, ex in val]


def data_hash(examples: Iterable[Example | TaskExample]) -> str:
    """SHA-256 over the ordered examples (prompt, tab, target, newline each).

    Parameters
    ----------
    examples : list of Example

    Returns
    -------
    str
        64 hex characters.
    """
    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.prompt}\t{ex.target}\n".encode("utf-8"))
    return h.hexdigest()
