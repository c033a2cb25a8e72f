"""WordNet 3.0 definition-modelling data for the reference adapters.

One example per (lemma, part of speech, gloss) of WordNet 3.0: the prompt is
``Define "<lemma>" (<part of speech>):`` and the target is the gloss, cut
before its first ``; "`` (the start of the quoted usage examples). Lemma
underscores become spaces; adjective markers such as ``(a)`` / ``(p)`` are
dropped. The split is a function of each example alone (a SHA-256 of its
prompt and target), so it does not depend on file order or on the seed.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

__all__ = [
    "Example",
    "POS_NAMES",
    "WORDNET_DIR",
    "read_wordnet",
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
    def prompt(self):
        """str : ``Define "<lemma>" (<pos>):``."""
        return f'Define "{self.lemma}" ({self.pos}):'

    @property
    def target(self):
        """str : the gloss with a leading space (it follows the prompt)."""
        return " " + self.gloss

    def digest(self):
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


def read_wordnet(root=WORDNET_DIR):
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
    seen = set()
    examples = []
    for name in _FILES:
        path = os.path.join(os.fspath(root), f"data.{name}")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: WordNet data file not found (install the Debian package wordnet-base)")
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parsed = _parse_line(line.rstrip("\n"))
                if parsed is None:
                    continue
                lemmas, pos, gloss = parsed
                if not gloss:
                    continue
                for lemma in lemmas:
                    ex = Example(lemma, pos, gloss)
                    if ex not in seen:
                        seen.add(ex)
                        examples.append(ex)
    return examples


def split_examples(examples, *, val_per_mille=20):
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
        raise ValueError(f"val_per_mille must be in (0, 1000), got {val_per_mille}")
    train, val = [], []
    for ex in examples:
        d = ex.digest()
        if int(d[:12], 16) % 1000 < val_per_mille:
            val.append((d, ex))
        else:
            train.append(ex)
    val.sort(key=lambda t: t[0])
    return train, [ex for _, ex in val]


def data_hash(examples):
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
