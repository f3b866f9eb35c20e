"""MPAF-Net (``mpaf_net``) and its early-fusion baseline (``concat_fusion``).

The design (shared/papers/mpaf-net.txt; MODELS.md §2), in our words:

1. **One vector per modality.** Text: the first-token ([CLS]) state of the text encoder's last layer
   ``h_t``. Audio: MFCC frames through a unidirectional LSTM(128), the state after the last valid
   frame ``h_a``. Video: per-frame face features through a unidirectional LSTM(256), the state after
   the last valid frame ``h_v``.
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
- ``audio_hidden=128``, ``video_hidden=256``: LSTM widths. The audio LSTM reads whatever frame
  features the batch carries (40 MFCC in the paper's recipe; openSMILE LLDs or SSL frames work the
  same). The paper pads every signal to 8 s and reads the LSTM after the padding; we read the state
  after the last *valid* frame (packed sequences), so padding never changes the output — cutting or
  padding to 8 s, if wanted, is the data pipeline's choice. Valid frames are a prefix of each row.
- ``lstm_init="chrono"``, ``chrono_max_frames=100``: how the LSTMs start (the paper does not say).
  PyTorch's default gives every gate a bias near 0, so the forget gate starts at about 0.5 and the
  last state remembers only the last few frames; on the synthetic corpus (about 70 frames per
  utterance) the audio LSTM then sits at chance for 5-6 epochs and ends near chance within the
  test budget of 15 (UA 0.35-0.50, three seeds). The chrono initialisation (Tallec & Ollivier,
  2018) draws each unit's forget-gate bias as ``log U(1, chrono_max_frames - 1)`` and its
  input-gate bias as the negative, other biases 0: units start out remembering over 1 to ~100
  frames, so the last state begins as a summary of the whole utterance (audio-only UA 0.69-0.74
  over five seeds; a trial that also re-initialised the weights gave a mean UA of 0.70-0.73 for
  ``chrono_max_frames`` from 20 to 400). The architecture and the "last state"
  reading are unchanged. ``lstm_init="pytorch"`` keeps PyTorch's initialisation.
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

from emomix.errors import ConfigError
from emomix.models.base import EmotionModel, ModelConfig, register_model
from emomix.models.blocks import MLP, PairwiseSigmoidAttention
from emomix.models.inputs import Batch, ModalityInput, ModelOutput
from emomix.models.losses import focal_loss

# the order of the paths in the fused vector, and the short names of the pairs
MODALITY_ORDER = ("text", "audio", "video")
SHORT = {"text": "t", "audio": "a", "video": "v"}
LSTM_INITS = ("chrono", "pytorch")


@dataclass
class MPAFConfig(ModelConfig):
    """Configuration of :class:`MPAFNetModel` and :class:`ConcatFusionModel`; see the module docstring."""

    modalities: tuple[str, ...] = ("audio", "text")
    fusion: str = "multipath"
    text_source: str = "cls"
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

    def validate(self) -> None:
        super().validate()
        self.require_choice(fusion=("multipath", "concat"), text_source=("cls", "pooled"), lstm_init=LSTM_INITS)
        if not self.chrono_max_frames > 2:
            raise ConfigError(f"{type(self).__name__}.chrono_max_frames: expected more than 2 frames, "
                              f"got {self.chrono_max_frames}")
        self.require_positive("audio_hidden", "video_hidden", "pair_dim", "pair_hidden", "classifier_hidden", "classifier_layers")
        self.require_fraction("pair_dropout", "feature_dropout", "classifier_dropout")
        self.require_non_negative("focal_gamma")


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
@register_model("mpaf_net_text", "MPAF-Net on text only (the text vector alone into the classifier)", modalities=("text",))
@register_model("mpaf_net_audio", "MPAF-Net on audio only (the audio LSTM state alone into the classifier)",
                modalities=("audio",))
class MPAFNetModel(EmotionModel[Batch]):
    """MPAF-Net: multi-path attention fusion of text, audio and video vectors (see the module docstring)."""

    name = "mpaf_net"
    paper = ("Li, Qi, Deng & Shi. Research on Multimodal Emotion Recognition Method Based on Multi-Path Feature "
             "Fusion and Comprehensive Optimization Strategy (MPAF-Net). Current Science (currentscience.info)")
    config_class = MPAFConfig
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
                    raise ConfigError(f"{self.name}: text_source='pooled' needs input_dims['text_pooled'] (the width of "
                                      "the text pooled vector); give it or set text_source='cls'")
                widths["text"] = int(input_dims["text_pooled"])
            else:
                widths["text"] = int(input_dims["text"])
        if "audio" in self.modalities:
            self.encoders["audio"] = LastStateLSTM(int(input_dims["audio"]), config.audio_hidden, config.lstm_init,
                                                   config.chrono_max_frames)
            widths["audio"] = config.audio_hidden
        if "video" in self.modalities:
            self.encoders["video"] = LastStateLSTM(int(input_dims["video"]), config.video_hidden, config.lstm_init,
                                                   config.chrono_max_frames)
            widths["video"] = config.video_hidden
        self.widths = widths
        self.feature_dropout = nn.Dropout(config.feature_dropout)
        self.pairs: tuple[tuple[str, str], ...] = ()
        self.pair_modules = nn.ModuleDict()
        if config.fusion == "multipath":
            self.pairs = tuple((first, second) for i, first in enumerate(self.modalities)
                               for second in self.modalities[i + 1:])
            for first, second in self.pairs:
                self.pair_modules[SHORT[first] + SHORT[second]] = PairwiseSigmoidAttention(
                    widths[first], widths[second], config.pair_dim, hidden_dim=config.pair_hidden,
                    dropout=config.pair_dropout)
        fused_width = sum(widths.values()) + len(self.pairs) * config.pair_dim
        self.classifier = MLP(fused_width, config.classifier_hidden, num_classes,
                              num_layers=config.classifier_layers, dropout=config.classifier_dropout,
                              activation="relu")


    def encode(self, modality: str, inputs: ModalityInput) -> torch.Tensor:
        """The utterance vector of one modality (``B × width``)."""
        if modality == "text":
            if self.config.text_source == "pooled":
                if inputs.pooled is None:
                    raise ConfigError(f"{self.name}: text_source='pooled' but the batch's text input has no pooled "
                                      "vectors; extract them or set text_source='cls'")
                return inputs.pooled
            return inputs.states[:, 0, :]
        return self.encoders[modality](inputs.states, inputs.mask)

    def forward(self, batch: Batch) -> ModelOutput:
        missing = [m for m in self.modalities if m not in batch.inputs]
        if missing:
    config: MPAFConfig
            raise ConfigError(f"{self.name} was built for {', '.join(self.modalities)} but the batch has no "
                              f"{', '.join(missing)} input")
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


@register_model("concat_fusion", "Early-fusion baseline: [h_t; h_a; h_v] from MPAF-Net's encoders into an MLP, weighted CE",
                fusion="concat", focal_gamma=0.0, classifier_dropout=0.2)
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
                bias[hidden:2 * hidden] = forget
                bias[:hidden] = -forget
