"""Accuracy benchmark on the real corpora: every applicable model trained through `emomix train`.

For each corpus recipe (``configs/emodb/*.yaml``, ``configs/savee/*.yaml``,
``configs/meld_text/*.yaml`` by default) and each model, one cross-validation run with the given
seeds goes through :func:`emomix.train.run.train_recipe` — the same code as ``emomix train`` —
into ``runs/bench/<corpus>/<recipe>/<model>``. A model the corpus cannot feed (audio models on
MELD-text, dialogue models on corpora without conversations) is listed as not applicable with
the reason, not silently left out. Re-running resumes finished folds.

Results: ``bench/results/real_corpora_train.json`` — per corpus and model, the pooled UA, WA,
macro-F1 and weighted-F1 as mean ± SD over seeds, the wall time, and how it splits between
feature extraction and training; ``--table`` prints the Markdown table for docs/benchmarks.md.

    python -m bench.real_corpora_train --recipe configs/emodb/early_fusion_audio.yaml \
        --models speech_cnn,dual_routing_audio --seeds 3
    python -m bench.real_corpora_train --table

The mixture-of-experts condition (issue 11): ``--moe`` on a ``moe_scales`` recipe trains the routed
model, its local-only and global-only ablations (which keep the recipe's model config, e.g.
``audio_global: pooled``) and the single-scale models on the same features — an MLP on the
utterance vector alone (``early_fusion_audio@utterance``: the recipe's ``utterance`` encoder as
the modality's only input), the classic peer on that vector (``linear_svm_audio@utterance``: a
linear SVM, solved rather than trained, so every seed gives the same model) and an MLP on the
mean of the frames (``early_fusion_audio``) — all under the recipe's own fold plan and training
settings, so ``emomix compare`` pairs them over folds:

    python -m bench.real_corpora_train --recipe configs/emodb/moe_scales.yaml --moe --seeds 1
    python -m bench.real_corpora_train --recipe configs/emodb/moe_scales.yaml --moe --compare

``--compare`` trains nothing: it pairs the finished runs over folds against the routed model
(``comparison.md`` beside the runs) and keeps each model's mean ± SD over folds and paired test in
the results. Runs that share a feature store take turns writing to it: train the first model alone
until its features are in the store, then the others may run in parallel.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "real_corpora_train.json"
RUNS = Path("runs/bench")

#: The MoE condition per modality: the routed model first (the recipe's own), then its
#: single-scale ablations and the single-scale baselines on the same features.
MOE_MODELS = {
    "audio": (
        "dual_routing_audio",
        "dual_routing_local",
        "dual_routing_global",
        "early_fusion_audio@utterance",
        "early_fusion_audio",
        "linear_svm_audio@utterance",
    ),
    "text": (
        "dual_routing_text",
        "dual_routing_local",
        "dual_routing_global",
        "early_fusion_text",
        "linear_svm_text@utterance",
    ),
}


def split_variant(entry: str) -> tuple[str, str]:
    """``"early_fusion_audio@utterance"`` → ``("early_fusion_audio", "utterance")``; no variant → ``""``."""
    model, _, variant = entry.partition("@")
    return model, variant


def variant_overrides(recipe_path: Path, variant: str) -> dict[str, Any]:
    """Recipe overrides of a model variant. ``utterance``: each modality that declares an
    ``utterance`` encoder reads that encoder alone (no frames, no VAD mask, no stride), keeping the
    modality's speaker normalisation — the single-scale utterance-vector model on the same store."""
    if not variant:
        return {}
    if variant != "utterance":
        from emomix.errors import ConfigError

        raise ConfigError(f"unknown model variant {variant!r}; the benchmark knows '@utterance'")
    from emomix.yamlio import load_yaml

    features = (load_yaml(recipe_path.read_text()) or {}).get("features") or {}
    overrides: dict[str, Any] = {}
    for modality, block in features.items():
        if not isinstance(block, dict) or not block.get("utterance"):
            continue
        spec = block["utterance"]
        if isinstance(spec, str):
            spec = {"name": spec}
        spec = {k: v for k, v in spec.items() if k not in ("pool", "preprocess")}
        kept = {k: v for k, v in block.items() if k in ("speaker_normalisation", "speaker_statistics")}
        overrides[f"features.{modality}"] = {"encoder": spec, **kept}
    return overrides


def applicable(model: str, recipe: Any, has_dialogues: bool) -> str | None:
    """None when ``model`` can train on the recipe's inputs, else the reason it cannot."""
    from emomix.models import model_info

    info = model_info(model)
    available = set(recipe.feature_specs())
    wanted = info.modalities
    if _keeps_config(model, recipe):  # the recipe's config (e.g. modalities: [audio]) decides
        wanted = tuple((recipe.model.config or {}).get("modalities") or wanted)
    missing = [m for m in wanted if m not in available]
    if missing:
        return f"needs {', '.join(missing)}, which the corpus recipe does not provide"
    if info.batch_kind == "dialogue" and not has_dialogues:
        return "a conversation model; the corpus has no dialogues"
    needs_edges = model == "complementary" or model.startswith("complementary_ca") or model == "graph_mlp"
    if needs_edges and not recipe.edges:
        return "needs token–frame alignment edges (word timings); the recipe has none"
    return None


def run_one(
    recipe_path: Path,
    model: str,
    seeds: list[int],
    threads: int,
    overrides: dict[str, Any] | None = None,
    tag: str = "",
    folds: list[str] | None = None,
) -> dict[str, Any] | None:
    import torch

    from emomix.train.recipe import load_recipe
    from emomix.train.run import train_recipe

    torch.set_num_threads(threads)
    overrides = dict(overrides or {})
    model, variant = split_variant(model)
    label = f"{model}@{variant}" if variant else model
    overrides = {**overrides, **variant_overrides(recipe_path, variant)}
    recipe = load_recipe(recipe_path, overrides)
    if _reads_raw_inputs(model) and not recipe.training.standardise:
        unscaled = [m for m, spec in recipe.feature_specs().items() if not spec.speaker_normalisation]
        if unscaled:  # a model without input LayerNorm (the SVM) reads z-scores of each fold's training data
            overrides["training.standardise"] = True
            recipe = load_recipe(recipe_path, overrides)
    if recipe.model.name != model:
        # the recipe's model config is kept for a model of the same family (Dual Routing's ablations
        # take audio_global: pooled too), else the model takes its own defaults
        config = recipe.model.config if _keeps_config(model, recipe) else {}
        recipe = load_recipe(recipe_path, {**overrides, "model.name": model, "model.config": config})
    out = RUNS / recipe.corpus.reader / (recipe_path.stem + tag) / label
    started = time.perf_counter()
    result = train_recipe(recipe, out, folds=folds or None, seeds=seeds, progress=False, report=not folds, log=None)
    if folds:  # part of a run trained in parallel processes: the run without --folds reports it
        return None
    metrics = json.loads((out / "report" / "metrics.json").read_text())["metrics"]
    return {
        "recipe": str(recipe_path) + tag,
        "model": label,
        "seeds": seeds,
        "run": str(out),
        "overrides": overrides,
        "across_seeds": {k: {"mean": v["mean"], "sd": v["sd"]} for k, v in metrics["across_seeds"].items()},
        "pooled": metrics.get("pooled"),
        # the run's own timing (kept from the run that trained, not from a re-read of finished folds)
        "wall_seconds": round(float(_run_seconds(out, result).get("total", time.perf_counter() - started)), 1),
        "seconds": {k: round(float(v), 1) for k, v in _run_seconds(out, result).items()},
        "trained": len(result.trained),
        "reused": len(result.skipped),
    }


def _reads_raw_inputs(model: str) -> bool:
    """Whether ``model``'s default config has no input LayerNorm (``input_norm: false``), so the
    recipe must standardise its inputs (the guard in :mod:`emomix.train.recipe`)."""
    from emomix.models import model_info

    return getattr(model_info(model).cls.config_class(), "input_norm", True) is False


def _keeps_config(model: str, recipe: Any) -> bool:
    """Whether ``model`` takes the recipe's model config: same config class as the recipe's model."""
    from emomix.models import model_info

    if model == recipe.model.name:
        return True
    return model_info(model).cls.config_class is model_info(recipe.model.name).cls.config_class


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe",
        type=Path,
        action="append",
        help="corpus recipe(s) (default: configs/{emodb,savee,meld_text}/*.yaml)",
    )
    parser.add_argument("--models", default="", help="comma list of models (default: every registered model)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="print the Markdown table of the saved results and exit")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="override a recipe value for every run, e.g. --set training.epochs=15 (kept in the results)",
    )
    parser.add_argument(
        "--folds",
        default="",
        help="comma list of folds to train, nothing recorded: processes may share one run's folds; "
        "the same command without --folds then reuses them and records the result",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="with --moe: pair the finished runs of the MoE condition over folds (emomix compare), "
        "keep each one's per-fold summary and paired test against the routed model, train nothing",
    )
    parser.add_argument(
        "--moe",
        action="store_true",
        help="the MoE condition: the routed model, its ablations and the single-scale models (MOE_MODELS)",
    )
    parser.add_argument(
        "--only-not-applicable",
        action="store_true",
        help="record which models cannot run on each recipe, train nothing",
    )
    parser.add_argument(
        "--not-run-reason",
        default="not run in this session's compute budget",
        help="with --only-not-applicable: the note for applicable models without results",
    )
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(load_results()))
        return
    from emomix.data.readers import read_corpus
    from emomix.models import list_models
    from emomix.train.recipe import load_recipe

    recipes = args.recipe or sorted(
        Path(p) for corpus in ("emodb", "savee", "meld_text") for p in Path("configs", corpus).glob("*.yaml")
    )
    models = [m for m in args.models.split(",") if m] or list(list_models())
    from emomix.train.recipe import parse_override

    overrides = dict(parse_override(text) for text in args.overrides)
    tag = "".join(f"+{k}={v}" for k, v in sorted(overrides.items()))
    results: dict[str, Any] = {}
    for recipe_path in recipes:
        recipe = load_recipe(recipe_path)
        corpus = read_corpus(recipe.corpus.reader, recipe.corpus.root, scheme=recipe.corpus.scheme)
        has_dialogues = "dialogue_id" in corpus.table.columns and corpus.table["dialogue_id"].notna().all()
        recipe_models = models
        if args.moe:
            recipe_models = [m for modality in recipe.feature_specs() for m in MOE_MODELS.get(modality, ())]
            if args.compare:
                print(compare_moe(recipe_path, tag, recipe_models))
                print(partial_moe(recipe_path, tag, recipe_models))
                continue
        for model in recipe_models:
            key = f"{recipe_path}{tag}::{model}"
            reason = applicable(split_variant(model)[0], recipe, has_dialogues)
            if reason:
                results[key] = {"recipe": str(recipe_path) + tag, "model": model, "not_applicable": reason}
                continue
            if args.only_not_applicable:
                if key not in load_results():  # applicable, never run here: say so rather than leave a gap
                    results[key] = {"recipe": str(recipe_path) + tag, "model": model, "not_run": args.not_run_reason}
                continue
            print(f"{recipe_path.stem} / {model} …", flush=True)
            folds = [f for f in args.folds.split(",") if f]
            try:
                entry = run_one(recipe_path, model, list(range(args.seeds)), args.threads, overrides, tag, folds)
                if entry is None:
                    print(f"  trained folds {', '.join(folds)}", flush=True)
                    continue
                results[key] = entry
            except Exception as error:  # a failing model is reported, the benchmark goes on
                results[key] = {
                    "recipe": str(recipe_path) + tag,
                    "model": model,
                    "error": f"{type(error).__name__}: {error}",
                }
            save_results(results)
            print(f"  {summary_line(results[key])}", flush=True)
    if args.compare:
        return
    save_results(results)
    print(markdown_table(load_results()))


def compare_moe(recipe_path: Path, tag: str, models: list[str]) -> str:
    """Pair the MoE condition's finished runs over folds against the routed model (the first);
    write ``comparison.md`` beside the runs and keep, in each result entry, the per-fold mean ± SD
    and the paired test (``paired_vs_routed``). Returns the comparison's Markdown."""
    from emomix.evaluate.compare import compare_runs, conclusion_lines, format_comparison
    from emomix.evaluate.metrics import METRICS
    from emomix.train.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    folder = RUNS / recipe.corpus.reader / (recipe_path.stem + tag)
    done = [m for m in models if _finished(folder / m)]
    if len(done) < 2 or done[0] != models[0]:
        return f"{recipe_path}: the routed model and at least one other must have finished (finished: {done})"
    metric = "weighted_f1" if recipe.protocol.name == "official" else "ua"
    table = compare_runs([folder / m for m in done], metric=metric)
    text = format_comparison(table, metric) + "\n\n" + "\n".join(conclusion_lines(table, metric)) + "\n"
    (folder / "comparison.md").write_text(text)
    results = load_results()
    for model, row in zip(done, table.to_dict("records"), strict=True):
        key = f"{recipe_path}{tag}::{model}"
        if key not in results:
            continue
        results[key]["across_folds"] = {m: {"mean": row[m], "sd": row[f"{m}_sd"]} for m in METRICS}
        results[key]["folds"] = row["folds"]
        if model != done[0]:
            results[key]["paired_vs_routed"] = {
                "metric": metric,
                "delta_mean_over_folds": row["delta"],
                "delta_pooled": row["delta_pooled"],
                "n_pairs": int(row["n_pairs"]),
                "p_ttest": row["p_ttest"],
                "p_wilcoxon": row["p_wilcoxon"],
            }
    save_results(results)
    return text


def _finished(run: Path) -> bool:
    """Every fold and seed of a run has finished and its report is written (a run trained in parts
    with --folds reports only once the run without --folds has pooled all folds)."""
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    plan = json.loads((run / "folds.json").read_text()) if (run / "folds.json").exists() else {}
    folds = [f["name"] for f in plan.get("folds", [])] if isinstance(plan, dict) else []
    seeds = info.get("seeds") or [0]
    return (
        bool(folds)
        and (run / "report" / "metrics.json").exists()
        and all((run / "folds" / f / f"seed-{s}" / "done.json").exists() for f in folds for s in seeds)
    )


def partial_moe(recipe_path: Path, tag: str, models: list[str]) -> str:
    """The MoE condition over the folds finished so far (seed 0): each model against the routed
    model on the folds both have finished — pooled and mean ± SD over those folds of UA (weighted
    F1 for the official split) for both, and the paired test — a like-for-like view while the full
    runs are still training. Kept under ``partial`` in the results."""
    import pandas as pd

    from emomix.evaluate.compare import paired_test
    from emomix.evaluate.metrics import unweighted_accuracy, weighted_f1
    from emomix.train.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    folder = RUNS / recipe.corpus.reader / (recipe_path.stem + tag)
    finished = {
        m: sorted(p.parent.parent.name for p in (folder / m / "folds").glob("*/seed-0/done.json")) for m in models
    }
    routed = models[0]
    if not finished[routed]:
        return f"{recipe_path}: the routed model has finished no fold yet"
    metric_name, metric = (
        ("weighted_f1", weighted_f1) if recipe.protocol.name == "official" else ("ua", unweighted_accuracy)
    )

    def score(model: str, folds: list[str]) -> tuple[float, pd.Series]:
        frames = [pd.read_parquet(folder / model / "folds" / f / "seed-0" / "predictions.parquet") for f in folds]
        pooled = pd.concat(frames)
        classes = sorted(pooled["label"].astype(str).unique())
        per_fold = pd.Series(
            [metric(f["label"].astype(str), f["pred"].astype(str), classes) for f in frames], index=folds
        )
        return metric(pooled["label"].astype(str), pooled["pred"].astype(str), classes), per_fold

    rows = []
    for model in models[1:]:
        shared = sorted(set(finished[model]) & set(finished[routed]))
        if not shared:
            continue
        pooled_m, folds_m = score(model, shared)
        pooled_r, folds_r = score(routed, shared)
        test = paired_test(folds_r, folds_m)
        rows.append(
            {
                "model": model,
                "folds": shared,
                "pooled": pooled_m,
                "routed_pooled": pooled_r,
                "mean": float(folds_m.mean()),
                "sd": float(folds_m.std(ddof=1)) if len(shared) > 1 else None,
                "routed_mean": float(folds_r.mean()),
                "routed_sd": float(folds_r.std(ddof=1)) if len(shared) > 1 else None,
                "per_fold": folds_m.round(4).to_dict(),
                "routed_per_fold": folds_r.round(4).to_dict(),
                **{k: test.get(k) for k in ("delta", "p_ttest", "p_wilcoxon")},
            }
        )
    lines = [
        f"{recipe_path}: seed 0, folds finished so far: " + "; ".join(f"{m} {len(f)}" for m, f in finished.items()),
        f"| model | folds shared with {routed} | {metric_name} pooled (routed on the same folds) | "
        "mean ± SD over folds (routed) | Δ vs routed | p t-test | p Wilcoxon |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        spread = _pm({"mean": row["mean"], "sd": row["sd"]})
        routed_spread = _pm({"mean": row["routed_mean"], "sd": row["routed_sd"]})
        lines.append(
            f"| {row['model']} | {len(row['folds'])} | {row['pooled']:.3f} ({row['routed_pooled']:.3f}) | "
            f"{spread} ({routed_spread}) | "
            f"{row['delta']:+.3f} | {_fmt(row['p_ttest'])} | {_fmt(row['p_wilcoxon'])} |"
        )
    save_results({}, {f"{recipe_path}{tag}": {"metric": metric_name, "seed": 0, "finished": finished, "rows": rows}})
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def _run_seconds(out: Path, result: Any) -> dict[str, float]:
    info = json.loads((out / "run.json").read_text())
    return dict(info.get("seconds") or result.seconds)


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text())["results"] if RESULTS.exists() else {}


def save_results(results: dict[str, Any], partial: dict[str, Any] | None = None) -> None:
    """Merge ``results`` (and ``partial``: comparisons over the folds finished so far) into the file
    (several benchmark processes may run at once)."""
    import os
    import platform

    from filelock import FileLock

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(RESULTS.with_suffix(".lock"))):  # read, merge and replace as one step
        saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results = {**saved.get("results", {}), **results}
        partial = {**saved.get("partial", {}), **(partial or {})}
        temporary = RESULTS.with_suffix(f".{os.getpid()}.tmp")
        machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
        content: dict[str, Any] = {"machine": machine, "results": results}
        if partial:
            content["partial"] = partial
        temporary.write_text(json.dumps(content, indent=1) + "\n")
        temporary.replace(RESULTS)


def summary_line(entry: dict[str, Any]) -> str:
    if "not_applicable" in entry:
        return f"n/a: {entry['not_applicable']}"
    if "not_run" in entry:
        return f"not run: {entry['not_run']}"
    if "error" in entry:
        return f"failed: {entry['error']}"
    seeds = entry["across_seeds"]
    return (
        f"UA {_pm(seeds['ua'])}, WA {_pm(seeds['wa'])}, macro-F1 {_pm(seeds['macro_f1'])}, "
        f"weighted-F1 {_pm(seeds['weighted_f1'])}; {entry['wall_seconds']:.0f} s "
        f"(features {entry['seconds'].get('features', 0):.0f} s, training {entry['seconds'].get('training', 0):.0f} s)"
    )


def markdown_table(results: dict[str, Any]) -> str:
    lines = [
        "| corpus recipe | model | UA | WA | macro-F1 | weighted-F1 | wall s (features + training) |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in sorted(results.values(), key=lambda e: (e["recipe"], e["model"])):
        recipe = Path(entry["recipe"]).parent.name + "/" + Path(entry["recipe"]).name.replace(".yaml", "")
        if "not_applicable" in entry or "error" in entry or "not_run" in entry:
            text = entry.get("not_applicable") or entry.get("error") or entry.get("not_run")
            mark = "not run" if "not_run" in entry else ("failed" if "error" in entry else "n/a")
            lines.append(f"| {recipe} | {entry['model']} | {mark} | | | | {text} |")
            continue
        seeds = entry["across_seeds"]
        lines.append(
            f"| {recipe} | {entry['model']} | {_pm(seeds['ua'])} | {_pm(seeds['wa'])} | {_pm(seeds['macro_f1'])} | "
            f"{_pm(seeds['weighted_f1'])} | {entry['wall_seconds']:.0f} ({entry['seconds'].get('features', 0):.0f} + "
            f"{entry['seconds'].get('training', 0):.0f}) |"
        )
    return "\n".join(lines)


def _pm(value: dict[str, Any]) -> str:
    mean, sd = value.get("mean"), value.get("sd")
    if mean is None:
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


if __name__ == "__main__":
    main()
