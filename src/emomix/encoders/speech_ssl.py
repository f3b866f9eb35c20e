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

Loading (offline-first) and the revision fingerprint come from :mod:`emomix.encoders.hub`.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emomix.constants import SAMPLE_RATE
from emomix.encoders.base import Encoder, EncoderOutput
from emomix.encoders.hub import (
    FrozenEvalMixin,
    config_fingerprint,
    load_pretrained,
    normalise_layer_selection,
    pretrained_revision,
    seeded_from_config,
)
from emomix.errors import AudioError, ConfigError

SUPPORTED_SPEECH_TYPES = ("wavlm", "hubert", "wav2vec2")


# --------------------------------------------------------------------------------------------
# The speech encoder
# --------------------------------------------------------------------------------------------


class SpeechSSLEncoder(FrozenEvalMixin, Encoder):
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
            # Any: the transformers class AutoModel picks at run time (attributes differ per family)
            self.model: Any = seeded_from_config(AutoModel.from_config, config, seed)
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
    ) -> SpeechSSLEncoder:
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
        if not self.stable_layer_norm or self.trainable_top_layers == 0:
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

        first = last[0]
        mask = _lengths_to_mask(lengths, device=first.device if first is not None else None)
        last_padded = _pad(last)
        hidden_padded = tuple(_pad(per_layer) for per_layer in hidden) if need_hidden else None
        # need_hidden holds whenever the states come from a lower layer
        states = (
            last_padded
            if hidden_padded is None or self.state_layer == self.num_layers
            else hidden_padded[self.state_layer]
        )
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
            attention: Any = layers[0].attention  # WavLM's attention (transformers; untyped attributes)
            bias = attention.compute_bias(frames, frames)
            position_bias = bias.unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * attention.num_heads, frames, frames)
            # The full forward passes no mask when nothing is padded; do the same (and avoid
            # torch's warning about a bool padding mask next to a float position bias).
            layer_mask: Any = None if bool(mask.all()) else mask
        else:
            position_bias = None
            layer_mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=states, attention_mask=mask)

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
        assert selected is not None  # state_layer >= start_layer is checked above
        hidden_out = tuple(None if h is None else h * valid for h in collected) if output_hidden_states else None
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
