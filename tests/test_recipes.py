"""The shipped recipes (configs/) say what their papers and corpora need.

That every recipe validates is tests/test_train_run.py::test_shipped_recipes_parse; here are the
facts a recipe could get wrong while still validating: the paper's protocol and classes, the
encoders' names, one feature store for every synthetic recipe, speaker-independent folds on the
real corpora (built on the real tables when ../shared/datasets is present), and a neutral model
block that `--set model.name=...` can replace.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from emomix.data.labels import apply_scheme, get_scheme
from emomix.data.paths import shared_datasets_dir
from emomix.data.protocols import make_fold_plan
from emomix.data.schema import make_table
from emomix.encoders.registry import list_encoders
from emomix.models import model_info
from emomix.train.recipe import load_recipe

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PAPERS = CONFIGS / "papers"
SYNTHETIC = CONFIGS / "synthetic"
OFFLINE_REAL = sorted(
    [*(CONFIGS / "emodb").glob("*.yaml"), *(CONFIGS / "savee").glob("*.yaml"), *(CONFIGS / "meld_text").glob("*.yaml")]
)
ALL = sorted(CONFIGS.rglob("*.yaml"))


def raw(path: Path) -> dict:
    """The recipe as written (before ``${datasets}`` is substituted)."""
    return yaml.safe_load(path.read_text())


def ids(paths):
    return [str(p.relative_to(CONFIGS)) for p in paths]


# ---------------------------------------------------------------------------------------------
# Every recipe
# ---------------------------------------------------------------------------------------------


def test_run_names_are_unique():
    """Two recipes with one name would share runs/<name> and refuse each other's config."""
    names = {}
    for path in ALL:
        names.setdefault(load_recipe(path).name, []).append(str(path.relative_to(CONFIGS)))
    shared = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert not shared, f"recipes share a run name: {shared}"


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_encoders_are_registered_names(path):
    """load_recipe does not build encoders (that would load weights): check the names here."""
    known = set(list_encoders())
    for modality, spec in load_recipe(path).feature_specs().items():
        parts = spec.encoder["join"] if isinstance(spec.encoder, dict) and "join" in spec.encoder else [spec.encoder]
        for part in parts:  # a joined encoder names each of its parts
            name = part if isinstance(part, str) else part["name"]
            assert name in known, f"{path.name}: features.{modality} names unknown encoder {name!r}"


@pytest.mark.parametrize(
    "path", [*sorted(PAPERS.glob("*.yaml")), *OFFLINE_REAL], ids=ids([*sorted(PAPERS.glob("*.yaml")), *OFFLINE_REAL])
)
def test_real_corpora_are_found_under_the_datasets_folder(path):
    root = raw(path)["corpus"]["root"]
    assert root.startswith("${datasets}/"), f"{path.name}: corpus.root {root!r} should start with ${{datasets}}/"


# ---------------------------------------------------------------------------------------------
# Paper recipes: protocol, classes, encoders and hyperparameters
# ---------------------------------------------------------------------------------------------

# recipe → (reader, scheme, classes, protocol, batch kind)
PAPER_FACTS = {
    "dual_routing_iemocap4": ("iemocap", "iemocap-4", ["angry", "happy", "neutral", "sad"], "loso", "utterance"),
    "mpaf_net_iemocap8": (
        "iemocap",
        "iemocap-8",
        ["angry", "excited", "fearful", "frustrated", "happy", "neutral", "sad", "surprised"],
        "speaker-split",
        "utterance",
    ),
    "complementary_iemocap": ("iemocap", "iemocap-4", ["angry", "happy", "neutral", "sad"], "loso", "utterance"),
    "mister_e_iemocap6": (
        "iemocap",
        "iemocap-6",
        ["angry", "excited", "frustrated", "happy", "neutral", "sad"],
        "loso",
        "dialogue",
    ),
    "mister_e_meld": (
        "meld",
        "meld-7",
        ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"],
        "official",
        "dialogue",
    ),
    "mister_e_mosi": ("mosi", "mosi-2", ["negative", "positive"], "official", "dialogue"),
}


def test_every_paper_recipe_is_checked():
    shipped = {p.stem for p in PAPERS.glob("*.yaml")} - {"complementary_manifest"}
    assert shipped == set(PAPER_FACTS)


@pytest.mark.parametrize("stem", sorted(PAPER_FACTS))
def test_paper_recipe_protocol_and_classes(stem):
    reader, scheme, classes, protocol, batch_kind = PAPER_FACTS[stem]
    recipe = load_recipe(PAPERS / f"{stem}.yaml")
    assert (recipe.corpus.reader, recipe.corpus.scheme, recipe.protocol.name) == (reader, scheme, protocol)
    assert list(get_scheme(recipe.corpus.scheme).classes) == classes
    assert model_info(recipe.model.name).batch_kind == batch_kind
    if batch_kind == "dialogue":  # conversation models read pooled utterance vectors: nothing fine-tunes
        assert all(spec.trainable_top_layers == 0 for spec in recipe.feature_specs().values())


def iemocap_like_table() -> pd.DataFrame:
    """Ten actors in five sessions with IEMOCAP's raw codes (no files needed)."""
    codes = ["ang", "exc", "hap", "neu", "sad", "fru", "fea", "sur", "dis", "xxx"]
    rows = []
    for session in range(1, 6):
        for gender in "FM":
            for k, code in enumerate(codes * 2):
                rows.append(
                    {
                        "utt_id": f"Ses0{session}{gender}_{k:02d}",
                        "speaker": f"Ses0{session}_{gender}",
                        "session": f"Session{session}",
                        "dialogue_id": f"Ses0{session}_d{k % 2}",
                        "corpus": "iemocap",
                        "label": code,
                        "raw_label": code,
                    }
                )
    return make_table(rows)


def test_dual_routing_recipe_folds_are_the_five_sessions_with_happy_and_excited_merged():
    recipe = load_recipe(PAPERS / "dual_routing_iemocap4.yaml")
    table, dropped = apply_scheme(iemocap_like_table(), recipe.corpus.scheme)
    assert set(dropped) == {"fru", "fea", "sur", "dis", "xxx"}
    assert set(table.loc[table["raw_label"] == "exc", "label"]) == {"happy"}
    plan = make_fold_plan(table, recipe.protocol.name, **recipe.protocol.params)
    assert [f.name for f in plan.folds] == [f"Session{k}" for k in range(1, 6)] and plan.speaker_independent
    # the validation speaker comes from the four training sessions, not from the test session
    for fold in plan.folds:
        held_out = set(table.loc[table["utt_id"].isin(fold.validation), "session"])
        assert len(held_out) == 1 and held_out != set(fold.test_groups)


def test_mpaf_recipe_splits_the_ten_actors_eight_one_one():
    recipe = load_recipe(PAPERS / "mpaf_net_iemocap8.yaml")
    table, dropped = apply_scheme(iemocap_like_table(), recipe.corpus.scheme)
    assert set(dropped) == {"dis", "xxx"}  # disgust and "other" leave the eight classes
    plan = make_fold_plan(table, recipe.protocol.name, **recipe.protocol.params)
    assert len(plan.folds) == 1 and plan.speaker_independent
    speakers = {
        part: set(table.loc[table["utt_id"].isin(getattr(plan.folds[0], part)), "speaker"])
        for part in ("train", "validation", "test")
    }
    assert [len(speakers[p]) for p in ("train", "validation", "test")] == [8, 1, 1]


def test_dual_routing_recipe_has_the_paper_encoders_and_training():
    recipe = load_recipe(PAPERS / "dual_routing_iemocap4.yaml")
    audio, text = recipe.feature_specs()["audio"], recipe.feature_specs()["text"]
    assert (
        audio.encoder == "wavlm-base" and audio.preprocess["vad"] == "webrtc" and audio.preprocess["vad_mode"] == "mask"
    )
    assert text.encoder["name"] == "roberta-base" and list(text.layers) == [9, 10, 11, 12]
    assert audio.trainable_top_layers == text.trainable_top_layers == 4
    o, t = recipe.optimiser, recipe.training
    assert (o.name, o.lr, o.encoder_lr, o.weight_decay, o.schedule, o.warmup_epochs) == (
        "adamw",
        1e-4,
        1e-5,
        0.01,
        "warmup_cosine",
        2,
    )
    assert (t.epochs, t.batch_size, t.patience, t.monitor, t.class_balance, t.grad_clip) == (
        40,
        8,
        3,
        "val_ua",
        "weights",
        1.0,
    )


def test_mpaf_recipe_has_the_paper_encoders_and_training():
    recipe = load_recipe(PAPERS / "mpaf_net_iemocap8.yaml")
    audio, text = recipe.feature_specs()["audio"], recipe.feature_specs()["text"]
    assert audio.encoder == {"name": "mfcc", "n_mfcc": 40, "pad_seconds": 8.0}
    assert text.encoder["name"] == "bert-base-uncased" and text.trainable_top_layers == 2
    video = recipe.feature_specs()["video"]  # the paper's third modality: face crops, CNN + LSTM trained with the model
    assert {k: video.encoder[k] for k in ("name", "size", "num_frames")} == {
        "name": "faces",
        "size": 64,
        "num_frames": 150,
    }
    assert tuple(recipe.model.config["modalities"]) == ("audio", "text", "video")
    o, t = recipe.optimiser, recipe.training
    assert (o.name, o.lr, o.encoder_lr, o.schedule, o.warmup_epochs) == ("adamw", 2e-4, 2e-5, "warmup_cosine", 3)
    assert (t.epochs, t.batch_size) == (100, 32) and t.augment_config().kinds == ("noise", "pitch")


@pytest.mark.parametrize("stem", ["complementary_iemocap", "complementary_manifest"])
def test_complementary_recipes_build_the_token_frame_graph(stem):
    recipe = load_recipe(PAPERS / f"{stem}.yaml")
    assert recipe.edges and recipe.model.name == "complementary"
    assert recipe.feature_specs()["audio"].encoder == "hubert-base"
    assert (recipe.optimiser.name, recipe.optimiser.lr, recipe.training.patience) == ("adam", 1e-4, 5)


# ---------------------------------------------------------------------------------------------
# Synthetic recipes: one feature store, every design
# ---------------------------------------------------------------------------------------------


def test_synthetic_recipes_share_one_corpus_and_one_feature_store():
    recipes = {p.stem: load_recipe(p) for p in sorted(SYNTHETIC.glob("*.yaml"))}
    assert {r.model.name for r in recipes.values()} >= {
        "dual_routing",
        "mpaf_net",
        "complementary",
        "mister_e",
        "early_fusion",
    }
    reference = recipes["dual_routing"]

    def specs_of(r, modalities=("audio", "text")):
        # speaker normalisation is applied after the store; MiSTER-E uses no speaker identity
        return {
            m: {k: v for k, v in s.to_dict().items() if k != "speaker_normalisation"}
            for m, s in r.feature_specs().items()
            if m in modalities
        }

    for stem, recipe in recipes.items():
        generate = dict(recipe.corpus.generate or {})
        if generate.pop("video", False):
            # the same corpus written with face video as well: same seed and size, its own folder
            assert generate == (reference.corpus.generate or {}), f"{stem}: another synthetic corpus"
            assert "video" in recipe.feature_specs(), f"{stem}: a video corpus without a video encoder"
        else:
            assert recipe.corpus == reference.corpus, f"{stem}: another synthetic corpus"
        assert recipe.features["store"] == "runs/synthetic/features", f"{stem}: another feature store"
        # same audio/text specs → same store keys: the second recipe to run extracts nothing
        assert specs_of(recipe) == specs_of(reference), f"{stem}: other features"
    assert recipes["complementary"].edges, "the graph needs the synthetic corpus's word timings"
    assert model_info(recipes["mister_e"].model.name).batch_kind == "dialogue"


# ---------------------------------------------------------------------------------------------
# Offline real-corpus recipes
# ---------------------------------------------------------------------------------------------

# recipe folder → (reader, protocol, speaker-independent, modalities that can be present)
OFFLINE_FACTS = {
    "emodb": ("emodb", "loso-speaker", True, {"audio", "text"}),
    "savee": ("savee", "loso-speaker", True, {"audio"}),
    "meld_text": ("meld", "official", False, {"text"}),
}


@pytest.mark.parametrize("path", OFFLINE_REAL, ids=ids(OFFLINE_REAL))
def test_offline_recipe_protocol_and_modalities(path):
    reader, protocol, _, modalities = OFFLINE_FACTS[path.parent.name]
    recipe = load_recipe(path)
    assert (recipe.corpus.reader, recipe.protocol.name) == (reader, protocol)
    assert set(recipe.feature_specs()) <= modalities
    if protocol == "loso-speaker":
        # validation comes from the training speakers or not at all (fixed epochs): never the test speaker
        assert recipe.protocol.params.get("validation") in ("speaker", "none")
        assert recipe.feature_specs()["audio"].speaker_normalisation


@pytest.mark.parametrize(
    "path, other",
    [
        (CONFIGS / "emodb" / "functionals.yaml", "late_fusion"),
        (CONFIGS / "emodb" / "frames.yaml", "speech_cnn"),
        (CONFIGS / "savee" / "functionals.yaml", "mpaf_net_audio"),
        (CONFIGS / "savee" / "frames.yaml", "speech_cnn"),
        (CONFIGS / "meld_text" / "early_fusion_text.yaml", "text_bilstm"),
        (SYNTHETIC / "baselines.yaml", "tfn"),
    ],
)
def test_neutral_recipes_take_another_model(path, other):
    assert load_recipe(path).model.config == {}
    assert load_recipe(path, overrides={"model.name": other}).model.name == other


@pytest.fixture(scope="module")
def datasets() -> Path:
    folder = shared_datasets_dir()
    if folder is None:
        pytest.skip(
            "no shared datasets folder (set EMOMIX_DATASETS or place ../shared/datasets): "
            "the offline recipes' corpora cannot be checked"
        )
    return folder


@pytest.fixture(scope="module")
def real_tables(datasets):
    """Each offline corpus read once (by recipe folder), or the reason it is absent."""
    from emomix.data.readers import read_corpus

    tables = {}
    for folder, (reader, *_rest) in OFFLINE_FACTS.items():
        recipe = load_recipe(sorted((CONFIGS / folder).glob("*.yaml"))[0])
        root = Path(recipe.corpus.root)
        tables[folder] = (
            read_corpus(reader, root, scheme=recipe.corpus.scheme).table if root.exists() else f"{root} is absent"
        )
    return tables


@pytest.mark.parametrize("path", OFFLINE_REAL, ids=ids(OFFLINE_REAL))
def test_offline_recipe_folds_build_on_the_real_corpus(path, datasets, real_tables):
    recipe = load_recipe(path)
    table = real_tables[path.parent.name]
    if isinstance(table, str):
        pytest.skip(f"{path.name}: corpus not available here ({table})")
    assert Path(recipe.corpus.root).is_relative_to(datasets)
    labelled = table[table["label"].notna()]
    plan = make_fold_plan(labelled, recipe.protocol.name, **recipe.protocol.params)
    _, _, independent, _ = OFFLINE_FACTS[path.parent.name]
    assert plan.speaker_independent is independent
    if recipe.protocol.name == "loso-speaker":
        assert len(plan.folds) == labelled["speaker"].nunique()
        for fold in plan.folds:  # a validation speaker (if any) is neither trained on nor tested
            validation = set(labelled.loc[labelled["utt_id"].isin(fold.validation), "speaker"])
            expected = 0 if recipe.protocol.params.get("validation") == "none" else 1
            assert len(validation) == expected and not validation & set(fold.test_groups)
    if "text" in recipe.feature_specs():
        assert labelled["text"].fillna("").str.strip().ne("").all(), f"{path.name}: utterances without a transcript"


def test_savee_has_no_transcripts_so_its_recipes_are_audio_only(real_tables):
    table = real_tables["savee"]
    if isinstance(table, str):
        pytest.skip(f"SAVEE not available here ({table})")
    assert table["text"].fillna("").eq("").all()


def test_emodb_syllable_timings_cannot_make_token_frame_edges(real_tables):
    """Why the EmoDB recipes leave features.edges off: the alignment does not spell the words."""
    table = real_tables["emodb"]
    if isinstance(table, str):
        pytest.skip(f"EmoDB not available here ({table})")
    row = table.iloc[0]
    tokens = [w["token"] if isinstance(w, dict) else w.token for w in row["words"]]
    assert tokens != row["text"].split()
    assert not any(load_recipe(p).edges for p in (CONFIGS / "emodb").glob("*.yaml"))


@pytest.mark.parametrize(
    "path, overrides",
    [
        (
            PAPERS / "dual_routing_iemocap4.yaml",
            {
                "model.name": "dual_routing_local",
                "features.audio.preprocess.vad_mode": "trim",
                "features.audio.preprocess.chunk_max_s": 3,
            },
        ),
        (PAPERS / "mpaf_net_iemocap8.yaml", {"model.name": "concat_fusion", "optimiser.schedule": "plateau"}),
        (PAPERS / "complementary_iemocap.yaml", {"model.name": "complementary_spl", "optimiser.schedule": "none"}),
        (PAPERS / "mister_e_iemocap6.yaml", {"model.name": "mister_e_no_context"}),
        (CONFIGS / "meld_text" / "mister_e_text.yaml", {"model.config.context": False}),
        (SYNTHETIC / "baselines.yaml", {"model.name": "graph_mlp", "features.edges": True}),
    ],
    ids=[
        "dual-routing-chunked",
        "mpaf-baseline",
        "complementary-spl",
        "mister-e-ablation",
        "meld-no-context",
        "graph-mlp",
    ],
)
def test_variants_named_in_recipe_headers_load(path, overrides):
    """The `--set` variants the recipes' comments and docs/recipes.md advertise are valid."""
    recipe = load_recipe(path, overrides=overrides)
    if "model.name" in overrides:
        assert recipe.model.name == overrides["model.name"]
