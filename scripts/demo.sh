#!/usr/bin/env bash
# The main job on the built-in synthetic corpus: write the corpus, describe it, plan the folds.
# (Feature extraction, training and the report join this script as their issues land.)
set -euo pipefail
cd "$(dirname "$0")/.."
EMOMIX=${EMOMIX:-.venv/bin/emomix}
OUT=${EMOMIX_DEMO_DIR:-runs/demo}
mkdir -p "$OUT"
"$EMOMIX" synth "$OUT/corpus" --seed 0
"$EMOMIX" corpus info synthetic "$OUT/corpus"
"$EMOMIX" folds synthetic "$OUT/corpus" --protocol loso --out "$OUT/folds.json"
echo "demo finished: corpus and fold plan in $OUT"
