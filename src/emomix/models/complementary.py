"""Complementary Fusion: a cross-attention MoE and a sum-product MoE over text, speech and a
time-aligned graph, combined per class after training (Yi, Kwak & Shin, Electronics 2025).

The design, in our words:

1. **Inputs.** Text states (≤ ``max_tokens`` tokens, longer sequences are cut) and speech states;
   a speech sequence longer than ``max_frames`` is adaptive-average-pooled to ``max_frames``
   frames, each row over its own valid frames only, so padding never leaks into the pool. Both
   are projected to a common ``hidden_dim`` (decision: the paper feeds 768-d states directly;
   a projection lets any encoder pair be used).
2. **Time-aligned graph.** Text tokens and speech frames are the nodes of a bipartite graph; an
   edge joins token i and frame j when frame j lies inside token i's time span (``batch.edges``).
   When frames are pooled, an edge's frame index is moved to the pooled frame covering it
   (pooled frame ``j`` covers original frames ``[j·T/M, (j+1)·T/M)``). A GAT (``graph_layers``
   = 2, ``graph_heads`` = 4, via :class:`~emomix.models.blocks.BipartiteGAT`) over the graph,
   mean-pooled over all nodes, gives the graph embedding.
   Decision ``graph``: ``"auto"`` (default) uses ``batch.edges`` when the batch has them and
   otherwise spreads the content tokens uniformly over the valid frames, flagging each such row
   in ``aux["graph_approximate"]``; ``"edges"`` requires real edges; ``"spread"`` always uses the
   uniform spread; ``"none"`` leaves the graph out (an ablation).
   The front end is tensor ops over the padded batch (no loop over utterances, no Python branch
   on tensor values), so these models trace to ONNX: :func:`pool_frames` pools with masks,
   cumulative sums and gathers, the edges become a ``B × T_t × T_a`` adjacency
   (:func:`remapped_adjacency`, :func:`spread_adjacency`: comparisons of index ranges) and the GAT
   is dense (:class:`~emomix.models.blocks.BipartiteGATLayer`). The per-utterance
   :func:`remap_edges` and :func:`spread_token_edges` give the same edges as lists.
3. **Cross-Attention Transformer MoE** (``complementary_ca``). ``num_experts`` (paper: 5)
   experts, each a pair of cross-attention layers (text queries over speech, speech queries over
   text; ``ca_layers`` layers each, decision 1) whose outputs are mean-pooled over their queries
   and concatenated. A top-k softmax gate (``top_k``, decision 2, with the Switch-style
   load-balancing loss weighted by ``load_balance_weight`` = 0.01) on
   ``[pooled text; pooled speech; graph]`` mixes the experts. Decision: the classifier reads
   ``[mixture output; graph]``, so the graph informs the prediction directly, not only the gate.
4. **Sum-Product Linear MoE** (``complementary_spl``). Per expert ``[t; s; t+s; t⊙s; g] → Linear``
   where ``t``/``s`` are the pooled projected text/speech and ``g`` the graph embedding (decision:
   the graph is appended to each expert's input and to the gate input); same gate and top-k;
   a linear classifier on the mixture. With one modality (``complementary_spl_text``,
   ``complementary_spl_audio``) the sum and product are meaningless and there is no graph, so each
   expert is ``x → Linear`` on the pooled modality (decision).
5. **Complementary late fusion** (``complementary``). The two MoE models are trained separately,
   then their class probabilities are combined per class:
   ``p_c ∝ w_c·p^CA_c + (1−w_c)·p^SPL_c``, renormalised to sum to 1 (decision: the argmax is
   unchanged by the renormalisation; it keeps ``logits`` true log-probabilities). The weights
   are fitted on validation data by the trainer's late-fusion step (coordinate ascent over
   classes maximising UA; the registry entry names the two parts), or set by
   :func:`arousal_split_weights`, the paper's hand-assigned split.
6. **Baseline** ``graph_mlp``: the graph embedding alone → MLP, part of the paper's comparison.
7. **The paper's comparisons** are settings, not separate classes: top-1 vs top-2 routing is
   ``top_k``, graph vs no graph is ``graph="none"``; the late-fusion trainer passes them to both
   parts (recipes ``configs/synthetic/complementary_top1.yaml`` and ``complementary_no_graph.yaml``).

Losses: cross-entropy (class-weighted when :meth:`set_class_weights` was called) plus
``load_balance_weight`` × the gate's load-balancing loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emomix.constants import IGNORE_INDEX
from emomix.errors import ConfigError, LabelError, MissingDataError
from emomix.models.base import EmotionModel, ModelConfig, register_model
from emomix.models.blocks import (
    MLP,
    BipartiteGAT,
    CrossAttentionLayer,
    Expert,
    MixtureOfExperts,
    TopKGate,
    masked_mean,
    pad_edges,
    pairs_to_adjacency,
)
from emomix.models.inputs import Batch, ModalityInput, ModelOutput

PAPER = "Yi, Kwak & Shin. A Complementary Fusion Framework for Robust Multimodal Emotion Recognition. Electronics 2025"
GRAPH_MODES = ("auto", "edges", "spread", "none")


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


@dataclass
class ComplementaryConfig(ModelConfig):
    """Config of the two MoE models and of the graph (defaults are the decisions in the module
    docstring; ``ca_*`` fields only matter to the cross-attention model)."""

    modalities: tuple[str, ...] = ("audio", "text")
    hidden_dim: int = 128
    max_tokens: int = 128
    max_frames: int = 128
    graph: str = "auto"
    graph_layers: int = 2
    graph_heads: int = 4
    num_experts: int = 5
    top_k: int = 2
    gate_noise_std: float = 0.0
    ca_heads: int = 4
    ca_layers: int = 1
    dropout: float = 0.1
    load_balance_weight: float = 0.01
    spl_audio_source: str = "frames"

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        self.require_choice(graph=GRAPH_MODES, spl_audio_source=("frames", "pooled"))
        self.require_positive(
            "hidden_dim",
            "max_tokens",
            "max_frames",
            "graph_layers",
            "graph_heads",
            "num_experts",
            "ca_heads",
            "ca_layers",
        )
        if not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f"{name}.top_k must be between 1 and num_experts ({self.num_experts}); got {self.top_k}")
        if self.hidden_dim % self.ca_heads or self.hidden_dim % self.graph_heads:
            raise ConfigError(
                f"{name}.hidden_dim ({self.hidden_dim}) must be divisible by ca_heads ({self.ca_heads}) "
                f"and graph_heads ({self.graph_heads})"
            )
        self.require_fraction("dropout")
        self.require_non_negative("load_balance_weight", "gate_noise_std")


@dataclass
class ComplementaryFusionConfig(ComplementaryConfig):
    """Config of the late fusion: both sub-models' fields plus the per-class weights ``w_c``
    (the weight of the cross-attention model; empty = 0.5 for every class until fitted)."""

    fusion_weights: tuple[float, ...] = ()

    def validate(self) -> None:
        super().validate()
        if any(not 0.0 <= float(w) <= 1.0 for w in self.fusion_weights):
            raise ConfigError(f"ComplementaryFusionConfig.fusion_weights must lie in [0, 1]; got {self.fusion_weights}")


@dataclass
class GraphMLPConfig(ModelConfig):
    """Config of the ``graph_mlp`` baseline: the graph settings of :class:`ComplementaryConfig`."""

    modalities: tuple[str, ...] = ("audio", "text")
    hidden_dim: int = 128
    max_tokens: int = 128
    max_frames: int = 128
    graph: str = "auto"
    graph_layers: int = 2
    graph_heads: int = 4
    dropout: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.graph not in GRAPH_MODES or self.graph == "none":
            raise ConfigError(f"GraphMLPConfig.graph must be one of auto, edges, spread; got {self.graph!r}")
        self.require_positive("hidden_dim", "max_tokens", "max_frames", "graph_layers", "graph_heads")
        if self.hidden_dim % self.graph_heads:
            raise ConfigError(
                f"GraphMLPConfig.hidden_dim ({self.hidden_dim}) must be divisible by graph_heads ({self.graph_heads})"
            )


# ---------------------------------------------------------------------------------------------
# Shared front end: truncation, frame pooling, the graph
# ---------------------------------------------------------------------------------------------


def _require_both(model: EmotionModel, config: ModelConfig) -> None:
    if set(config.modalities) != {"audio", "text"}:
        raise ConfigError(
            f"model {model.name!r} needs both audio and text (it fuses them, or builds the token–frame graph); "
            f"got modalities {tuple(config.modalities)}; for one modality use complementary_spl_text or "
            f"complementary_spl_audio"
        )


class _GraphEmbedding(nn.Module):
    """The time-aligned token–frame graph embedding (BipartiteGAT), with the ``graph`` modes."""

    def __init__(
        self, text_dim: int, audio_dim: int, hidden_dim: int, heads: int, layers: int, dropout: float, mode: str
    ):
        super().__init__()
        self.mode = mode
        self.gat = BipartiteGAT(text_dim, audio_dim, hidden_dim, heads=heads, num_layers=layers, dropout=dropout)

    def forward(
        self,
        text: ModalityInput,
        audio_states: torch.Tensor,
        audio_mask: torch.Tensor,
        adjacency: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``text`` already cut to the token limit, ``audio_*`` already pooled and ``adjacency``
        (``B × T_t × T_a`` bool, None without edges) already remapped; returns (B × hidden
        embedding, B float flag of approximate graphs)."""
        if adjacency is None and self.mode == "edges":
            raise MissingDataError(
                "the model is configured with graph='edges' but the batch carries no token–frame edges; "
                "extract word timings (emomix extract with an alignment) or set graph='auto' or 'spread'"
            )
        flag = torch.ones_like(text.mask[:, 0], dtype=text.states.dtype)
        if adjacency is None or self.mode == "spread":
            content = text.mask if text.special_tokens is None else text.mask & ~text.special_tokens
            adjacency = spread_adjacency(content, audio_mask)
            approximate = flag
        else:
            approximate = torch.zeros_like(flag)
        embedding = self.gat(text.states, text.mask, audio_states, audio_mask, adjacency)
        return embedding, approximate


def _front_end(
    batch: Batch, max_tokens: int, max_frames: int, modalities: Sequence[str]
) -> tuple[ModalityInput | None, ModalityInput | None, torch.Tensor | None]:
    """Cut text to ``max_tokens``, pool audio to ``max_frames`` and turn the edges into the
    matching ``B × T_t × T_a`` adjacency (None when the batch has no edges)."""
    text = audio = None
    adjacency = None
    edges = batch.edges
    absent = [m for m in modalities if m not in batch.inputs]
    if absent:
        raise MissingDataError(
            f"the batch lacks {', '.join(absent)} inputs the model was built for "
            f"(it has {', '.join(batch.inputs) or 'none'})"
        )
    if edges is not None and len(edges) != batch.batch_size:
        raise ConfigError(f"batch.edges holds {len(edges)} edge tensors for {batch.batch_size} utterances")
    if "text" in modalities:
        source = batch.inputs["text"]
        text = ModalityInput(
            states=source.states[:, :max_tokens],
            mask=source.mask[:, :max_tokens],
            special_tokens=None if source.special_tokens is None else source.special_tokens[:, :max_tokens],
        )
    if "audio" in modalities:
        source = batch.inputs["audio"]
        states, mask = pool_frames(source.states, source.mask, max_frames)
        audio = ModalityInput(states=states, mask=mask, frame_rate=source.frame_rate)
        if edges is not None and text is not None:
            adjacency = remapped_adjacency(edges, text.mask, source.mask.sum(dim=1), mask, max_frames)
    return text, audio, adjacency


class _ComplementaryBase(EmotionModel[Batch]):
    """What the CA, SPL and graph-MLP models share: projections, the graph, class weights, CE loss."""

    paper: ClassVar[str] = PAPER
    supported_modalities: ClassVar[tuple[str, ...]] = ("audio", "text")
    config: ComplementaryConfig | GraphMLPConfig

    def _build_front(
        self, config: ComplementaryConfig | GraphMLPConfig, input_dims: Mapping[str, int], project: bool = True
    ) -> None:
        if project:
            self.project = nn.ModuleDict({m: nn.Linear(input_dims[m], config.hidden_dim) for m in config.modalities})
        both = set(config.modalities) == {"audio", "text"}
        self.graph = None
        if both and config.graph != "none":
            self.graph = _GraphEmbedding(
                input_dims["text"],
                input_dims["audio"],
                config.hidden_dim,
                config.graph_heads,
                config.graph_layers,
                config.dropout,
                config.graph,
            )

    def _inputs(
        self, batch: Batch
    ) -> tuple[dict[str, torch.Tensor], dict[str, ModalityInput], dict[str, torch.Tensor]]:
        """Pooled projected vectors per modality, the (cut/pooled) sequences, and graph extras."""
        config = self.config
        text, audio, adjacency = _front_end(batch, config.max_tokens, config.max_frames, config.modalities)
        sequences = {m: x for m, x in (("text", text), ("audio", audio)) if x is not None}
        extras: dict[str, torch.Tensor] = {}
        if self.graph is not None and text is not None and audio is not None:  # built only with both
            extras["graph"], extras["graph_approximate"] = self.graph(text, audio.states, audio.mask, adjacency)
        pooled = {}
        if hasattr(self, "project"):
            for m, x in sequences.items():
                projected = self.project[m](x.states)
                sequences[m] = ModalityInput(states=projected, mask=x.mask)
                pooled[m] = masked_mean(projected, x.mask)
        return pooled, sequences, extras

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy plus ``load_balance_weight`` × the gate's load-balancing loss."""
        weight = None if self.class_weights is None else self.class_weights.to(output.logits.device)
        ce = F.cross_entropy(output.logits, labels, weight=weight, ignore_index=IGNORE_INDEX)
        total = ce
        parts = {"ce": float(ce.detach())}
        if "load_balance" in output.aux_losses and isinstance(self.config, ComplementaryConfig):  # the MoE models
            balance = output.aux_losses["load_balance"]
            total = total + self.config.load_balance_weight * balance
            parts["load_balance"] = float(balance.detach())
        parts["total"] = float(total.detach())
        return total, parts


# ---------------------------------------------------------------------------------------------
# Cross-Attention Transformer MoE
# ---------------------------------------------------------------------------------------------


class CrossAttentionExpert(nn.Module):
    """One expert of the CA MoE: text queries over speech and speech queries over text
    (``layers`` cross-attention layers per direction), each mean-pooled over its queries,
    concatenated → ``B × 2·dim``."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.text_over_speech = nn.ModuleList(
            [CrossAttentionLayer(dim, heads=heads, dropout=dropout) for _ in range(layers)]
        )
        self.speech_over_text = nn.ModuleList(
            [CrossAttentionLayer(dim, heads=heads, dropout=dropout) for _ in range(layers)]
        )

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, speech: torch.Tensor, speech_mask: torch.Tensor
    ) -> torch.Tensor:
        """Projected text and speech sequences with their masks → ``B × 2·dim``."""
        t2s, s2t = text, speech
        for t_layer, s_layer in zip(self.text_over_speech, self.speech_over_text):
            t2s, s2t = t_layer(t2s, s2t, speech_mask), s_layer(s2t, t2s, text_mask)
        return torch.cat([masked_mean(t2s, text_mask), masked_mean(s2t, speech_mask)], dim=-1)


@register_model("complementary_ca", "Complementary Fusion: cross-attention transformer MoE (text, speech, graph)")
class ComplementaryCrossAttentionMoE(_ComplementaryBase):
    """Cross-Attention Transformer MoE of Complementary Fusion (needs audio and text).

    ``aux``: ``gate_weights`` (B × E, zero outside the top k), ``gate_probs`` (B × E),
    ``graph_approximate`` (B, 1 where the graph was spread rather than aligned).
    """

    name: ClassVar[str] = "complementary_ca"
    config_class: ClassVar[type[ModelConfig]] = ComplementaryConfig
    config: ComplementaryConfig

    def __init__(self, config: ComplementaryConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        _require_both(self, config)
        self._build_front(config, input_dims)
        hidden = config.hidden_dim
        graph_dim = hidden if self.graph is not None else 0
        experts = [
            CrossAttentionExpert(hidden, config.ca_heads, config.ca_layers, config.dropout)
            for _ in range(config.num_experts)
        ]
        gate = TopKGate(2 * hidden + graph_dim, config.num_experts, k=config.top_k, noise_std=config.gate_noise_std)
        self.moe = MixtureOfExperts(experts, gate)
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * hidden + graph_dim, num_classes))

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits ``B × C`` from the gated cross-attention experts and the graph."""
        pooled, seq, extras = self._inputs(batch)
        gate_input = [pooled["text"], pooled["audio"]]
        if "graph" in extras:
            gate_input.append(extras["graph"])
        mixed, moe_aux, balance = self.moe(
            torch.cat(gate_input, dim=-1), seq["text"].states, seq["text"].mask, seq["audio"].states, seq["audio"].mask
        )
        features = [mixed] + ([extras["graph"]] if "graph" in extras else [])
        logits = self.classifier(torch.cat(features, dim=-1))
        aux = {"gate_weights": moe_aux["gate_weights"], "gate_probs": moe_aux["gate_probs"]}
        if "graph_approximate" in extras:
            aux["graph_approximate"] = extras["graph_approximate"]
        return ModelOutput(logits=logits, aux=aux, aux_losses={"load_balance": balance})


# ---------------------------------------------------------------------------------------------
# Sum-Product Linear MoE
# ---------------------------------------------------------------------------------------------


class SumProductExpert(nn.Module):
    """One expert of the SPL MoE: ``[t; s; t+s; t⊙s; extra] → Linear`` (or ``x → Linear`` with a
    single modality, when called with one vector)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.linear = Expert(in_dim, out_dim, kind="linear", dropout=dropout)

    def forward(
        self, first: torch.Tensor, second: torch.Tensor | None = None, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled text (``first``), pooled speech (``second``, None with one modality) and the
        graph embedding (``extra``) → ``B × out_dim``."""
        parts = [first] if second is None else [first, second, first + second, first * second]
        if extra is not None:
            parts.append(extra)
        z, _ = self.linear(torch.cat(parts, dim=-1))
        return z


@register_model("complementary_spl", "Complementary Fusion: sum-product linear MoE (text, speech, graph)")
@register_model(
    "complementary_spl_text", "Complementary Fusion: sum-product linear MoE on text alone", modalities=("text",)
)
@register_model(
    "complementary_spl_audio", "Complementary Fusion: sum-product linear MoE on speech alone", modalities=("audio",)
)
class ComplementarySumProductMoE(_ComplementaryBase):
    """Sum-Product Linear MoE of Complementary Fusion (one or both modalities).

    ``aux``: ``gate_weights`` (B × E), ``gate_probs`` (B × E), and with both modalities
    ``graph_approximate`` (B).

    ``spl_audio_source``: the experts' speech vector is the mean of the projected frames
    (``"frames"``, the paper's) or the audio utterance vector (``"pooled"``: ``features.audio.utterance``,
    e.g. ComParE functionals, through LayerNorm → Linear to ``hidden_dim``); off by default.
    """

    name: ClassVar[str] = "complementary_spl"
    config_class: ClassVar[type[ModelConfig]] = ComplementaryConfig
    config: ComplementaryConfig

    def __init__(self, config: ComplementaryConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        self._build_front(config, input_dims)
        hidden = config.hidden_dim
        both = len(config.modalities) == 2
        graph_dim = hidden if self.graph is not None else 0
        expert_in = (4 * hidden if both else hidden) + graph_dim
        gate_in = (2 * hidden if both else hidden) + graph_dim
        experts = [SumProductExpert(expert_in, hidden, config.dropout) for _ in range(config.num_experts)]
        self.moe = MixtureOfExperts(
            experts, TopKGate(gate_in, config.num_experts, k=config.top_k, noise_std=config.gate_noise_std)
        )
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(hidden, num_classes))
        self.audio_pooled_map = None
        if config.spl_audio_source == "pooled" and "audio" in config.modalities:
            if "audio_pooled" not in input_dims:
                raise ConfigError(
                    f"{self.name}: spl_audio_source='pooled' needs the audio utterance vector "
                    "(input_dims['audio_pooled']); declare features.audio.utterance or use 'frames'"
                )
            width = int(input_dims["audio_pooled"])
            self.audio_pooled_map = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden))

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits ``B × C`` from the gated sum-product experts."""
        pooled, _, extras = self._inputs(batch)
        if self.audio_pooled_map is not None:
            vector = batch.inputs["audio"].pooled
            if vector is None:
                raise ConfigError(
                    f"{self.name}: spl_audio_source='pooled' but the batch's audio input has no pooled "
                    "vectors; declare features.audio.utterance or use 'frames'"
                )
            pooled["audio"] = self.audio_pooled_map(vector)
        vectors = [pooled[m] for m in ("text", "audio") if m in pooled]
        graph = extras.get("graph")
        gate_input = torch.cat(vectors + ([graph] if graph is not None else []), dim=-1)
        second = vectors[1] if len(vectors) == 2 else None
        mixed, moe_aux, balance = self.moe(gate_input, vectors[0], second, graph)
        aux = {"gate_weights": moe_aux["gate_weights"], "gate_probs": moe_aux["gate_probs"]}
        if "graph_approximate" in extras:
            aux["graph_approximate"] = extras["graph_approximate"]
        return ModelOutput(logits=self.classifier(mixed), aux=aux, aux_losses={"load_balance": balance})


# ---------------------------------------------------------------------------------------------
# Complementary late fusion
# ---------------------------------------------------------------------------------------------


@register_model(
    "complementary",
    "Complementary Fusion: per-class late fusion of the CA and SPL MoE models",
    late_fusion_of=("complementary_ca", "complementary_spl"),
)
class ComplementaryFusion(_ComplementaryBase):
    """The complementary late fusion of :class:`ComplementaryCrossAttentionMoE` and
    :class:`ComplementarySumProductMoE`.

    ``logits`` are the log of ``p_c ∝ w_c·p^CA_c + (1−w_c)·p^SPL_c`` (renormalised); ``aux`` holds
    both sub-models' aux prefixed ``ca_``/``spl_`` and their logits as ``expert_logits_ca`` and
    ``expert_logits_spl``. The weights ``w`` are a buffer (saved with the weights), set from the
    config or :meth:`set_fusion_weights` (the trainer fits them on validation data).
    """

    name: ClassVar[str] = "complementary"
    config_class: ClassVar[type[ModelConfig]] = ComplementaryFusionConfig
    config: ComplementaryFusionConfig
    fusion_weights: torch.Tensor  # a registered buffer

    def __init__(
        self,
        config: ComplementaryFusionConfig,
        input_dims: Mapping[str, int],
        num_classes: int,
        ca: ComplementaryCrossAttentionMoE | None = None,
        spl: ComplementarySumProductMoE | None = None,
    ):
        super().__init__(config, input_dims, num_classes)
        _require_both(self, config)
        sub_config = ComplementaryConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "fusion_weights"})
        self.ca = ca if ca is not None else ComplementaryCrossAttentionMoE(sub_config, input_dims, num_classes)
        self.spl = spl if spl is not None else ComplementarySumProductMoE(sub_config, input_dims, num_classes)
        self.register_buffer("fusion_weights", torch.full((num_classes,), 0.5))
        if config.fusion_weights:
            self.set_fusion_weights(config.fusion_weights)

    @classmethod
    def from_submodels(
        cls,
        ca: ComplementaryCrossAttentionMoE,
        spl: ComplementarySumProductMoE,
        weights: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    ) -> ComplementaryFusion:
        """Combine two separately trained sub-models (same inputs and classes) with weights ``w_c``."""
        if not isinstance(ca, ComplementaryCrossAttentionMoE) or not isinstance(spl, ComplementarySumProductMoE):
            raise ConfigError(
                "from_submodels takes a complementary_ca model and a complementary_spl model, in that order"
            )
        if ca.num_classes != spl.num_classes or ca.input_dims != spl.input_dims:
            raise ConfigError(
                f"the sub-models disagree: classes {ca.num_classes} vs {spl.num_classes}, "
                f"inputs {ca.input_dims} vs {spl.input_dims}"
            )
        if set(spl.config.modalities) != {"audio", "text"}:
            raise ConfigError(
                "the sum-product sub-model must use both audio and text to be fused with the cross-attention model"
            )
        config = ComplementaryFusionConfig.from_dict(ca.config.to_dict())
        model = cls(config, ca.input_dims, ca.num_classes, ca=ca, spl=spl)
        if weights is not None:
            model.set_fusion_weights(weights)
        return model

    def set_fusion_weights(self, weights: Sequence[float] | np.ndarray | torch.Tensor) -> None:
        """Set ``w_c`` (the cross-attention model's share of class c), one value in [0, 1] per class."""
        values = torch.as_tensor(np.asarray(weights, dtype=np.float32))
        if values.shape != (self.num_classes,) or bool(((values < 0) | (values > 1)).any()):
            raise ConfigError(f"fusion weights must be {self.num_classes} values in [0, 1]; got {values.tolist()}")
        self.fusion_weights.copy_(values)

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Class weights for both sub-models' cross-entropy."""
        super().set_class_weights(weights)
        self.ca.set_class_weights(weights)
        self.spl.set_class_weights(weights)

    def forward(self, batch: Batch) -> ModelOutput:
        """Fused log-probabilities ``B × C`` and both sub-models' aux."""
        ca_out, spl_out = self.ca(batch), self.spl(batch)
        probs = fuse_probabilities(ca_out.logits.softmax(-1), spl_out.logits.softmax(-1), self.fusion_weights)
        aux = {"expert_logits_ca": ca_out.logits, "expert_logits_spl": spl_out.logits}
        aux.update({f"ca_{k}": v for k, v in ca_out.aux.items()})
        aux.update({f"spl_{k}": v for k, v in spl_out.aux.items()})
        aux_losses = {f"ca_{k}": v for k, v in ca_out.aux_losses.items()}
        aux_losses.update({f"spl_{k}": v for k, v in spl_out.aux_losses.items()})
        return ModelOutput(logits=probs.clamp_min(1e-12).log(), aux=aux, aux_losses=aux_losses)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Both sub-models' own losses, summed (the fusion weights are fitted, not learned by
        gradient, so joint training equals training the two separately); the fused NLL is
        reported for logging only."""
        total = output.logits.new_zeros(())
        parts: dict[str, float] = {}
        for prefix, model in (("ca", self.ca), ("spl", self.spl)):
            sub = ModelOutput(
                logits=output.aux[f"expert_logits_{prefix}"],
                aux_losses={
                    k[len(prefix) + 1 :]: v for k, v in output.aux_losses.items() if k.startswith(prefix + "_")
                },
            )
            sub_total, sub_parts = model.loss(sub, labels)
            total = total + sub_total
            parts.update({f"{prefix}_{k}": v for k, v in sub_parts.items()})
        parts["fused_nll"] = float(F.nll_loss(output.logits.detach(), labels, ignore_index=IGNORE_INDEX))
        parts["total"] = float(total.detach())
        return total, parts


# ---------------------------------------------------------------------------------------------
# Baseline: graph embedding → MLP
# ---------------------------------------------------------------------------------------------


@register_model("graph_mlp", "Complementary Fusion's baseline: time-aligned graph embedding → MLP")
class GraphMLP(_ComplementaryBase):
    """The graph-only baseline of the Complementary Fusion paper: the token–frame GAT embedding
    → 2-layer MLP. Needs audio and text (they are the graph's nodes). ``aux``: ``graph_approximate``."""

    name: ClassVar[str] = "graph_mlp"
    config_class: ClassVar[type[ModelConfig]] = GraphMLPConfig
    config: GraphMLPConfig

    def __init__(self, config: GraphMLPConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        _require_both(self, config)
        self._build_front(config, input_dims, project=False)
        self.classifier = MLP(config.hidden_dim, config.hidden_dim, num_classes, num_layers=2, dropout=config.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        """Logits ``B × C`` from the graph embedding alone."""
        _, _, extras = self._inputs(batch)
        return ModelOutput(
            logits=self.classifier(extras["graph"]), aux={"graph_approximate": extras["graph_approximate"]}
        )


# ---------------------------------------------------------------------------------------------
# Plain functions
# ---------------------------------------------------------------------------------------------


def pool_frames(states: torch.Tensor, mask: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool each row's valid frames to ``max_frames`` when it has more (rows
    with fewer keep their frames); returns ``B × T' × D`` states and mask, ``T' = min(T, max_frames)``.

    Pooling runs over a row's valid frames only (taken in order), so padded frames never enter a
    pooled frame; pooled frame ``j`` of a row of ``L`` valid frames averages its frames
    ``[⌊j·L/M⌋, ⌈(j+1)·L/M⌉)``, the bins of :func:`torch.nn.functional.adaptive_avg_pool1d`. The
    computation is tensor ops only (masks, comparisons, cumulative sums in float64, gathers), so it
    traces to ONNX with dynamic batch and lengths; padded output positions are zero.
    """
    mask = mask.to(torch.bool)
    zero = torch.zeros((), dtype=states.dtype, device=states.device)
    valid = torch.where(mask.unsqueeze(-1), states, zero)
    lengths = mask.sum(dim=1, keepdim=True)  # B × 1
    rank = mask.long().cumsum(dim=1)  # valid frames up to and including each position
    slots = torch.ones_like(mask[:, :max_frames], dtype=torch.long).cumsum(dim=1) - 1  # 0 .. T'-1
    start = slots * lengths // max_frames
    end = ((slots + 1) * lengths + max_frames - 1) // max_frames

    def position_of(k: torch.Tensor) -> torch.Tensor:
        """Position of each row's valid frame number ``k`` (0-based; ``T`` when it has fewer): the
        number of positions before it, so ``prefix[position_of(k)]`` sums its first ``k`` frames."""
        return (rank.unsqueeze(1) <= k.unsqueeze(2)).sum(dim=2)

    def take(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.gather(source, 1, index.unsqueeze(-1).expand(-1, -1, source.shape[-1]))

    # a row that fits keeps its frames: frame k at slot k, zeros after its last frame
    kept = take(torch.cat([valid, torch.zeros_like(valid[:, :1])], dim=1), position_of(slots))
    # a longer row: bin means from prefix sums (float64, so the differences lose nothing that matters)
    wide = torch.float32 if states.device.type == "mps" else torch.float64
    prefix = valid.to(wide).cumsum(dim=1)
    prefix = torch.cat([torch.zeros_like(prefix[:, :1]), prefix], dim=1)  # sum of positions < p
    sums = take(prefix, position_of(end)) - take(prefix, position_of(start))
    means = (sums / (end - start).unsqueeze(-1).to(wide)).to(states.dtype)
    pooled = torch.where((lengths > max_frames).unsqueeze(-1), means, kept)
    return pooled, slots < lengths


def remapped_adjacency(
    edges: Sequence[torch.Tensor],
    token_mask: torch.Tensor,
    frame_lengths: torch.Tensor,
    frame_mask: torch.Tensor,
    max_frames: int,
) -> torch.Tensor:
    """The ``B × T_t × T_a`` bool adjacency of per-utterance ``2 × E`` (token, frame) edges after the
    front end: ``token_mask`` (``B × T_t``) is the cut text's mask, ``frame_lengths`` (``B``) each
    row's frame count before pooling and ``frame_mask`` (``B × T_a``) the pooled audio's mask.

    As :func:`remap_edges` does per utterance: edges beyond the row's tokens or frames drop out,
    and in a row of ``L > max_frames`` frames frame ``f`` moves to pooled frame ``⌊f·max_frames/L⌋``;
    edges to padded positions drop out, a repeated edge counts once. Tensor ops over the padded
    batch (no loop over utterances, no scatter)."""
    token_mask, frame_mask = token_mask.to(torch.bool), frame_mask.to(torch.bool)
    tokens, frames = pad_edges(edges, device=token_mask.device, error=ConfigError)
    lengths = frame_lengths.to(device=token_mask.device, dtype=torch.long).unsqueeze(1)
    keep = (tokens >= 0) & (tokens < token_mask.sum(dim=1, keepdim=True)) & (frames < lengths)
    frames = torch.where(lengths > max_frames, frames * max_frames // lengths.clamp_min(1), frames)
    adjacency = pairs_to_adjacency(
        torch.where(keep, tokens, -1), torch.where(keep, frames, -1), token_mask.shape[1], frame_mask.shape[1]
    )
    return adjacency & token_mask.unsqueeze(2) & frame_mask.unsqueeze(1)


def spread_adjacency(token_mask: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Approximate token–frame edges as a ``B × T_t × T_a`` bool adjacency: each row's selected
    tokens (``token_mask``, e.g. content tokens) spread in order and uniformly over its valid
    frames, token k of K taking frames ``[⌊k·L/K⌋, ⌊(k+1)·L/K⌋)`` (at least the frame
    ``⌊k·L/K⌋``); the edges of :func:`spread_token_edges`, as comparisons of index ranges."""
    token_mask, frame_mask = token_mask.to(torch.bool), frame_mask.to(torch.bool)
    count = token_mask.sum(dim=1, keepdim=True).clamp_min(1)  # K (B × 1)
    frames = frame_mask.sum(dim=1, keepdim=True)  # L
    k = token_mask.long().cumsum(dim=1) - 1
    start = k * frames // count
    stop = torch.maximum((k + 1) * frames // count, start + 1)
    position = torch.ones_like(frame_mask, dtype=torch.long).cumsum(dim=1) - 1  # B × T_a
    inside = (position.unsqueeze(1) >= start.unsqueeze(2)) & (position.unsqueeze(1) < stop.unsqueeze(2))
    return inside & token_mask.unsqueeze(2) & frame_mask.unsqueeze(1)


def remap_edges(edges: torch.Tensor, num_tokens: int, num_frames: int, max_frames: int) -> torch.Tensor:
    """Keep the edges inside ``num_tokens`` × ``num_frames`` (tokens cut by the token limit or
    frames beyond the states drop out) and, when the ``num_frames`` frames are pooled to
    ``max_frames``, move frame ``f`` to pooled frame ``⌊f·max_frames/num_frames⌋``; duplicates
    are removed. ``edges`` is ``2 × E`` (token, frame)."""
    edges = torch.as_tensor(edges, dtype=torch.long)
    if edges.dim() != 2 or edges.shape[0] != 2:
        raise ConfigError(f"an edge tensor must be 2 × E (token index, frame index); got shape {tuple(edges.shape)}")
    if edges.numel() and int(edges.min()) < 0:
        raise ConfigError("edge indices must not be negative")
    keep = (edges[0] < num_tokens) & (edges[1] < num_frames)
    edges = edges[:, keep]
    if num_frames > max_frames and edges.shape[1]:
        edges = torch.stack([edges[0], edges[1] * max_frames // num_frames])
        edges = torch.unique(edges, dim=1)
    return edges


def spread_token_edges(token_mask: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Approximate token–frame edges: the selected tokens (``token_mask``, e.g. content tokens)
    spread in order and uniformly over the valid frames, token k of K taking frames
    ``[⌊k·L/K⌋, ⌊(k+1)·L/K⌋)`` (at least the frame ``⌊k·L/K⌋``). Returns ``2 × E`` long."""
    tokens = torch.nonzero(token_mask, as_tuple=False).flatten()
    num_frames = int(frame_mask.sum())
    if tokens.numel() == 0 or num_frames == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=token_mask.device)
    count = tokens.numel()
    pairs: list[tuple[int, int]] = []
    for k, token in enumerate(tokens.tolist()):
        start = k * num_frames // count
        stop = max((k + 1) * num_frames // count, start + 1)
        pairs.extend((token, frame) for frame in range(start, stop))
    return torch.tensor(pairs, dtype=torch.long, device=token_mask.device).T


def fuse_probabilities(p_ca: torch.Tensor, p_spl: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``p_c ∝ w_c·p^CA_c + (1−w_c)·p^SPL_c``, renormalised over classes (last dimension)."""
    if isinstance(weights, torch.Tensor):  # a buffer: traced as the model's own tensor, not a constant
        weights = weights.to(dtype=p_ca.dtype, device=p_ca.device)
    else:
        weights = torch.as_tensor(weights, dtype=p_ca.dtype, device=p_ca.device)
    mixed = weights * p_ca + (1.0 - weights) * p_spl
    return mixed / mixed.sum(dim=-1, keepdim=True).clamp_min(1e-12)


# The paper's hypothesis: high-arousal, "clear" emotions suit the light sum-product fusion; low-arousal
# or ambiguous, "complex" ones need the cross-attention model. Keys are label prefixes so every
# scheme's spelling (anger/angry, fear/fearful, happiness/happy/joy, ...) maps.
_CLEAR_PREFIXES = ("ang", "hap", "joy", "exc", "sur")
_COMPLEX_PREFIXES = ("sad", "fea", "neu", "dis", "fru", "bor", "cal")


def arousal_split_weights(classes: Sequence[str]) -> np.ndarray:
    """The paper's hand-assigned split as fusion weights: complex classes (sadness, fear, and the
    low-arousal or ambiguous neutral, disgust, frustration, boredom, calm) go to the cross-attention
    model (``w = 1``); clear high-arousal classes (anger, happiness/joy, excitement, surprise) to the
    sum-product model (``w = 0``). A class name outside these raises :class:`LabelError`."""
    weights = []
    unknown = []
    for name in classes:
        key = str(name).strip().lower()
        if key.startswith(_COMPLEX_PREFIXES):
            weights.append(1.0)
        elif key.startswith(_CLEAR_PREFIXES):
            weights.append(0.0)
        else:
            unknown.append(str(name))
    if unknown:
        raise LabelError(
            f"arousal_split_weights cannot place class(es) {', '.join(unknown)} on the arousal split; "
            f"fit the weights on validation data with fit_fusion_weights instead"
        )
    return np.asarray(weights, dtype=np.float32)
