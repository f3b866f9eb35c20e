"""Every registered model learns the synthetic corpus, and the designs' hypotheses hold on it.

The synthetic corpus (``tests/synthetic_features.py``: openSMILE LLDs + MiniLM states of the
generator's speech and transcripts) is built so that each modality alone is imperfect, some
classes show only in short local audio events and others in the global prosody, and emotions
persist across turns. Each model is trained once per session on one leave-one-session-out fold
(train on three sessions, stop early on the fourth, test on the fifth) with small hidden sizes
and :func:`emomix.train.fit.fit`, then the tests compare test-set UA (chance is 1/C):

* every registered model (``list_models()``, so a new model is covered automatically) beats
  chance by :data:`CHANCE_MARGIN`;
* every multimodal model beats each of its registered single-modality variants;
* routed Dual Routing beats its single-scale ablations, and its audio router gives the local
  expert more weight on utterances whose audio carries a local cue than on global-cue ones;
* MiSTER-E with dialogue context beats its no-context ablation.

The file is the ``learning`` suite (``make test-learning``, about 3 minutes of training): every
case but one cheap check per claim (:data:`DEFAULT_CHECKS`, the small early-fusion models and
MiSTER-E) is marked ``learning`` and left out of the default run. Margins were set from runs with
seeds 0, 1 and 2 (``EMOMIX_LEARNING_SEED`` picks the seed; the default is 0); the UA of every
model is stored in the pytest cache under ``emomix/learning-results`` (``pytest --cache-show
'emomix/*'``). Hypotheses the corpus does not
support on all three seeds stay real assertions, marked ``xfail`` with the measured numbers
(:data:`KNOWN_FAILURES`), so that a model or corpus change that fixes them shows up as XPASS.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import torch

from emomix.data.protocols import make_fold_plan
from emomix.models import create_model, list_models
from emomix.train.fit import fit, make_batches, make_dialogue_batches, predict, unweighted_accuracy

SEED = int(os.environ.get("EMOMIX_LEARNING_SEED", "0"))
EPOCHS = 15
PATIENCE = 4
LEARNING_RATE = 2e-3
BATCH_SIZE = 16
DIALOGUES_PER_BATCH = 4
# Small widths keep the whole file within a few minutes on two cores; a model gets each value
# only for the config fields it has. The designs' other defaults stay as they are.
SMALL = {"hidden_dim": 32, "model_dim": 32, "pair_dim": 32, "pair_hidden": 32, "router_hidden": 32,
         "gate_hidden": 32, "subnet_hidden": 32, "classifier_hidden": 64}

CHANCE_MARGIN = 0.10          # UA ≥ 1/C + this
MULTIMODAL_MARGIN = 0.02      # a fused model's UA ≥ its single-modality variant's + this
ABLATION_MARGIN = 0.02        # routed Dual Routing's UA ≥ a single-scale ablation's + this
ROUTING_MARGIN = 0.0          # mean p_local(audio) on local-cue minus on global-cue utterances (> this)
CONTEXT_MARGIN = 0.04         # MiSTER-E's UA ≥ the no-context ablation's + this

# Measured test UA (seeds 0, 1, 2) where a hypothesis fails on at least one seed.
KNOWN_FAILURES = {
    "ablation:dual_routing>dual_routing_local": "routed Dual Routing does not beat the local-only ablation: UA "
                                                "differences -0.062, -0.041, +0.010 (0.771/0.833, 0.792/0.833, "
                                                "0.812/0.802) against +0.02 needed. The local view (self-attention "
                                                "over the VAD speech frames) also sees the corpus's global prosody "
                                                "shifts. Adding long phrase pauses to sad's global cue (a cue only "
                                                "the all-frames mean sees) did not fix it: -0.042, -0.094, +0.042, "
                                                "and it broke dual_routing > dual_routing_audio on seed 1",
}


# The cases the default suite keeps: one per claim, on models that train in seconds. The rest of
# the file runs with ``-m learning``.
DEFAULT_CHECKS = {
    "chance:early_fusion",
    "multimodal:early_fusion>early_fusion_audio",
    "context:mister_e>mister_e_no_context",
}


def _suite(key: str) -> list[Any]:
    """No mark for a default check, else the ``learning`` mark."""
    return [] if key in DEFAULT_CHECKS else [pytest.mark.learning]


def _known(key: str, *values: str) -> Any:
    """A parametrize case, marked xfail when it is a known failure and ``learning`` unless it is
    one of the default checks."""
    reason = KNOWN_FAILURES.get(key)
    marks = _suite(key) + ([pytest.mark.xfail(reason=reason, strict=False)] if reason else [])
    return pytest.param(*values, marks=marks)


@dataclass
class Trained:
    """One trained model and its test-set predictions."""

    name: str
    model: torch.nn.Module
    ua: float
    probs: np.ndarray
    labels: np.ndarray
    aux: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    epochs: int = 0


class Zoo:
    """Trains registered models on one fold on first request and keeps them for every test."""

    def __init__(self, data: Any, seed: int):
        self.data = data
        self.seed = seed
        plan = make_fold_plan(data.table, "loso")
        self.fold = plan.folds[0]
        table = data.table.set_index("utt_id", drop=False)
        self.parts = {part: table.loc[getattr(self.fold, part)].reset_index(drop=True)
                      for part in ("train", "validation", "test")}
        self._batches: dict[tuple[str, str], list[Any]] = {}
        self.trained: dict[str, Trained] = {}

    def batches(self, kind: str, part: str) -> list[Any]:
        """The fold's batches of one part for utterance or dialogue models (built once)."""
        if (kind, part) not in self._batches:
            shuffle = part == "train"
            if kind == "dialogue":
                built = make_dialogue_batches(self.data.features, self.parts[part], self.data.classes,
                                              batch_size=DIALOGUES_PER_BATCH, seed=self.seed, shuffle=shuffle)
            else:
                built = make_batches(self.data.features, self.parts[part], self.data.classes, batch_size=BATCH_SIZE,
                                     seed=self.seed, shuffle=shuffle, frame_rates=self.data.frame_rates,
                                     layers=self.data.layers)
            self._batches[(kind, part)] = built
        return self._batches[(kind, part)]

    def get(self, name: str) -> Trained:
        """The trained model ``name`` (trained now if it was not yet)."""
        if name not in self.trained:
            started = time.perf_counter()
            special = SPECIAL_TRAINING.get(name)
            model, epochs = special(self) if special else self._fit(name)
            kind = list_models()[name].batch_kind
            probs, labels, aux = predict(model, self.batches(kind, "test"), with_aux=True)
            self.trained[name] = Trained(name, model, unweighted_accuracy(labels, probs.argmax(axis=1)), probs, labels,
                                         aux, time.perf_counter() - started, epochs)
        return self.trained[name]

    def _fit(self, name: str) -> tuple[torch.nn.Module, int]:
        info = list_models()[name]
        fields = {f.name for f in dataclasses.fields(info.cls.config_class)}
        overrides = {key: value for key, value in SMALL.items() if key in fields}
        torch.manual_seed(self.seed)
        model = create_model(name, overrides, self.data.input_dims, len(self.data.classes))
        result = fit(model, self.batches(info.batch_kind, "train"), self.batches(info.batch_kind, "validation"),
                     epochs=EPOCHS, lr=LEARNING_RATE, seed=self.seed, patience=PATIENCE)
        return model, len(result.history)


def _train_complementary(zoo: Zoo) -> tuple[torch.nn.Module, int]:
    """As the paper prescribes: the two MoE models trained separately, their per-class fusion
    weights fitted on the validation part."""
    from emomix.models.complementary import ComplementaryFusion
    from emomix.train.late_fusion import fit_fusion_weights

    ca, spl = zoo.get("complementary_ca").model, zoo.get("complementary_spl").model
    validation = zoo.batches("utterance", "validation")
    p_ca, labels = predict(ca, validation)
    p_spl, _ = predict(spl, validation)
    return ComplementaryFusion.from_submodels(ca, spl, fit_fusion_weights(p_ca, p_spl, labels)), 0


SPECIAL_TRAINING: dict[str, Callable[[Zoo], tuple[torch.nn.Module, int]]] = {"complementary": _train_complementary}


def single_modality_pairs() -> list[tuple[str, str]]:
    """(multimodal model, its single-modality variant): same class, same presets but for ``modalities``."""
    models = list_models()
    presets = {name: {k: v for k, v in info.default_overrides.items() if k != "modalities"} for name, info in models.items()}
    pairs = []
    for name, info in models.items():
        if len(info.modalities) < 2:
            continue
        for other, other_info in models.items():
            if (other_info.cls is info.cls and len(other_info.modalities) == 1
                    and set(other_info.modalities) < set(info.modalities) and presets[other] == presets[name]):
                pairs.append((name, other))
    return pairs


@pytest.fixture(scope="module")
def zoo(synthetic_features, request, one_thread):
    # one_thread: these small models train several times faster on one thread than on two that
    # compete with other processes for the same cores.
    trained = Zoo(synthetic_features, SEED)
    yield trained
    results = {name: {"ua": round(t.ua, 4), "epochs": t.epochs, "seconds": round(t.seconds, 1)}
               for name, t in sorted(trained.trained.items())}
    if getattr(request.config, "cache", None) is not None:  # absent with -p no:cacheprovider
        request.config.cache.set("emomix/learning-results", {"seed": SEED, "fold": trained.fold.name, "models": results})


def test_the_fold_is_one_leave_one_session_out_fold(zoo):
    sessions = {part: set(frame["session"]) for part, frame in zoo.parts.items()}
    assert len(sessions["test"]) == len(sessions["validation"]) == 1
    assert len(sessions["train"]) == 3
    assert not (sessions["train"] & sessions["test"]) and not (sessions["validation"] & sessions["test"])


@pytest.mark.parametrize("name", [_known(f"chance:{name}", name) for name in sorted(list_models())])
def test_every_model_beats_chance(zoo, name):
    trained = zoo.get(name)
    chance = 1.0 / len(zoo.data.classes)
    assert trained.ua >= chance + CHANCE_MARGIN, f"{name}: test UA {trained.ua:.3f}, chance {chance:.3f}"


@pytest.mark.parametrize("multimodal,single", [_known(f"multimodal:{multi}>{single}", multi, single)
                                               for multi, single in single_modality_pairs()])
def test_multimodal_model_beats_its_single_modality_variant(zoo, multimodal, single):
    fused, alone = zoo.get(multimodal), zoo.get(single)
    assert fused.ua >= alone.ua + MULTIMODAL_MARGIN, f"{multimodal} UA {fused.ua:.3f} vs {single} UA {alone.ua:.3f}"


def test_every_multimodal_design_with_variants_is_compared():
    pairs = single_modality_pairs()
    assert ("early_fusion", "early_fusion_audio") in pairs and ("early_fusion", "early_fusion_text") in pairs
    assert {"dual_routing", "mister_e", "mpaf_net", "complementary_spl"} <= {multi for multi, _ in pairs}


@pytest.mark.learning
def test_routed_dual_routing_beats_the_global_only_ablation(zoo):
    routed, ablation = zoo.get("dual_routing"), zoo.get("dual_routing_global")
    assert routed.ua >= ablation.ua + ABLATION_MARGIN, f"dual_routing {routed.ua:.3f} vs dual_routing_global {ablation.ua:.3f}"


@pytest.mark.learning
@pytest.mark.xfail(reason=KNOWN_FAILURES["ablation:dual_routing>dual_routing_local"], strict=False)
def test_routed_dual_routing_beats_the_local_only_ablation(zoo):
    routed, ablation = zoo.get("dual_routing"), zoo.get("dual_routing_local")
    assert routed.ua >= ablation.ua + ABLATION_MARGIN, f"dual_routing {routed.ua:.3f} vs dual_routing_local {ablation.ua:.3f}"


@pytest.mark.learning
def test_dual_routing_sends_local_cues_to_the_local_expert(zoo):
    trained = zoo.get("dual_routing")
    ids = [u for batch in zoo.batches("utterance", "test") for u in batch.utt_ids]
    cue = np.array([zoo.data.facts[u]["cue_kind"] for u in ids])
    p_local = trained.aux["route_audio"][:, 0]
    assert trained.aux["route_audio"].shape == (len(ids), 2)
    assert np.allclose(trained.aux["route_audio"].sum(axis=1), 1.0, atol=1e-5)
    local, global_ = p_local[cue == "local"].mean(), p_local[cue == "global"].mean()
    assert (cue == "local").sum() >= 20 and (cue == "global").sum() >= 10
    # measured (seeds 0, 1, 2): local-cue 0.726, 0.613, 0.669; global-cue 0.521, 0.611, 0.541 — the
    # router specialises clearly on two seeds and hardly on the third (with sad's global cue also
    # carried by long phrase pauses it was 0.752/0.346, 0.636/0.463, 0.686/0.558, but that corpus
    # broke another hypothesis; see KNOWN_FAILURES)
    assert local > global_ + ROUTING_MARGIN, f"mean p_local: local-cue {local:.3f}, global-cue {global_:.3f}"


@pytest.mark.parametrize("full,ablation", [_known("context:mister_e>mister_e_no_context", "mister_e", "mister_e_no_context")])
def test_mister_e_dialogue_context_helps(zoo, full, ablation):
    with_context, without = zoo.get(full), zoo.get(ablation)
    assert with_context.ua >= without.ua + CONTEXT_MARGIN, f"{full} {with_context.ua:.3f} vs {ablation} {without.ua:.3f}"
