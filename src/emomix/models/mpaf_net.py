"""MPAF-Net (``mpaf_net``) and its early-fusion baseline (``concat_fusion``).

The design (shared/papers/mpaf-net.txt; MODELS.md §2), in our words:

1. **One vector per modality.** Text: the first-token ([CLS]) state of the text encoder's last layer
   ``h_t``. Audio: MFCC frames through a unidirectional LSTM(128), the state after the last valid
   frame ``h_a``. Video: grayscale face crops through a small per-frame CNN, then a unidirectional
   LSTM(256), the state after the last valid frame ``h_v``; the CNN and LSTM train with the model
   (:class:`FaceVideoEncoder`).
2. **Pairwise sigmoid attention.** For each pair of modalities, both vectors are projected to a
   common width (ReLU, dropout), a small MLP scores the pair from the raw and projected vectors,
   and ``α = sigmoid(score)`` mixes the two projections: ``f = α·p1 + (1−α)·p2``. Three modules:
   text–audio, text–video, audio–video.
3. **Multi-path fusion.** The classifier reads the unimodal vectors (after dropout) *and* the three
   interaction vectors side by side: ``[h_t; h_a; h_v; f_ta; f_tv; f_av]`` → MLP with strong
   dropout → logits. The interaction features augment the unimodal ones instead of replacing them.
4. **Loss.** Focal loss with γ=2 and per-class α from inverse training frequency.

``concat_fusion`` is the paper's baseline: the same three encoders, ``[h_t; h_a; h_v]`` → MLP, trained
with class-weighted cross-entropy (focal loss with γ=0 is exactly that).

Decisions where the paper is silent or ambiguous (each one a :class:`MPAFConfig` field):

- ``text_source="cls"``: ``h_t`` is the first token of the last layer's states; ``"pooled"`` reads
  the text input's ``pooled`` vector instead (its width given as ``input_dims["text_pooled"]``).
- ``audio_source="lstm"``: ``h_a`` is the audio LSTM's last state, as in the paper. ``"pooled"``
  reads the audio input's utterance vector instead (``features.audio.utterance``, e.g. ComParE
  functionals; its width ``input_dims["audio_pooled"]``), as ``text_source="pooled"`` does for text:
  off by default because the paper's audio path is the LSTM over frames.
- ``audio_hidden=128``, ``video_hidden=256``: LSTM widths. The audio LSTM reads whatever frame
  features the batch carries (40 MFCC in the paper's recipe; openSMILE LLDs or SSL frames work the
  same). The paper pads every signal to 8 s and reads the LSTM after the padding; we read the state
  after the last *valid* frame (packed sequences), so padding never changes the output — cutting or
  padding to 8 s, if wanted, is the data pipeline's choice. Valid frames are a prefix of each row.
- ``lstm_init="chrono"``, ``chrono_max_frames=100``: how the LSTMs start (the paper does not say).
  PyTorch's default gives every gate a bias near 0, so the forget gate starts at about 0.5 and the
  last state remembers only the last few frames. The chrono initialisation (Tallec & Ollivier,
  2018) draws each unit's forget-gate bias as ``log U(1, chrono_max_frames - 1)`` and its
  input-gate bias as the negative, other biases 0: units start out remembering over 1 to ~100
  frames, so the last state begins as a summary of the whole utterance. The architecture and the
  "last state" reading are unchanged; ``lstm_init="pytorch"`` keeps PyTorch's initialisation. The
  measurements behind this choice are in docs/models.md (MPAF-Net).
- Video (``video_frontend="cnn"``): the batch's video ``states`` are ``B × T × S × S`` face crops,
  0–255, as the ``faces`` encoder stores them (Haar-cascade face, grayscale, 64×64, at most 150
  frames; see :mod:`emomix.audio.video`); ``input_dims["video"]`` is the crop side ``S``. The paper
  does not describe its per-frame encoder: ours is conv-BN-ReLU-maxpool per
  ``video_cnn_channels`` (16, 32, 64) → linear → ReLU (``video_frame_dim=128``). Clips are not
  padded to 150 frames: as for audio, the LSTM state after the last valid frame is read.
  ``video_frontend="frames"`` instead runs the LSTM on per-frame feature vectors (``B × T × D``).
- Video augmentation (the paper's rotation and crop): in training mode only, each utterance's
  frames get one random rotation (±``video_rotate_degrees``, 10) and square crop (side a
  fraction ``video_crop_scale``–1 of the frame, 0.85) resized back, drawn from the seeded global
  torch generator; ``video_augment=False`` turns it off. It applies to every training utterance;
  with ``training.augment``, minority-class copies share their source's stored crops and get
  their own random views, which is the paper's minority-class video augmentation.
- Input scale: the LSTMs read the frame features as they come, without normalising them. Give
  them standardised features (the pipeline z-scores frames per speaker with ``SpeakerNormaliser``);
  raw MFCCs, whose first coefficient is in the hundreds, saturate the gates.
- ``pair_dim=128`` (the common width ``d_out`` of the pairwise projections), ``pair_hidden=128``
  (the scoring MLP), ``pair_dropout=0.2``.
- The pairwise modules read the encoder outputs before the feature dropout; the dropout
  (``feature_dropout=0.2``) applies to the unimodal copies that enter the classifier.
- ``classifier_hidden=256``, ``classifier_layers=2``, ``classifier_dropout=0.5``: the "strongly
  regularised" classifier, ReLU between layers (the paper lists dropout 0.2 overall and different
  rates per level; ``concat_fusion`` uses 0.2 throughout).
- ``fusion="multipath"`` (MPAF-Net) or ``"concat"`` (the baseline); ``focal_gamma=2.0`` (0 for the
  baseline, i.e. weighted cross-entropy). α comes from :meth:`MPAFNetModel.set_class_weights`.
- **Missing modalities.** The model is built for ``config.modalities`` and every path involving an
  absent modality is dropped: with text and audio only (the common case, hence the default
  ``modalities=("audio", "text")``; the paper's recipe sets all three) ``h = [h_t; h_a; f_ta]``;
  with one modality the classifier reads that modality's vector alone (``mpaf_net_text``,
  ``mpaf_net_audio``).

``aux`` per row: ``alpha_ta``, ``alpha_tv``, ``alpha_av`` (B, the pairwise weights of the first
modality of each pair, for the pairs in use), ``h_text`` / ``h_audio`` / ``h_video`` (B×width, the
unimodal vectors).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from emomix.encoders.video import FaceFrameCNN, random_rotate_crop
from emomix.errors import ConfigError
from emomix.models.base import EmotionModel, ModelConfig, register_model
from emomix.models.blocks import MLP, PairwiseSigmoidAttention
from emomix.models.inputs import Batch, ModalityInput, ModelOutput
from emomix.models.losses import focal_loss

# the order of the paths in the fused vector, and the short names of the pairs
MODALITY_ORDER = ("text", "audio", "video")
SHORT = {"text": "t", "audio": "a", "video": "v"}
LSTM_INITS = ("chrono", "pytorch")
VIDEO_FRONTENDS = ("cnn", "frames")


@dataclass
class MPAFConfig(ModelConfig):
    """Configuration of :class:`MPAFNetModel` and :class:`ConcatFusionModel`; see the module docstring."""

    modalities: tuple[str, ...] = ("audio", "text")
    fusion: str = "multipath"
    text_source: str = "cls"
    audio_source: str = "lstm"
    audio_hidden: int = 128
    video_hidden: int = 256
    pair_dim: int = 128
    pair_hidden: int = 128
    pair_dropout: float = 0.2
    feature_dropout: float = 0.2
    classifier_hidden: int = 256
    classifier_layers: int = 2
    classifier_dropout: float = 0.5
    focal_gamma: float = 2.0
    lstm_init: str = "chrono"
    chrono_max_frames: float = 100.0
    video_frontend: str = "cnn"
    video_cnn_channels: tuple[int, ...] = (16, 32, 64)
    video_frame_dim: int = 128
    video_augment: bool = True
    video_rotate_degrees: float = 10.0
    video_crop_scale: float = 0.85

    def validate(self) -> None:
        super().validate()
        self.require_choice(
            fusion=("multipath", "concat"),
            text_source=("cls", "pooled"),
            lstm_init=LSTM_INITS,
            video_frontend=VIDEO_FRONTENDS,
        )
        self.require_choice(audio_source=("lstm", "pooled"))
        self.video_cnn_channels = tuple(int(c) for c in self.video_cnn_channels)
        if not self.video_cnn_channels or any(c <= 0 for c in self.video_cnn_channels):
            raise ConfigError(
                f"{type(self).__name__}.video_cnn_channels: expected positive channel widths, "
                f"got {list(self.video_cnn_channels)}"
            )
        if not 0 <= self.video_rotate_degrees <= 45:
            raise ConfigError(
                f"{type(self).__name__}.video_rotate_degrees: expected 0 to 45 degrees, got {self.video_rotate_degrees}"
            )
        if not 0.5 <= self.video_crop_scale <= 1:
            raise ConfigError(
                f"{type(self).__name__}.video_crop_scale: expected a fraction from 0.5 to 1, "
                f"got {self.video_crop_scale}"
            )
        self.require_positive("video_frame_dim")
        if not self.chrono_max_frames > 2:
            raise ConfigError(
                f"{type(self).__name__}.chrono_max_frames: expected more than 2 frames, got {self.chrono_max_frames}"
            )
        self.require_positive(
            "audio_hidden", "video_hidden", "pair_dim", "pair_hidden", "classifier_hidden", "classifier_layers"
        )
        self.require_fraction("pair_dropout", "feature_dropout", "classifier_dropout")
        self.require_non_negative("focal_gamma")


class FaceVideoEncoder(nn.Module):
    """MPAF-Net's video path, trained with the model: face crops → per-frame CNN → LSTM, last valid state.

    Reads ``states`` of ``B × T × S × S`` grayscale face crops with values 0–255 (the ``faces``
    encoder's stored stacks) and its ``B × T`` mask. Only the valid frames go through the CNN (so
    batch-norm statistics never see padding). In training mode, with ``video_augment``, each
    utterance's frames are rotated and cropped by one random transform (:func:`random_rotate_crop`,
    drawn from the global torch generator, which the trainer seeds); in eval mode the crops are
    used as they are.
    """

    def __init__(self, crop_size: int, config: MPAFConfig):
        super().__init__()
        self.crop_size = int(crop_size)
        self.augment = bool(config.video_augment)
        self.rotate_degrees, self.crop_scale = float(config.video_rotate_degrees), float(config.video_crop_scale)
        self.cnn = FaceFrameCNN(self.crop_size, config.video_cnn_channels, config.video_frame_dim)
        self.lstm = LastStateLSTM(
            config.video_frame_dim, config.video_hidden, config.lstm_init, config.chrono_max_frames
        )

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if states.dim() != 4 or tuple(states.shape[2:]) != (self.crop_size, self.crop_size):
            raise ConfigError(
                f"MPAF-Net's video CNN reads B × T × {self.crop_size} × {self.crop_size} face crops, got "
                f"video states of shape {tuple(states.shape)}; extract video with the 'faces' encoder "
                "(or set model.config.video_frontend: frames for per-frame feature vectors)"
            )
        mask = mask.bool()
        frames = states[mask].float() / 255.0
        if self.training and self.augment:
            rows = torch.arange(states.shape[0], device=states.device).unsqueeze(1).expand_as(mask)[mask]
            frames = random_rotate_crop(frames, rows, states.shape[0], self.rotate_degrees, self.crop_scale)
        encoded = self.cnn(frames)
        per_frame = encoded.new_zeros(*mask.shape, encoded.shape[-1])
        per_frame[mask] = encoded
        return self.lstm(per_frame, mask)


class LastStateLSTM(nn.Module):
    """A unidirectional LSTM over the valid prefix of each row; returns the state after the last
    valid frame (``B × hidden``), so padded frames never change it.

    ``init="chrono"`` sets the gate biases as the chrono initialisation does (forget gate
    ``log U(1, max_frames - 1)``, input gate its negative, the rest 0; see the module docstring);
    ``"pytorch"`` keeps PyTorch's default.
    """

    def __init__(self, in_dim: int, hidden_dim: int, init: str = "chrono", max_frames: float = 100.0):
        super().__init__()
        if init not in LSTM_INITS:
            raise ConfigError(f"LastStateLSTM: init must be one of {', '.join(LSTM_INITS)}; got {init!r}")
        self.lstm = nn.LSTM(in_dim, hidden_dim, batch_first=True)
        if init == "chrono":
            chrono_init(self.lstm, max_frames)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.bool().sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(states, lengths, batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)
        return hidden[-1]


@register_model("mpaf_net", "MPAF-Net: unimodal vectors plus pairwise sigmoid-attention interactions, side by side")
@register_model(
    "mpaf_net_text", "MPAF-Net on text only (the text vector alone into the classifier)", modalities=("text",)
)
@register_model(
    "mpaf_net_audio", "MPAF-Net on audio only (the audio LSTM state alone into the classifier)", modalities=("audio",)
)
class MPAFNetModel(EmotionModel[Batch]):
    """MPAF-Net: multi-path attention fusion of text, audio and video vectors (see the module docstring)."""

    name = "mpaf_net"
    paper = (
        "Li, Qi, Deng & Shi. Research on Multimodal Emotion Recognition Method Based on Multi-Path Feature "
        "Fusion and Comprehensive Optimization Strategy (MPAF-Net). Current Science (currentscience.info)"
    )
    config_class = MPAFConfig
    config: MPAFConfig
    batch_kind = "utterance"
    supported_modalities = ("audio", "text", "video")

    def __init__(self, config: MPAFConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        self.modalities = tuple(m for m in MODALITY_ORDER if m in config.modalities)
        widths: dict[str, int] = {}
        self.encoders = nn.ModuleDict()
        if "text" in self.modalities:
            if config.text_source == "pooled":
                if "text_pooled" not in input_dims:
                    raise ConfigError(
                        f"{self.name}: text_source='pooled' needs input_dims['text_pooled'] (the width of "
                        "the text pooled vector); give it or set text_source='cls'"
                    )
                widths["text"] = int(input_dims["text_pooled"])
            else:
                widths["text"] = int(input_dims["text"])
        if "audio" in self.modalities and config.audio_source == "pooled":  # the utterance vector, no LSTM
            if "audio_pooled" not in input_dims:
                raise ConfigError(
                    f"{self.name}: audio_source='pooled' needs the audio utterance vector "
                    "(input_dims['audio_pooled']); declare features.audio.utterance or set audio_source='lstm'"
                )
            widths["audio"] = int(input_dims["audio_pooled"])
        elif "audio" in self.modalities:
            self.encoders["audio"] = LastStateLSTM(
                int(input_dims["audio"]), config.audio_hidden, config.lstm_init, config.chrono_max_frames
            )
            widths["audio"] = config.audio_hidden
        if "video" in self.modalities:
            if config.video_frontend == "cnn":
                self.encoders["video"] = FaceVideoEncoder(int(input_dims["video"]), config)
            else:
                self.encoders["video"] = LastStateLSTM(
                    int(input_dims["video"]), config.video_hidden, config.lstm_init, config.chrono_max_frames
                )
            widths["video"] = config.video_hidden
        self.widths = widths
        self.feature_dropout = nn.Dropout(config.feature_dropout)
        self.pairs: tuple[tuple[str, str], ...] = ()
        self.pair_modules = nn.ModuleDict()
        if config.fusion == "multipath":
            self.pairs = tuple(
                (first, second) for i, first in enumerate(self.modalities) for second in self.modalities[i + 1 :]
            )
            for first, second in self.pairs:
                self.pair_modules[SHORT[first] + SHORT[second]] = PairwiseSigmoidAttention(
                    widths[first],
                    widths[second],
                    config.pair_dim,
                    hidden_dim=config.pair_hidden,
                    dropout=config.pair_dropout,
                )
        fused_width = sum(widths.values()) + len(self.pairs) * config.pair_dim
        self.classifier = MLP(
            fused_width,
            config.classifier_hidden,
            num_classes,
            num_layers=config.classifier_layers,
            dropout=config.classifier_dropout,
            activation="relu",
        )

    def encode(self, modality: str, inputs: ModalityInput) -> torch.Tensor:
        """The utterance vector of one modality (``B × width``)."""
        if modality == "text":
            if self.config.text_source == "pooled":
                if inputs.pooled is None:
                    raise ConfigError(
                        f"{self.name}: text_source='pooled' but the batch's text input has no pooled "
                        "vectors; extract them or set text_source='cls'"
                    )
                return inputs.pooled
            return inputs.states[:, 0, :]
        if modality == "audio" and self.config.audio_source == "pooled":
            if inputs.pooled is None:
                raise ConfigError(
                    f"{self.name}: audio_source='pooled' but the batch's audio input has no pooled "
                    "vectors; declare features.audio.utterance or set audio_source='lstm'"
                )
            return inputs.pooled
        return self.encoders[modality](inputs.states, inputs.mask)

    def forward(self, batch: Batch) -> ModelOutput:
        missing = [m for m in self.modalities if m not in batch.inputs]
        if missing:
            raise ConfigError(
                f"{self.name} was built for {', '.join(self.modalities)} but the batch has no "
                f"{', '.join(missing)} input"
            )
        vectors = {m: self.encode(m, batch.inputs[m]) for m in self.modalities}
        aux: dict[str, torch.Tensor] = {f"h_{m}": v for m, v in vectors.items()}
        paths = [self.feature_dropout(vectors[m]) for m in self.modalities]
        for first, second in self.pairs:
            key = SHORT[first] + SHORT[second]
            fused, alpha = self.pair_modules[key](vectors[first], vectors[second])
            aux[f"alpha_{key}"] = alpha.squeeze(-1)
            paths.append(fused)
        return ModelOutput(logits=self.classifier(torch.cat(paths, dim=-1)), aux=aux)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Focal loss (γ = ``focal_gamma``, α = class weights); with γ=0 it is weighted cross-entropy."""
        total = focal_loss(output.logits, labels, alpha=self.class_weights, gamma=self.config.focal_gamma)
        name = "focal" if self.config.focal_gamma > 0 else "cross_entropy"
        return total, {name: float(total.detach()), "total": float(total.detach())}


@register_model(
    "concat_fusion",
    "Early-fusion baseline: [h_t; h_a; h_v] from MPAF-Net's encoders into an MLP, weighted CE",
    fusion="concat",
    focal_gamma=0.0,
    classifier_dropout=0.2,
)
class ConcatFusionModel(MPAFNetModel):
    """The MPAF-Net paper's baseline: concatenated unimodal vectors into an MLP (``fusion="concat"``)."""

    name = "concat_fusion"


def chrono_init(lstm: nn.LSTM, max_frames: float) -> None:
    """Chrono initialisation of an LSTM's biases, in place: per unit, forget-gate bias
    ``log U(1, max_frames - 1)``, input-gate bias its negative, every other bias 0 (PyTorch packs
    the gates as input, forget, cell, output; ``bias_ih`` and ``bias_hh`` add up)."""
    hidden = lstm.hidden_size
    with torch.no_grad():
        for name, bias in lstm.named_parameters():
            if not name.startswith("bias_"):
                continue
            bias.zero_()
            if name.startswith("bias_ih"):
                forget = torch.log(torch.empty(hidden).uniform_(1.0, max_frames - 1.0))
                bias[hidden : 2 * hidden] = forget
                bias[:hidden] = -forget
