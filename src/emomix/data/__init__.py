"""Utterance table, label schemes, corpus readers, protocols and the synthetic corpus."""

from emomix.data.labels import LabelScheme, apply_scheme, get_scheme, list_schemes
from emomix.data.schema import COLUMNS, Corpus, ReadReport, Utterance, Word, load_table, make_table, save_table

__all__ = [
    "COLUMNS",
    "Corpus",
    "LabelScheme",
    "ReadReport",
    "Utterance",
    "Word",
    "apply_scheme",
    "get_scheme",
    "list_schemes",
    "load_table",
    "make_table",
    "save_table",
]
