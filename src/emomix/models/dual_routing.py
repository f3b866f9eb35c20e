"""Dual Routing MoE (``dual_routing``): local and global cues per modality, routed, then fused.

The design (shared/papers/dual-routing-moe.txt; MODELS.md §1), in our words:

1. **Two scales per modality.** From the audio frame states ``H_a`` the *global* vector is the
   mean over valid frames; the *local* vector comes from one self-attention layer over the frames
   the voice activity detector marked as speech, mean-pooled. From the text encoder the *global*
   vector is a linear map of the first-token states of the last four layers; the *local* vector
   comes from one self-attention layer over the content tokens (special tokens dropped), mean-pooled.
2. **Dual Routing MoE, one per modality with its own weights.** A router reads ``[l; g]`` and gives
   ``(p_local, p_global)``; a local expert reads ``l`` and a global expert reads ``g``, each with its
   own classification head; the routed vector is ``z = p_local·E_loc(l) + p_global·E_glob(g)``.
3. **Bidirectional cross-attention.** Each modality becomes a short token sequence
   ``[z, E_loc(l), E_glob(g)]``; audio queries attend over the text tokens and text queries over the
   audio tokens (stacked layers, separate weights per direction); the query tokens of each direction
   are mean-pooled and ``[a2t; t2a]`` goes to a classifier MLP.
4. **Loss.** Focal loss (γ, per-class α) on the fused logits, plus a weighted sum of the experts'
   cross-entropies (branch loss), plus a weighted routing-entropy term that keeps the routers from
   collapsing onto one expert.

Decisions where the paper is silent or ambiguous (each one a :class:`DualRoutingConfig` field):

- ``pooling_heads=4``: heads of the self-attention layer in both local poolings.
- ``expert_kind="mlp"``: the experts are MLPs (D→D, GELU, dropout ``expert_dropout=0.1``), as the
  implementation section says; ``"linear"`` gives the method section's linear experts.
- ``router_hidden=128``: the router is Linear(2D,128) → GELU → Linear(128,2) → softmax.
- ``model_dim=None``: the width of everything after the encoders. ``None`` means the larger of the
  encoder widths, rounded up to a multiple of the attention heads (so 25 openSMILE LLDs alone
  give 28, and 25 LLDs with 384-d MiniLM give 384); an encoder of another width is projected to it
  by a linear layer applied to its frame/token states (no projection when widths match, as in the
  paper, where both are 768).
- ``text_global="layers"`` with ``text_global_layers=4``: the global text vector reads the first
  token of each of the last four layers from ``layer_states`` (the batch must carry them; extract
  the text encoder with ``layers``). ``"cls"`` is the fallback for features stored without
  intermediate layers: the last layer's first token is repeated four times and goes through the
  same Linear(4D→D), so the parameter shapes, and checkpoints, do not depend on the choice.
- ``vad``: if the VAD kept no frame of an utterance, its local audio vector is pooled over all valid
  frames instead and ``aux["vad_fallback"]`` is True for that row (the run's report counts them).
  Without a ``speech_mask`` in the batch every valid frame counts as speech. Likewise, a text row
  with no content token falls back to all valid tokens (``aux["text_content_fallback"]``); a batch
  without ``special_tokens`` pools over every valid token.
- ``routing``: ``"routed"`` (the full model), ``"local"`` / ``"global"`` (the paper's single-scale
  ablations, "a model using only local / only global representations") and ``"concat"`` (no
  router). Every variant keeps the full model's fusion capacity: two experts with their heads and
  branch losses, and the three-token sequence ``[z, expert 1, expert 2]`` per modality into the
  same cross-attention, so an ablation differs from the routed model only in how ``z`` is formed
  and in which scale the experts read. ``"local"``: the other scale is never computed; both expert
  slots read ``l`` and ``z = E_loc(l)`` (``p`` fixed to (1, 0)); ``"global"`` likewise reads ``g``
  only with ``z = E_glob(g)`` (``p`` fixed to (0, 1)), so the output does not depend on the scale
  left out. Two experts over one scale keep two distinct keys, so attention never degenerates to a
  softmax over identical keys. ``"concat"``: ``z = MLP([E_loc(l); E_glob(g)])`` (2D → D → D, back
  to the model width), or their mean with ``concat_mode="mean"``. No ablation has a router or a
  routing-entropy term, and none reports ``route_*``. (Models saved before this layout, whose
  single-scale ablations had one expert and a one-token sequence, still load in their layout.)
- ``audio_global="frames"`` / ``text_global``: what the global expert reads. The paper's global
  vectors (the mean of the audio frames; the text's first-token layers) are the default, so saved
  models and old recipes are unchanged. ``"pooled"`` reads the modality's utterance vector instead
  (the batch's ``pooled``: e.g. ComParE functionals declared as ``features.audio.utterance``, or
  MiniLM's sentence vector), through LayerNorm → Linear(P→D); the local expert keeps reading the
  VAD-masked frames / content tokens. On real corpora the hand-crafted functionals are the
  strongest single view (an MLP on them beats these models on LLD frames), so the scale recipes
  (``configs/*/moe_scales.yaml``) set it. ``audio_global_parts=None``: when the utterance vector
  joins several encoders (``{join: [ComParE functionals, resemblyzer]}``: 6373 + 256 values),
  ``[6373, 256]`` maps it part by part (:class:`PartwiseVectorMap`: LayerNorm and Linear per
  part, summed), so the 256-d voice embedding is not drowned by 25× as many functionals in one
  LayerNorm and one fan-in; None keeps the single LayerNorm → Linear. Decided per model, not
  "when present", because a feature set may carry a ``pooled`` vector the model was not trained
  to read (openSMILE ``level: both``).
- ``cross_layers=2``, ``cross_heads=4``, ``dropout=0.1``: the bidirectional cross-attention.
- ``cross_attention_ffn=False``: each cross-attention layer is attention + residual + LayerNorm
  only. The paper defines a direction by its queries, keys and values, the scaled dot-product
  attention output, and the concatenation of the two directions; it describes no feed-forward
  sublayer, and adding one would give the fusion capacity the paper does not have.
  ``cross_attention_ffn=True`` adds the usual position-wise FFN (``cross_ffn_mult=2``: width
  2D) after each attention sublayer; models saved before the field existed had it and load with it.
- ``classifier_hidden=None`` (= ``model_dim``), ``classifier_dropout=0.1``: a two-layer MLP.
- single modality (``dual_routing_audio``, ``dual_routing_text``): there is nothing to cross-attend,
  so ``single_modality_pooling="attention"`` pools the modality's token sequence with one
  self-attention layer (the same pooling block as the local scale) before the classifier;
  ``"z"`` feeds the routed vector ``z`` alone.
- loss weights: ``focal_gamma=2.0``, ``branch_weight=0.3``, ``balance_weight=0.01``; the focal α
  comes from :meth:`DualRoutingModel.set_class_weights` (inverse training frequency, set by the
  trainer; uniform when unset). The branch cross-entropies are unweighted, as in the paper.

Chunks: the paper cuts utterances longer than 3 s into 2–3 s chunks. This project does not train
on chunks or average chunk predictions: a row is always one utterance. With
``preprocess.chunk_max_s`` (and ``vad_mode="trim"``, since the store refuses a speech mask with
chunking) the audio encoder runs on each 2–3 s piece separately and the pieces' frame states are
concatenated back into one utterance sequence, which the model reads whole; so chunking bounds
the encoder's context, not the unit of training or prediction. The paper recipe keeps the speech
mask, which the local expert needs, and encodes utterances whole.

``aux`` per row: ``route_audio`` / ``route_text`` (B×2: p_local, p_global; routed variant only),
``expert_logits_<modality>_local`` / ``_global`` (B×C, for the scales in use), ``vad_fallback``
(B bool) and ``text_content_fallback`` (B bool) when the local scale of audio / text is used.
``aux_losses``: ``routing_entropy`` (−mean routing entropy over rows and modalities; routed only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from emomix.errors import ConfigError
from emomix.models.base import EmotionModel, ModelConfig, register_model
from emomix.models.blocks import (
    MLP,
    AttentionPooling,
    BidirectionalCrossAttention,
    Expert,
    TwoExpertRouter,
    masked_mean,
)
from emomix.models.inputs import Batch, ModalityInput, ModelOutput
from emomix.models.losses import branch_losses, focal_loss, routing_entropy_loss

ROUTING_MODES = ("routed", "local", "global", "concat")
AUDIO_GLOBAL_SOURCES = ("frames", "pooled")
TEXT_GLOBAL_SOURCES = ("layers", "cls", "pooled")


@dataclass
class DualRoutingConfig(ModelConfig):
    """Configuration of :class:`DualRoutingModel`; see the module docstring for each decision."""

    modalities: tuple[str, ...] = ("audio", "text")
    model_dim: int | None = None
    routing: str = "routed"
    concat_mode: str = "mlp"
    pooling_heads: int = 4
    text_global: str = "layers"
    text_global_layers: int = 4
    audio_global: str = "frames"
    audio_global_parts: tuple[int, ...] | None = None
    router_hidden: int = 128
    expert_kind: str = "mlp"
    expert_dropout: float = 0.1
    cross_layers: int = 2
    cross_heads: int = 4
    cross_attention_ffn: bool = False
    cross_ffn_mult: int = 2
    dropout: float = 0.1
    classifier_hidden: int | None = None
    classifier_dropout: float = 0.1
    single_modality_pooling: str = "attention"
    focal_gamma: float = 2.0
    branch_weight: float = 0.3
    balance_weight: float = 0.01

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        unsupported = [m for m in self.modalities if m not in ("audio", "text")]
        if unsupported:
            raise ConfigError(
                f"{name}.modalities: Dual Routing takes audio and text only, got {', '.join(unsupported)}"
            )
        self.require_choice(
            routing=ROUTING_MODES,
            concat_mode=("mlp", "mean"),
            text_global=TEXT_GLOBAL_SOURCES,
            expert_kind=("mlp", "linear"),
            single_modality_pooling=("attention", "z"),
        )
        self.require_positive(
            "pooling_heads", "text_global_layers", "router_hidden", "cross_layers", "cross_heads", "cross_ffn_mult"
        )
        self.require_positive("model_dim", "classifier_hidden", allow_none=True)
        self.require_fraction("expert_dropout", "dropout", "classifier_dropout")
        self.require_non_negative("focal_gamma", "branch_weight", "balance_weight")
        self.require_choice(audio_global=AUDIO_GLOBAL_SOURCES)
        if self.audio_global_parts is not None:
            parts = tuple(self.audio_global_parts)
            if not parts or not all(isinstance(n, int) and n > 0 for n in parts):
                raise ConfigError(
                    f"{name}.audio_global_parts: a list of positive part widths (e.g. [6373, 256]), got {parts!r}"
                )
            if self.audio_global != "pooled":
                raise ConfigError(f"{name}.audio_global_parts needs audio_global='pooled' (it splits that vector)")
            self.audio_global_parts = parts

    @property
    def uses_local(self) -> bool:
        return self.routing != "global"

    @property
    def uses_global(self) -> bool:
        return self.routing != "local"


class AudioScales(nn.Module):
    """Global (mean of valid frames) and local (self-attention pooling over VAD speech frames)
    audio vectors; either may be switched off for the single-scale ablations.

    ``forward(inputs) -> (local | None, global | None, vad_fallback B bool)``.
    """

    def __init__(
        self,
        in_dim: int,
        model_dim: int,
        heads: int = 4,
        dropout: float = 0.1,
        use_local: bool = True,
        use_global: bool = True,
        pooled_dim: int | None = None,
        pooled_parts: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.project = nn.Identity() if in_dim == model_dim else nn.Linear(in_dim, model_dim)
        self.pooling = AttentionPooling(model_dim, heads=heads, dropout=dropout) if use_local else None
        self.use_global = use_global
        # audio_global="pooled": the global expert reads the utterance vector, not the frame mean
        self.pooled_map: nn.Module | None = None
        if use_global and pooled_dim:
            self.pooled_map = (
                PartwiseVectorMap(pooled_parts, pooled_dim, model_dim)
                if pooled_parts
                else pooled_vector_map(pooled_dim, model_dim)
            )

    def forward(self, inputs: ModalityInput) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        mask = inputs.mask.bool()
        states = self.project(inputs.states)
        speech = mask if inputs.speech_mask is None else inputs.speech_mask.bool() & mask
        fallback = ~speech.any(dim=1)
        speech = torch.where(fallback.unsqueeze(1), mask, speech)
        local = self.pooling(states, speech) if self.pooling is not None else None
        global_ = masked_mean(states, mask) if self.use_global else None
        if self.pooled_map is not None:
            global_ = self.pooled_map(require_pooled(inputs, "audio"))
        return local, global_, fallback


def pooled_vector_map(pooled_dim: int, model_dim: int) -> nn.Module:
    """LayerNorm → Linear(P→D): an utterance vector (``pooled``) into the model width."""
    return nn.Sequential(nn.LayerNorm(pooled_dim), nn.Linear(pooled_dim, model_dim))


class PartwiseVectorMap(nn.Module):
    """A joined utterance vector (e.g. 6373 ComParE functionals + a 256-d voice embedding) mapped
    part by part: LayerNorm(P_i) → Linear(P_i→D) for each part, summed. Equal to one Linear on the
    concatenation except for two things that matter when the parts' widths differ by 25×: each
    part is normalised on its own, and each part's projection is initialised for its own fan-in,
    so a small part starts with as much say as a large one instead of ``sqrt(P_i / P)`` of it."""

    def __init__(self, parts: tuple[int, ...], pooled_dim: int, model_dim: int):
        super().__init__()
        if sum(parts) != pooled_dim:
            raise ConfigError(
                f"dual_routing: audio_global_parts {list(parts)} add up to {sum(parts)}, but the audio utterance "
                f"vector has {pooled_dim} values; list the widths of the joined encoders in order"
            )
        self.parts = tuple(int(n) for n in parts)
        self.maps = nn.ModuleList(pooled_vector_map(n, model_dim) for n in self.parts)

    def forward(self, vector: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(vector, list(self.parts), dim=-1)
        return torch.stack([m(piece) for m, piece in zip(self.maps, pieces, strict=True)]).sum(dim=0)


def require_pooled(inputs: ModalityInput, modality: str) -> torch.Tensor:
    if inputs.pooled is None:
        raise ConfigError(
            f"dual_routing: {modality}_global='pooled' needs the {modality} utterance vector, but the batch "
            f"has no {modality} pooled field; declare features.{modality}.utterance in the recipe"
        )
    return inputs.pooled


class TextScales(nn.Module):
    """Global (linear map of the first-token states of the last ``num_layers`` layers) and local
    (self-attention pooling over content tokens) text vectors.

    ``forward(inputs) -> (local | None, global | None, content_fallback B bool)``.
    """

    def __init__(
        self,
        in_dim: int,
        model_dim: int,
        heads: int = 4,
        dropout: float = 0.1,
        global_source: str = "layers",
        num_layers: int = 4,
        use_local: bool = True,
        use_global: bool = True,
        pooled_dim: int | None = None,
    ):
        super().__init__()
        self.global_source = global_source
        self.num_layers = num_layers
        self.project: nn.Module | None = None
        self.pooling: AttentionPooling | None = None
        if use_local:
            self.project = nn.Identity() if in_dim == model_dim else nn.Linear(in_dim, model_dim)
            self.pooling = AttentionPooling(model_dim, heads=heads, dropout=dropout)
        self.global_map = (
            nn.Linear(num_layers * in_dim, model_dim) if use_global and global_source != "pooled" else None
        )
        self.pooled_map = (
            pooled_vector_map(int(pooled_dim or 0), model_dim) if use_global and global_source == "pooled" else None
        )

    def first_tokens(self, inputs: ModalityInput) -> torch.Tensor:
        """``B × (num_layers·D)``: the first token of each of the last ``num_layers`` layers."""
        if self.global_source == "cls":
            return inputs.states[:, 0, :].repeat(1, self.num_layers)
        layers = inputs.layer_states
        if layers is None:
            raise ConfigError(
                "dual_routing: text_global='layers' needs the text encoder's intermediate layers, but the batch "
                "has no text layer_states; extract the text features with the last "
                f"{self.num_layers} layers (layers option) or set text_global='cls'"
            )
        if layers.shape[1] < self.num_layers:
            raise ConfigError(
                f"dual_routing: text_global_layers={self.num_layers} but the batch carries only {layers.shape[1]} "
                "text layer(s) in layer_states; extract more layers or lower text_global_layers"
            )
        first = layers[:, -self.num_layers :, 0, :]
        return first.reshape(first.shape[0], -1)

    def forward(self, inputs: ModalityInput) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        mask = inputs.mask.bool()
        content = mask if inputs.special_tokens is None else mask & ~inputs.special_tokens.bool()
        fallback = ~content.any(dim=1)
        content = torch.where(fallback.unsqueeze(1), mask, content)
        local = None
        if self.pooling is not None and self.project is not None:
            local = self.pooling(self.project(inputs.states), content)
        global_ = self.global_map(self.first_tokens(inputs)) if self.global_map is not None else None
        if self.pooled_map is not None:
            global_ = self.pooled_map(require_pooled(inputs, "text"))
        return local, global_, fallback


class DualRoutingMoE(nn.Module):
    """One modality's Dual Routing MoE: router over ``[l; g]``, two experts (a local slot and a
    global slot) each with its own classification head, and the routed vector ``z``.

    ``forward(local, global_) -> dict`` with ``z`` (B×D), ``tokens`` (B×3×D, the sequence the fusion
    attends over: ``[z, E_loc(·), E_glob(·)]``), ``route`` (B×2, routed mode only) and
    ``logits_local`` / ``logits_global`` (B×C, one per expert slot). ``routing`` is one of
    ``routed``, ``local``, ``global``, ``concat``. In the single-scale ablations both experts read
    the one scale in use and ``z`` is that scale's own slot (``p`` fixed to (1, 0) for ``local``,
    (0, 1) for ``global``), so the experts, heads and token count equal the routed model's and
    only the routing (and the missing scale) differ.

    ``single_token=True`` rebuilds the layout of models saved before that change (one expert,
    a one-token sequence) so that their checkpoints still load; new models never use it.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        routing: str = "routed",
        router_hidden: int = 128,
        expert_kind: str = "mlp",
        dropout: float = 0.1,
        concat_mode: str = "mlp",
        single_token: bool = False,
    ):
        super().__init__()
        if routing not in ROUTING_MODES:
            raise ConfigError(f"routing must be one of {', '.join(ROUTING_MODES)}; got {routing!r}")
        self.routing = routing
        self.concat_mode = concat_mode
        self.single_token = bool(single_token) and routing in ("local", "global")
        self.local_expert: Expert | None = None
        self.global_expert: Expert | None = None
        if not (self.single_token and routing == "global"):
            self.local_expert = Expert(dim, dim, kind=expert_kind, dropout=dropout, num_classes=num_classes)
        if not (self.single_token and routing == "local"):
            self.global_expert = Expert(dim, dim, kind=expert_kind, dropout=dropout, num_classes=num_classes)
        self.router = TwoExpertRouter(2 * dim, hidden_dim=router_hidden) if routing == "routed" else None
        self.combine = (
            MLP(2 * dim, dim, dim, num_layers=2, dropout=dropout)
            if routing == "concat" and concat_mode == "mlp"
            else None
        )

    @property
    def expert_slots(self) -> tuple[str, ...]:
        """The expert slots that exist (both, except in the legacy single-token layout)."""
        return tuple(
            scale
            for scale, expert in (("local", self.local_expert), ("global", self.global_expert))
            if expert is not None
        )

    def forward(self, local: torch.Tensor | None, global_: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.routing == "local":
            local_in = global_in = local  # only the local scale exists
        elif self.routing == "global":
            local_in = global_in = global_
        else:
            local_in, global_in = local, global_
        if self.single_token:  # legacy layout: one expert, one token
            z, out[f"logits_{self.routing}"] = _apply(
                self.local_expert if self.routing == "local" else self.global_expert, local_in
            )
            out["z"], out["tokens"] = z, z.unsqueeze(1)
            return out
        local_z, out["logits_local"] = _apply(self.local_expert, local_in)
        global_z, out["logits_global"] = _apply(self.global_expert, global_in)
        if self.routing == "routed":
            assert self.router is not None and local is not None and global_ is not None
            route = self.router(torch.cat([local, global_], dim=-1))
            out["route"] = route
            z = route[:, 0:1] * local_z + route[:, 1:2] * global_z
        elif self.routing == "local":
            z = local_z
        elif self.routing == "global":
            z = global_z
        elif self.combine is not None:
            z = self.combine(torch.cat([local_z, global_z], dim=-1))
        else:
            z = 0.5 * (local_z + global_z)
        out["z"] = z
        out["tokens"] = torch.stack([z, local_z, global_z], dim=1)
        return out


def _apply(expert: Expert | None, x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """An expert's ``(z, logits)`` (every Dual Routing expert has its classification head)."""
    assert expert is not None and x is not None
    z, logits = expert(x)
    assert logits is not None
    return z, logits


@register_model(
    "dual_routing", "Dual Routing MoE: routed local/global experts per modality, bidirectional cross-attention"
)
@register_model(
    "dual_routing_local",
    "Dual Routing ablation: local scale only (no router; both experts read it, same fusion)",
    routing="local",
)
@register_model(
    "dual_routing_global",
    "Dual Routing ablation: global scale only (no router; both experts read it, same fusion)",
    routing="global",
)
@register_model(
    "dual_routing_concat",
    "Dual Routing ablation: no router, local and global experts combined by an MLP",
    routing="concat",
)
@register_model("dual_routing_audio", "Dual Routing MoE on audio only (no cross-attention)", modalities=("audio",))
@register_model("dual_routing_text", "Dual Routing MoE on text only (no cross-attention)", modalities=("text",))
class DualRoutingModel(EmotionModel[Batch]):
    """Dual Routing MoE for speech + text emotion recognition (see the module docstring)."""

    name = "dual_routing"
    paper = (
        "Dual Routing Mixture-of-Experts for Multi-Scale Representation Learning in Multimodal Emotion "
        "Recognition. Electronics 14(24), 4972, 2025"
    )
    config_class = DualRoutingConfig
    config: DualRoutingConfig
    batch_kind = "utterance"
    supported_modalities = ("audio", "text")

    def __init__(self, config: DualRoutingConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        self.modalities = tuple(m for m in ("audio", "text") if m in config.modalities)
        dims = {m: int(input_dims[m]) for m in self.modalities}
        if config.model_dim:
            model_dim = int(config.model_dim)
        else:
            step = math.lcm(config.pooling_heads, config.cross_heads)
            model_dim = -(-max(dims.values()) // step) * step
        for field_name in ("pooling_heads", "cross_heads"):
            heads = getattr(config, field_name)
            if model_dim % heads:
                raise ConfigError(
                    f"dual_routing: model width {model_dim} is not divisible by {field_name}={heads}; "
                    "set model_dim or the number of heads so that it divides"
                )
        self.model_dim = model_dim
        pooled = {
            m: self._pooled_width(input_dims, m)
            for m in self.modalities
            if (config.audio_global if m == "audio" else config.text_global) == "pooled"
        }
        self.encoders = nn.ModuleDict()
        if "audio" in self.modalities:
            self.encoders["audio"] = AudioScales(
                dims["audio"],
                model_dim,
                config.pooling_heads,
                config.dropout,
                use_local=config.uses_local,
                use_global=config.uses_global,
                pooled_dim=pooled.get("audio"),
                pooled_parts=config.audio_global_parts,
            )
        if "text" in self.modalities:
            self.encoders["text"] = TextScales(
                dims["text"],
                model_dim,
                config.pooling_heads,
                config.dropout,
                global_source=config.text_global,
                num_layers=config.text_global_layers,
                use_local=config.uses_local,
                use_global=config.uses_global,
                pooled_dim=pooled.get("text"),
            )
        self.moe = nn.ModuleDict(
            {
                m: DualRoutingMoE(
                    model_dim,
                    num_classes,
                    routing=config.routing,
                    router_hidden=config.router_hidden,
                    expert_kind=config.expert_kind,
                    dropout=config.expert_dropout,
                    concat_mode=config.concat_mode,
                )
                for m in self.modalities
            }
        )
        hidden = int(config.classifier_hidden or model_dim)
        self.fusion: BidirectionalCrossAttention | None = None
        if len(self.modalities) == 2:
            self.fusion = self._build_fusion(config)
            self.single_pooling = None
            classifier_in = 2 * model_dim
        else:
            self.single_pooling = (
                AttentionPooling(model_dim, heads=config.pooling_heads, dropout=config.dropout)
                if config.single_modality_pooling == "attention"
                else None
            )
            classifier_in = model_dim
        self.classifier = MLP(classifier_in, hidden, num_classes, num_layers=2, dropout=config.classifier_dropout)

    @staticmethod
    def _pooled_width(input_dims: Mapping[str, int], modality: str) -> int:
        key = f"{modality}_pooled"
        if key not in input_dims:
            raise ConfigError(
                f"dual_routing: {modality}_global='pooled' reads the {modality} utterance vector, but the "
                f"features carry none; declare features.{modality}.utterance (e.g. "
                "{name: opensmile:ComParE_2016, level: functionals}) or use the default global source"
            )
        return int(input_dims[key])

    @property
    def branch_keys(self) -> tuple[str, ...]:
        """The aux keys of the expert logits the branch loss reads (every expert slot)."""
        return tuple(f"expert_logits_{m}_{slot}" for m in self.modalities for slot in self._moe(m).expert_slots)

    def _moe(self, modality: str) -> DualRoutingMoE:
        module = self.moe[modality]
        assert isinstance(module, DualRoutingMoE)
        return module

    def _build_fusion(self, config: DualRoutingConfig) -> BidirectionalCrossAttention:
        return BidirectionalCrossAttention(
            self.model_dim,
            heads=config.cross_heads,
            num_layers=config.cross_layers,
            dropout=config.dropout,
            ffn=config.cross_attention_ffn,
            ffn_mult=config.cross_ffn_mult,
        )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load weights; a checkpoint saved before the cross-attention FFN became a config field
        (it always had one) or before the single-scale ablations kept three tokens (one expert,
        one token) is loaded by first rebuilding those parts in its layout."""
        keys = set(state_dict)
        config = self.config
        device = next(self.parameters()).device
        if (
            self.fusion is not None
            and not config.cross_attention_ffn
            and any(k.startswith("fusion.") and ".ffn." in k for k in keys)
        ):
            self.config = config = replace(config, cross_attention_ffn=True)
            self.fusion = self._build_fusion(config).to(device)
        if config.routing in ("local", "global"):
            other = "global" if config.routing == "local" else "local"
            for m in self.modalities:
                if not any(k.startswith(f"moe.{m}.{other}_expert.") for k in keys):
                    self.moe[m] = DualRoutingMoE(
                        self.model_dim,
                        self.num_classes,
                        routing=config.routing,
                        router_hidden=config.router_hidden,
                        expert_kind=config.expert_kind,
                        dropout=config.expert_dropout,
                        single_token=True,
                    ).to(device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, batch: Batch) -> ModelOutput:
        missing = [m for m in self.modalities if m not in batch.inputs]
        if missing:
            raise ConfigError(
                f"dual_routing was built for {', '.join(self.modalities)} but the batch has no "
                f"{', '.join(missing)} input"
            )
        aux: dict[str, torch.Tensor] = {}
        aux_losses: dict[str, torch.Tensor] = {}
        tokens: dict[str, torch.Tensor] = {}
        routes: list[torch.Tensor] = []
        z: dict[str, torch.Tensor] = {}
        for modality in self.modalities:
            local, global_, fallback = self.encoders[modality](batch.inputs[modality])
            if self.config.uses_local:
                aux["vad_fallback" if modality == "audio" else "text_content_fallback"] = fallback
            routed = self.moe[modality](local, global_)
            for scale in self._moe(modality).expert_slots:
                if f"logits_{scale}" in routed:
                    aux[f"expert_logits_{modality}_{scale}"] = routed[f"logits_{scale}"]
            if "route" in routed:
                aux[f"route_{modality}"] = routed["route"]
                routes.append(routed["route"])
            tokens[modality] = routed["tokens"]
            z[modality] = routed["z"]
        if routes:
            aux_losses["routing_entropy"] = torch.stack([routing_entropy_loss(r) for r in routes]).mean()

        if self.fusion is not None:
            audio, text = tokens["audio"], tokens["text"]
            audio_mask = torch.ones(audio.shape[:2], dtype=torch.bool, device=audio.device)
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
            a2t, t2a = self.fusion(audio, audio_mask, text, text_mask)
            fused = torch.cat([a2t.mean(dim=1), t2a.mean(dim=1)], dim=-1)
        else:
            modality = self.modalities[0]
            sequence = tokens[modality]
            if self.single_pooling is not None:
                fused = self.single_pooling(
                    sequence, torch.ones(sequence.shape[:2], dtype=torch.bool, device=sequence.device)
                )
            else:
                fused = z[modality]
        return ModelOutput(logits=self.classifier(fused), aux=aux, aux_losses=aux_losses)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Focal loss + ``branch_weight`` · Σ expert cross-entropies + ``balance_weight`` · routing entropy loss."""
        config = self.config
        focal = focal_loss(output.logits, labels, alpha=self.class_weights, gamma=config.focal_gamma)
        branch = branch_losses([output.aux[key] for key in self.branch_keys], labels)
        total = focal + config.branch_weight * branch
        parts = {"focal": float(focal.detach()), "branch": float(branch.detach())}
        if "routing_entropy" in output.aux_losses:
            balance = output.aux_losses["routing_entropy"]
            total = total + config.balance_weight * balance
            parts["routing_entropy"] = float(balance.detach())
        parts["total"] = float(total.detach())
        return total, parts
