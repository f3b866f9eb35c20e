"""Cross-validation end to end on the synthetic corpus: recipe → folds → Lightning → predictions
→ report, an interrupted run resumed, finished folds skipped, bad recipes refused."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from emomix.errors import ConfigError
from emomix.train.recipe import Recipe, load_recipe
from emomix.train.run import train_recipe
from synthetic_features import synthetic_recipe

FOLDS = ["ses01", "ses02"]


def recipe_dict(synthetic_features, **model_config):
    return synthetic_recipe(synthetic_features, **model_config)


@pytest.fixture(scope="module")
def finished_run(synthetic_features, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("runs") / "dual"
    recipe = Recipe.from_dict(recipe_dict(synthetic_features))
    result = train_recipe(recipe, out, folds=FOLDS, progress=False, log=None)
    return out, result


@pytest.mark.e2e  # cross-validation training (make test-e2e)
def test_cross_validation_writes_predictions_checkpoints_and_report(finished_run, synthetic_features):
    out, result = finished_run
    assert sorted(result.trained) == [f"{f}/seed-0" for f in FOLDS] and not result.skipped
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert sorted(predictions["fold"].unique()) == FOLDS and len(predictions) == 2 * 96
    probs = predictions[[f"prob_{c}" for c in synthetic_features.classes]].to_numpy()
    assert abs(probs.sum(axis=1) - 1).max() < 1e-5
    # Dual Routing's routing weights per modality reach the predictions (p_local + p_global = 1)
    for modality in ("audio", "text"):
        total = predictions[f"aux_route_{modality}_0"] + predictions[f"aux_route_{modality}_1"]
        assert (total - 1).abs().max() < 1e-5
    ua = (predictions["label"] == predictions["pred"]).groupby(predictions["label"]).mean().mean()
    assert ua > 0.25 + 0.2, f"pooled UA {ua:.3f} after 6 epochs"
    for fold in FOLDS:
        folder = out / "folds" / fold / "seed-0"
        assert {"model.safetensors", "model.json", "history.csv", "predictions.parquet", "done.json"} <= {
            p.name for p in folder.iterdir()
        }
        assert not list(folder.glob("*.ckpt")), "the resume checkpoint is removed once a fold is done"
        history = pd.read_csv(folder / "history.csv")  # every monitorable metric, every epoch
        assert history["val_weighted_f1"].between(0, 1).all() and history["val_ua"].between(0, 1).all()
        card = json.loads((folder / "model.json").read_text())
        assert card["model"] == "dual_routing" and card["classes"] == list(synthetic_features.classes)
        assert card["features"]["audio"]["frame_stride"] == 4
    run = json.loads((out / "run.json").read_text())
    assert run["seeds"] == [0] and run["classes"] == list(synthetic_features.classes)
    assert {"torch", "lightning", "python", "emomix_version"} <= set(run)
    assert (out / "config.yaml").exists() and (out / "folds.json").exists() and (out / "data.json").exists()
    assert (out / "report" / "report.md").exists() and (out / "report" / "metrics.json").exists()


@pytest.mark.e2e  # cross-validation training (make test-e2e)
def test_saved_weights_reproduce_the_saved_predictions(finished_run, synthetic_features):
    """The checkpoint (safetensors + JSON) alone rebuilds the model that made the predictions."""
    from emomix.models.saved import TrainedModel

    out, _ = finished_run
    folder = out / "folds" / "ses01" / "seed-0"
    card = json.loads((folder / "model.json").read_text())
    model = TrainedModel.from_pretrained(folder)  # no trainer, no optimiser config
    ids, probs = _first_fold_test_predictions(Recipe.from_dict(recipe_dict(synthetic_features)), out, model)
    saved = pd.read_parquet(folder / "predictions.parquet").set_index("utt_id").loc[ids]
    expected = saved[[f"prob_{c}" for c in card["classes"]]].to_numpy()
    assert abs(probs - expected).max() < 1e-5


@pytest.mark.e2e  # cross-validation training (make test-e2e)
def test_rerun_skips_finished_folds(finished_run, synthetic_features):
    out, _ = finished_run
    before = (out / "folds" / "ses01" / "seed-0" / "model.safetensors").stat().st_mtime_ns
    result = train_recipe(Recipe.from_dict(recipe_dict(synthetic_features)), out, folds=FOLDS, progress=False, log=None)
    assert not result.trained and sorted(result.skipped) == [f"{f}/seed-0" for f in FOLDS]
    assert (out / "folds" / "ses01" / "seed-0" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.e2e  # cross-validation training (make test-e2e)
def test_a_run_folder_refuses_a_different_recipe(finished_run, synthetic_features):
    out, _ = finished_run
    changed = recipe_dict(synthetic_features, model_dim=48)
    with pytest.raises(ConfigError, match="different recipe"):
        train_recipe(Recipe.from_dict(changed), out, folds=FOLDS, progress=False, log=None)


@pytest.mark.e2e  # cross-validation training (make test-e2e)
def test_an_interrupted_fold_resumes_from_its_last_checkpoint(synthetic_features, tmp_path, monkeypatch, one_thread):
    from emomix.train import task as task_module

    out = tmp_path / "interrupted"
    recipe = Recipe.from_dict(
        recipe_dict(synthetic_features) | {"training": {"epochs": 5, "patience": None, "threads": 1}}
    )
    original = task_module.HistoryWriter.on_train_epoch_end

    def crash_after_epoch_three(self, trainer, module):
        original(self, trainer, module)
        if trainer.current_epoch + 1 == 3:
            raise RuntimeError("simulated power cut")

    monkeypatch.setattr(task_module.HistoryWriter, "on_train_epoch_end", crash_after_epoch_three)
    with pytest.raises(RuntimeError, match="power cut"):
        train_recipe(recipe, out, folds=["ses01"], progress=False, log=None)
    folder = out / "folds" / "ses01" / "seed-0"
    assert not (folder / "done.json").exists() and list(folder.glob("last*.ckpt"))
    history_before = pd.read_csv(folder / "history.csv")
    assert list(history_before["epoch"]) == [1, 2, 3]
    monkeypatch.setattr(task_module.HistoryWriter, "on_train_epoch_end", original)

    result = train_recipe(recipe, out, folds=["ses01"], progress=False, log=None)
    assert result.trained == ["ses01/seed-0"]
    history = pd.read_csv(folder / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5]
    # epochs finished before the crash were not trained again: their rows are unchanged
    kept = history_before[history_before["epoch"] <= 2].reset_index(drop=True)
    pd.testing.assert_series_equal(history.loc[:1, "loss"], kept["loss"], check_names=False)
    assert (folder / "done.json").exists()


def test_recipe_errors_name_the_bad_key(synthetic_features, tmp_path):
    data = recipe_dict(synthetic_features)
    with pytest.raises(ConfigError, match="did you mean training.epochs"):
        Recipe.from_dict(data | {"training": {"epochz": 3}})
    with pytest.raises(ConfigError, match="unknown model"):
        Recipe.from_dict(data | {"model": {"name": "dual_routng"}})
    with pytest.raises(ConfigError, match="model_dim"):
        Recipe.from_dict(data | {"model": {"name": "dual_routing", "config": {"hidden_dim": 3}}})
    with pytest.raises(ConfigError, match="frame_stride"):
        Recipe.from_dict(data | {"features": {"audio": {"encoder": "mfcc", "frame_strid": 2}}})
    with pytest.raises(ConfigError, match="schedule"):
        Recipe.from_dict(data | {"optimiser": {"schedule": "cosine"}})
    path = tmp_path / "bad.yaml"
    path.write_text("corpus: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)


def test_shipped_recipes_parse():
    """Every recipe under configs/ validates (paths are not checked: corpora may be absent)."""
    from pathlib import Path

    recipes = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))
    assert recipes, "configs/ holds no recipes"
    for path in recipes:
        load_recipe(path)


# ---------------------------------------------------------------------------------------------
# Recipe errors name the file and the block path; ${datasets}; a failed attempt does not block its retry
# ---------------------------------------------------------------------------------------------


def test_typos_name_the_recipe_file_and_the_block_path(tmp_path):
    source = (Path(__file__).parent.parent / "configs" / "emodb" / "functionals.yaml").read_text()
    path = tmp_path / "x.yaml"
    path.write_text(source.replace("  epochs: 60", "  max_epoch: 60"))
    with pytest.raises(ConfigError) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}: training.max_epoch is not a setting; did you mean training.epochs?")
    path.write_text(source.replace("config: {}", "config: {hiden_dim: 64}"))
    with pytest.raises(
        ConfigError,
        match=r"x\.yaml: model\.config\.hiden_dim is not a setting; did you mean "
        r"model\.config\.hidden_dim\?",
    ) as error:
        load_recipe(path)
    assert "Config" not in str(error.value)  # no Python class name
    path.write_text(source.replace("config: {}", "config: {dropout: 2}"))
    with pytest.raises(ConfigError, match=r"x\.yaml: model\.config\.dropout must be in") as error:
        load_recipe(path)
    assert "Config" not in str(error.value)


def test_raw_inputs_into_a_model_without_input_norm_are_refused_until_standardised():
    """Issue 13: joined functionals with speaker normalisation switched off trained on raw
    ComParE values (loss 1.6e8, UA below chance) without a word."""
    path = Path(__file__).parent.parent / "configs" / "emodb" / "joined_functionals.yaml"
    off = {"features.audio.speaker_normalisation": False}
    with pytest.raises(
        ConfigError,
        match=r"input_norm: false, but features\.audio is neither speaker-normalised nor "
        r"standardised.*set training\.standardise: true",
    ):
        load_recipe(path, off)
    assert load_recipe(path, off | {"training.standardise": True}).training.standardise
    assert load_recipe(path, off | {"model.config.input_norm": True}).model.config["input_norm"] is True
    assert load_recipe(path).feature_specs()["audio"].speaker_normalisation  # the shipped recipe is scaled


def _tiny_manifest(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rows = ["utt_id,speaker,text,label"]
    rows += [f"u{i},spk{i % 3},line {i},{'ang' if i % 2 else 'neu'}" for i in range(12)]
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


def _tiny_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "name: tiny\n"
        'corpus: {reader: manifest, root: "${datasets}/tiny", scheme: null}\n'
        "protocol: {name: loso-speaker, params: {validation: none}}\n"
        "features: {text: {encoder: minilm}}\n"
        "model: {name: early_fusion_text}\n"
    )
    return path


class _ReachedFeatures(Exception):
    pass


def test_missing_datasets_folder_fails_in_one_sentence_and_does_not_block_the_retry(tmp_path, monkeypatch):
    import emomix.data.paths as paths
    import emomix.features as features
    from emomix.errors import MissingDataError
    from emomix.train.run import prepare_run

    def reached(*args, **kwargs):
        raise _ReachedFeatures()

    monkeypatch.setattr(features, "build_features", reached)  # the test stops where features would be built
    monkeypatch.delenv("EMOMIX_DATASETS", raising=False)
    monkeypatch.setattr(paths, "shared_datasets_dir", lambda: None)
    monkeypatch.chdir(tmp_path)
    recipe_path = _tiny_recipe(tmp_path)
    out = tmp_path / "runs" / "tiny"

    recipe = load_recipe(recipe_path)  # the recipe still validates without the folder
    with pytest.raises(MissingDataError) as error:
        prepare_run(recipe, out, progress=False, log=lambda m: None)
    message = str(error.value)
    assert "EMOMIX_DATASETS" in message and "None" not in message and "${datasets}" in message
    assert str(tmp_path.parent / "shared" / "datasets") in message  # the ../shared/datasets it tried
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    assert not out.exists()  # nothing written: the retry is not blocked

    datasets = tmp_path / "corpora"
    _tiny_manifest(datasets / "tiny")
    monkeypatch.setenv("EMOMIX_DATASETS", str(datasets))
    recipe = load_recipe(recipe_path)
    assert recipe.corpus.root == str(datasets.resolve() / "tiny")
    with pytest.raises(_ReachedFeatures):
        prepare_run(recipe, out, progress=False, log=lambda m: None)
    assert (out / "config.yaml").exists() and (out / "folds.json").exists()


def test_a_config_left_by_an_attempt_that_never_read_its_corpus_is_replaced(tmp_path, monkeypatch):
    """What earlier versions left after the failure above: config.yaml with root None/tiny, no
    fold plan, no finished fold."""
    import yaml

    import emomix.features as features
    from emomix.train.run import prepare_run

    monkeypatch.setattr(features, "build_features", lambda *a, **k: (_ for _ in ()).throw(_ReachedFeatures()))
    datasets = tmp_path / "corpora"
    _tiny_manifest(datasets / "tiny")
    monkeypatch.setenv("EMOMIX_DATASETS", str(datasets))
    recipe = load_recipe(_tiny_recipe(tmp_path))
    out = tmp_path / "runs" / "tiny"
    out.mkdir(parents=True)
    stale = recipe.to_dict()
    stale["corpus"]["root"] = "None/tiny"
    (out / "config.yaml").write_text(yaml.safe_dump(stale))
    messages = []
    with pytest.raises(_ReachedFeatures):
        prepare_run(recipe, out, progress=False, log=messages.append)
    assert yaml.safe_load((out / "config.yaml").read_text())["corpus"]["root"] == recipe.corpus.root
    assert any("stopped before its corpus was read" in m for m in messages)
    # a folder with a fold plan of another recipe still refuses
    other = recipe.with_overrides(name="other")
    with pytest.raises(ConfigError, match="holds a run of a different recipe"):
        prepare_run(other, out, progress=False, log=messages.append)


def _first_fold_test_predictions(recipe, out, model):
    """``model`` on the test part of the run's first fold: (utterance ids, probabilities)."""
    from emomix.models.saved import predict_rows
    from emomix.train.data import EmotionDataModule
    from emomix.train.run import prepare_run

    context = prepare_run(recipe, out, progress=False, log=lambda m: None)
    fold = context.plan.folds[0]
    module = EmotionDataModule(
        context.feature_set,
        context.table,
        context.classes,
        {"train": fold.train, "validation": fold.validation, "test": fold.test},
    )
    ids, probs, _, _ = predict_rows(model, module.test_dataloader())
    return ids, probs


def test_a_late_fusion_model_trains_its_parts_and_loads_as_one(synthetic_features, tmp_path, one_thread):
    """``complementary`` is chosen by its registry entry (late_fusion_of): both parts are trained and
    saved, the fused weights are fitted, and the fused checkpoint reloads to the saved predictions."""
    from emomix.models.saved import TrainedModel

    data = recipe_dict(synthetic_features)
    data["model"] = {
        "name": "complementary",
        "config": {"hidden_dim": 16, "ca_heads": 2, "graph_heads": 2, "num_experts": 2, "graph": "spread"},
    }
    data["training"].update(epochs=1)
    recipe = Recipe.from_dict(data)
    out = tmp_path / "complementary"
    train_recipe(recipe, out, folds=["ses01"], progress=False, log=None, report=False)
    folder = out / "folds" / "ses01" / "seed-0"
    assert {p.name for p in folder.glob("*.safetensors")} == {
        "model.safetensors",
        "complementary_ca.safetensors",
        "complementary_spl.safetensors",
    }
    card = json.loads((folder / "model.json").read_text())
    assert set(card["training"]) == {"complementary_ca", "complementary_spl", "fusion_weights"}
    assert len(card["training"]["fusion_weights"]) == len(card["classes"])
    model = TrainedModel.from_pretrained(folder)
    assert model.model.fusion_weights.tolist() == pytest.approx(card["training"]["fusion_weights"], abs=1e-4)
    ids, probs = _first_fold_test_predictions(recipe, out, model)
    saved = pd.read_parquet(folder / "predictions.parquet").set_index("utt_id").loc[ids]
    assert abs(probs - saved[[f"prob_{c}" for c in card["classes"]]].to_numpy()).max() < 1e-5


def test_augmented_copies_reach_training_with_a_relative_store_and_the_corpus_elsewhere(tmp_path, monkeypatch):
    """The shipped recipes keep their store relative (runs/<corpus>/features) and read the corpus
    from ${datasets}: the copies rendered beside the store must still be found and extracted."""
    import json

    import numpy as np
    import soundfile as sf

    from emomix.train.augment import is_augmented
    from emomix.train.run import prepare_run

    datasets = tmp_path / "corpora"
    corpus = datasets / "tones"
    corpus.mkdir(parents=True)
    rows = ["utt_id,speaker,label,audio_path"]
    for i in range(6):
        t = np.arange(16000) / 16000
        sf.write(corpus / f"u{i}.wav", 0.3 * np.sin(2 * np.pi * (120 + 30 * i) * t), 16000)
        rows.append(f"u{i},spk{i % 3},{'ang' if i < 2 else 'neu'},u{i}.wav")
    (corpus / "manifest.csv").write_text("\n".join(rows) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("EMOMIX_DATASETS", str(datasets))
    (work / "tones.yaml").write_text(
        "name: tones\n"
        'corpus: {reader: manifest, root: "${datasets}/tones", scheme: null}\n'
        "protocol: {name: loso-speaker, params: {validation: none}}\n"
        "features: {store: runs/features, audio: {encoder: {name: 'opensmile:eGeMAPSv02', level: functionals}}}\n"
        "model: {name: early_fusion_audio}\n"
        "training: {augment: {kinds: [noise], classes: [ang], copies: 2}}\n"
    )
    context = prepare_run(load_recipe(work / "tones.yaml"), work / "runs" / "tones", progress=False, log=lambda m: None)
    copies = sorted(u for u in context.feature_set.features if is_augmented(u))
    assert copies == ["u0@aug-noise-0", "u0@aug-noise-1", "u1@aug-noise-0", "u1@aug-noise-1"]
    assert json.loads((work / "runs" / "tones" / "data.json").read_text())["feature_failures"] == []


def test_a_linear_svm_run_is_solved_and_its_weights_reproduce_its_predictions(synthetic_features, tmp_path, one_thread):
    """``emomix train`` with ``linear_svm``: no epochs, one solve on the fold's training part
    (through the same standardisation inference applies); the history records it, the result does
    not depend on the seed, and the saved weights give the saved predictions. Whether L-BFGS meets
    its tolerances before ``max_iter`` on these extracted features varies with the machine's
    floating point (it ran to the 500-iteration cap on 2026-12-08's machine, not on the one
    before), so the run only has to record which; that the solve reaches the objective's minimum
    is tested on a seeded problem in test_baselines.py."""
    from emomix.models.saved import TrainedModel

    data = recipe_dict(synthetic_features)
    data["model"] = {"name": "linear_svm"}
    data["training"]["standardise"] = True  # an SVM reads z-scored inputs (the text states are raw)
    data["seeds"] = [0, 1]
    recipe = Recipe.from_dict(data)
    out = tmp_path / "svm"
    train_recipe(recipe, out, folds=["ses01"], progress=False, log=None, report=False)
    history = pd.read_csv(out / "folds" / "ses01" / "seed-0" / "history.csv")
    row = history.iloc[0]
    assert len(history) == 1 and 0 < row["iterations"] <= 500
    assert not bool(row["converged"]) or row["iterations"] < 500  # a capped solve is not "converged"
    assert 0.25 < history["val_ua"].iloc[0] <= 1.0  # four classes: above chance on the validation session
    first, second = (
        pd.read_parquet(out / "folds" / "ses01" / f"seed-{k}" / "predictions.parquet").set_index("utt_id")
        for k in (0, 1)
    )
    columns = [c for c in first if c.startswith("prob_")]
    assert abs(first[columns].to_numpy() - second.loc[first.index, columns].to_numpy()).max() < 1e-6
    model = TrainedModel.from_pretrained(out / "folds" / "ses01" / "seed-0")
    ids, probs = _first_fold_test_predictions(recipe, out, model)
    assert abs(probs - first.loc[ids, columns].to_numpy()).max() < 1e-5
