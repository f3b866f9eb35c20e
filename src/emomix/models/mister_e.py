"""MiSTER-E: a mixture of speech, text and cross-modal experts for emotion recognition in
conversations (Dutta, Balaji & Ganapathy, Computer Speech & Language 2026).

Only the abstract is available, so most of the wiring below is ours; every such choice is a
config field (defaults in brackets) and is named here.

1. **Utterance embeddings.** A dialogue is a sequence of utterance vectors per modality
   (``DialogueBatch``, ``B × N × D``) from any speech and text encoder; each is projected to
   ``hidden_dim`` [128] (decision: Linear → GELU → dropout).
2. **Context modelling**, per modality with separate weights: a 1-D convolution over the utterance
   sequence (``context_kernel`` [3]) then a bidirectional GRU (:class:`DialogueContext`) whose
   ``hidden_dim / 2`` states per direction are concatenated, so the enriched sequence keeps
   ``hidden_dim`` (decision). ``context=False`` (ablation ``mister_e_no_context``) replaces it by a
   per-utterance MLP of the same size, so an utterance sees no other.
3. **Three experts**, each a 2-layer MLP classifier (decision) per utterance:
   speech-only on the speech sequence, text-only on the text sequence, and cross-modal: each
   modality's sequence attends over the other's over the whole dialogue
   (:class:`CrossAttentionLayer`, ``cross_heads`` [4], padded utterances masked), the two results
   concatenated. With ``context=False`` the cross-modal expert sees only the same utterance's other
   modality (one key: the attention becomes a learned projection of it), so no expert looks
   across utterances.
4. **Gate**: an MLP (``gate_hidden`` [128]) on ``[speech; text]`` context-enriched vectors per
   utterance → softmax over the experts; the prediction is ``Σ_e gate_e · softmax(logits_e)``,
   returned as ``logits = log(prediction)`` (clamped at 1e-8).
5. **Losses**: NLL of the gated prediction (class-weighted when :meth:`set_class_weights` was
   called) + ``lambda_expert`` [0.5] × Σ of the experts' CE (decision: every expert is also
   trained as a classifier on its own) + ``lambda_scl`` [0.1] × a supervised contrastive loss
   between paired speech and text utterance vectors (the context-enriched sequences; same label
   = positive; temperature ``scl_temperature`` [0.1]) + ``lambda_kl`` [0.1] × the mean KL between
   the gated prediction and each expert's (``kl_detach_gate`` [True]: the gated prediction is a
   fixed teacher, so the term pulls the experts into agreement without flattening the fused
   prediction). Padded utterances (mask False, label -100) are ignored by every term.
6. **Missing modality**: with one modality only its own expert exists and the gate is the constant
   1 (``mister_e_text`` for MELD's text, ``mister_e_audio``); the contrastive and KL terms, which
   need two modalities or two experts, drop out.
7. **Ablations** (the paper reports ablations of each part), each one setting of ``mister_e``:
   ``mister_e_no_supcon`` (``lambda_scl=0``) and ``mister_e_no_kl`` (``lambda_kl=0``): a term with
   weight 0 is not computed and is absent from the loss parts; ``mister_e_uniform_gate``
   (``gate="uniform"``, default ``"learned"``): no gate network, the experts are mixed with equal
   weights; ``mister_e_no_context`` (above).
8. **No speaker identity** (as the paper states): the class sets ``uses_speaker_identity = False``
   and the recipe loader refuses per-speaker feature normalisation for it. ``input_standardise``
   [False] z-scores each input dimension with statistics of the training utterances
   (:class:`TrainingStandardiser`) for inputs that need scaling, such as openSMILE values.
9. **Encoder fine-tuning** (the paper fine-tunes its encoders): with
   ``features.text.trainable_top_layers = k`` the dialogue batch carries each utterance's stored
   token states entering the encoder's top ``k`` layers (``DialogueBatch.tokens``); the trained
   model wrapper (:class:`~emomix.models.saved.TrainedModel`) runs those layers and mean-pools each
   utterance over its valid tokens, as the frozen path pools it, so this model reads the same
   ``B × N × D`` vectors and ``k = 0`` is the frozen model unchanged. The layers train at
   ``optimiser.encoder_lr`` and are saved with the weights. A modality read through a stored
   ``pooled`` vector (``speech_source="pooled"``) cannot fine-tune its encoder (a ConfigError).

``aux``: ``gate_weights`` (``B × N × 3``, always in the order speech, text, cross, zero for an
expert that does not exist), ``expert_logits_speech`` / ``_text`` / ``_cross`` (those that exist),
``embedding_speech`` / ``embedding_text`` (the context-enriched vectors) and ``utterance_mask``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from emomix.constants import IGNORE_INDEX
from emomix.errors import ConfigError, MissingDataError
from emomix.models.base import EmotionModel, ModelConfig, register_model
from emomix.models.blocks import MLP, CrossAttentionLayer, DialogueContext
from emomix.models.inputs import DialogueBatch, ModelOutput
from emomix.models.losses import branch_losses, kl_to_gate, supervised_contrastive_loss

PAPER = (
    "Dutta, Balaji & Ganapathy. A Mixture-of-Experts model for multimodal emotion recognition in "
    "conversations (MiSTER-E). Computer Speech & Language 2026"
)
EXPERTS = ("speech", "text", "cross")
_MODALITY_OF = {"speech": "audio", "text": "text"}
_EPS = 1e-8


@dataclass
class MisterEConfig(ModelConfig):
    """MiSTER-E's settings; the defaults are the decisions in the module docstring."""

    modalities: tuple[str, ...] = ("audio", "text")
    hidden_dim: int = 128
    context: bool = True
    context_kernel: int = 3
    cross_heads: int = 4
    gate_hidden: int = 128
    dropout: float = 0.1
    lambda_expert: float = 0.5
    lambda_scl: float = 0.1
    lambda_kl: float = 0.1
    scl_temperature: float = 0.1
    kl_detach_gate: bool = True
    gate: str = "learned"
    input_standardise: bool = False
    speech_source: str = "mean"

    def validate(self) -> None:
        super().validate()
        self.require_choice(gate=("learned", "uniform"), speech_source=("mean", "pooled"))
        if "video" in self.modalities:
            raise ConfigError("MisterEConfig.modalities: MiSTER-E has speech and text experts only; drop 'video'")
        if self.hidden_dim < 2 or self.hidden_dim % 2:
            raise ConfigError(
                f"MisterEConfig.hidden_dim must be even (the BiGRU's two directions share it); got {self.hidden_dim}"
            )
        if self.hidden_dim % self.cross_heads:
            raise ConfigError(
                f"MisterEConfig.hidden_dim ({self.hidden_dim}) must be divisible by cross_heads ({self.cross_heads})"
            )
        if self.context_kernel < 1 or self.context_kernel % 2 == 0:
            raise ConfigError(f"MisterEConfig.context_kernel must be odd and positive; got {self.context_kernel}")
        self.require_positive("gate_hidden")
        self.require_fraction("dropout")
        self.require_non_negative("lambda_expert", "lambda_scl", "lambda_kl")
        if self.scl_temperature <= 0:
            raise ConfigError(f"MisterEConfig.scl_temperature must be positive; got {self.scl_temperature}")


class TrainingStandardiser(nn.Module):
    """Z-scores each input dimension with statistics of the training utterances, with no speaker
    identity: a masked ``BatchNorm1d`` without affine parameters whose running statistics are the
    cumulative average over every training batch (``momentum=None``). Training batches are
    standardised with their own statistics, evaluation with the running ones; padded utterances
    are neither counted nor changed (they stay zero)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, momentum=None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``B × N × D``, ``mask`` ``B × N`` → ``B × N × D``."""
        keep = mask.unsqueeze(-1)
        if not self.training or int(mask.sum()) < 2:  # one utterance has no variance: the running statistics
            mean, var = self.norm.running_mean, self.norm.running_var
            assert mean is not None and var is not None
            return torch.where(keep, (x - mean) / torch.sqrt(var + self.norm.eps), torch.zeros_like(x))
        out = x.new_zeros(x.shape)
        out[mask] = self.norm(x[mask]).to(x.dtype)
        return out


@register_model("mister_e", "MiSTER-E: speech, text and cross-modal experts over dialogue context, gated per utterance")
@register_model("mister_e_no_context", "MiSTER-E ablation: no context modelling (per-utterance MLP)", context=False)
@register_model("mister_e_no_supcon", "MiSTER-E ablation: no supervised contrastive loss", lambda_scl=0.0)
@register_model(
    "mister_e_no_kl", "MiSTER-E ablation: no KL term between the experts and the gated prediction", lambda_kl=0.0
)
@register_model(
    "mister_e_uniform_gate", "MiSTER-E ablation: no gate (uniform mixture of the three experts)", gate="uniform"
)
@register_model("mister_e_text", "MiSTER-E with text only (the text expert alone)", modalities=("text",))
@register_model("mister_e_audio", "MiSTER-E with speech only (the speech expert alone)", modalities=("audio",))
class MisterE(EmotionModel[DialogueBatch]):
    """MiSTER-E: per-modality dialogue context, speech/text/cross-modal experts and a learned gate."""

    name: ClassVar[str] = "mister_e"
    paper: ClassVar[str] = PAPER
    config_class: ClassVar[type[ModelConfig]] = MisterEConfig
    config: MisterEConfig
    batch_kind: ClassVar[str] = "dialogue"
    supported_modalities: ClassVar[tuple[str, ...]] = ("audio", "text")
    #: the paper uses no speaker identity: recipes may not fit per-speaker statistics for it
    uses_speaker_identity: ClassVar[bool] = False

    def __init__(self, config: MisterEConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        hidden = config.hidden_dim
        # speech_source="pooled": the speech expert reads the audio utterance vector (features.audio.utterance,
        # e.g. ComParE functionals) instead of the mean of the audio frames; the data pipeline pools by this map
        self.dialogue_pooling = {"audio": "pooled"} if config.speech_source == "pooled" else {}
        input_dims = dict(input_dims)
        if self.dialogue_pooling and "audio" in config.modalities:
            if "audio_pooled" not in input_dims:
                raise ConfigError(
                    f"{self.name}: speech_source='pooled' needs the audio utterance vector "
                    "(input_dims['audio_pooled']); declare features.audio.utterance or use 'mean'"
                )
            input_dims["audio"] = input_dims["audio_pooled"]
        self.streams = tuple(name for name in ("speech", "text") if _MODALITY_OF[name] in config.modalities)
        self.expert_names = self.streams + (("cross",) if len(self.streams) == 2 else ())
        self.standardise: nn.ModuleDict | None = None
        if config.input_standardise:
            self.standardise = nn.ModuleDict(
                {name: TrainingStandardiser(input_dims[_MODALITY_OF[name]]) for name in self.streams}
            )
        self.project = nn.ModuleDict(
            {
                name: nn.Sequential(
                    nn.Linear(input_dims[_MODALITY_OF[name]], hidden), nn.GELU(), nn.Dropout(config.dropout)
                )
                for name in self.streams
            }
        )
        if config.context:
            self.context = nn.ModuleDict(
                {
                    name: DialogueContext(
                        hidden, hidden // 2, kernel_size=config.context_kernel, dropout=config.dropout
                    )
                    for name in self.streams
                }
            )
        else:
            self.context = nn.ModuleDict(
                {name: MLP(hidden, hidden, hidden, num_layers=2, dropout=config.dropout) for name in self.streams}
            )
        self.heads = nn.ModuleDict(
            {name: MLP(hidden, hidden, num_classes, num_layers=2, dropout=config.dropout) for name in self.streams}
        )
        if "cross" in self.expert_names:
            self.speech_over_text = CrossAttentionLayer(hidden, heads=config.cross_heads, dropout=config.dropout)
            self.text_over_speech = CrossAttentionLayer(hidden, heads=config.cross_heads, dropout=config.dropout)
            self.heads["cross"] = MLP(2 * hidden, hidden, num_classes, num_layers=2, dropout=config.dropout)
        self.gate: MLP | None = None
        if len(self.expert_names) > 1 and config.gate == "learned":
            self.gate = MLP(
                2 * hidden, config.gate_hidden, len(self.expert_names), num_layers=2, dropout=config.dropout
            )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load weights; a checkpoint saved without input standardisation (every model before the
        field existed) drops it, so the model computes what it computed when saved."""
        if self.standardise is not None and not any(k.startswith("standardise.") for k in state_dict):
            self.standardise = None
            self.config = replace(self.config, input_standardise=False)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, batch: DialogueBatch) -> ModelOutput:
        """Gated log-probabilities ``B × N × C`` for every utterance of every dialogue."""
        if not isinstance(batch, DialogueBatch):
            raise ConfigError(f"model {self.name!r} takes dialogue batches (DialogueBatch), got {type(batch).__name__}")
        absent = [_MODALITY_OF[name] for name in self.streams if _MODALITY_OF[name] not in batch.inputs]
        if absent:
            raise MissingDataError(
                f"the dialogue batch lacks {', '.join(absent)} inputs the model was built for "
                f"(it has {', '.join(batch.inputs) or 'none'})"
            )
        mask = batch.mask.to(torch.bool)
        enriched = {}
        for name in self.streams:
            x = batch.inputs[_MODALITY_OF[name]]
            if self.standardise is not None:
                x = self.standardise[name](x, mask)
            x = self.project[name](x)
            h = self.context[name](x, mask) if self.config.context else self.context[name](x)
            enriched[name] = h.masked_fill(~mask.unsqueeze(-1), 0.0)

        logits = {name: self.heads[name](enriched[name]) for name in self.streams}
        if "cross" in self.expert_names:
            speech, text = enriched["speech"], enriched["text"]
            if self.config.context:
                cross = torch.cat(
                    [self.speech_over_text(speech, text, mask), self.text_over_speech(text, speech, mask)], dim=-1
                )
            else:
                # without context an utterance may not see its neighbours: each attends over its own
                # other-modality vector only (one key, so attention is a learned projection of it)
                flat_s, flat_t = speech.reshape(-1, 1, speech.shape[-1]), text.reshape(-1, 1, text.shape[-1])
                cross = torch.cat(
                    [self.speech_over_text(flat_s, flat_t), self.text_over_speech(flat_t, flat_s)], dim=-1
                ).reshape(*mask.shape, -1)
            logits["cross"] = self.heads["cross"](cross)
        if self.gate is not None:
            gate = torch.softmax(self.gate(torch.cat([enriched["speech"], enriched["text"]], dim=-1)), dim=-1)
        else:  # one expert (weight 1) or the uniform-gate ablation (1/3 each)
            count = len(self.expert_names)
            gate = mask.new_full((*mask.shape, count), 1.0 / count, dtype=enriched[self.streams[0]].dtype)

        probs = torch.stack([logits[name].softmax(dim=-1) for name in self.expert_names], dim=-2)
        prediction = (gate.unsqueeze(-1) * probs).sum(dim=-2)
        gate_weights = gate.new_zeros(*mask.shape, len(EXPERTS))
        for index, name in enumerate(self.expert_names):
            gate_weights[..., EXPERTS.index(name)] = gate[..., index]
        aux = {"gate_weights": gate_weights, "utterance_mask": mask}
        aux.update({f"expert_logits_{name}": value for name, value in logits.items()})
        aux.update({f"embedding_{name}": value for name, value in enriched.items()})
        return ModelOutput(logits=prediction.clamp_min(_EPS).log(), aux=aux)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Gated NLL + λ_expert·Σ expert CE + λ_scl·speech–text supervised contrastive + λ_kl·KL."""
        config = self.config
        weight = None if self.class_weights is None else self.class_weights.to(output.logits.device)
        labels = labels.long()
        labelled = labels != IGNORE_INDEX
        if bool(labelled.any()):
            nll = F.nll_loss(output.logits[labelled], labels[labelled], weight=weight)
        else:
            nll = output.logits.sum() * 0.0
        expert_logits = [output.aux[f"expert_logits_{name}"] for name in self.expert_names]
        expert = branch_losses(expert_logits, labels, weight)
        total = nll + config.lambda_expert * expert
        parts = {"nll": float(nll.detach()), "expert_ce": float(expert.detach())}
        if len(self.streams) == 2 and config.lambda_scl > 0:
            scl = supervised_contrastive_loss(
                output.aux["embedding_speech"], output.aux["embedding_text"], labels, temperature=config.scl_temperature
            )
            total = total + config.lambda_scl * scl
            parts["scl"] = float(scl.detach())
        if len(self.streams) == 2 and config.lambda_kl > 0:
            gated = output.logits.exp()
            if config.kl_detach_gate:
                gated = gated.detach()
            kl = kl_to_gate([x.softmax(dim=-1) for x in expert_logits], gated, mask=output.aux.get("utterance_mask"))
            total = total + config.lambda_kl * kl
            parts["kl"] = float(kl.detach())
        parts["total"] = float(total.detach())
        return total, parts
