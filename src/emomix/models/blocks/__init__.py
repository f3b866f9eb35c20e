"""The shared building blocks every model file is assembled from.

Each block is written and tested once here; a model file names the blocks its paper uses and
wires them together. Conventions shared by all blocks:

- masks are bool tensors with True on valid positions (frames, tokens, utterances);
- padded positions never change an output: they are excluded from attention keys, from pooling,
  from graphs and from recurrent passes (the tests check this by filling padding with random
  values);
- gates and routers return probabilities that sum to 1 per row.

One module per block family, every public name re-exported here: ``pooling``
(:func:`masked_mean`, :class:`AttentionPooling`), ``feedforward`` (:class:`MLP`,
:class:`Expert`), ``routing`` (:class:`TwoExpertRouter`, :class:`TopKGate`,
:func:`load_balance_loss`, :class:`MixtureOfExperts`), ``attention``
(:class:`CrossAttentionLayer`, :class:`BidirectionalCrossAttention`,
:class:`PairwiseSigmoidAttention`), ``graph`` (:func:`edges_to_adjacency`,
:func:`pairs_to_adjacency`, :func:`pad_edges`, :func:`valid_bipartite_edges`,
:func:`bipartite_edges_to_graph`, :class:`BipartiteGATLayer`, :class:`BipartiteGAT`) and ``context``
(:class:`DialogueContext`).
"""

from emomix.models.blocks.attention import (
    BidirectionalCrossAttention,
    CrossAttentionLayer,
    PairwiseSigmoidAttention,
)
from emomix.models.blocks.context import DialogueContext
from emomix.models.blocks.feedforward import MLP, Expert
from emomix.models.blocks.graph import (
    BipartiteGAT,
    BipartiteGATLayer,
    bipartite_edges_to_graph,
    edges_to_adjacency,
    pad_edges,
    pairs_to_adjacency,
    valid_bipartite_edges,
)
from emomix.models.blocks.pooling import AttentionPooling, masked_mean
from emomix.models.blocks.routing import (
    MixtureOfExperts,
    TopKGate,
    TwoExpertRouter,
    load_balance_loss,
)

__all__ = [
    "MLP",
    "AttentionPooling",
    "BidirectionalCrossAttention",
    "BipartiteGAT",
    "BipartiteGATLayer",
    "CrossAttentionLayer",
    "DialogueContext",
    "Expert",
    "MixtureOfExperts",
    "PairwiseSigmoidAttention",
    "TopKGate",
    "TwoExpertRouter",
    "bipartite_edges_to_graph",
    "edges_to_adjacency",
    "load_balance_loss",
    "masked_mean",
    "pad_edges",
    "pairs_to_adjacency",
    "valid_bipartite_edges",
]
