"""Every registered model learns the synthetic corpus, and every paper claim is tested on it.

The synthetic corpus (``tests/synthetic_features.py``: openSMILE LLDs + MiniLM states of the
generator's speech and transcripts; docs/synthetic.md says which property poses which claim) is
shared by every test here. Training, the models a claim compares and its criterion live in
``bench/_claims.py``, which ``python -m bench.paper_claims`` uses too, so the tests and the
claims table in docs/models.md judge the same way:

* every registered model (``list_models()``, so a new model is covered automatically) beats
  chance by :data:`CHANCE_MARGIN`, and every multimodal model beats each of its registered
  single-modality variants by :data:`MULTIMODAL_MARGIN` — one leave-one-session-out fold
  (ses01 tested), seed ``EMOMIX_LEARNING_SEED`` (default 0);
* every paper claim of :data:`bench._claims.CLAIMS` (:func:`test_paper_claim`): routed Dual
  Routing beats its local-only, global-only and concatenation ablations and its audio router
  specialises by evidence; MPAF-Net with video beats ``concat_fusion``; ``complementary`` beats
  each part and its no-graph ablation; MiSTER-E beats no-context and each single expert — on
  the seeds ``EMOMIX_LEARNING_SEEDS`` (default 0,1,2) paired over the 5 folds (mean ΔUA > 0 and
  paired t p < 0.05; the router: mean p_local on local-evidence utterances ≥ that on
  global-evidence ones + 0.10 on every seed);
* the ablations a paper reports without them being our claims (MiSTER-E without SupCon, without
  the KL term, with a uniform gate; Complementary top-1 vs top-2) are printed by
  :func:`test_reported_ablation`, which asserts only that they were measured.

Only the cheap early-fusion checks of :data:`DEFAULT_CHECKS` run in the default suite; the
claims need 10-50 s of training per model and fold, over the default suite's budget, and run
with ``-m learning`` (``make test-learning``: every claim on 3 seeds × 5 folds, an hour or more on
two cores). A claim that fails after the model is faithful stays a strict xfail whose reason
carries the measured numbers (:data:`KNOWN_FAILURES`), so that a fix shows up as XPASS (a failure).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pytest
from bench import _claims as claims_lib
from bench._claims import CLAIMS, Claim, ClaimData, Lab, describe, judge

from emomix.models import list_models

SEED = int(os.environ.get("EMOMIX_LEARNING_SEED", "0"))
LEARNING_SEEDS = [int(s) for s in os.environ.get("EMOMIX_LEARNING_SEEDS", "0,1,2").split(",") if s.strip()]
CLAIM_TIMEOUT = 3 * 3600  # seconds: the first claim test of a session trains its models on every seed and fold

CHANCE_MARGIN = 0.10  # UA ≥ 1/C + this
MULTIMODAL_MARGIN = 0.02  # a fused model's UA ≥ its single-modality variant's + this

# Paper claims that fail on 3 seeds × 5 folds after the model was made faithful: strict xfail,
# reason = the measured numbers and what was tried (docs/models.md, "What does not hold").
# Numbers: python -m bench.paper_claims on corpus v2b, 5 leave-one-session-out folds (UA, paired t
# over folds); what was tried is in docs/synthetic.md ("What we tried") and docs/models.md.
KNOWN_FAILURES: dict[str, str] = {
    "dual_routing>local": (
        "routed 0.622 vs local-only 0.582 over seeds 0-2, +0.040, paired t p 0.12 (seed 0 alone: +0.067, "
        "p 0.026; seed 1: +0.010, p 0.77; seed 2: +0.042, p 0.086); the router specialises on every seed "
        "(p_local +0.25 to +0.27 on local- vs global-evidence utterances), but the gain over the local scale "
        "alone is within seed noise; corpus v2c (no both-scale utterances) was tried: +0.019, p 0.39"
    ),
    "dual_routing>concat": (
        "routed 0.622 vs concat 0.607 over seeds 0-2, +0.015, paired t p 0.53 (seed 1: concat ahead by 0.015); "
        "the concatenation ablation keeps both experts and their tokens in the cross-attention, so only z "
        "differs; corpus v2c was tried and lowered routed to local-only's level"
    ),
    "complementary>spl": (
        "complementary 0.589 vs its SPL MoE 0.560 over seeds 0-2, +0.029, paired t p 0.11; the per-class "
        "fusion weights are fitted on one validation session of ~96 utterances (vs its CA MoE it holds)"
    ),
    "complementary:graph": (
        "complementary 0.589 vs without the time-aligned graph 0.589 over seeds 0-2, -0.000, paired t p 1.0: "
        "the graph adds nothing the CA MoE does not already read on this corpus"
    ),
    "mister_e>no_context": (
        "MiSTER-E 0.530 vs no context 0.528 over seeds 0-2, +0.001, paired t p 0.97 (seed 0 alone: +0.052, "
        "p 0.078; seed 2: no context ahead by 0.029)"
    ),
    "mpaf_net>concat_fusion": (
        "MPAF-Net (text, audio, video) 0.702 vs concat_fusion on the same encoders 0.774 over seeds 0-2, "
        "-0.072, paired t p 0.056 (per seed -0.065, -0.029, -0.123); concat ahead on every seed and on 4 of 5 "
        "folds averaged over seeds"
    ),
}

# The cases the default suite keeps: checks where a model trains in seconds (the claims' models
# need 10-50 s of training per fold, over the default budget). The rest runs with ``-m learning``.
DEFAULT_CHECKS = {
    "chance:early_fusion",
    "multimodal:early_fusion>early_fusion_audio",
}


def _case(key: str, *values: str) -> Any:
    """A parametrize case, ``learning`` unless it is one of the default checks."""
    return pytest.param(*values, marks=[] if key in DEFAULT_CHECKS else [pytest.mark.learning])


def _claim_case(claim: Claim) -> Any:
    marks = [pytest.mark.learning, pytest.mark.timeout(CLAIM_TIMEOUT)]
    if claim.name in KNOWN_FAILURES:
        marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[claim.name], strict=True))
    return pytest.param(claim, id=claim.name, marks=marks)


@pytest.fixture(scope="module")
def lab(synthetic_features, request, one_thread):
    # one_thread: these small models train several times faster on one thread than on two that
    # compete with other processes for the same cores. The video corpus (MPAF-Net's claim) is
    # written and extracted next to the synthetic fixture's, on first need.
    cache = synthetic_features.root.parent

    def video() -> ClaimData:
        return claims_lib.load_recipe_data(
            claims_lib.VIDEO_RECIPE, cache / "corpus-video-s0-n480", cache / "store", log=lambda message: None
        )

    trained = Lab({"base": lambda: ClaimData.from_synthetic_features(synthetic_features), "video": video})
    yield trained
    results = {
        f"{key}/{fold}/seed-{seed}": {"ua": round(c.ua, 4), "epochs": c.epochs, "seconds": round(c.seconds, 1)}
        for (key, fold, seed), c in sorted(trained.cells.items())
    }
    if getattr(request.config, "cache", None) is not None:  # absent with -p no:cacheprovider
        request.config.cache.set("emomix/learning-results", results)


@pytest.fixture(scope="module")
def first_fold(lab) -> str:
    return lab.data().fold_names[0]


def single_modality_pairs() -> list[tuple[str, str]]:
    """(multimodal model, its single-modality variant): same class, same presets but for ``modalities``."""
    models = list_models()
    presets = {
        name: {k: v for k, v in info.default_overrides.items() if k != "modalities"} for name, info in models.items()
    }
    pairs = []
    for name, info in models.items():
        if len(info.modalities) < 2:
            continue
        for other, other_info in models.items():
            if (
                other_info.cls is info.cls
                and len(other_info.modalities) == 1
                and set(other_info.modalities) < set(info.modalities)
                and presets[other] == presets[name]
            ):
                pairs.append((name, other))
    return pairs


def test_the_first_fold_is_one_leave_one_session_out_fold(lab, first_fold):
    data = lab.data()
    fold = data.fold(first_fold)
    sessions = {
        part: set(data.table.set_index("utt_id").loc[getattr(fold, part), "session"])
        for part in ("train", "validation", "test")
    }
    assert len(sessions["test"]) == len(sessions["validation"]) == 1
    assert len(sessions["train"]) == 3
    assert not (sessions["train"] & sessions["test"]) and not (sessions["validation"] & sessions["test"])
    assert len(data.fold_names) == 5


@pytest.mark.parametrize("name", [_case(f"chance:{name}", name) for name in sorted(list_models())])
def test_every_model_beats_chance(lab, first_fold, name):
    ua = lab.cell(name, first_fold, SEED).ua
    chance = 1.0 / len(lab.data().classes)
    assert ua >= chance + CHANCE_MARGIN, f"{name}: test UA {ua:.3f}, chance {chance:.3f}"


@pytest.mark.parametrize(
    "multimodal,single",
    [_case(f"multimodal:{multi}>{single}", multi, single) for multi, single in single_modality_pairs()],
)
def test_multimodal_model_beats_its_single_modality_variant(lab, first_fold, multimodal, single):
    fused, alone = lab.cell(multimodal, first_fold, SEED).ua, lab.cell(single, first_fold, SEED).ua
    assert fused >= alone + MULTIMODAL_MARGIN, f"{multimodal} UA {fused:.3f} vs {single} UA {alone:.3f}"


def test_every_multimodal_design_with_variants_is_compared():
    pairs = single_modality_pairs()
    assert ("early_fusion", "early_fusion_audio") in pairs and ("early_fusion", "early_fusion_text") in pairs
    assert {"dual_routing", "mister_e", "mpaf_net", "complementary_spl"} <= {multi for multi, _ in pairs}


# ------------------------------------------------------------------------------- paper claims


def test_every_claim_compares_registered_models_on_the_intended_inputs():
    registered = list_models()
    for claim in CLAIMS:
        for key in claim.models:
            spec = claims_lib.model_spec(key)
            assert spec.model in registered, f"{claim.name}: {key} is not a registered model"
            for part in spec.parts or ():
                assert claims_lib.model_spec(part).model in registered
    names = {c.name for c in CLAIMS if c.asserted}
    assert {
        "dual_routing>local",
        "dual_routing>global",
        "dual_routing>concat",
        "dual_routing:router",
        "mpaf_net>concat_fusion",
        "complementary>ca",
        "complementary>spl",
        "complementary:graph",
        "mister_e>no_context",
        "mister_e>audio",
        "mister_e>text",
    } <= names
    reported = {c.baseline for c in CLAIMS if not c.asserted}
    assert {"mister_e_no_supcon", "mister_e_no_kl", "mister_e_uniform_gate"} <= reported
    # MPAF-Net's claim is trimodal, on the video corpus, and its baseline has the same encoders
    mpaf, concat = (claims_lib.model_spec(k) for k in claims_lib.CLAIMS_BY_NAME["mpaf_net>concat_fusion"].models)
    assert mpaf.data == concat.data == "video" and mpaf.overrides == concat.overrides
    assert "video" in mpaf.overrides["modalities"]
    # the no-graph ablation removes the graph from both parts of the fusion
    assert all(
        claims_lib.model_spec(p).overrides.get("graph") == "none"
        for p in claims_lib.model_spec("complementary_no_graph").parts or ()
    )


def _cells(model_ua: list[float], baseline_ua: list[float], seeds: tuple[int, ...] = (0,)) -> dict[str, Any]:
    folds = [f"ses0{i + 1}" for i in range(len(model_ua))]
    return {
        "a": {str(s): {f: {"ua": u} for f, u in zip(folds, model_ua)} for s in seeds},
        "b": {str(s): {f: {"ua": u} for f, u in zip(folds, baseline_ua)} for s in seeds},
    }


def test_a_claim_holds_only_with_a_positive_difference_and_p_below_alpha():
    claim = Claim("a>b", "paper", "a beats b", "a", "b")
    folds = [f"ses0{i}" for i in range(1, 6)]
    clear = judge(claim, _cells([0.80, 0.82, 0.78, 0.81, 0.79], [0.70, 0.71, 0.69, 0.72, 0.70]), [0], folds)
    assert clear["holds"] is True and clear["delta"] == pytest.approx(0.096) and clear["p_ttest"] < 0.05
    noisy = judge(claim, _cells([0.80, 0.60, 0.78, 0.65, 0.79], [0.70, 0.71, 0.69, 0.72, 0.70]), [0], folds)
    assert noisy["delta"] > 0 and noisy["holds"] is False  # ahead on average, but p ≥ 0.05
    worse = judge(claim, _cells([0.70, 0.71, 0.69, 0.72, 0.70], [0.80, 0.82, 0.78, 0.81, 0.79]), [0], folds)
    assert worse["holds"] is False and worse["p_ttest"] < 0.05
    missing = judge(claim, _cells([0.8, 0.8, 0.8, 0.8], [0.7, 0.7, 0.7, 0.7]), [0], folds)
    assert missing["holds"] is None and missing["missing_count"] == 2
    assert "not judged" in describe(missing) and "does not hold" in describe(worse)


def test_the_router_criterion_needs_the_margin_on_every_seed():
    claim = Claim("r", "paper", "router", "m", kind="routing")

    def record(local: float, global_: float) -> dict[str, Any]:
        return {"ua": 0.5, "p_local": {"local": {"mean": local, "n": 10}, "global": {"mean": global_, "n": 10}}}

    cells = {
        "m": {
            "0": {"ses01": record(0.7, 0.5), "ses02": record(0.7, 0.55)},
            "1": {"ses01": record(0.6, 0.55), "ses02": record(0.62, 0.55)},
        }
    }
    assert judge(claim, cells, [0], ["ses01", "ses02"])["holds"] is True
    assert judge(claim, cells, [0, 1], ["ses01", "ses02"])["holds"] is False  # seed 1: +0.06
    without = {"m": {"0": {"ses01": {"ua": 0.5}}}}
    result = judge(claim, without, [0], ["ses01"])
    assert result["holds"] is None and "evidence" in result["note"]


@pytest.mark.parametrize("claim", [_claim_case(c) for c in CLAIMS if c.asserted])
def test_paper_claim(lab, claim):
    result = lab.judge_claim(claim, LEARNING_SEEDS)
    print(describe(result))
    assert result["holds"] is not None, describe(result)
    assert result["holds"], describe(result)


@pytest.mark.parametrize(
    "claim",
    [
        pytest.param(c, id=c.name, marks=[pytest.mark.learning, pytest.mark.timeout(CLAIM_TIMEOUT)])
        for c in CLAIMS
        if not c.asserted
    ],
)
def test_reported_ablation(lab, claim):
    """Reported, not asserted: the comparison is measured on every seed and fold and printed."""
    result = lab.judge_claim(claim, LEARNING_SEEDS)
    print(describe(result))
    assert result["holds"] is not None, describe(result)
    assert all(math.isfinite(v) for v in result["mean_ua"].values()) and not np.isnan(result["delta"])
