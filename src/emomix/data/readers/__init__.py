"""Corpus readers, one module per corpus, each reading its release's own layout.

Every reader module exposes ``read(root, **options) -> Corpus`` returning the corpus's raw labels
(its own vocabulary, lower case) in ``label`` and ``raw_label``; :func:`read_corpus` then applies a
label scheme (the corpus's default unless told otherwise) and records what was dropped.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from emomix.data.labels import apply_scheme, get_scheme
from emomix.data.readers._common import check_options
from emomix.data.schema import Corpus
from emomix.errors import EmomixError, MissingDataError

# reader name -> (module, default label scheme, one-line description)
READERS: dict[str, tuple[str, str | None, str]] = {
    "iemocap": ("emomix.data.readers.iemocap", "iemocap-4", "IEMOCAP full release (Session1..5)"),
    "meld": ("emomix.data.readers.meld", "meld-7", "MELD csv files, with or without media"),
    "mosi": ("emomix.data.readers.mosi", "mosi-2", "CMU-MOSI in the MMSA-FET layout (label.csv + Raw/)"),
    "emodb": ("emomix.data.readers.emodb", "emodb-7", "Berlin EmoDB (wav/, silb/)"),
    "savee": ("emomix.data.readers.savee", "savee-7", "SAVEE audio (SS_Enn.wav)"),
    "ravdess": ("emomix.data.readers.ravdess", "ravdess-8", "RAVDESS speech (Actor_XX/03-01-...wav)"),
    "manifest": ("emomix.data.readers.manifest", None, "any corpus as a CSV/JSONL/Parquet manifest"),
    "synthetic": ("emomix.data.readers.manifest", None, "the synthetic corpus written by `emomix synth`"),
}


def list_readers() -> dict[str, str]:
    """Reader names with their descriptions."""
    return {name: spec[2] for name, spec in READERS.items()}


def read_corpus(reader: str, root: str | Path, scheme: Any = "default", **options: Any) -> Corpus:
    """Read a corpus with the named reader and map its labels.

    ``scheme="default"`` uses the reader's default scheme, ``None`` keeps the raw labels, and any
    other value is passed to :func:`emomix.data.labels.get_scheme` (name, YAML path or dict).
    Dropped utterances are counted by raw label in ``corpus.report.dropped_by_label``.
    """
    if reader not in READERS:
        raise EmomixError(f"unknown corpus reader {reader!r}; available: {', '.join(READERS)}")
    root = Path(root)
    if not root.exists():
        raise MissingDataError(f"{reader} corpus folder {root} does not exist")
    module_name, default_scheme, _ = READERS[reader]
    module = import_module(module_name)
    check_options(module.read, options, reader)
    corpus: Corpus = module.read(root, **options)
    if scheme == "default":
        scheme = corpus.default_scheme or default_scheme
    if scheme is not None:
        scheme = get_scheme(scheme)
        corpus.table, dropped = apply_scheme(corpus.table, scheme)
        corpus.report.dropped_by_label.update(dropped)
        corpus.default_scheme = scheme.name
        corpus.scheme = scheme
    return corpus
