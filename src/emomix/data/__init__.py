"""Utterance table, label schemes, corpus readers, protocols and the synthetic corpus."""

from emomix.data.schema import COLUMNS, Corpus, ReadReport, Utterance, Word, load_table, make_table, save_table
from emomix.data.labels import LabelScheme, apply_scheme, get_scheme, list_schemes

__all__ = [
    "COLUMNS", "Corpus", "ReadReport", "Utterance", "Word", "load_table", "make_table", "save_table",
    "LabelScheme", "apply_scheme", "get_scheme", "list_schemes",
]
