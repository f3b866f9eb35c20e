"""The papers' claims on the synthetic corpus: data, training cells and statistics.

Shared by ``python -m bench.paper_claims`` (every claim, seeds × leave-one-session-out folds,
resumable JSON) and ``tests/test_learning.py`` (the ``learning`` suite and its cheap default
checks), so that the benchmark and the tests train and judge the same way.

* :class:`ClaimData`: the corpus table, its in-memory features and fold plan. The bench builds it
  from a synthetic recipe through the package's own feature pipeline
  (:func:`load_recipe_data`); the tests adapt the session's ``synthetic_features`` fixture.
* :class:`Lab`: trains one *cell* — a model (:data:`MODEL_SPECS` or any registered name) on
  one fold with one seed — with :func:`emomix.train.fit.fit` and small widths, and keeps it.
  Composite models (``complementary`` and its ablations) are trained as the paper prescribes:
  the CA and SPL MoE models separately, their per-class fusion weights fitted on the validation
  part.
* :data:`CLAIMS`: each paper's claim as a comparison of two models on the same folds and seeds
  (or, for router specialisation, its own criterion); ``asserted=False`` marks ablations that
  are reported, not asserted. :func:`judge` turns cells into the claim's result.

A UA claim holds when the model's UA exceeds the baseline's on average and the paired t-test
over folds (UA averaged over seeds per fold) gives p < :data:`ALPHA`; with a single fold there is
no test and the claim holds when the difference is positive.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

# Training settings of every cell (the learning tests' settings since they were introduced).
EPOCHS = 15
PATIENCE = 4
LEARNING_RATE = 2e-3
BATCH_SIZE = 16
DIALOGUES_PER_BATCH = 4
# Small widths keep a cell to seconds on one CPU thread; a model gets each value only for the
# config fields it has. The designs' other defaults stay as they are.
SMALL = {
    "hidden_dim": 32,
    "model_dim": 32,
    "pair_dim": 32,
    "pair_hidden": 32,
    "router_hidden": 32,
    "gate_hidden": 32,
    "subnet_hidden": 32,
    "classifier_hidden": 64,
}
ALPHA = 0.05
ROUTING_MARGIN = 0.10  # mean p_local on local-evidence minus on global-evidence utterances
EVIDENCE_FIELD = "evidence"  # the generator's per-utterance latent: local | global | both | conflict

RECIPES = Path(__file__).resolve().parent.parent / "configs" / "synthetic"
BASE_RECIPE = RECIPES / "complementary.yaml"  # audio + text + token–frame edges
VIDEO_RECIPE = RECIPES / "mpaf_net_video.yaml"  # the corpus written with face video, + the faces encoder
# MPAF-Net's trimodal configuration, as configs/synthetic/mpaf_net_video.yaml sets it; the
# concatenation baseline gets the same encoders.
VIDEO_CONFIG = {
    "modalities": ["audio", "text", "video"],
    "audio_hidden": 32,
    "pair_dim": 32,
    "pair_hidden": 32,
    "classifier_hidden": 64,
    "video_cnn_channels": [8, 16, 32],
    "video_frame_dim": 64,
}


@dataclass(frozen=True)
class ModelSpec:
    """A cell's model: a registered ``model`` with ``overrides``, on the ``data`` corpus
    ("base" or "video"); ``parts`` names the two specs of a late-fused composite."""

    key: str
    model: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    data: str = "base"
    parts: tuple[str, str] | None = None


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        ModelSpec("complementary", "complementary", parts=("complementary_ca", "complementary_spl")),
        ModelSpec(
            "complementary_no_graph",
            "complementary",
            {"graph": "none"},
            parts=("complementary_ca_no_graph", "complementary_spl_no_graph"),
        ),
        ModelSpec("complementary_ca_no_graph", "complementary_ca", {"graph": "none"}),
        ModelSpec("complementary_spl_no_graph", "complementary_spl", {"graph": "none"}),
        ModelSpec(
            "complementary_top1",
            "complementary",
            {"top_k": 1},
            parts=("complementary_ca_top1", "complementary_spl_top1"),
        ),
        ModelSpec("complementary_ca_top1", "complementary_ca", {"top_k": 1}),
        ModelSpec("complementary_spl_top1", "complementary_spl", {"top_k": 1}),
        ModelSpec("mpaf_net_video", "mpaf_net", VIDEO_CONFIG, data="video"),
        ModelSpec("concat_fusion_video", "concat_fusion", VIDEO_CONFIG, data="video"),
    ]
}


def model_spec(key: str) -> ModelSpec:
    """The spec of ``key``: one of :data:`MODEL_SPECS`, else the registered model of that name."""
    return MODEL_SPECS.get(key) or ModelSpec(key, key)


@dataclass(frozen=True)
class Claim:
    """One paper claim: ``model`` beats ``baseline`` in test UA (``kind="ua"``), or the router
    criterion (``kind="routing"``, no baseline). ``asserted=False``: reported, not asserted."""

    name: str
    paper: str
    statement: str
    model: str
    baseline: str | None = None
    kind: str = "ua"
    asserted: bool = True

    @property
    def models(self) -> list[str]:
        return [self.model] + ([self.baseline] if self.baseline else [])

    @property
    def test(self) -> str:
        base = (
            "tests/test_learning.py::test_paper_claim"
            if self.asserted
            else "tests/test_learning.py::test_reported_ablation"
        )
        return f"{base}[{self.name}]"


CLAIMS: list[Claim] = [
    Claim(
        "dual_routing>local",
        "Dual Routing",
        "routed beats the local-only ablation",
        "dual_routing",
        "dual_routing_local",
    ),
    Claim(
        "dual_routing>global",
        "Dual Routing",
        "routed beats the global-only ablation",
        "dual_routing",
        "dual_routing_global",
    ),
    Claim(
        "dual_routing>concat",
        "Dual Routing",
        "routed beats the concatenation ablation (no router)",
        "dual_routing",
        "dual_routing_concat",
    ),
    Claim(
        "dual_routing:router",
        "Dual Routing",
        f"the audio router's mean p_local is ≥ {ROUTING_MARGIN:.2f} higher on local-evidence than on global-evidence "
        "utterances",
        "dual_routing",
        kind="routing",
    ),
    Claim(
        "mpaf_net>concat_fusion",
        "MPAF-Net",
        "MPAF-Net (text, audio, video) beats concatenation of the same encoders",
        "mpaf_net_video",
        "concat_fusion_video",
    ),
    Claim(
        "complementary>ca",
        "Complementary",
        "the per-class fusion beats its CA MoE part",
        "complementary",
        "complementary_ca",
    ),
    Claim(
        "complementary>spl",
        "Complementary",
        "the per-class fusion beats its SPL MoE part",
        "complementary",
        "complementary_spl",
    ),
    Claim(
        "complementary:graph",
        "Complementary",
        "with the time-aligned graph beats without it",
        "complementary",
        "complementary_no_graph",
    ),
    Claim(
        "complementary:top2",
        "Complementary",
        "top-2 routing beats top-1 (reported)",
        "complementary",
        "complementary_top1",
        asserted=False,
    ),
    Claim(
        "mister_e>no_context",
        "MiSTER-E",
        "dialogue context beats per-utterance prediction",
        "mister_e",
        "mister_e_no_context",
    ),
    Claim(
        "mister_e>audio", "MiSTER-E", "the gated mixture beats the speech expert alone", "mister_e", "mister_e_audio"
    ),
    Claim("mister_e>text", "MiSTER-E", "the gated mixture beats the text expert alone", "mister_e", "mister_e_text"),
    Claim(
        "mister_e>no_supcon",
        "MiSTER-E",
        "the supervised contrastive loss helps (reported)",
        "mister_e",
        "mister_e_no_supcon",
        asserted=False,
    ),
    Claim("mister_e>no_kl", "MiSTER-E", "the KL term helps (reported)", "mister_e", "mister_e_no_kl", asserted=False),
    Claim(
        "mister_e>uniform_gate",
        "MiSTER-E",
        "the learned gate beats a uniform mixture (reported)",
        "mister_e",
        "mister_e_uniform_gate",
        asserted=False,
    ),
]
CLAIMS_BY_NAME = {claim.name: claim for claim in CLAIMS}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class ClaimData:
    """A corpus ready for :func:`~emomix.train.fit.make_batches`: utterance table, classes,
    features, the generator's per-utterance facts, and the leave-one-session-out fold plan."""

    table: pd.DataFrame
    classes: tuple[str, ...]
    features: dict[str, dict[str, dict[str, np.ndarray]]]
    frame_rates: dict[str, float | None]
    layers: dict[str, list[int]]
    input_dims: dict[str, int]
    facts: dict[str, dict[str, Any]]
    fingerprint: str = ""
    plan: Any = None

    def __post_init__(self) -> None:
        if self.plan is None:
            from emomix.data.protocols import make_fold_plan

            self.plan = make_fold_plan(self.table, "loso", validation="group")

    @classmethod
    def from_synthetic_features(cls, built: Any) -> ClaimData:
        """From the tests' ``SyntheticFeatures`` (same pipeline, already extracted)."""
        return cls(
            table=built.table,
            classes=tuple(built.classes),
            features=built.features,
            frame_rates=dict(built.frame_rates),
            layers={k: list(v) for k, v in built.layers.items()},
            input_dims=dict(built.input_dims),
            facts=built.facts,
            fingerprint=generation_fingerprint(Path(built.root)),
        )

    @property
    def fold_names(self) -> list[str]:
        return [fold.name for fold in self.plan.folds]

    def fold(self, name: str) -> Any:
        for fold in self.plan.folds:
            if fold.name == name:
                return fold
        from emomix.errors import ConfigError

        raise ConfigError(f"no fold {name!r} in this corpus's plan; choose one of {', '.join(self.fold_names)}")

    def evidence(self, ids: Sequence[str]) -> np.ndarray | None:
        """The generator's per-utterance ``evidence`` of ``ids``, or None when the corpus lacks it."""
        if not ids or any(EVIDENCE_FIELD not in self.facts.get(u, {}) for u in ids):
            return None
        return np.array([self.facts[u][EVIDENCE_FIELD] for u in ids])


def generation_fingerprint(corpus_dir: Path) -> str:
    """A short hash of the corpus's ``generation.json`` (config and latent facts)."""
    import hashlib

    path = Path(corpus_dir) / "generation.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else ""


def load_recipe_data(
    recipe_path: Path,
    corpus_dir: Path,
    store_dir: Path,
    progress: bool = False,
    log: Callable[[str], None] = print,
    generate: Mapping[str, Any] | None = None,
) -> ClaimData:
    """Write (or reuse) the recipe's synthetic corpus in ``corpus_dir`` and extract (or reuse) its
    features into ``store_dir`` with the recipe's feature settings — the path a training run takes.
    ``generate`` overrides the recipe's generator settings (``corpus.generate.<key>``), the same
    for every model."""
    from emomix.cache.store import FeatureStore
    from emomix.data.protocols import make_fold_plan
    from emomix.data.synthetic import load_generation
    from emomix.features import build_features
    from emomix.train.recipe import load_recipe
    from emomix.train.run import load_corpus

    overrides = {"corpus.root": str(corpus_dir), "features.store": str(store_dir)}
    overrides.update({f"corpus.generate.{key}": value for key, value in (generate or {}).items()})
    recipe = load_recipe(recipe_path, overrides)
    corpus, root = load_corpus(recipe, log)
    table = corpus.table.reset_index(drop=True)
    table = table[table["label"].notna()].reset_index(drop=True)
    plan = make_fold_plan(table, recipe.protocol.name, **dict(recipe.protocol.params))
    started = time.perf_counter()
    with FeatureStore(Path(store_dir)) as store:
        feature_set = build_features(
            table,
            recipe.feature_specs(),
            store,
            base_dir=root,
            edges=recipe.edges,
            progress=progress,
            fit_ids=list(table["utt_id"]),
            confounding=plan.confounding,
        )
    if feature_set.failures:
        from emomix.errors import MissingDataError

        raise MissingDataError(
            f"{len(feature_set.failures)} utterances of {root} have no features (first: "
            f"{feature_set.failures[0]}); delete {store_dir} and run again"
        )
    log(f"features of {root}: {time.perf_counter() - started:.0f} s")
    generation = load_generation(root)
    classes = tuple(generation["config"]["classes"])
    facts = {fact["utt_id"]: fact for fact in generation["utterances"]}
    return ClaimData(
        table=table,
        classes=classes,
        features=feature_set.features,
        frame_rates=dict(feature_set.frame_rates),
        layers={k: list(v) for k, v in feature_set.layers.items()},
        input_dims=dict(feature_set.input_dims),
        facts=facts,
        fingerprint=generation_fingerprint(root),
        plan=plan,
    )


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One model trained on one fold with one seed, and its test predictions."""

    key: str
    fold: str
    seed: int
    ua: float
    ids: list[str]
    probs: np.ndarray
    labels: np.ndarray
    aux: dict[str, np.ndarray] = field(default_factory=dict)
    model: torch.nn.Module | None = None
    epochs: int = 0
    seconds: float = 0.0

    def summary(self, data: ClaimData) -> dict[str, Any]:
        """What the bench stores: UA, epochs, seconds, and the audio router's mean p_local per
        evidence kind when the model routes and the corpus records evidence."""
        record: dict[str, Any] = {
            "ua": round(float(self.ua), 4),
            "epochs": self.epochs,
            "seconds": round(self.seconds, 1),
        }
        routing = p_local_by_evidence(self, data)
        if routing is not None:
            record["p_local"] = routing
        return record


def p_local_by_evidence(cell: Cell, data: ClaimData) -> dict[str, dict[str, float]] | None:
    """``{evidence kind: {"mean": mean p_local(audio), "n": count}}`` over the cell's test
    utterances; None without a routed audio view or without evidence in the corpus."""
    route = cell.aux.get("route_audio")
    evidence = data.evidence(cell.ids)
    if route is None or evidence is None:
        return None
    p_local = np.asarray(route)[:, 0]
    return {
        str(kind): {"mean": round(float(p_local[evidence == kind].mean()), 4), "n": int((evidence == kind).sum())}
        for kind in sorted(set(evidence.tolist()))
    }


class Lab:
    """Trains cells on first request and keeps them (in memory) for every later claim.

    ``loaders``: per data kind ("base", "video"), a function returning its :class:`ClaimData`
    (called once, on first need). ``keep_models``: keep each trained module on its cell.
    """

    def __init__(self, loaders: Mapping[str, Callable[[], ClaimData]], keep_models: bool = False):
        self._loaders = dict(loaders)
        self._data: dict[str, ClaimData] = {}
        self._batches: dict[tuple[Any, ...], list[Any]] = {}
        self.cells: dict[tuple[str, str, int], Cell] = {}
        self.keep_models = keep_models

    def data(self, kind: str = "base") -> ClaimData:
        if kind not in self._data:
            if kind not in self._loaders:
                from emomix.errors import ConfigError

                raise ConfigError(f"no {kind!r} corpus was given to the claims lab")
            self._data[kind] = self._loaders[kind]()
        return self._data[kind]

    def batches(self, kind: str, batch_kind: str, fold: str, part: str, seed: int) -> list[Any]:
        """The fold's batches of one part (shuffled with ``seed`` for training), built once."""
        from emomix.train.fit import make_batches, make_dialogue_batches

        key = (kind, batch_kind, fold, part, seed if part == "train" else None)
        if key not in self._batches:
            data = self.data(kind)
            ids = list(getattr(data.fold(fold), part))
            table = data.table.set_index("utt_id", drop=False).loc[ids].reset_index(drop=True)
            shuffle = part == "train"
            if batch_kind == "dialogue":
                built = make_dialogue_batches(
                    data.features, table, data.classes, batch_size=DIALOGUES_PER_BATCH, seed=seed, shuffle=shuffle
                )
            else:
                built = make_batches(
                    data.features,
                    table,
                    data.classes,
                    batch_size=BATCH_SIZE,
                    seed=seed,
                    shuffle=shuffle,
                    frame_rates=data.frame_rates,
                    layers=data.layers,
                )
            self._batches[key] = built
        return self._batches[key]

    def cell(self, key: str, fold: str, seed: int) -> Cell:
        """The cell of model ``key`` on ``fold`` with ``seed`` (trained now if it was not yet)."""
        from emomix.models import list_models
        from emomix.train.fit import predict, unweighted_accuracy

        if (key, fold, seed) in self.cells:
            return self.cells[(key, fold, seed)]
        spec = model_spec(key)
        batch_kind = list_models()[spec.model].batch_kind
        started = time.perf_counter()
        model, epochs = self._composite(spec, fold, seed) if spec.parts else self._fit(spec, batch_kind, fold, seed)
        test = self.batches(spec.data, batch_kind, fold, "test", seed)
        probs, labels, aux = predict(model, test, with_aux=True)
        ids = [u for batch in test for u in _flat(batch.utt_ids)]
        cell = Cell(
            key,
            fold,
            seed,
            unweighted_accuracy(labels, probs.argmax(axis=1)),
            ids,
            probs,
            labels,
            aux,
            model if self.keep_models else None,
            epochs,
            time.perf_counter() - started,
        )
        self.cells[(key, fold, seed)] = cell
        return cell

    def judge_claim(self, claim: Claim, seeds: Sequence[int], folds: Sequence[str] | None = None) -> dict[str, Any]:
        """Train every cell ``claim`` needs (``folds`` default: all of the base corpus's) and judge it."""
        folds = list(folds) if folds is not None else self.data("base").fold_names
        cells: dict[str, dict[str, dict[str, Any]]] = {}
        for seed in seeds:
            for model in claim.models:
                data = self.data(model_spec(model).data)
                for fold in folds:
                    summary = self.cell(model, fold, seed).summary(data)
                    cells.setdefault(model, {}).setdefault(str(seed), {})[fold] = summary
        return judge(claim, cells, seeds, folds)

    def _fit(self, spec: ModelSpec, batch_kind: str, fold: str, seed: int) -> tuple[torch.nn.Module, int]:
        from emomix.models import create_model, list_models
        from emomix.train.fit import fit

        data = self.data(spec.data)
        info = list_models()[spec.model]
        fields = {f.name for f in dataclasses.fields(info.cls.config_class)}
        overrides = {**{k: v for k, v in SMALL.items() if k in fields}, **spec.overrides}
        torch.manual_seed(seed)
        model = create_model(spec.model, overrides, data.input_dims, len(data.classes))
        result = fit(
            model,
            self.batches(spec.data, batch_kind, fold, "train", seed),
            self.batches(spec.data, batch_kind, fold, "validation", seed),
            epochs=EPOCHS,
            lr=LEARNING_RATE,
            seed=seed,
            patience=PATIENCE,
        )
        return model, len(result.history)

    def _composite(self, spec: ModelSpec, fold: str, seed: int) -> tuple[torch.nn.Module, int]:
        """As the Complementary paper prescribes: the two MoE models trained separately, their
        per-class fusion weights fitted on the validation part."""
        from emomix.models.complementary import ComplementaryFusion
        from emomix.train.fit import predict
        from emomix.train.late_fusion import fit_fusion_weights

        assert spec.parts is not None
        keep = self.keep_models
        self.keep_models = True
        try:
            ca_cell, spl_cell = (self.cell(part, fold, seed) for part in spec.parts)
        finally:
            self.keep_models = keep
        ca, spl = ca_cell.model, spl_cell.model
        assert ca is not None and spl is not None
        if not keep:  # the parts' modules were kept only to build the fusion
            ca_cell.model = spl_cell.model = None
        validation = self.batches(spec.data, "utterance", fold, "validation", seed)
        p_ca, labels = predict(ca, validation)
        p_spl, _ = predict(spl, validation)
        return ComplementaryFusion.from_submodels(ca, spl, fit_fusion_weights(p_ca, p_spl, labels)), 0


def _flat(ids: Any) -> list[str]:
    """Utterance ids of a batch: a list (utterance batch) or a list of lists (dialogue batch)."""
    return [u for item in ids for u in (item if isinstance(item, list) else [item])]


# --------------------------------------------------------------------------------------------
# Judging a claim
# --------------------------------------------------------------------------------------------


def routing_difference(record: Mapping[str, Any]) -> float:
    """mean p_local(local evidence) − mean p_local(global evidence) of one cell summary (NaN
    when the cell has no routing record)."""
    routing = record.get("p_local") or {}
    if "local" not in routing or "global" not in routing:
        return math.nan
    return float(routing["local"]["mean"]) - float(routing["global"]["mean"])


def judge(
    claim: Claim,
    cells: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]],
    seeds: Sequence[int],
    folds: Sequence[str],
) -> dict[str, Any]:
    """The claim's result from cell summaries ``cells[model][str(seed)][fold]`` (as
    :meth:`Cell.summary` writes them): per-seed values per fold, the paired tests over folds,
    and ``holds`` (None when a cell is missing)."""
    from emomix.evaluate.compare import paired_test

    seeds_s = [str(s) for s in seeds]
    missing = [
        f"{m}/seed {s}/{f}"
        for m in claim.models
        for s in seeds_s
        for f in folds
        if f not in cells.get(m, {}).get(s, {})
    ]
    result: dict[str, Any] = {
        "claim": claim.name,
        "paper": claim.paper,
        "statement": claim.statement,
        "models": claim.models,
        "test": claim.test,
        "asserted": claim.asserted,
        "seeds": [int(s) for s in seeds],
        "folds": list(folds),
    }
    if missing:
        return {**result, "holds": None, "missing": missing[:5], "missing_count": len(missing)}
    if claim.kind == "routing":
        per_seed = {s: {f: routing_difference(cells[claim.model][s][f]) for f in folds} for s in seeds_s}
        means = {s: _mean_or_nan(list(v.values())) for s, v in per_seed.items()}
        if any(math.isnan(v) for v in means.values()):
            return {
                **result,
                "holds": None,
                "note": f"the corpus records no per-utterance {EVIDENCE_FIELD!r} "
                "(local/global) for the router criterion",
            }
        return {
            **result,
            "criterion": f"mean p_local(local) − mean p_local(global) ≥ {ROUTING_MARGIN} on every seed",
            "per_seed": {
                s: {
                    "difference_per_fold": {f: round(v, 4) for f, v in per_seed[s].items()},
                    "difference": round(means[s], 4),
                    "p_local_per_fold": {f: cells[claim.model][s][f].get("p_local") for f in folds},
                }
                for s in seeds_s
            },
            "difference": round(float(np.mean(list(means.values()))), 4),
            "holds": bool(all(v >= ROUTING_MARGIN for v in means.values())),
        }
    assert claim.baseline is not None
    per_seed: dict[str, Any] = {}
    for s in seeds_s:
        ua = {m: pd.Series({f: float(cells[m][s][f]["ua"]) for f in folds}) for m in claim.models}
        test = paired_test(ua[claim.baseline], ua[claim.model])
        per_seed[s] = {
            "ua": {m: {f: round(v, 4) for f, v in ua[m].items()} for m in claim.models},
            "mean_ua": {m: round(float(ua[m].mean()), 4) for m in claim.models},
            "delta": round(test["delta"], 4),
            "p_ttest": _round(test["p_ttest"]),
            "p_wilcoxon": _round(test["p_wilcoxon"]),
        }
    fold_means = {
        m: pd.Series({f: float(np.mean([cells[m][s][f]["ua"] for s in seeds_s])) for f in folds}) for m in claim.models
    }
    pooled = paired_test(fold_means[claim.baseline], fold_means[claim.model])
    delta = float(pooled["delta"])
    holds = delta > 0 and (len(folds) < 2 or (not math.isnan(pooled["p_ttest"]) and pooled["p_ttest"] < ALPHA))
    return {
        **result,
        "criterion": f"mean ΔUA > 0 and paired t p < {ALPHA} over folds (UA averaged over seeds)"
        if len(folds) > 1
        else "ΔUA > 0 (one fold: no test)",
        "per_seed": per_seed,
        "mean_ua": {m: round(float(fold_means[m].mean()), 4) for m in claim.models},
        "delta": round(delta, 4),
        "p_ttest": _round(pooled["p_ttest"]),
        "p_wilcoxon": _round(pooled["p_wilcoxon"]),
        "n_folds": len(folds),
        "holds": bool(holds),
    }


def _mean_or_nan(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _round(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 4)


def describe(result: Mapping[str, Any]) -> str:
    """One line: the claim's numbers and whether it holds."""
    name = result["claim"]
    if result.get("holds") is None:
        why = result.get("note") or f"{result.get('missing_count')} cells missing"
        return f"{name}: not judged ({why})"
    verdict = "holds" if result["holds"] else "does not hold"
    seeds = ",".join(str(s) for s in result["seeds"])
    if "per_seed" in result and "mean_ua" not in result:
        parts = ", ".join(f"seed {s}: {v['difference']:+.3f}" for s, v in result["per_seed"].items())
        return f"{name}: p_local(local) − p_local(global) {parts} (≥ {ROUTING_MARGIN} needed) → {verdict}"
    model, baseline = result["models"]
    ua = result["mean_ua"]
    p = result["p_ttest"]
    return (
        f"{name}: {model} {ua[model]:.3f} vs {baseline} {ua[baseline]:.3f}, ΔUA {result['delta']:+.3f}, paired t p "
        f"{'n/a' if p is None else f'{p:.3g}'} ({result['n_folds']} folds, seeds {seeds}) → {verdict}"
    )
