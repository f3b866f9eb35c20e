"""Self-supervised speech encoders (WavLM, HuBERT, wav2vec 2.0) from ``transformers``.

:class:`SpeechSSLEncoder` wraps ``AutoModel`` + ``AutoFeatureExtractor`` for a hub name or a local
folder saved with ``save_pretrained``. It outputs one 20 ms frame per 320 samples (50 frames/s)
of ``hidden_size`` features, and every layer on request.

Batching policy (why outputs never depend on which utterances share a batch):

* if the model's feature extractor was trained with an attention mask
  (``feature_extractor.return_attention_mask``, e.g. wav2vec2-large-lv60), waveforms are
  zero-padded and the mask is passed, so valid frames ignore the padding;
* otherwise (wavlm-base, hubert-base, wav2vec2-base: their group-normalised CNN normalises over
  the whole padded signal, so padding changes every frame) utterances are grouped by exact length
  and each group runs without any padding. Outputs are padded afterwards and the frame mask comes
  from the model's ``_get_feat_extract_output_lengths``.

Either way an utterance gets the same states alone or in any batch.

The module also holds the small helpers shared by the ``transformers``-based encoders: loading
offline-first with a :class:`~emomix.errors.MissingDataError` that names the fix, and the
revision fingerprint used in :meth:`Encoder.config`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from emomix.constants import SAMPLE_RATE
from emomix.encoders.base import Encoder, EncoderOutput
from emomix.errors import AudioError, ConfigError, MissingDataError

SUPPORTED_SPEECH_TYPES = ("wavlm", "hubert", "wav2vec2")

# Files whose content does not change a model's outputs; left out of folder fingerprints.
_FINGERPRINT_SKIP_SUFFIXES = (".md", ".txt.lock", ".lock")
_FINGERPRINT_SKIP_NAMES = (".gitattributes", "LICENSE", "LICENCE")
_FULL_HASH_LIMIT = 4 * 1024 * 1024
_EDGE_BYTES = 1024 * 1024


# --------------------------------------------------------------------------------------------
# Shared Hugging Face helpers (also used by emomix.encoders.text)
# --------------------------------------------------------------------------------------------


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


class _FrozenEvalMixin:
    """Keeps frozen sub-modules in eval mode while the encoder trains.

    Frozen layers then run without dropout, so the states they produce during training equal the
    stored boundary states used by ``forward_from_layer``.
    """

    def _frozen_modules(self) -> list[nn.Module]:  # pragma: no cover - overridden
        return []

    def train(self, mode: bool = True):  # type: ignore[override]
        nn.Module.train(self, mode)  # type: ignore[arg-type]
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self


# --------------------------------------------------------------------------------------------
# The speech encoder
# --------------------------------------------------------------------------------------------


class SpeechSSLEncoder(_FrozenEvalMixin, Encoder):
    """WavLM / HuBERT / wav2vec 2.0 states at 50 frames/s from 16 kHz waveforms.

    ``name_or_path``: hub name (``microsoft/wavlm-base``) or a local ``save_pretrained`` folder.
    ``layers``: hidden-state indices this encoder exposes (0 = input of the first transformer
    layer, ``num_layers`` = last layer; negatives count from the top); ``states`` is the highest
    selected layer, or the model's last hidden state when ``layers`` is None. The feature store
    saves the selected layers as ``layer_<k>``.
    ``trainable_top_layers``: see :meth:`freeze` (0 freezes everything).
    ``config``: a ``transformers`` config (WavLMConfig, HubertConfig, Wav2Vec2Config) to build a
    randomly initialised model instead of loading weights (see :meth:`from_config`).

    Layer drop and SpecAugment masking are switched off: an encoder's output must be a function of
    its input and weights only; augmentation belongs to the training recipe.
    """

    modality = "audio"

    def __init__(
        self,
        name_or_path: str | os.PathLike[str] | None = "microsoft/wavlm-base",
        layers: Sequence[int] | int | None = None,
        trainable_top_layers: int = 0,
        config: Any = None,
        *,
        feature_extractor: Any = None,
        seed: int = 0,
    ):
        super().__init__()
        from transformers import AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar on every predict/serve

        if config is not None:
            # A private copy: the model keeps (and this class edits) the config object it is built from.
            config = copy.deepcopy(config)
            self.revision = f"config:{config_fingerprint(config)}:seed{seed}"
            self.model = seeded_from_config(AutoModel.from_config, config, seed)
            self.name = f"random:{config.model_type}"
            if feature_extractor is None:
                # wav2vec2's convention: layer-normalised CNNs were trained with attention masks.
                feature_extractor = Wav2Vec2FeatureExtractor(
                    feature_size=1,
                    sampling_rate=SAMPLE_RATE,
                    padding_value=0.0,
                    do_normalize=True,
                    return_attention_mask=config.feat_extract_norm == "layer",
                )
        else:
            if name_or_path is None:
                raise ConfigError("SpeechSSLEncoder needs name_or_path (hub name or folder) or a transformers config")
            source = str(name_or_path)
            self.model = load_pretrained(AutoModel.from_pretrained, source, "speech model")
            if feature_extractor is None:
                feature_extractor = load_pretrained(
                    AutoFeatureExtractor.from_pretrained, source, "speech feature extractor"
                )
            local = Path(source).expanduser()
            self.name = local.name if local.is_dir() else source
            self.revision = pretrained_revision(source)

        model_type = getattr(self.model.config, "model_type", "?")
        if model_type not in SUPPORTED_SPEECH_TYPES:
            raise ConfigError(
                f"'{self.name}' is a {model_type} model; SpeechSSLEncoder supports {', '.join(SUPPORTED_SPEECH_TYPES)}"
            )
        extractor_rate = getattr(feature_extractor, "sampling_rate", SAMPLE_RATE)
        if extractor_rate != SAMPLE_RATE:
            raise ConfigError(
                f"'{self.name}' expects {extractor_rate} Hz audio; emomix feeds 16 kHz, use a 16 kHz model"
            )
        self.feature_extractor = feature_extractor
        self.model_type = model_type
        self.model.config.layerdrop = 0.0
        self.model.config.apply_spec_augment = False

        cfg = self.model.config
        self.output_size = int(cfg.hidden_size)
        self.num_layers = int(cfg.num_hidden_layers)
        self.frame_rate = SAMPLE_RATE / math.prod(cfg.conv_stride)
        self.uses_attention_mask = bool(getattr(feature_extractor, "return_attention_mask", False))
        self.stable_layer_norm = bool(getattr(cfg, "do_stable_layer_norm", False))
        self.min_samples = _receptive_field(cfg.conv_kernel, cfg.conv_stride)
        self.layers = normalise_layer_selection(layers, self.num_layers)
        self.state_layer = max(self.layers) if self.layers else self.num_layers
        self.trainable_top_layers = 0
        self.freeze(trainable_top_layers)

    @classmethod
    def from_config(
        cls,
        transformers_config: Any,
        layers: Sequence[int] | int | None = None,
        trainable_top_layers: int = 0,
        *,
        feature_extractor: Any = None,
        seed: int = 0,
    ) -> "SpeechSSLEncoder":
        """A randomly initialised encoder (weights from ``seed``) for tests and benchmarks."""
        return cls(
            None,
            layers=layers,
            trainable_top_layers=trainable_top_layers,
            config=transformers_config,
            feature_extractor=feature_extractor,
            seed=seed,
        )

    # -- identity -----------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Name, revision, layer selection, batching policy and the preprocessing options."""
        fe = self.feature_extractor
        return {
            "name": self.name,
            "revision": self.revision,
            "model_type": self.model_type,
            "layers": list(self.layers) if self.layers else None,
            "state_layer": self.state_layer,
            "attention_mask": self.uses_attention_mask,
            "do_normalize": bool(getattr(fe, "do_normalize", False)),
            "sample_rate": SAMPLE_RATE,
        }

    # -- freezing -----------------------------------------------------------------------------

    def _layer_modules(self) -> nn.ModuleList:
        return self.model.encoder.layers

    def _frozen_modules(self) -> list[nn.Module]:
        model = self.model
        frozen: list[nn.Module] = [
            model.feature_extractor,
            model.feature_projection,
            model.encoder.pos_conv_embed,
            model.encoder.dropout,
        ]
        if not self.stable_layer_norm:
            frozen.append(model.encoder.layer_norm)
        elif self.trainable_top_layers == 0:
            frozen.append(model.encoder.layer_norm)
        frozen.extend(self._layer_modules()[: self.num_layers - self.trainable_top_layers])
        if self.trainable_top_layers == 0 and getattr(model, "adapter", None) is not None:
            frozen.append(model.adapter)
        return frozen

    def freeze(self, trainable_top_layers: int = 0) -> None:
        """Freeze the CNN, feature projection, positional conv and all but the top ``k`` layers.

        With ``k > 0`` the final layer norm of stable-layer-norm models and any adapter on top
        stay trainable too. Frozen parts also stay in eval mode during training (no dropout).
        """
        k = int(trainable_top_layers)
        if not 0 <= k <= self.num_layers:
            raise ConfigError(f"trainable_top_layers must be between 0 and {self.num_layers}, got {k}")
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        for layer in self._layer_modules()[self.num_layers - k :]:
            for parameter in layer.parameters():
                parameter.requires_grad_(True)
        if k > 0:
            if self.stable_layer_norm:
                self.model.encoder.layer_norm.requires_grad_(True)
            if getattr(self.model, "adapter", None) is not None:
                self.model.adapter.requires_grad_(True)
        self.trainable_top_layers = k
        self.train(self.training)

    # -- encoding -----------------------------------------------------------------------------

    def output_lengths(self, num_samples: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Frames produced for waveforms of the given sample counts (the model's own formula)."""
        lengths = torch.as_tensor(num_samples, dtype=torch.long)
        return self.model._get_feat_extract_output_lengths(lengths).to(torch.long)

    def _prepare(self, inputs: Sequence[Any]) -> tuple[list[np.ndarray], list[bool]]:
        if len(inputs) == 0:
            raise ValueError("cannot encode an empty batch")
        waves, padded = [], []
        for index, item in enumerate(inputs):
            wave = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            if wave.ndim != 1:
                raise AudioError(
                    f"waveform {index} of the batch has shape {wave.shape}; encoders take 1-D mono 16 kHz "
                    "float32 arrays (load audio with emomix.audio, which downmixes and resamples)"
                )
            if wave.size == 0:
                raise AudioError(f"waveform {index} of the batch is empty; drop empty utterances before encoding")
            wave = wave.astype(np.float32, copy=False)
            if not np.all(np.isfinite(wave)):
                raise AudioError(f"waveform {index} of the batch holds NaN or infinite samples")
            short = wave.size < self.min_samples
            if short:
                # Shorter than one CNN receptive field (25 ms) gives zero frames; pad to one frame.
                wave = np.pad(wave, (0, self.min_samples - wave.size))
            waves.append(wave)
            padded.append(short)
        return waves, padded

    def _run(self, waves: list[np.ndarray], need_hidden: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        device = next(self.model.parameters()).device
        features = self.feature_extractor(
            waves,
            sampling_rate=SAMPLE_RATE,
            padding=True,
            return_attention_mask=self.uses_attention_mask,
            return_tensors="pt",
        )
        input_values = features["input_values"].to(device=device, dtype=next(self.model.parameters()).dtype)
        attention_mask = features.get("attention_mask") if self.uses_attention_mask else None
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        output = self.model(input_values, attention_mask=attention_mask, output_hidden_states=need_hidden)
        return output.last_hidden_state, (tuple(output.hidden_states) if need_hidden else None)

    def forward(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        """Encode 16 kHz mono float32 waveforms (numpy or torch, 1-D) into ``B × T × hidden`` states.

        ``extras["padded_short"]`` flags inputs shorter than one frame (400 samples) that were
        zero-padded to one frame. Silence encodes like any other signal.
        """
        waves, padded_short = self._prepare(inputs)
        need_hidden = output_hidden_states or self.state_layer != self.num_layers
        lengths = self.output_lengths([w.size for w in waves])

        if self.uses_attention_mask:
            groups = [list(range(len(waves)))]
        else:
            by_length: dict[int, list[int]] = {}
            for index, wave in enumerate(waves):
                by_length.setdefault(wave.size, []).append(index)
            groups = list(by_length.values())

        last: list[torch.Tensor | None] = [None] * len(waves)
        hidden: list[list[torch.Tensor | None]] = [[None] * len(waves) for _ in range(self.num_layers + 1)]
        for group in groups:
            group_last, group_hidden = self._run([waves[i] for i in group], need_hidden)
            for row, index in enumerate(group):
                length = int(lengths[index])
                last[index] = group_last[row, :length]
                if group_hidden is not None:
                    for layer, states in enumerate(group_hidden):
                        hidden[layer][index] = states[row, :length]

        mask = _lengths_to_mask(lengths, device=last[0].device)
        last_padded = _pad(last)
        hidden_padded = tuple(_pad(per_layer) for per_layer in hidden) if need_hidden else None
        states = last_padded if self.state_layer == self.num_layers else hidden_padded[self.state_layer]
        return EncoderOutput(
            states=states,
            mask=mask,
            hidden_states=hidden_padded if output_hidden_states else None,
            extras={"padded_short": padded_short, "num_frames": lengths.tolist()},
        )

    def forward_from_layer(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        start_layer: int,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Run only transformer layers ``start_layer+1 … num_layers`` on stored boundary states.

        ``hidden`` (``B × T × D``) is hidden state ``start_layer`` as :meth:`forward` returns it in
        ``hidden_states`` (the input of layer ``start_layer+1``; ``0`` is the input of the first
        layer); ``mask`` (``B × T`` bool) marks valid frames. The feature store keeps the states
        entering layer ``L−k`` so that each epoch of partial fine-tuning runs only the top ``k``
        layers. In ``hidden_states`` the entries below ``start_layer`` are None.
        """
        if not 0 <= start_layer <= self.num_layers:
            raise ConfigError(f"start_layer must be between 0 and {self.num_layers}, got {start_layer}")
        if self.state_layer < start_layer:
            raise ConfigError(
                f"this encoder's states come from layer {self.state_layer}, below start_layer {start_layer}"
            )
        from transformers.masking_utils import create_bidirectional_mask

        mask = mask.to(device=hidden.device, dtype=torch.bool)
        states = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        layers = self._layer_modules()
        batch, frames, _ = states.shape
        if self.model_type == "wavlm":
            # Only WavLM's first layer owns the relative position embedding; later layers reuse it.
            attention = layers[0].attention
            bias = attention.compute_bias(frames, frames)
            position_bias = bias.unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * attention.num_heads, frames, frames)
            # The full forward passes no mask when nothing is padded; do the same (and avoid
            # torch's warning about a bool padding mask next to a float position bias).
            layer_mask: Any = None if bool(mask.all()) else mask
        else:
            position_bias = None
            layer_mask = create_bidirectional_mask(
                config=self.model.config, inputs_embeds=states, attention_mask=mask
            )

        collected: list[torch.Tensor | None] = [None] * start_layer + [states]
        for index in range(start_layer, self.num_layers):
            layer = layers[index]
            if self.model_type == "wavlm":
                if self.stable_layer_norm:
                    states, position_bias = layer(states, attention_mask=layer_mask, position_bias=position_bias)
                else:
                    states, position_bias = layer(
                        states, attention_mask=layer_mask, position_bias=position_bias, index=index
                    )
            else:
                states = layer(states, attention_mask=layer_mask)
            collected.append(states)
        last = states
        if self.stable_layer_norm:
            last = self.model.encoder.layer_norm(last)
        if getattr(self.model, "adapter", None) is not None:
            last = self.model.adapter(last)
        valid = mask.unsqueeze(-1).to(last.dtype)
        selected = last if self.state_layer == self.num_layers else collected[self.state_layer]
        hidden_out = (
            tuple(None if h is None else h * valid for h in collected) if output_hidden_states else None
        )
        return EncoderOutput(states=selected * valid, mask=mask, hidden_states=hidden_out)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Plain helpers
# --------------------------------------------------------------------------------------------


def _receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples needed for one output frame of a stack of 1-D convolutions."""
    samples = 1
    for kernel, stride in zip(reversed(list(kernels)), reversed(list(strides))):
        samples = (samples - 1) * stride + kernel
    return samples


def _lengths_to_mask(lengths: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    lengths = lengths.to(device)
    steps = torch.arange(int(lengths.max()) if lengths.numel() else 0, device=device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def _pad(items: list[torch.Tensor | None]) -> torch.Tensor:
    return nn.utils.rnn.pad_sequence([item for item in items], batch_first=True)  # type: ignore[misc]
