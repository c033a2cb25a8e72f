"""Reference LoRA adapters: WordNet definition-modelling data and the training script.

Importing this package imports neither torch, transformers nor peft; the
training module (:mod:`analysis.reference.train`) imports them inside its
functions.
"""

from __future__ import annotations

from analysis.reference.data import Example, data_hash, read_wordnet, split_examples

__all__ = ["Example", "data_hash", "read_wordnet", "split_examples"]
