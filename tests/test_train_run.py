"""Cross-validation end to end on the synthetic corpus: recipe → folds → Lightning → predictions
→ report, an interrupted run resumed, finished folds skipped, bad recipes refused."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from emomix.errors import ConfigError
from emomix.train.recipe import Recipe, load_recipe
from emomix.train.run import train_recipe
from synthetic_features import synthetic_recipe

FOLDS = ["ses01", "ses02"]


def recipe_dict(synthetic_features, **model_config):
    return synthetic_recipe(synthetic_features, **model_config)


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(synthetic_features, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("runs") / "dual"
    recipe = Recipe.from_dict(recipe_dict(synthetic_features))
    result = train_recipe(recipe, out, folds=FOLDS, progress=False, log=None)
    return out, result


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
        assert {"model.safetensors", "model.json", "history.csv", "predictions.parquet", "done.json"} <= {p.name for p in folder.iterdir()}
        assert not list(folder.glob("*.ckpt")), "the resume checkpoint is removed once a fold is done"
        card = json.loads((folder / "model.json").read_text())
        assert card["model"] == "dual_routing" and card["classes"] == list(synthetic_features.classes)
        assert card["features"]["audio"]["frame_stride"] == 4
    run = json.loads((out / "run.json").read_text())
    assert run["seeds"] == [0] and run["classes"] == list(synthetic_features.classes)
    assert {"torch", "lightning", "python", "emomix_version"} <= set(run)
    assert (out / "config.yaml").exists() and (out / "folds.json").exists() and (out / "data.json").exists()
    assert (out / "report" / "report.md").exists() and (out / "report" / "metrics.json").exists()


def test_saved_weights_reproduce_the_saved_predictions(finished_run, synthetic_features):
    """The checkpoint (safetensors + JSON) alone rebuilds the model that made the predictions."""
    from emomix.models import create_model
    from emomix.train.data import EmotionDataModule
    from emomix.train.run import prepare_run
    from emomix.train.task import EmotionTask, load_weights, predict_rows

    out, _ = finished_run
    folder = out / "folds" / "ses01" / "seed-0"
    card = json.loads((folder / "model.json").read_text())
    model = create_model(card["model"], card["config"], card["input_dims"], len(card["classes"]))
    task = EmotionTask(model, Recipe.from_dict(recipe_dict(synthetic_features)).optimiser)
    task.load_trainable_state(load_weights(folder / "model.safetensors"))
    context = prepare_run(Recipe.from_dict(recipe_dict(synthetic_features)), out, progress=False, log=lambda m: None)
    fold = context.plan.folds[0]
    module = EmotionDataModule(context.feature_set, context.table, context.classes,
                               {"train": fold.train, "validation": fold.validation, "test": fold.test})
    ids, probs, _, _ = predict_rows(task, module.test_dataloader())
    saved = pd.read_parquet(folder / "predictions.parquet").set_index("utt_id").loc[ids]
    expected = saved[[f"prob_{c}" for c in card["classes"]]].to_numpy()
    assert abs(probs - expected).max() < 1e-5


def test_rerun_skips_finished_folds(finished_run, synthetic_features):
    out, _ = finished_run
    before = (out / "folds" / "ses01" / "seed-0" / "model.safetensors").stat().st_mtime_ns
    result = train_recipe(Recipe.from_dict(recipe_dict(synthetic_features)), out, folds=FOLDS, progress=False, log=None)
    assert not result.trained and sorted(result.skipped) == [f"{f}/seed-0" for f in FOLDS]
    assert (out / "folds" / "ses01" / "seed-0" / "model.safetensors").stat().st_mtime_ns == before


def test_a_run_folder_refuses_a_different_recipe(finished_run, synthetic_features):
    out, _ = finished_run
    changed = recipe_dict(synthetic_features, model_dim=48)
    with pytest.raises(ConfigError, match="different recipe"):
        train_recipe(Recipe.from_dict(changed), out, folds=FOLDS, progress=False, log=None)


def test_an_interrupted_fold_resumes_from_its_last_checkpoint(synthetic_features, tmp_path, monkeypatch, one_thread):
    from emomix.train import task as task_module

    out = tmp_path / "interrupted"
    recipe = Recipe.from_dict(recipe_dict(synthetic_features) | {"training": {"epochs": 5, "patience": None, "threads": 1}})
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
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
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
