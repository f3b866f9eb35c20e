"""The Lightning task's optimiser recipes and top-layer fine-tuning from stored boundary states."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from emomix.train.recipe import OptimiserConfig, Recipe
from emomix.train.task import EmotionTask, warmup_cosine


def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(5, 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


class _Tiny(torch.nn.Module):
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        self.norm = torch.nn.LayerNorm(2)


def _configured(schedule: str, monkeypatch, **options):
    task = EmotionTask(
        _Tiny(),
        OptimiserConfig(schedule=schedule, lr=1e-3, encoder_lr=1e-5, **options),
        fine_tune={"text": (torch.nn.Linear(3, 3), 0, [])},
    )
    trainer = L.Trainer(
        max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_train_batches=5
    )
    task.trainer = trainer  # what Lightning sets before calling configure_optimizers
    monkeypatch.setattr(L.Trainer, "estimated_stepping_batches", property(lambda self: 20))
    return task, task.configure_optimizers()


@pytest.mark.parametrize("schedule", ["warmup_cosine", "onecycle", "plateau", "none"])
def test_optimiser_groups_give_head_and_encoder_their_own_rates(schedule, monkeypatch):
    _task, configured = _configured(schedule, monkeypatch)
    optimiser = configured["optimizer"] if isinstance(configured, dict) else configured
    # the configured rate: OneCycle's peak, a schedule's base rate, or the plain rate
    key = {"onecycle": "max_lr", "warmup_cosine": "initial_lr"}.get(schedule, "lr")
    rates = {group["name"]: (group[key], group["weight_decay"]) for group in optimiser.param_groups}
    assert rates["head"][0] == pytest.approx(1e-3) and rates["encoder"][0] == pytest.approx(1e-5)
    assert rates["head_no_decay"][1] == 0.0 and rates["head"][1] == pytest.approx(0.01)  # biases and norms: no decay
    if schedule == "plateau":
        assert configured["lr_scheduler"]["monitor"] == "val_ua"
        assert configured["lr_scheduler"]["scheduler"].mode == "max"
    if schedule == "onecycle":
        scheduler = configured["lr_scheduler"]["scheduler"]
        assert scheduler.total_steps == 20


def test_top_layer_fine_tuning_trains_only_the_top_layers(synthetic_features, tmp_path):
    """A text model with MiniLM's last layer fine-tuned from stored layer-5 states: the saved
    checkpoint holds the model and that layer's parameters, changed from the pretrained ones."""
    from safetensors.torch import load_file

    from emomix.encoders.registry import create_encoder
    from emomix.train.run import train_recipe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = synthetic_features.root
        recipe = Recipe.from_dict(
            {
                "name": "finetune",
                "corpus": {"reader": "synthetic", "root": str(root)},
                "protocol": {"name": "loso", "params": {"validation": "group"}},
                "features": {
                    "store": str(root.parent / "store"),
                    "text": {"encoder": "minilm", "trainable_top_layers": 1},
                },
                "model": {"name": "early_fusion_text", "config": {"hidden_dim": 32}},
                "optimiser": {"lr": 2e-3, "encoder_lr": 1e-3, "schedule": "none"},
                "training": {"epochs": 1, "batch_size": 32, "patience": None},
            }
        )
        train_recipe(recipe, tmp_path / "run", folds=["ses01"], progress=False, log=None)
    finally:
        torch.set_num_threads(threads)
    state = load_file(str(tmp_path / "run" / "folds" / "ses01" / "seed-0" / "model.safetensors"))
    encoder_keys = [k for k in state if k.startswith("encoders.text.")]
    assert encoder_keys and all(".layer.5." in k for k in encoder_keys), encoder_keys[:5]
    assert any(k.startswith("model.") for k in state)
    pretrained = dict(create_encoder("minilm").named_parameters())
    changed = [k for k in encoder_keys if not torch.equal(state[k], pretrained[k[len("encoders.text.") :]].detach())]
    assert changed, "the fine-tuned layer's weights did not move"


def test_standardisation_travels_with_the_weights():
    """Fold statistics set on a task are applied in forward and restored from its saved state."""
    from emomix.models import create_model
    from emomix.models.inputs import Batch, ModalityInput

    torch.manual_seed(0)
    model = create_model("early_fusion_audio", {"hidden_dim": 8}, {"audio": 5}, 3)
    task = EmotionTask(model, OptimiserConfig())
    mean, std = torch.arange(5.0), torch.full((5,), 2.0)
    task.set_standardisation("audio", mean, std)
    states = torch.randn(2, 4, 5) * 2 + mean
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    batch = Batch(inputs={"audio": ModalityInput(states=states, mask=mask)})
    task.eval()
    expected = model(
        Batch(inputs={"audio": ModalityInput(states=(states - mean) / std * mask.unsqueeze(-1), mask=mask)})
    ).logits
    torch.testing.assert_close(task(batch).logits, expected)
    fresh = EmotionTask(create_model("early_fusion_audio", {"hidden_dim": 8}, {"audio": 5}, 3), OptimiserConfig())
    fresh.load_trainable_state(task.trainable_state())
    fresh.eval()
    torch.testing.assert_close(fresh(batch).logits, task(batch).logits)


def test_the_task_wraps_the_plain_saved_model_and_resumes_old_checkpoints():
    """The task trains a TrainedModel (what inference loads); a resume checkpoint written when the
    task held the model directly (keys ``model.*``) still loads."""
    from emomix.models import create_model
    from emomix.models.inputs import Batch, ModalityInput
    from emomix.models.saved import TrainedModel

    torch.manual_seed(0)
    task = EmotionTask(create_model("early_fusion_audio", {"hidden_dim": 8}, {"audio": 5}, 3), OptimiserConfig())
    assert isinstance(task.net, TrainedModel) and task.model is task.net.model
    assert set(task.trainable_state()) == {f"model.{k}" for k in task.model.state_dict()}
    old_keys = {key[len("net.") :]: value.clone() for key, value in task.state_dict().items()}
    assert all(key.startswith("model.") for key in old_keys)
    resumed = EmotionTask(create_model("early_fusion_audio", {"hidden_dim": 8}, {"audio": 5}, 3), OptimiserConfig())
    checkpoint = {"state_dict": old_keys}
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])
    batch = Batch(inputs={"audio": ModalityInput(states=torch.randn(2, 4, 5), mask=torch.ones(2, 4, dtype=torch.bool))})
    task.eval(), resumed.eval()
    torch.testing.assert_close(resumed(batch).logits, task(batch).logits)
    current = {"state_dict": dict(task.state_dict())}
    resumed.on_load_checkpoint(current)  # a checkpoint of this version is left as it is
    assert set(current["state_dict"]) == set(task.state_dict())
