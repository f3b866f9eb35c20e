"""Evaluation: metrics on hand-computed cases, routing tables, the report, compare and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import typer
from scipy import stats
from typer.testing import CliRunner

from emomix.cli.evaluate import register
from emomix.data.protocols import make_fold_plan
from emomix.data.schema import make_table
from emomix.errors import ConfigError, EmomixError, LabelError, MissingDataError
from emomix.evaluate.compare import compare_runs, format_comparison
from emomix.evaluate.metrics import (
    classification_metrics,
    format_summary,
    macro_f1,
    metrics_from_predictions,
    normalise_rows,
    summarise,
    unweighted_accuracy,
    weighted_accuracy,
    weighted_f1,
)
from emomix.evaluate.report import PredictionsError, load_predictions, write_report
from emomix.evaluate.routing import expert_shares, routing_analysis, routing_shares

CLASSES = ["ang", "hap", "neu", "sad"]
SESSIONS = ["s1", "s2", "s3"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# A tiny run directory: 3 sessions x 4 utterances (one per class), leave-one-session-out.


def toy_table() -> pd.DataFrame:
    return make_table(
        [
            dict(utt_id=f"{s}_{i}", corpus="toy", speaker=f"{s}_spk{i % 2}", session=s, label=c)
            for s in SESSIONS
            for i, c in enumerate(CLASSES)
        ]
    )


def toy_predictions(correct: dict[tuple[str, int], int], aux: bool = True) -> pd.DataFrame:
    """Per (fold, seed): the first ``k`` utterances of the fold right, the others predicted as the
    next class. With ``aux``, Dual Routing columns: p_local 0.8 for anger, 0.3 otherwise (audio)."""
    table = toy_table()
    rows = []
    for (fold, seed), k in correct.items():
        part = table[table["session"] == fold].reset_index(drop=True)
        for i, utt in part.iterrows():
            label = utt["label"]
            pred = label if i < k else CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]
            probs = {f"prob_{c}": (0.7 if c == pred else 0.1) for c in CLASSES}
            row = {
                "utt_id": utt["utt_id"],
                "fold": fold,
                "seed": seed,
                "label": label,
                "pred": pred,
                **probs,
                "speaker": utt["speaker"],
                "session": utt["session"],
                "dialogue_id": None,
            }
            if aux:
                local = 0.8 if label == "ang" else 0.3
                row.update(
                    {
                        "aux_route_audio_0": local,
                        "aux_route_audio_1": 1 - local,
                        "aux_route_text_0": 0.5,
                        "aux_route_text_1": 0.5,
                        "aux_vad_fallback": float(i == 0),
                    }
                )
            rows.append(row)
    return pd.DataFrame(rows)


def make_run(root, name, correct, model="dual_routing", aux=True, histories=True, plan=None, data=True):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    seeds = sorted({seed for _, seed in correct})
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "classes": CLASSES,
                "model": model,
                "seeds": seeds,
                "corpus": {"reader": "synthetic", "scheme": "default"},
                "protocol": {"name": "loso", "params": {}},
            }
        )
    )
    (plan or make_fold_plan(toy_table(), "loso", validation="none")).save(run_dir / "folds.json")
    if data:
        (run_dir / "data.json").write_text(
            json.dumps(
                {
                    "utterances": 12,
                    "classes": {c: 3 for c in CLASSES},
                    "folds": {s: {"train": 8, "validation": 0, "test": 4} for s in SESSIONS},
                }
            )
        )
    toy_predictions(correct, aux=aux).to_parquet(run_dir / "predictions.parquet", index=False)
    if histories:
        for fold, seed in correct:
            folder = run_dir / "folds" / fold / f"seed-{seed}"
            folder.mkdir(parents=True)
            pd.DataFrame(
                {
                    "epoch": [0, 1, 2],
                    "loss": [1.4, 1.1, 0.9],
                    "val_ua": [0.3, 0.5, 0.45],
                    "val_wa": [0.3, 0.5, 0.45],
                    "val_loss": [1.3, 1.2, 1.25],
                    "lr_head": [1e-3] * 3,
                }
            ).to_csv(folder / "history.csv", index=False)
    return run_dir


# run A: per-fold correct counts (4 utterances each); s1 differs between seeds
RUN_A = {("s1", 0): 1, ("s1", 1): 3, ("s2", 0): 3, ("s2", 1): 3, ("s3", 0): 1, ("s3", 1): 1}
# run B: 3/4, 4/4, 3/4 in both seeds -> per-fold UA differences vs A: +0.25, +0.25, +0.5
RUN_B = {("s1", 0): 3, ("s1", 1): 3, ("s2", 0): 4, ("s2", 1): 4, ("s3", 0): 3, ("s3", 1): 3}


def strict_json(text):
    def refuse(name):
        raise AssertionError(f"metrics.json holds {name}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------------------------
# Metrics


def test_ua_and_wa_differ_on_an_imbalanced_case():
    # 8 anger, 2 happy; a model that always says anger
    y_true = ["ang"] * 8 + ["hap"] * 2
    result = classification_metrics(y_true, ["ang"] * 10, ["ang", "hap"])
    assert result["wa"] == pytest.approx(0.8)
    assert result["ua"] == pytest.approx(0.5)  # recalls 1 and 0
    f1_ang = 2 * 0.8 * 1.0 / 1.8  # precision 8/10, recall 1
    assert result["macro_f1"] == pytest.approx(f1_ang / 2)
    assert result["weighted_f1"] == pytest.approx(0.8 * f1_ang)
    per_class = result["per_class"].set_index("class")
    assert per_class.loc["ang", "precision"] == pytest.approx(0.8)
    assert math.isnan(per_class.loc["hap", "precision"])  # never predicted: undefined
    assert per_class.loc["hap", "f1"] == 0.0
    assert list(per_class["support"]) == [8, 2]
    np.testing.assert_array_equal(result["confusion"], [[8, 0], [2, 0]])


def test_metrics_agree_with_scikit_learn_on_a_random_case():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(3)
    y_true = list(rng.choice(CLASSES, size=200, p=[0.5, 0.2, 0.2, 0.1]))
    y_pred = [t if rng.random() < 0.6 else rng.choice(CLASSES) for t in y_true]
    result = classification_metrics(y_true, y_pred, CLASSES)
    assert result["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert result["wa"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert result["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert unweighted_accuracy(y_true, y_pred, CLASSES) == pytest.approx(result["ua"])
    assert weighted_accuracy(y_true, y_pred) == pytest.approx(result["wa"])
    assert macro_f1(y_true, y_pred, CLASSES) == pytest.approx(result["macro_f1"])
    assert weighted_f1(y_true, y_pred, CLASSES) == pytest.approx(result["weighted_f1"])


def test_a_class_absent_from_the_truth_is_left_out_of_ua_but_counts_in_macro_f1_when_predicted():
    from sklearn.metrics import f1_score

    # no 'sad' utterance; one anger predicted as 'sad' (F1 0: a false positive)
    y_true, y_pred = ["ang", "ang", "hap", "neu"], ["ang", "sad", "hap", "hap"]
    result = classification_metrics(y_true, y_pred, CLASSES)
    assert result["absent_classes"] == ["sad"]
    assert result["ua"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert result["wa"] == pytest.approx(0.5)
    per_class = result["per_class"].set_index("class")
    assert math.isnan(per_class.loc["sad", "recall"])
    assert result["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.0 + 0.0) / 4)
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    # a class neither present nor predicted stays out
    only = classification_metrics(["ang", "hap"], ["ang", "hap"], CLASSES)
    assert only["macro_f1"] == 1.0


def test_a_one_class_fold_is_not_scored_by_that_class_alone():
    """Issue 13: a fold whose test utterances are all one class, a sixth of them right, had
    UA 0.167 but macro-F1 0.286 (the F1 of the one class): the wrongly predicted classes count."""
    from sklearn.metrics import f1_score

    classes = ["ang", "bor", "dis", "fea", "hap", "neu"]
    y_true = ["neu"] * 6
    y_pred = ["neu", "ang", "bor", "dis", "fea", "hap"]
    result = classification_metrics(y_true, y_pred, classes)
    assert result["ua"] == pytest.approx(1 / 6)
    assert result["macro_f1"] == pytest.approx((2 / 7) / 6)  # F1(neu) = 2/7, five predicted classes F1 0
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert result["macro_f1"] <= result["ua"]
    # per fold and pooled follow the same rule
    df = pd.DataFrame({"fold": ["f1"] * 6 + ["f2"] * 6, "seed": 0, "label": y_true + classes, "pred": y_pred + classes})
    metrics = metrics_from_predictions(df, classes)
    per_fold = metrics["per_fold"].set_index("fold")
    assert per_fold.loc["f1", "macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["pooled"]["macro_f1"].iloc[0] == pytest.approx(
        f1_score(y_true + classes, y_pred + classes, average="macro")
    )


def test_row_normalised_confusion_leaves_an_empty_row_undefined():
    shares = normalise_rows(np.array([[3, 1], [0, 0]]))
    np.testing.assert_allclose(shares[0], [0.75, 0.25])
    assert np.isnan(shares[1]).all()


def test_summarise_gives_the_t_interval_of_known_data():
    summary = summarise([1, 2, 3, 4])
    assert summary["mean"] == 2.5 and summary["n"] == 4
    assert summary["sd"] == pytest.approx(1.2909944)
    half = 3.1824463 * 1.2909944 / 2  # t(0.975, 3) * SD / sqrt(4)
    assert summary["ci_low"] == pytest.approx(2.5 - half, abs=1e-6)
    assert summary["ci_high"] == pytest.approx(2.5 + half, abs=1e-6)
    one = summarise([0.7, float("nan")])
    assert one["n"] == 1 and one["mean"] == 0.7 and math.isnan(one["sd"]) and math.isnan(one["ci_low"])
    assert summarise([])["n"] == 0
    assert format_summary(summary) == "2.500 ± 1.291 [0.446, 4.554]"


def test_metrics_from_predictions_per_fold_pooled_and_across_seeds():
    df = toy_predictions(RUN_A, aux=False)
    df = pd.concat([df, df.iloc[[0]].assign(utt_id="extra", label=None)], ignore_index=True)
    result = metrics_from_predictions(df, CLASSES)
    assert result["n_unlabelled"] == 1 and result["n_labelled"] == 24
    assert any("1 of 25 prediction rows have no label" in n for n in result["notes"])
    per_fold = result["per_fold"].set_index(["fold", "seed"])
    assert per_fold.loc[("s1", 0), "ua"] == pytest.approx(0.25)
    assert per_fold.loc[("s1", 1), "ua"] == pytest.approx(0.75)
    assert per_fold.loc[("s1", 0), "n_unlabelled"] == 1
    fold_means = result["fold_means"].set_index("fold")
    assert list(fold_means["ua"]) == pytest.approx([0.5, 0.75, 0.25])
    assert result["across_folds"]["ua"]["mean"] == pytest.approx(0.5)
    assert result["across_folds"]["ua"]["sd"] == pytest.approx(0.25)
    assert result["across_folds"]["ua"]["n"] == 3
    # pooled per seed: seed 0 has 1+3+1 = 5 of 12 right, seed 1 has 3+3+1 = 7 of 12
    pooled = result["pooled"].set_index("seed")
    assert pooled.loc[0, "wa"] == pytest.approx(5 / 12) and pooled.loc[1, "wa"] == pytest.approx(7 / 12)
    assert result["across_seeds"]["wa"]["mean"] == pytest.approx(0.5)
    assert result["across_seeds"]["wa"]["n"] == 2
    assert result["headline"]["wa"] == pytest.approx(0.5)
    assert result["confusion"].sum() == 24  # 12 utterances x 2 seeds


def test_a_fold_lacking_a_class_does_not_crash_and_is_noted():
    df = toy_predictions({("s1", 0): 4, ("s2", 0): 4}, aux=False)
    df = df[~((df["fold"] == "s2") & (df["label"] == "sad"))]
    result = metrics_from_predictions(df, CLASSES)
    per_fold = result["per_fold"].set_index("fold")
    assert per_fold.loc["s2", "ua"] == 1.0 and per_fold.loc["s2", "absent_classes"] == ["sad"]
    assert any(n.startswith("fold s2: no test utterance of sad") for n in result["notes"])


def test_unknown_classes_in_predictions_are_a_label_error():
    df = toy_predictions({("s1", 0): 4}, aux=False)
    df.loc[0, "pred"] = "fear"
    with pytest.raises(LabelError, match=r"pred value\(s\) \['fear'\]"):
        metrics_from_predictions(df, CLASSES)


# --------------------------------------------------------------------------------------------
# Routing


def test_routing_shares_by_emotion_session_and_speaker():
    df = pd.DataFrame(
        {
            "label": ["a", "a", "b", None],
            "session": ["s1", "s2", "s1", "s2"],
            "speaker": ["x", "y", "x", "y"],
            "aux_route_audio_0": [0.8, 0.6, 0.2, 0.5],
            "aux_route_audio_1": [0.2, 0.4, 0.8, 0.5],
        }
    )
    table = routing_shares(df).set_index(["by", "group", "modality"])
    assert table.loc[("label", "a", "audio"), "local"] == pytest.approx(0.7)
    assert table.loc[("label", "a", "audio"), "global"] == pytest.approx(0.3)
    assert table.loc[("label", "b", "audio"), "local_top1"] == 0.0
    assert table.loc[("session", "s2", "audio"), "local"] == pytest.approx(0.55)
    assert table.loc[("speaker", "x", "audio"), "n"] == 2
    assert table.loc[("all", "all", "audio"), "local"] == pytest.approx(0.525)
    assert ("label", "None", "audio") not in table.index  # the unlabelled row has no emotion


def test_expert_shares_of_gates_and_pairwise_weights():
    df = pd.DataFrame(
        {
            "label": ["a", "a", "b"],
            "session": ["s1", "s1", "s2"],
            "aux_gate_weights_0": [0.5, 0.3, 0.0],
            "aux_gate_weights_1": [0.5, 0.1, 0.2],
            "aux_gate_weights_2": [0.0, 0.6, 0.8],
            "aux_alpha_ta": [0.9, 0.7, 0.2],
        }
    )
    table = expert_shares(df, model="mister_e").set_index(["by", "group", "source", "expert"])
    assert table.loc[("label", "a", "gate", "speech"), "share"] == pytest.approx(0.4)
    assert table.loc[("label", "a", "gate", "cross"), "share"] == pytest.approx(0.3)
    assert table.loc[("session", "s2", "gate", "cross"), "share"] == pytest.approx(0.8)
    assert table.loc[("label", "a", "alpha_ta", "text"), "share"] == pytest.approx(0.8)
    assert table.loc[("label", "a", "alpha_ta", "audio"), "share"] == pytest.approx(0.2)
    unnamed = expert_shares(df[["label", "aux_gate_weights_0", "aux_gate_weights_1"]])
    assert set(unnamed["expert"]) == {"expert0", "expert1"}


def test_a_model_without_routing_columns_gives_empty_tables():
    analysis = routing_analysis(pd.DataFrame({"label": ["a"], "session": ["s1"], "prob_a": [1.0]}))
    assert all(table.empty for table in analysis.values())
    assert list(analysis["routing"].columns)[:3] == ["by", "group", "modality"]


# --------------------------------------------------------------------------------------------
# Figures


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_MAGIC
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_learning_curves_draw_the_validation_panel_only_when_there_is_one(tmp_path):
    from emomix.evaluate.plots import plot_learning_curves

    history = pd.DataFrame(
        {
            "fold": ["f1"] * 3 + ["f2"] * 3,
            "seed": 0,
            "epoch": [0, 1, 2] * 2,
            "loss": [1.0, 0.8, 0.7, 1.1, 0.9, 0.8],
            "val_ua": [0.3, 0.4, 0.5, 0.2, 0.3, 0.35],
        }
    )
    both = png_size(plot_learning_curves(history, tmp_path / "both.png"))
    loss_only = png_size(plot_learning_curves(history.assign(val_ua=np.nan), tmp_path / "loss.png"))
    assert both[0] > 1.6 * loss_only[0]  # two panels side by side against one


def test_histories_of_sub_models_are_loaded_with_their_part(tmp_path):
    from emomix.evaluate.report import history_summary, load_histories

    folder = tmp_path / "folds" / "s1" / "seed-3"
    folder.mkdir(parents=True)
    for name, best in (("history-complementary_ca.csv", 0.6), ("history-complementary_spl.csv", 0.4)):
        pd.DataFrame({"epoch": [0, 1], "loss": [1.0, 0.9], "val_ua": [0.1, best]}).to_csv(folder / name, index=False)
    (folder / "history.csv").write_text("")  # an empty file is skipped, not an error
    histories = load_histories(tmp_path)
    assert sorted(set(histories["part"])) == ["complementary_ca", "complementary_spl"]
    summary = {h["part"]: h for h in history_summary(histories)}
    assert summary["complementary_ca"]["best_val_ua"] == 0.6 and summary["complementary_spl"]["best_epoch"] == 1
    assert summary["complementary_ca"]["seed"] == 3 and summary["complementary_ca"]["fold"] == "s1"
    assert load_histories(tmp_path / "nothing") is None


# --------------------------------------------------------------------------------------------
# Report


def test_write_report_writes_metrics_figures_and_markdown(tmp_path):
    run_dir = make_run(tmp_path, "dr", RUN_A)
    path = write_report(run_dir)
    assert path == run_dir / "report" / "report.md"
    metrics = strict_json((run_dir / "report" / "metrics.json").read_text())
    assert metrics["format"] == "emomix-metrics"
    assert metrics["run"]["model"] == "dual_routing" and metrics["run"]["classes"] == CLASSES
    assert metrics["metrics"]["across_folds"]["ua"]["mean"] == pytest.approx(0.5)
    assert metrics["fold_plan"]["fingerprint"] == make_fold_plan(toy_table(), "loso", validation="none").fingerprint()
    routing = {(r["by"], r["group"], r["modality"]): r for r in metrics["routing"]["routing"]}
    assert routing[("label", "ang", "audio")]["local"] == pytest.approx(0.8)
    assert {f["name"] for f in metrics["routing"]["flags"]} == {"vad_fallback"}
    figures = sorted(p.name for p in (run_dir / "report" / "figures").iterdir())
    assert figures == [
        "confusion.png",
        "learning_curves.png",
        "routing_by_label.png",
        "routing_by_session.png",
        "routing_by_speaker.png",
    ]
    for name in figures:
        assert (run_dir / "report" / "figures" / name).read_bytes()[:8] == PNG_MAGIC
    text = path.read_text()
    assert text.startswith("# dual_routing on synthetic")
    assert "3 fold(s), speaker-independent, held out by session" in text
    assert "| UA | 0.500 | 0.500 ± 0.250 [-0.121, 1.121] (n=3) |" in text
    assert "## Learning curves" in text and "![learning curves](figures/learning_curves.png)" in text
    assert "## Routing (local vs global)" in text and "## Data" in text
    # anger: always right (recall 1), but every sadness utterance is predicted as anger (precision 1/2)
    assert "| ang | 3 | 0.500 | 1.000 | 0.667 ± 0.000 |" in text
    assert "| sad | 6 | 0 | 0 | 0 |" in text  # confusion counts over both seeds
    assert "- **protocol**: loso (validation=none)" in text
    assert not list((run_dir / "report").glob("*.tmp"))


def test_report_data_section_is_readable_and_seeds_are_counted(tmp_path):
    run_dir = make_run(tmp_path, "one", {("s1", 0): 2, ("s2", 0): 4, ("s3", 0): 3}, aux=False, histories=False)
    # data.json as emomix.train.run.data_summary writes it
    (run_dir / "data.json").write_text(
        json.dumps(
            {
                "corpus": "toy",
                "utterances": 12,
                "speakers": 6,
                "classes": {c: 3 for c in CLASSES},
                "folds": {
                    s: {"train": {"total": 8, "ang": 2}, "validation": {"total": 0}, "test": {"total": 4, "ang": 1}}
                    for s in SESSIONS
                },
                "read_report": {
                    "skipped": [{"item": "x.wav", "reason": "audio missing"}],
                    "dropped_by_label": {"oth": 2},
                    "notes": ["text only"],
                },
                "extraction": {
                    "audio": {
                        "namespace": "opensmile-abc",
                        "total": 12,
                        "cached": 10,
                        "computed": 2,
                        "failed": 0,
                        "fallbacks": {"vad_fallback": ["s1_0"]},
                        "failures": [],
                        "layers": [],
                    }
                },
                "feature_failures": [],
            }
        )
    )
    text = write_report(run_dir).read_text()
    assert "- **seeds**: 1 (seed 0)" in text
    data = text.split("## Data", 1)[1].split("## Results", 1)[0]
    assert "corpus **toy**, 12 labelled utterances, 6 speakers." in data
    assert "| s1 | 8 | 0 | 4 |" in data  # totals per fold and part
    assert "- skipped by the reader: 1 (audio missing)" in data and "- dropped by the label scheme: 2 oth" in data
    assert "| audio | opensmile-abc | 12 | 10 | 2 | 0 | vad_fallback 1 |" in data
    assert "`" not in data and "{" not in data  # no raw JSON
    two = write_report(make_run(tmp_path, "two", RUN_A, aux=False, histories=False)).read_text()
    assert "- **seeds**: 2 (seeds 0, 1)" in two


def test_learning_curve_table_uses_the_monitored_metric_and_its_mode(tmp_path):
    import yaml

    run_dir = make_run(tmp_path, "wa", {("s1", 0): 2, ("s2", 0): 4, ("s3", 0): 3}, aux=False, histories=False)
    for fold in SESSIONS:
        folder = run_dir / "folds" / fold / "seed-0"
        folder.mkdir(parents=True)
        # val UA peaks at epoch 1, val WA at epoch 2, val loss is lowest at epoch 0
        pd.DataFrame(
            {
                "epoch": [0, 1, 2],
                "loss": [1.4, 1.1, 0.9],
                "val_ua": [0.3, 0.6, 0.5],
                "val_wa": [0.3, 0.5, 0.7],
                "val_loss": [1.0, 1.2, 1.3],
            }
        ).to_csv(folder / "history.csv", index=False)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"training": {"monitor": "val_wa"}}))
    text = write_report(run_dir).read_text()
    assert "| fold | seed | epochs | best val WA | best epoch | last train loss |" in text
    assert "| s1 | 0 | 3 | 0.700 | 2 | 0.9000 |" in text
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"training": {"monitor": "val_loss"}}))
    text = write_report(run_dir).read_text()
    assert "| s1 | 0 | 3 | 1.0000 | 0 | 0.9000 |" in text and "the lowest val loss" in text


def test_a_report_without_optional_inputs_omits_their_sections(tmp_path):
    run_dir = make_run(
        tmp_path,
        "plain",
        {("s1", 0): 2, ("s2", 0): 4, ("s3", 0): 3},
        model="early_fusion",
        aux=False,
        histories=False,
        data=False,
    )
    text = write_report(run_dir).read_text()
    assert "## Learning curves" not in text and "## Routing" not in text and "## Data" not in text
    assert "## Results" in text and "### Per class" in text
    assert sorted(p.name for p in (run_dir / "report" / "figures").iterdir()) == ["confusion.png"]
    metrics = strict_json((run_dir / "report" / "metrics.json").read_text())
    assert metrics["routing"] == {"routing": [], "experts": [], "flags": []}
    assert metrics["metrics"]["across_seeds"]["ua"]["sd"] is None  # one seed: no SD, stored as null


def test_missing_predictions_name_the_file_and_say_to_train(tmp_path):
    run_dir = make_run(tmp_path, "r", RUN_A)
    (run_dir / "predictions.parquet").unlink()
    with pytest.raises(MissingDataError, match=r"predictions\.parquet does not exist; run `emomix train` first"):
        write_report(run_dir)


def test_wrong_probability_columns_and_missing_columns_are_named(tmp_path):
    df = toy_predictions(RUN_A, aux=False).rename(columns={"prob_sad": "prob_fear"})
    df.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(PredictionsError, match=r"lacks prob_sad and has prob_fear"):
        load_predictions(tmp_path / "p.parquet", CLASSES)
    toy_predictions(RUN_A, aux=False).drop(columns=["session", "pred"]).to_parquet(tmp_path / "q.parquet")
    with pytest.raises(PredictionsError, match=r"missing column\(s\) pred, session"):
        load_predictions(tmp_path / "q.parquet", CLASSES)
    bad = toy_predictions(RUN_A, aux=False)
    bad.loc[3, "prob_ang"] = 0.9
    bad.to_parquet(tmp_path / "r.parquet")
    with pytest.raises(PredictionsError, match=r"do not sum to 1 \(e\.g\. row 3"):
        load_predictions(tmp_path / "r.parquet", CLASSES)
    twice = toy_predictions(RUN_A, aux=False)
    pd.concat([twice, twice.iloc[[5]]]).to_parquet(tmp_path / "s.parquet")
    with pytest.raises(PredictionsError, match=r"1 duplicate \(utt_id, fold, seed\)"):
        load_predictions(tmp_path / "s.parquet", CLASSES)


# --------------------------------------------------------------------------------------------
# Compare


def test_compare_gives_the_difference_and_paired_tests(tmp_path):
    a = make_run(tmp_path, "a", RUN_A, histories=False)
    b = make_run(tmp_path, "b", RUN_B, model="mpaf_net", aux=False, histories=False)
    table = compare_runs([a, b])
    assert list(table["run"]) == ["a", "b"] and list(table["model"]) == ["dual_routing", "mpaf_net"]
    row = table.iloc[1]
    assert row["delta"] == pytest.approx(1 / 3)  # mean of +0.25, +0.25, +0.5
    assert row["n_pairs"] == 3
    assert row["t_stat"] == pytest.approx(4.0)  # (1/3) / (0.1443 / sqrt 3)
    assert row["p_ttest"] == pytest.approx(2 * stats.t.sf(4.0, df=2))
    assert row["p_wilcoxon"] == pytest.approx(0.25)  # all 3 differences positive: 2 * 1/8
    assert math.isnan(table.iloc[0]["p_ttest"])
    assert table.iloc[1]["ua"] == pytest.approx(5 / 6) and table.iloc[0]["ua_sd"] == pytest.approx(0.25)
    text = format_comparison(table)
    assert "| b | `mpaf_net` | synthetic | loso | 3 | 2 |" in text and "+0.333" in text and "0.250" in text


def test_compare_shows_pooled_beside_fold_means_and_concludes_in_words(tmp_path):
    a = make_run(tmp_path, "a", RUN_A, histories=False)
    b = make_run(tmp_path, "b", RUN_B, aux=False, histories=False)
    table = compare_runs([a, b])
    # pooled: all folds scored together, mean over seeds (A: 5/12 and 7/12 right; B: 10/12 both seeds)
    assert table.iloc[0]["wa_pooled"] == pytest.approx(0.5) and table.iloc[1]["wa_pooled"] == pytest.approx(10 / 12)
    assert table.iloc[1]["delta_pooled"] == pytest.approx(table.iloc[1]["ua_pooled"] - table.iloc[0]["ua_pooled"])
    text = format_comparison(table)
    header = next(line for line in text.splitlines() if line.startswith("| run |"))
    assert "| UA pooled | UA mean ± SD over folds |" in header and "| ΔUA pooled | ΔUA mean over folds |" in header
    conclusion = text.split("## Conclusion", 1)[1].split("## Runs", 1)[0]
    assert "b is ahead of a by 0.333 UA (mean over 3 folds" in conclusion
    assert "The paired t-test does not support the difference at 0.05 (p = 0.057)" in conclusion
    assert "With 3 folds the smallest two-sided Wilcoxon p possible is 2/2^3 = 0.25" in conclusion
    reversed_text = format_comparison(compare_runs([b, a]))
    # the pooled difference is written in the sentence's direction (ahead − behind) whichever run is the reference
    assert "b is ahead of a by 0.333 UA" in reversed_text and "pooled b − a = +0.333" in reversed_text


@pytest.mark.parametrize("n", [3, 5, 6, 10])
def test_the_smallest_wilcoxon_p_is_two_over_two_to_the_folds(n):
    from emomix.evaluate.compare import smallest_wilcoxon_p

    all_positive = np.arange(1, n + 1) / 100.0  # every fold favours the second run
    assert smallest_wilcoxon_p(n) == pytest.approx(stats.wilcoxon(all_positive).pvalue)
    assert smallest_wilcoxon_p(5) == 0.0625


def test_compare_refuses_different_fold_plans_unless_allowed(tmp_path):
    a = make_run(tmp_path, "a", RUN_A, histories=False)
    # the same fold names, but s1_0 and s2_0 swap test folds
    swapped = make_fold_plan(toy_table(), "loso", validation="none")
    s1, s2 = swapped.folds[0], swapped.folds[1]
    s1.test, s2.test = sorted(set(s1.test) - {"s1_0"} | {"s2_0"}), sorted(set(s2.test) - {"s2_0"} | {"s1_0"})
    s1.train, s2.train = sorted(set(s1.train) - {"s2_0"} | {"s1_0"}), sorted(set(s2.train) - {"s1_0"} | {"s2_0"})
    b = make_run(tmp_path, "b", RUN_B, histories=False, plan=swapped)
    with pytest.raises(
        ConfigError, match=r"not evaluated on the same folds: the test utterances of fold\(s\) s1, s2 differ"
    ):
        compare_runs([a, b])
    table = compare_runs([a, b], allow_different_folds=True)
    assert any("fold plan differs" in n for n in table.attrs["notes"])
    assert table.iloc[1]["n_pairs"] == 3
    kfold = make_run(
        tmp_path,
        "c",
        RUN_B,
        histories=False,
        plan=make_fold_plan(toy_table(), "kfold", k=3, group="session", validation="none"),
    )
    with pytest.raises(
        ConfigError, match=r"the fold names differ: fold\(s\) s1, s2, s3 only in the first.*--allow-different-folds"
    ):
        compare_runs([a, kfold])
    with pytest.raises(ConfigError, match="unknown metric 'f2'"):
        compare_runs([a, a], metric="f2")
    with pytest.raises(ConfigError, match="at least two run directories"):
        compare_runs([a])


# --------------------------------------------------------------------------------------------
# CLI


@pytest.fixture()
def cli():
    app = typer.Typer()
    register(app)
    return app


def test_cli_evaluate_prints_the_headline_and_the_report_path(tmp_path, cli):
    run_dir = make_run(tmp_path, "dr", RUN_A, aux=False, histories=False)
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "dual_routing on synthetic (loso, 3 fold(s), 2 seed(s))" in result.output
    assert "UA           pooled 0.500   folds 0.500 ± 0.250 [-0.121, 1.121] (n=3)" in result.output
    assert f"report written to {run_dir / 'report' / 'report.md'}" in result.output
    missing = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "nope")])
    assert isinstance(missing.exception, MissingDataError)


def test_cli_compare_writes_markdown_and_refuses_bad_metrics(tmp_path, cli):
    a = make_run(tmp_path, "a", RUN_A, histories=False)
    b = make_run(tmp_path, "b", RUN_B, histories=False)
    out = tmp_path / "cmp.md"
    result = CliRunner().invoke(cli, ["compare", str(a), str(b), "--out", str(out), "--metric", "wa"])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("# Comparison (WA, pooled and mean ± SD over folds)")
    assert "ΔWA mean over folds" in result.output and f"comparison written to {out}" in result.output
    bad = CliRunner().invoke(cli, ["compare", str(a), str(b), "--metric", "auc"])
    assert isinstance(bad.exception, EmomixError) and "unknown metric 'auc'" in str(bad.exception)


def test_seed_ensemble_averages_probabilities_over_seeds():
    from emomix.evaluate.metrics import seed_ensemble_metrics

    # two seeds disagree on u2; their average picks "b" (0.45+0.75 > 0.55+0.25)
    rows = [
        {"utt_id": "u1", "fold": "f", "seed": 0, "label": "a", "pred": "a", "prob_a": 0.9, "prob_b": 0.1},
        {"utt_id": "u1", "fold": "f", "seed": 1, "label": "a", "pred": "a", "prob_a": 0.8, "prob_b": 0.2},
        {"utt_id": "u2", "fold": "f", "seed": 0, "label": "b", "pred": "a", "prob_a": 0.55, "prob_b": 0.45},
        {"utt_id": "u2", "fold": "f", "seed": 1, "label": "b", "pred": "b", "prob_a": 0.25, "prob_b": 0.75},
    ]
    result = seed_ensemble_metrics(pd.DataFrame(rows), ["a", "b"])
    assert result["seeds"] == 2 and result["n"] == 2 and result["wa"] == 1.0 and result["ua"] == 1.0
    assert seed_ensemble_metrics(pd.DataFrame(rows[::2]), ["a", "b"]) is None  # one seed: no ensemble


def test_weighted_f1_on_indices_matches_the_report_and_scikit_learn():
    """Training monitors ``val_weighted_f1`` with the index version; the report scores with the
    label version; both are scikit-learn's support-weighted F1 over the classes present."""
    from sklearn.metrics import f1_score

    from emomix.constants import IGNORE_INDEX
    from emomix.evaluate.metrics import weighted_f1
    from emomix.metrics_core import weighted_f1 as weighted_f1_of_indices

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 3, size=200))  # class 3 rarely predicted
    predictions[labels == 3] = 0  # ... and never right: F1 0, still weighted by its support
    labels[:10] = IGNORE_INDEX
    keep = labels != IGNORE_INDEX
    expected = f1_score(labels[keep], predictions[keep], average="weighted", labels=np.unique(labels[keep]))
    assert weighted_f1_of_indices(labels, predictions) == pytest.approx(expected)
    names = np.array(["a", "b", "c", "d"])
    assert weighted_f1(names[labels[keep]], names[predictions[keep]], list(names)) == pytest.approx(expected)
    assert np.isnan(weighted_f1_of_indices(np.array([IGNORE_INDEX]), np.array([0])))
