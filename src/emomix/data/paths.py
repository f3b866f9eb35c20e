"""Where the real corpora live: ``$EMOMIX_DATASETS`` or ``../shared/datasets`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path


def shared_datasets_dir() -> Path | None:
    """The folder holding the shared real corpora, or None when there is none.

    Looks at ``$EMOMIX_DATASETS`` first, then ``../shared/datasets`` relative to the current
    directory and to the project checkout.
    """
    env = os.environ.get("EMOMIX_DATASETS")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [Path.cwd().parent / "shared" / "datasets"]
    candidates += [parent.parent / "shared" / "datasets" for parent in here.parents]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None
