"""Self-supervised speech encoders (WavLM, HuBERT, wav2vec 2.0) from ``transformers``.

:class:`SpeechSSLEncoder` wraps ``AutoModel`` + ``AutoFeatureExtractor`` for a hub name or a local
folder saved with ``save_pretrained``. It outputs one 20 ms frame per 320 samples (50 frames/s)
of ``hidden_size`` features, and every layer on request.

Batching policy (why outputs never depend on which utterances share a batch), chosen from the
model's config (``batching``):

* ``"cnn_alone"`` when the convolutional feature encoder is group-normalised
  (``config.feat_extract_norm == "group"``: wavlm-base, hubert-base, wav2vec2-base). Its first
  layer normalises each channel over the whole signal, so zero-padding would change every frame.
  The CNN therefore runs on each waveform unpadded (waveforms of exactly the same length share a
  call), then the feature projection and the transformer run on the zero-padded batch of CNN
  frames with a frame mask (padded frames are zeroed before the positional convolution and never
  attended to; WavLM's relative position bias depends only on frame distances).
* ``"padded"`` otherwise (layer-normalised CNNs, e.g. wav2vec2-large-lv60, wavlm-large): each
  frame is normalised on its own and only sees its own 400-sample window, so the whole batch is
  zero-padded and the sample mask is passed to the model. Each waveform is normalised over its
  own samples either way.

Either way an utterance gets the same states (to float rounding) alone or in any batch, and the
frame mask comes from the model's ``_get_feat_extract_output_lengths``.

Loading (offline-first) and the revision fingerprint come from :mod:`emomix.encoders.hub`.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
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

# WavLM's attention hands torch a bool padding mask next to its float relative-position bias;
# torch converts the bool mask itself (same result) and warns that mixing the types is deprecated.
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask", category=UserWarning)


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
        # Not part of config()/identity: both policies give an utterance's states alone (module doc).
        self.batching = "cnn_alone" if getattr(cfg, "feat_extract_norm", "group") == "group" else "padded"
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

    def _normalised(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Each waveform through the model's feature extractor on its own (its ``do_normalize``
        statistics never see another utterance or padding)."""
        out = []
        for wave in waves:
            values = self.feature_extractor(wave, sampling_rate=SAMPLE_RATE, return_attention_mask=False)
            out.append(np.asarray(values["input_values"][0], dtype=np.float32))
        return out

    def _run_padded(
        self, waves: list[np.ndarray], lengths: torch.Tensor, need_hidden: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The ``"padded"`` policy: the whole model on the zero-padded batch with its sample mask."""
        parameter = next(self.model.parameters())
        normalised = self._normalised(waves)
        samples = torch.zeros(len(waves), max(w.size for w in normalised), dtype=parameter.dtype)
        attention = torch.zeros(samples.shape, dtype=torch.long)
        for row, wave in enumerate(normalised):
            samples[row, : wave.size] = torch.from_numpy(wave)
            attention[row, : wave.size] = 1
        output = self.model(
            samples.to(parameter.device),
            attention_mask=attention.to(parameter.device),
            output_hidden_states=need_hidden,
        )
        return output.last_hidden_state, (tuple(output.hidden_states) if need_hidden else None)

    def _run_cnn_alone(
        self, waves: list[np.ndarray], lengths: torch.Tensor, need_hidden: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The ``"cnn_alone"`` policy: the CNN on each distinct length unpadded, then the feature
        projection and the transformer on the padded batch of frames with a frame mask."""
        parameter = next(self.model.parameters())
        normalised = self._normalised(waves)
        by_length: dict[int, list[int]] = {}
        for index, wave in enumerate(normalised):
            by_length.setdefault(wave.size, []).append(index)
        frames: list[torch.Tensor | None] = [None] * len(waves)
        for group in by_length.values():
            samples = torch.from_numpy(np.stack([normalised[i] for i in group]))
            conv = self.model.feature_extractor(samples.to(device=parameter.device, dtype=parameter.dtype))
            for row, index in enumerate(group):
                frames[index] = conv[row].transpose(0, 1)  # T × C
        mask = _lengths_to_mask(lengths, device=parameter.device)
        projected = self.model.feature_projection(_pad(frames))
        if isinstance(projected, tuple):  # wavlm / wav2vec2 also return the normalised CNN frames
            projected = projected[0]
        output = self.forward_from_layer(self._encoder_input(projected, mask), mask, 0, need_hidden)
        # output.states is the last layer's output when state_layer is the top; otherwise forward()
        # takes the states from hidden_states (need_hidden is then set).
        return output.states, output.hidden_states

    def _encoder_input(self, projected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden state 0 (the first layer's input) from projected CNN frames, as the model's
        encoder makes it: padded frames zeroed, positional convolution added, then the layer
        norm (not in stable-layer-norm models, which normalise inside each layer) and dropout."""
        encoder = self.model.encoder
        hidden = projected * mask.unsqueeze(-1).to(projected.dtype)
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not self.stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        return encoder.dropout(hidden)

    def forward(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        """Encode 16 kHz mono float32 waveforms (numpy or torch, 1-D) into ``B × T × hidden`` states.

        ``extras["padded_short"]`` flags inputs shorter than one frame (400 samples) that were
        zero-padded to one frame. Silence encodes like any other signal. How a batch is run:
        ``batching`` (module doc).
        """
        waves, padded_short = self._prepare(inputs)
        need_hidden = output_hidden_states or self.state_layer != self.num_layers
        lengths = self.output_lengths([w.size for w in waves])
        run = self._run_cnn_alone if self.batching == "cnn_alone" else self._run_padded
        last, hidden = run(waves, lengths, need_hidden)
        mask = _lengths_to_mask(lengths, device=last.device)
        valid = mask.unsqueeze(-1).to(last.dtype)
        last = last[:, : mask.shape[1]] * valid
        hidden_states = None if hidden is None else tuple(h[:, : mask.shape[1]] * valid for h in hidden)
        # need_hidden holds whenever the states come from a lower layer
        states = (
            last if hidden_states is None or self.state_layer == self.num_layers else hidden_states[self.state_layer]
        )
        return EncoderOutput(
            states=states,
            mask=mask,
            hidden_states=hidden_states if output_hidden_states else None,
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
