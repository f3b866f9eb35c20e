"""The baselines the four papers compare against, on the same inputs as the MoE models.

Each baseline is the textbook version of its idea on frame/token states from any encoder:

* ``early_fusion`` — each modality's states mean-pooled over valid positions, the vectors
  concatenated, a 2-layer MLP (variants ``early_fusion_audio``, ``early_fusion_text``). Its
  counterpart on MPAF-Net's own encoders is ``concat_fusion`` (in ``mpaf_net.py``).
* ``late_fusion`` — one MLP classifier per modality on its pooled vector; the prediction is the
  mean of their class probabilities (``logits`` = log of that mean).
* ``tfn`` — Tensor Fusion Network (Zadeh et al., 2017): each modality's pooled vector goes
  through a small subnetwork to ``proj_dim``; the outer product ``[h_a; 1] ⊗ [h_t; 1]`` (``⊗
  [h_v; 1]`` with video) holds the unimodal, bimodal and trimodal terms; an MLP classifies it.
* ``ef_lstm`` — early-fusion LSTM: the modalities' sequences are concatenated step by step and
  read by one bidirectional LSTM.
* ``lf_lstm`` — late-fusion LSTM: one LSTM per modality, their final states concatenated into
  a classifier.
* ``text_bilstm`` — text only: a bidirectional LSTM over the token states.
* ``speech_cnn`` — audio only: a 1-D CNN over the frame states, then global mean and max pooling.
* ``linear_svm`` — the classic practitioner's peer (openSMILE functionals + a linear SVM) inside
  the toolkit: each modality's mean-pooled vector, concatenated, one linear map to class scores,
  trained with a class-weighted multi-class squared hinge loss (variants ``linear_svm_audio``,
  ``linear_svm_text``). With ``features.<m>.utterance`` it reads the utterance vector (the
  benchmark's ``linear_svm_audio@utterance``), so it runs on the same folds and features as the
  MoE models.

Decisions (each one a config field with this default):

- ``input_norm=True``: a LayerNorm on each modality's input (pooled vector or every frame/token)
  before anything is learned — encoders differ in scale by orders of magnitude (openSMILE
  descriptors vs. transformer states), and without it one modality dominates the first steps.
- ``hidden_dim``, ``dropout=0.2``: the classifier MLPs have 2 layers (``num_layers``).
- late fusion: the per-modality classifiers are trained together with
  ``branch_weight=1.0`` × the sum of their own cross-entropies added to the cross-entropy of the
  averaged prediction, so each stays a working unimodal classifier (as when trained apart)
  instead of co-adapting to the average.
- TFN: ``proj_dim=16`` (the outer product of two modalities has 17² = 289 terms, of three
  4913), subnetworks are 2-layer MLPs of width ``subnet_hidden=64`` on the mean-pooled states
  (the original reads text with an LSTM; we keep one pooled vector per modality so that TFN
  differs from early fusion only in the fusion); the classifier after the product has
  ``num_layers=3`` (two hidden layers, as in the original).
- EF-LSTM needs aligned sequences, which frames and tokens are not: every modality's valid
  positions are resampled to ``steps=32`` steps by adaptive average pooling
  (:func:`masked_adaptive_pool`, bins as in :func:`torch.nn.functional.adaptive_avg_pool1d`, over
  each row's valid positions only), projected to ``proj_dim=64`` and concatenated per step.
- LSTMs (``ef_lstm``, ``lf_lstm``, ``text_bilstm``): ``bidirectional=True``, one layer of
  ``hidden_dim=64`` per direction, sequences packed by length so padding never enters; the
  utterance vector is the final state of each direction, concatenated. (LF-LSTM is often
  unidirectional; the backward direction helps on long frame sequences whose last frames are
  silence. ``bidirectional=False`` gives the unidirectional form.)
- speech CNN: ``channels=(64, 64)`` convolution layers of ``kernel_size=5`` with same padding and
  ReLU; padded frames are zeroed before every convolution, so a valid frame next to the padding
  sees exactly what it would see at the end of an unpadded sequence; then mean and max over
  valid frames, concatenated, into the classifier.
- linear SVM: ``input_norm=False`` (an SVM expects standardised inputs, which the recipe's
  speaker normalisation or ``training.standardise`` provide; a LayerNorm per utterance would
  change the feature geometry the SVM peer sees), ``margin=1.0``, ``squared_hinge=True`` (the
  squared hinge of scikit-learn's ``LinearSVC``; False gives the plain hinge). The loss is the
  Weston–Watkins multi-class hinge, ``Σ_{j≠y} max(0, margin − s_y + s_j)^p / C``, each row
  weighted by its class weight. ``solver="lbfgs"``: the model is not trained by the epoch loop
  but fitted, as an SVM library fits one, to the minimum of the convex SVM objective
  ``c · Σ_i w_{y_i} Σ_{j≠y_i} max(0, margin − s_{i,y_i} + s_{i,j})^p + ½‖W‖²`` over the whole
  training part (the bias is not penalised), by full-batch L-BFGS from zero weights for at most
  ``max_iter=500`` iterations; ``c=1.0`` is scikit-learn's default C, the peer's setting. Measured
  on SAVEE (ComParE functionals, per-speaker z-scored, LOSO): the epoch loop's AdamW, 25 epochs,
  gave UA 0.56, far from scikit-learn's SVC on the same features (0.64), because minibatch Adam on
  6,373 dimensions and 360 utterances stops far from the SVM's solution; the solved objective
  gives 0.62–0.64. ``solver="epochs"`` trains it like every model (the L2 term is then the
  optimiser's weight decay, C ≈ 1 / (weight_decay · n)). Its scores are not probabilities:
  ``logits`` are the scores, so the reported probabilities are their softmax — fine for every
  argmax metric, not calibrated.
- the loss is cross-entropy weighted by the class weights the trainer sets with
  :meth:`BaselineModel.set_class_weights` (inverse training frequency; uniform when unset).

Padded positions are assumed to follow the valid ones in every row (as
:func:`emomix.models.inputs.pad_sequences` builds them); the LSTMs rely on it for packing.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from emomix.errors import ConfigError
from emomix.models.base import EmotionModel, ModelConfig, register_model
from emomix.models.blocks import MLP, masked_mean
from emomix.models.inputs import Batch, ModalityInput, ModelOutput
from emomix.models.losses import branch_losses, focal_loss, multiclass_hinge

PAPERS = {
    "early_fusion": "early fusion baseline (concatenated pooled modalities → MLP), "
    "as compared in the Complementary Fusion paper",
    "late_fusion": "late fusion baseline (average of unimodal classifiers), "
    "as compared in the Complementary Fusion paper",
    "tfn": "Zadeh et al., Tensor Fusion Network for Multimodal Sentiment Analysis, EMNLP 2017 (baseline in MPAF-Net)",
    "ef_lstm": "EF-LSTM: early-fusion LSTM baseline, as compared in MPAF-Net",
    "lf_lstm": "LF-LSTM: late-fusion LSTM baseline, as compared in MPAF-Net",
    "text_bilstm": "text BiLSTM baseline, as compared in the Complementary Fusion paper",
    "speech_cnn": "speech CNN baseline, as compared in the Complementary Fusion paper",
    "linear_svm": "linear SVM on utterance vectors (openSMILE functionals + SVM, the classic "
    "speech emotion recognition peer, e.g. Schuller et al.'s ComParE baselines)",
}
ALL_MODALITIES = ("audio", "text", "video")


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


@dataclass
class BaselineConfig(ModelConfig):
    """Fields every baseline has (see the module docstring for the decisions)."""

    modalities: tuple[str, ...] = ("audio", "text")
    hidden_dim: int = 128
    num_layers: int = 2
    dropout: float = 0.2
    input_norm: bool = True

    def validate(self) -> None:
        super().validate()
        self.require_positive("hidden_dim", "num_layers")
        self.require_fraction("dropout")


@dataclass
class EarlyFusionConfig(BaselineConfig):
    """Config of :class:`EarlyFusion`."""


@dataclass
class LateFusionConfig(BaselineConfig):
    """Config of :class:`LateFusion`; ``branch_weight`` scales the per-modality cross-entropies."""

    branch_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        self.require_non_negative("branch_weight")


@dataclass
class TFNConfig(BaselineConfig):
    """Config of :class:`TensorFusionNetwork`."""

    proj_dim: int = 16
    subnet_hidden: int = 64
    num_layers: int = 3

    def validate(self) -> None:
        super().validate()
        self.require_positive("proj_dim", "subnet_hidden")


@dataclass
class LSTMBaselineConfig(BaselineConfig):
    """Config of the LSTM baselines (``ef_lstm``, ``lf_lstm``, ``text_bilstm``).

    ``hidden_dim`` is the LSTM width per direction; ``classifier_hidden`` the MLP's; ``steps`` and
    ``proj_dim`` matter to ``ef_lstm`` only.
    """

    hidden_dim: int = 64
    lstm_layers: int = 1
    bidirectional: bool = True
    classifier_hidden: int = 128
    steps: int = 32
    proj_dim: int = 64

    def validate(self) -> None:
        super().validate()
        self.require_positive("lstm_layers", "classifier_hidden", "steps", "proj_dim")


@dataclass
class TextBiLSTMConfig(LSTMBaselineConfig):
    """Config of :class:`TextBiLSTM` (text only)."""

    modalities: tuple[str, ...] = ("text",)


@dataclass
class SpeechCNNConfig(BaselineConfig):
    """Config of :class:`SpeechCNN` (audio only)."""

    modalities: tuple[str, ...] = ("audio",)
    channels: tuple[int, ...] = (64, 64)
    kernel_size: int = 5

    def validate(self) -> None:
        super().validate()
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise ConfigError(
                f"SpeechCNNConfig.channels must be a non-empty list of positive widths; got {self.channels!r}"
            )
        if int(self.kernel_size) < 1 or int(self.kernel_size) % 2 == 0:
            raise ConfigError(
                f"SpeechCNNConfig.kernel_size must be odd and positive (same padding); got {self.kernel_size!r}"
            )


@dataclass
class LinearSVMConfig(ModelConfig):
    """Config of :class:`LinearSVM` (see the module docstring for the decisions)."""

    input_norm: bool = False
    margin: float = 1.0
    squared_hinge: bool = True
    solver: str = "lbfgs"
    c: float = 1.0
    max_iter: int = 500

    def validate(self) -> None:
        super().validate()
        self.require_positive("margin", "c", "max_iter")
        if self.solver not in SVM_SOLVERS:
            raise ConfigError(f"linear_svm: solver must be one of {', '.join(SVM_SOLVERS)}, got {self.solver!r}")


SVM_SOLVERS = ("lbfgs", "epochs")
"""``linear_svm``'s ways to fit: solved to the objective's minimum, or trained by the epoch loop."""


# ---------------------------------------------------------------------------------------------
# Shared parts of the baselines
# ---------------------------------------------------------------------------------------------


class BaselineModel(EmotionModel[Batch]):
    """What every baseline shares: the modality check, class weights and the weighted CE loss."""

    config_class: ClassVar[type[ModelConfig]] = BaselineConfig
    config: BaselineConfig
    supported_modalities: ClassVar[tuple[str, ...]] = ALL_MODALITIES

    def __init__(self, config: BaselineConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        self.modalities = tuple(m for m in ALL_MODALITIES if m in config.modalities)

    def _inputs(self, batch: Batch) -> dict[str, ModalityInput]:
        missing = [m for m in self.modalities if m not in batch.inputs]
        if missing:
            raise ConfigError(
                f"{self.name} was built for {', '.join(self.modalities)} but the batch has no "
                f"{', '.join(missing)} input"
            )
        return {m: batch.inputs[m] for m in self.modalities}

    def _concatenated_means(self, batch: Batch, norms: nn.ModuleDict) -> torch.Tensor:
        """Each modality's masked mean over its valid positions, through ``norms[m]``, concatenated."""
        inputs = self._inputs(batch)
        return torch.cat([norms[m](masked_mean(inputs[m].states, inputs[m].mask)) for m in self.modalities], dim=-1)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy weighted by the class weights."""
        total = focal_loss(output.logits, labels, alpha=self.class_weights, gamma=0.0)
        return total, {"ce": float(total.detach()), "total": float(total.detach())}


def _input_norm(dim: int, enabled: bool) -> nn.Module:
    return nn.LayerNorm(dim) if enabled else nn.Identity()


class LSTMEncoder(nn.Module):
    """An LSTM over padded sequences, packed by length; returns the final state of each
    direction of the top layer, concatenated (``B × hidden·directions``)."""

    def __init__(
        self, in_dim: int, hidden_dim: int, num_layers: int = 1, bidirectional: bool = True, dropout: float = 0.0
    ):
        super().__init__()
        self.lstm = nn.LSTM(
            in_dim,
            hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.out_dim = hidden_dim * self.directions

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``B × T × D``; ``mask``: ``B × T`` (valid positions first) or None (all valid)."""
        if mask is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        else:
            lengths = mask.sum(dim=1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (final, _) = self.lstm(packed)
        top = final[-self.directions :]  # the top layer's directions
        return top.transpose(0, 1).reshape(x.shape[0], self.out_dim)


# ---------------------------------------------------------------------------------------------
# Early and late fusion
# ---------------------------------------------------------------------------------------------


@register_model("early_fusion", "Early fusion baseline: mean-pooled modalities concatenated → MLP")
@register_model(
    "early_fusion_audio", "Early fusion baseline on audio only (mean-pooled frames → MLP)", modalities=("audio",)
)
@register_model(
    "early_fusion_text", "Early fusion baseline on text only (mean-pooled tokens → MLP)", modalities=("text",)
)
class EarlyFusion(BaselineModel):
    """Early fusion: ``MLP([mean(H_a); mean(H_t)(; mean(H_v))])``."""

    name = "early_fusion"
    paper = PAPERS["early_fusion"]
    config_class = EarlyFusionConfig

    def __init__(self, config: EarlyFusionConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        self.norms = nn.ModuleDict({m: _input_norm(int(input_dims[m]), config.input_norm) for m in self.modalities})
        width = sum(int(input_dims[m]) for m in self.modalities)
        self.classifier = MLP(
            width, config.hidden_dim, num_classes, num_layers=config.num_layers, dropout=config.dropout
        )

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.classifier(self._concatenated_means(batch, self.norms)))


@register_model("linear_svm", "Linear SVM baseline: mean-pooled modalities concatenated → linear scores, squared hinge")
@register_model(
    "linear_svm_audio", "Linear SVM baseline on audio only (e.g. openSMILE functionals)", modalities=("audio",)
)
@register_model("linear_svm_text", "Linear SVM baseline on text only (e.g. a sentence vector)", modalities=("text",))
class LinearSVM(BaselineModel):
    """Linear SVM: scores ``W [mean(H_a); mean(H_t)(; mean(H_v))] + b``, multi-class squared hinge.

    With ``solver="lbfgs"`` (:attr:`fits_by_solver`) the trainer does not run epochs: it passes the
    training part's input vectors (what :attr:`scores` reads) to :meth:`solve`."""

    name = "linear_svm"
    paper = PAPERS["linear_svm"]
    config_class = LinearSVMConfig

    def __init__(self, config: LinearSVMConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)  # type: ignore[arg-type]
        self.svm_config = config  # typed view of self.config (BaselineModel types it as BaselineConfig)
        self.norms = nn.ModuleDict({m: _input_norm(int(input_dims[m]), config.input_norm) for m in self.modalities})
        self.scores = nn.Linear(sum(int(input_dims[m]) for m in self.modalities), num_classes)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.scores(self._concatenated_means(batch, self.norms)))

    @property
    def fits_by_solver(self) -> bool:
        """Whether training is :meth:`solve` on the whole training part instead of epochs."""
        return self.svm_config.solver == "lbfgs"

    def solver_layer(self) -> nn.Linear:
        """The layer :meth:`solve` fits; its input is the vector the solver needs per row."""
        return self.scores

    def solve(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Set ``W, b`` to the minimum of the SVM objective (module docstring) on ``features`` (N×D,
        the input of :attr:`scores`) and ``labels`` (N, no ignored rows), with the class weights
        set on the model (uniform when unset); returns the objective, the iterations and whether
        L-BFGS stopped on its tolerances before its caps, ``max_iter`` iterations and
        1.25 × ``max_iter`` objective evaluations (``converged``)."""
        config = self.svm_config
        if features.ndim != 2 or features.shape[0] != labels.shape[0] or features.shape[0] == 0:
            raise ConfigError(
                f"linear_svm: the solver needs N×D features and N labels, got {tuple(features.shape)} "
                f"and {tuple(labels.shape)}"
            )
        x = features.detach().double()
        y = labels.detach().long()
        classes = self.num_classes
        weight = torch.ones(classes, dtype=torch.float64) if self.class_weights is None else self.class_weights
        row_weight = weight.detach().double().cpu()[y]
        w = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS(
            [w, b],
            lr=1.0,
            max_iter=int(config.max_iter),
            history_size=20,
            tolerance_grad=1e-6,
            tolerance_change=1e-10,
            line_search_fn="strong_wolfe",
        )
        power = 2 if config.squared_hinge else 1

        def objective() -> torch.Tensor:
            optimiser.zero_grad()
            scores = x @ w.T + b
            per_row = F.multi_margin_loss(scores, y, p=power, margin=config.margin, reduction="none") * classes
            value = config.c * (row_weight * per_row).sum() + 0.5 * (w * w).sum()
            value.backward()
            return value

        optimiser.step(objective)
        iterations = int(optimiser.state[w].get("n_iter", 0))
        evaluations = int(optimiser.state[w].get("func_evals", 0))
        # L-BFGS also stops at max_eval evaluations (1.25 × max_iter); that is a cap, not convergence
        capped = iterations >= int(config.max_iter) or evaluations >= int(optimiser.defaults["max_eval"])
        final = float(objective().detach())
        with torch.no_grad():
            self.scores.weight.copy_(w.detach().to(self.scores.weight.dtype))
            self.scores.bias.copy_(b.detach().to(self.scores.bias.dtype))
        return {"objective": final, "iterations": iterations, "converged": not capped}

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The class-weighted Weston–Watkins multi-class (squared) hinge over the valid rows."""
        total = multiclass_hinge(
            output.logits,
            labels,
            weight=self.class_weights,
            margin=self.svm_config.margin,
            squared=self.svm_config.squared_hinge,
        )
        return total, {"hinge": float(total.detach()), "total": float(total.detach())}


@register_model("late_fusion", "Late fusion baseline: one classifier per modality, probabilities averaged")
class LateFusion(BaselineModel):
    """Late fusion: ``log mean_m softmax(MLP_m(mean(H_m)))``; ``aux["expert_logits_<m>"]`` per modality."""

    name = "late_fusion"
    paper = PAPERS["late_fusion"]
    config_class = LateFusionConfig
    config: LateFusionConfig

    def __init__(self, config: LateFusionConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        self.classifiers = nn.ModuleDict(
            {
                m: nn.Sequential(
                    _input_norm(int(input_dims[m]), config.input_norm),
                    MLP(
                        int(input_dims[m]),
                        config.hidden_dim,
                        num_classes,
                        num_layers=config.num_layers,
                        dropout=config.dropout,
                    ),
                )
                for m in self.modalities
            }
        )

    def forward(self, batch: Batch) -> ModelOutput:
        inputs = self._inputs(batch)
        aux = {
            f"expert_logits_{m}": self.classifiers[m](masked_mean(inputs[m].states, inputs[m].mask))
            for m in self.modalities
        }
        probs = torch.stack([logits.softmax(dim=-1) for logits in aux.values()]).mean(dim=0)
        return ModelOutput(logits=probs.clamp_min(1e-12).log(), aux=aux)

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted CE of the averaged prediction + ``branch_weight`` · Σ weighted CE of each classifier."""
        fused = focal_loss(output.logits, labels, alpha=self.class_weights, gamma=0.0)
        branch = branch_losses(
            [output.aux[f"expert_logits_{m}"] for m in self.modalities], labels, weight=self.class_weights
        )
        total = fused + self.config.branch_weight * branch
        return total, {"ce": float(fused.detach()), "branch": float(branch.detach()), "total": float(total.detach())}


# ---------------------------------------------------------------------------------------------
# Tensor Fusion Network
# ---------------------------------------------------------------------------------------------


@register_model("tfn", "Tensor Fusion Network: outer product of [h;1] modality vectors → MLP")
class TensorFusionNetwork(BaselineModel):
    """TFN: ``MLP(vec([h_a; 1] ⊗ [h_t; 1] (⊗ [h_v; 1])))`` with ``h_m = subnet_m(mean(H_m))``."""

    name = "tfn"
    paper = PAPERS["tfn"]
    config_class = TFNConfig

    def __init__(self, config: TFNConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        self.subnets = nn.ModuleDict(
            {
                m: nn.Sequential(
                    _input_norm(int(input_dims[m]), config.input_norm),
                    MLP(
                        int(input_dims[m]),
                        config.subnet_hidden,
                        config.proj_dim,
                        num_layers=2,
                        dropout=config.dropout,
                        activation="relu",
                    ),
                    nn.ReLU(),
                )
                for m in self.modalities
            }
        )
        width = (config.proj_dim + 1) ** len(self.modalities)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = MLP(
            width,
            config.hidden_dim,
            num_classes,
            num_layers=config.num_layers,
            dropout=config.dropout,
            activation="relu",
        )

    def forward(self, batch: Batch) -> ModelOutput:
        inputs = self._inputs(batch)
        fused = None
        for m in self.modalities:
            h = self.subnets[m](masked_mean(inputs[m].states, inputs[m].mask))
            h = torch.cat([h, h.new_ones(h.shape[0], 1)], dim=-1)
            fused = h if fused is None else torch.einsum("bi,bj->bij", fused, h).flatten(1)
        assert fused is not None
        return ModelOutput(logits=self.classifier(self.dropout(fused)))


# ---------------------------------------------------------------------------------------------
# LSTM baselines
# ---------------------------------------------------------------------------------------------


@register_model("ef_lstm", "EF-LSTM baseline: modalities resampled to a common length, concatenated per step → BiLSTM")
class EarlyFusionLSTM(BaselineModel):
    """EF-LSTM: ``BiLSTM([W_a pool_S(H_a); W_t pool_S(H_t)]_s)`` → MLP, ``pool_S`` = :func:`masked_adaptive_pool`."""

    name = "ef_lstm"
    paper = PAPERS["ef_lstm"]
    config_class = LSTMBaselineConfig
    config: LSTMBaselineConfig

    def __init__(self, config: LSTMBaselineConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        self.projections = nn.ModuleDict(
            {
                m: nn.Sequential(
                    _input_norm(int(input_dims[m]), config.input_norm), nn.Linear(int(input_dims[m]), config.proj_dim)
                )
                for m in self.modalities
            }
        )
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = LSTMEncoder(
            config.proj_dim * len(self.modalities),
            config.hidden_dim,
            config.lstm_layers,
            config.bidirectional,
            config.dropout,
        )
        self.classifier = MLP(
            self.lstm.out_dim,
            config.classifier_hidden,
            num_classes,
            num_layers=config.num_layers,
            dropout=config.dropout,
        )

    def forward(self, batch: Batch) -> ModelOutput:
        inputs = self._inputs(batch)
        steps = [
            self.projections[m](masked_adaptive_pool(inputs[m].states, inputs[m].mask, self.config.steps))
            for m in self.modalities
        ]
        return ModelOutput(logits=self.classifier(self.lstm(self.dropout(torch.cat(steps, dim=-1)))))


@register_model("lf_lstm", "LF-LSTM baseline: one BiLSTM per modality, final states concatenated → MLP")
class LateFusionLSTM(BaselineModel):
    """LF-LSTM: ``MLP([LSTM_a(H_a); LSTM_t(H_t)])`` with each LSTM's final states."""

    name = "lf_lstm"
    paper = PAPERS["lf_lstm"]
    config_class = LSTMBaselineConfig

    def __init__(self, config: LSTMBaselineConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        self.norms = nn.ModuleDict({m: _input_norm(int(input_dims[m]), config.input_norm) for m in self.modalities})
        lstms = {
            m: LSTMEncoder(
                int(input_dims[m]), config.hidden_dim, config.lstm_layers, config.bidirectional, config.dropout
            )
            for m in self.modalities
        }
        self.lstms = nn.ModuleDict(lstms)
        width = sum(lstm.out_dim for lstm in lstms.values())
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = MLP(
            width, config.classifier_hidden, num_classes, num_layers=config.num_layers, dropout=config.dropout
        )

    def forward(self, batch: Batch) -> ModelOutput:
        inputs = self._inputs(batch)
        finals = [self.lstms[m](self.norms[m](inputs[m].states), inputs[m].mask) for m in self.modalities]
        return ModelOutput(logits=self.classifier(self.dropout(torch.cat(finals, dim=-1))))


@register_model("text_bilstm", "Text BiLSTM baseline: BiLSTM over token states → MLP")
class TextBiLSTM(BaselineModel):
    """Text-only BiLSTM: ``MLP(BiLSTM(H_t))`` with the final states of both directions."""

    name = "text_bilstm"
    paper = PAPERS["text_bilstm"]
    config_class = TextBiLSTMConfig
    supported_modalities = ("text",)

    def __init__(self, config: TextBiLSTMConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        dim = int(input_dims["text"])
        self.norm = _input_norm(dim, config.input_norm)
        self.lstm = LSTMEncoder(dim, config.hidden_dim, config.lstm_layers, config.bidirectional, config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = MLP(
            self.lstm.out_dim,
            config.classifier_hidden,
            num_classes,
            num_layers=config.num_layers,
            dropout=config.dropout,
        )

    def forward(self, batch: Batch) -> ModelOutput:
        text = self._inputs(batch)["text"]
        return ModelOutput(logits=self.classifier(self.dropout(self.lstm(self.norm(text.states), text.mask))))


# ---------------------------------------------------------------------------------------------
# Speech CNN
# ---------------------------------------------------------------------------------------------


@register_model("speech_cnn", "Speech CNN baseline: 1-D convolutions over frame states, mean+max pooling → MLP")
class SpeechCNN(BaselineModel):
    """Audio-only 1-D CNN: conv layers (same padding, ReLU) → ``[mean; max]`` over valid frames → MLP."""

    name = "speech_cnn"
    paper = PAPERS["speech_cnn"]
    config_class = SpeechCNNConfig
    supported_modalities = ("audio",)

    def __init__(self, config: SpeechCNNConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__(config, input_dims, num_classes)
        dim = int(input_dims["audio"])
        self.norm = _input_norm(dim, config.input_norm)
        widths = [dim, *[int(c) for c in config.channels]]
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, config.kernel_size, padding=config.kernel_size // 2) for a, b in itertools.pairwise(widths)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = MLP(
            2 * widths[-1], config.hidden_dim, num_classes, num_layers=config.num_layers, dropout=config.dropout
        )

    def forward(self, batch: Batch) -> ModelOutput:
        audio = self._inputs(batch)["audio"]
        mask = audio.mask.bool()
        x = self.norm(audio.states)
        for conv in self.convs:
            # zero the padding before each convolution, so the frames next to it see the zeros
            # of same padding, as at the end of an unpadded sequence
            x = torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))
            x = self.dropout(F.relu(conv(x.transpose(1, 2)).transpose(1, 2)))
        mean = masked_mean(x, mask)
        peak = torch.where(mask.unsqueeze(-1), x, x.new_full((), float("-inf"))).amax(dim=1)
        return ModelOutput(logits=self.classifier(torch.cat([mean, peak], dim=-1)))


# ---------------------------------------------------------------------------------------------
# Plain functions
# ---------------------------------------------------------------------------------------------


def masked_adaptive_pool(x: torch.Tensor, mask: torch.Tensor | None, steps: int) -> torch.Tensor:
    """Resample each row's valid positions of ``x`` (``B × T × D``) to ``steps`` positions → ``B × steps × D``.

    Step ``k`` of a row with ``L`` valid positions averages positions ``⌊kL/S⌋ … ⌈(k+1)L/S⌉−1``,
    the bins of :func:`torch.nn.functional.adaptive_avg_pool1d`; a row shorter than ``steps``
    repeats positions. Valid positions must come first in every row; padding never enters.
    """
    batch, length, _ = x.shape
    if mask is None:
        mask = torch.ones(batch, length, dtype=torch.bool, device=x.device)
    mask = mask.bool()
    lengths = mask.sum(dim=1).clamp_min(1)  # B
    k = torch.arange(steps, device=x.device)
    start = (k.unsqueeze(0) * lengths.unsqueeze(1)) // steps  # B × S
    end = ((k.unsqueeze(0) + 1) * lengths.unsqueeze(1) + steps - 1) // steps
    t = torch.arange(length, device=x.device)
    inside = (t.view(1, 1, -1) >= start.unsqueeze(-1)) & (t.view(1, 1, -1) < end.unsqueeze(-1))  # B × S × T
    weights = inside.to(x.dtype) / (end - start).clamp_min(1).unsqueeze(-1).to(x.dtype)
    clean = torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))
    return torch.bmm(weights, clean)
