#!/usr/bin/env bash
# The main job on the built-in synthetic corpus: write the corpus, describe it, plan the
# leave-one-session-out folds and extract its features (openSMILE eGeMAPS LLDs with a WebRTC VAD
# speech mask; the bundled MiniLM with its last four layers). Training and the report join this
# script when the training pipeline lands.
set -euo pipefail
cd "$(dirname "$0")/.."
EMOMIX=${EMOMIX:-.venv/bin/emomix}
OUT=${EMOMIX_DEMO_DIR:-runs/demo}
mkdir -p "$OUT"
"$EMOMIX" synth "$OUT/corpus" --seed 0
"$EMOMIX" corpus info synthetic "$OUT/corpus"
"$EMOMIX" folds synthetic "$OUT/corpus" --protocol loso --out "$OUT/folds.json"
"$EMOMIX" extract synthetic "$OUT/corpus" --encoder opensmile:eGeMAPSv02 --vad webrtc --store "$OUT/features"
"$EMOMIX" extract synthetic "$OUT/corpus" --encoder minilm --layers 3,4,5,6 --store "$OUT/features"
echo "demo finished: corpus, fold plan and features in $OUT"
