"""Every paper claim on the synthetic corpus, over seeds and leave-one-session-out folds.

    python -m bench.paper_claims [--seeds 0,1,2] [--folds all|ses01,...] [--claims name,...]
                                 [--out bench/results/paper_claims.json] [--markdown docs/models.md]

Trains what each claim of :data:`bench._claims.CLAIMS` needs — the same cells, settings and
criteria as ``tests/test_learning.py`` — on the synthetic corpus written and extracted under
``--root`` (default ``runs/paper_claims``) through the package's own feature pipeline, one torch
thread. After every cell the JSON is rewritten (atomically): per model, seed and fold the test UA
(and the audio router's p_local per evidence kind), then per claim the per-seed UA per fold,
paired t and Wilcoxon p over folds and ``holds``. A re-run skips the cells the JSON already holds
(for the same corpus and settings), so an interrupted run resumes. Seeds go outermost: every
claim on the first seed before the next seed. ``--markdown FILE`` writes the claims table
between ``<!-- paper-claims:start -->`` and ``<!-- paper-claims:end -->`` in FILE (the table
alone when FILE lacks the markers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import _claims as claims_lib
from bench._util import RESULTS_DIR, machine_info

START, END = "<!-- paper-claims:start -->", "<!-- paper-claims:end -->"


def settings() -> dict[str, Any]:
    """What a cell depends on besides the corpus; a stored result with other settings is not reused."""
    return {
        "epochs": claims_lib.EPOCHS,
        "patience": claims_lib.PATIENCE,
        "lr": claims_lib.LEARNING_RATE,
        "batch_size": claims_lib.BATCH_SIZE,
        "dialogues_per_batch": claims_lib.DIALOGUES_PER_BATCH,
        "small": claims_lib.SMALL,
        "video_config": claims_lib.VIDEO_CONFIG,
        "alpha": claims_lib.ALPHA,
        "routing_margin": claims_lib.ROUTING_MARGIN,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.paper_claims", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--folds", default="all", help="all, or comma-separated fold names (e.g. ses01)")
    parser.add_argument("--claims", default="", help="comma-separated claim names (default: every claim)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "paper_claims.json")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("runs/paper_claims"),
        help="where the synthetic corpora and their feature store are written",
    )
    parser.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a synthetic-generator setting for every model (e.g. --corpus decoy_scale=1.0); use another "
        "--root and --out to keep the default corpus's results",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="write the claims table into this Markdown file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--judge-only", action="store_true", help="train nothing; judge and print what the JSON holds")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="add the cells of these result files (same corpus and settings; e.g. other seeds run "
        "in parallel with another --out) before training and judging",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    names = [n.strip() for n in args.claims.split(",") if n.strip()] or [c.name for c in claims_lib.CLAIMS]
    unknown = [n for n in names if n not in claims_lib.CLAIMS_BY_NAME]
    if unknown:
        raise SystemExit(f"unknown claim(s) {', '.join(unknown)}; choose from {', '.join(claims_lib.CLAIMS_BY_NAME)}")
    chosen = [claims_lib.CLAIMS_BY_NAME[n] for n in names]

    from emomix.train.recipe import parse_override

    generate = dict(parse_override(text) for text in args.corpus)
    stored = json.loads(args.out.read_text()) if args.out.exists() else {}
    lab = claims_lib.Lab(
        {
            "base": lambda: claims_lib.load_recipe_data(
                claims_lib.BASE_RECIPE, args.root / "corpus", args.root / "features", generate=generate
            ),
            "video": lambda: claims_lib.load_recipe_data(
                claims_lib.VIDEO_RECIPE, args.root / "corpus_video", args.root / "features", generate=generate
            ),
        }
    )
    base = lab.data("base")
    folds = base.fold_names if args.folds == "all" else [f.strip() for f in args.folds.split(",") if f.strip()]
    for fold in folds:
        base.fold(fold)  # an unknown fold name fails here, before any training
    corpora = {"base": base.fingerprint}
    if any(claims_lib.model_spec(m).data == "video" for c in chosen for m in c.models) and not args.judge_only:
        corpora["video"] = lab.data("video").fingerprint
    elif args.judge_only and (args.root / "corpus_video" / "generation.json").exists():
        # judging only: the video corpus on disk is the one its cells (stored or merged) must match
        corpora["video"] = claims_lib.generation_fingerprint(args.root / "corpus_video")
    elif stored.get("corpora", {}).get("video"):  # judging only: the stored video cells stand
        corpora["video"] = stored["corpora"]["video"]
    cells: dict[str, Any] = {}
    if stored.get("settings") == settings() and stored.get("corpora", {}).get("base") == corpora["base"]:
        cells = stored.get("cells", {})
        if "video" in corpora and stored["corpora"].get("video") not in (None, corpora["video"]):
            cells = {m: v for m, v in cells.items() if claims_lib.model_spec(m).data != "video"}
    elif stored:
        print(f"note: {args.out} holds results of another corpus or other settings; starting afresh", file=sys.stderr)
    for other in args.merge:
        merged = merge_cells(cells, json.loads(other.read_text()), corpora)
        print(f"merged {merged} cells from {other}", file=sys.stderr)
    payload: dict[str, Any] = {
        "benchmark": "paper_claims",
        "machine": machine_info(args.threads),
        "settings": settings(),
        "corpora": {**stored.get("corpora", {}), **corpora},
        "cells": cells,
        "claims": [],
    }

    def complete_seeds(claim: claims_lib.Claim) -> list[int]:
        """The requested seeds on which every cell of ``claim`` exists (all of them when none is
        complete, so that the judgement names what is missing)."""
        done = [
            s for s in seeds if all(str(f) in cells.get(m, {}).get(str(s), {}) for m in claim.models for f in folds)
        ]
        return done or seeds

    def save() -> None:
        # each claim is judged on the seeds it has complete; its result says which
        payload["claims"] = [
            claims_lib.judge(c, cells, complete_seeds(c), folds)
            for c in claims_lib.CLAIMS
            if c in chosen or all(m in cells for m in c.models)
        ]
        write_json(args.out, payload)

    if not args.judge_only:
        # seeds outermost, asserted claims before reported ones: the first seed's table fills first
        order = sorted(chosen, key=lambda c: not c.asserted)
        for seed in seeds:
            for claim in order:
                for model in claim.models:
                    for fold in folds:
                        if str(fold) in cells.get(model, {}).get(str(seed), {}):
                            continue
                        started = time.perf_counter()
                        data = lab.data(claims_lib.model_spec(model).data)
                        cell = lab.cell(model, fold, seed)
                        cells.setdefault(model, {}).setdefault(str(seed), {})[fold] = cell.summary(data)
                        save()
                        print(
                            f"seed {seed} {fold} {model}: UA {cell.ua:.3f} ({time.perf_counter() - started:.0f} s)",
                            flush=True,
                        )
                print(claims_lib.describe(claims_lib.judge(claim, cells, [seed], folds)), flush=True)
    save()
    print()
    for result in payload["claims"]:
        print(claims_lib.describe(result))
    table = markdown_table(payload["claims"])
    print()
    print(table)
    if args.markdown is not None:
        write_markdown(args.markdown, table)
    print(f"\nwritten {args.out}")
    return 0


def merge_cells(cells: dict[str, Any], other: dict[str, Any], corpora: dict[str, str]) -> int:
    """Add ``other``'s cells that ``cells`` lacks; refuse results of another corpus or settings."""
    if other.get("settings") != settings() or other.get("corpora", {}).get("base") != corpora["base"]:
        raise SystemExit(
            "a --merge file holds results of another corpus or other settings; merge only runs of this one"
        )
    count = 0
    for model, seeds in other.get("cells", {}).items():
        if claims_lib.model_spec(model).data == "video" and other["corpora"].get("video") != corpora.get("video"):
            continue
        for seed, folds in seeds.items():
            for fold, record in folds.items():
                if fold not in cells.setdefault(model, {}).setdefault(seed, {}):
                    cells[model][seed][fold] = record
                    count += 1
    return count


def markdown_table(results: list[dict[str, Any]]) -> str:
    """paper claim → test → result per seed and over seeds → holds."""
    lines = [
        "| paper | claim | test | result (mean UA over folds and seeds; ΔUA, paired t p over folds) | holds |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        test = f"`test_learning.py::{r['test'].split('::')[1]}`"
        if r.get("holds") is None:
            result, holds = (r.get("note") or f"{r.get('missing_count')} cells still to train"), "—"
        elif "mean_ua" in r:
            model, baseline = r["models"]
            seeds = "; ".join(
                f"s{s}: {v['mean_ua'][model]:.3f} vs {v['mean_ua'][baseline]:.3f}" for s, v in r["per_seed"].items()
            )
            p = r["p_ttest"]
            result = (
                f"`{model}` {r['mean_ua'][model]:.3f} vs `{baseline}` {r['mean_ua'][baseline]:.3f}: "
                f"ΔUA {r['delta']:+.3f}, p {'n/a' if p is None else f'{p:.2g}'} ({r['n_folds']} folds"
                + (f"; per seed {seeds})" if len(r["seeds"]) > 1 else f", seed {r['seeds'][0]})")
            )
            holds = (
                ("yes" if r["holds"] else "**no**")
                if r["asserted"]
                else ("yes" if r["holds"] else "no") + " (reported)"
            )
        else:
            seeds = "; ".join(f"s{s}: {v['difference']:+.3f}" for s, v in r["per_seed"].items())
            margin = claims_lib.ROUTING_MARGIN
            folds = len(r["folds"])
            result = (
                f"p_local(local) − p_local(global) {r['difference']:+.3f} ({folds} folds; {seeds}; ≥ {margin} needed)"
            )
            holds = "yes" if r["holds"] else "**no**"
        lines.append(f"| {r['paper']} | {r['statement']} | {test} | {result} | {holds} |")
    return "\n".join(lines)


def write_markdown(path: Path, table: str) -> None:
    from emomix.atomic import write_text_atomic

    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{START}\n{table}\n{END}{tail}"
    else:
        text = table + "\n"
    write_text_atomic(path, text)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    from emomix.atomic import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
