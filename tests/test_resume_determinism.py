"""A fit killed after an epoch and resumed from Lightning's last checkpoint trains exactly as an
uninterrupted one: the training order and the global generators (dropout) travel in the checkpoint
through :class:`emomix.train.data.EmotionDataModule` (found by bench/fault_injection.py)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from emomix.train.data import EmotionDataModule

CLASSES = ["a", "b"]


def tiny_features(count: int = 24, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    features = {f"u{i:02d}": {"audio": {"states": rng.normal(size=(3, 4)).astype(np.float32)}} for i in range(count)}
    return SimpleNamespace(
        features=features,
        specs={"audio": SimpleNamespace(max_length=None)},
        frame_rates={"audio": None},
        layers={"audio": None},
    )


def datamodule(seed: int = 3) -> EmotionDataModule:
    feature_set = tiny_features()
    ids = sorted(feature_set.features)
    table = pd.DataFrame({"utt_id": ids, "label": [CLASSES[i % 2] for i in range(len(ids))]})
    return EmotionDataModule(
        feature_set,
        table,
        CLASSES,
        {"train": ids[:16], "validation": ids[16:], "test": ids[16:]},
        batch_size=4,
        seed=seed,
        modalities=["audio"],
    )


def epoch_order(loader) -> list[str]:
    return [u for batch in loader for u in batch.utt_ids]


def test_datamodule_state_continues_the_training_order_and_global_generators():
    module = datamodule()
    loader = module.train_dataloader()
    first = epoch_order(loader)
    assert first == epoch_order(datamodule().train_dataloader()), "a fresh module starts from the seed"
    torch.rand(5)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    second, after = epoch_order(loader), torch.rand(3)
    assert second != first

    torch.manual_seed(12345)  # a new process: other global state
    resumed = datamodule()
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))  # as Lightning loads last-*.ckpt
    assert epoch_order(resumed.train_dataloader()) == second
    assert torch.equal(torch.rand(3), after)


class DropoutTask(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2)
        )

    def training_step(self, batch, index):
        logits = self.net(batch.inputs["audio"].states.mean(dim=1))
        return torch.nn.functional.cross_entropy(logits, batch.labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Crash(L.Callback):
    def on_train_epoch_start(self, trainer, task):
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated kill")


def fit(folder, crash: bool = False) -> dict[str, torch.Tensor]:
    L.seed_everything(7, verbose=False)
    task, module = DropoutTask(), datamodule()
    callbacks = [
        ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1, monitor=None, enable_version_counter=False)
    ]
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=callbacks + ([Crash()] if crash else []),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(folder),
        accelerator="cpu",
    )
    last = folder / "last.ckpt"
    trainer.fit(
        task,
        datamodule=module,
        ckpt_path=str(last) if last.exists() else None,
        weights_only=True if last.exists() else None,
    )
    return {k: v.clone() for k, v in task.state_dict().items()}


@pytest.mark.filterwarnings("ignore")
def test_a_fit_killed_after_an_epoch_resumes_to_the_uninterrupted_weights(tmp_path, one_thread):
    expected = fit(tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(tmp_path / "killed", crash=True)
    assert (tmp_path / "killed" / "last.ckpt").exists()
    resumed = fit(tmp_path / "killed")
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name


def test_a_killed_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from emomix.train import checkpoint as checkpoint_module
    from emomix.train.checkpoint import AtomicCheckpointIO

    path = tmp_path / "last-model.ckpt"
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def half_written(obj, stream):
        stream.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(checkpoint_module.torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        io_.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-model.ckpt"]


def test_a_truncated_checkpoint_is_set_aside_so_the_fold_starts_over(tmp_path):
    from emomix.train.checkpoint import usable_checkpoint

    good, bad = tmp_path / "good.ckpt", tmp_path / "bad.ckpt"
    torch.save({"epoch": 3, "w": torch.ones(100)}, good)
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a copy killed half way
    assert usable_checkpoint(good) == good and good.exists()
    with pytest.warns(UserWarning, match="incomplete"):
        assert usable_checkpoint(bad) is None
    assert not bad.exists()
    assert usable_checkpoint(tmp_path / "absent.ckpt") is None


def test_stale_temporaries_are_removed_outside_the_store(tmp_path):
    from emomix.train.checkpoint import remove_stale_temporaries

    (tmp_path / "report").mkdir()
    (tmp_path / "features" / "shards").mkdir(parents=True)
    leftovers = [tmp_path / "run.json.k2j3.tmp", tmp_path / "report" / "metrics.json.x1.tmp"]
    for path in [
        *leftovers,
        tmp_path / "features" / "shards" / ".main-0123456789abcdef.safetensors.tmp",
        tmp_path / "run.json",
    ]:
        path.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path, skip=[tmp_path / "features"])) == sorted(leftovers)
    assert (tmp_path / "run.json").exists()
    assert (tmp_path / "features" / "shards" / ".main-0123456789abcdef.safetensors.tmp").exists()
