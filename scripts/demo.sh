#!/usr/bin/env bash
# The main job on the built-in synthetic corpus: write the corpus, extract its features
# (openSMILE eGeMAPS LLDs with a WebRTC VAD speech mask; the bundled MiniLM's last four layers),
# train the Dual Routing MoE and its local-only, global-only and concatenation (no router) ablations
# under leave-one-session-out cross-validation, write each run's report and compare the four.
# Re-running resumes: finished folds are skipped and features come from the store.
set -euo pipefail
cd "$(dirname "$0")/.."
EMOMIX=${EMOMIX:-.venv/bin/emomix}
OUT=${EMOMIX_DEMO_DIR:-runs/demo}
RECIPE=configs/synthetic/dual_routing.yaml
mkdir -p "$OUT"
started=$(date +%s)
for model in dual_routing dual_routing_local dual_routing_global dual_routing_concat; do
  echo "== $model: 5-fold leave-one-session-out on the synthetic corpus"
  "$EMOMIX" train "$RECIPE" --set model.name="$model" --out "$OUT/$model"
done
echo "== routed vs its ablations (paired over the 5 folds)"
"$EMOMIX" compare "$OUT/dual_routing" "$OUT/dual_routing_local" "$OUT/dual_routing_global" "$OUT/dual_routing_concat" --out "$OUT/comparison.md"
echo "demo finished in $(( $(date +%s) - started )) s"
echo "report: $OUT/dual_routing/report/report.md (ablations: $OUT/dual_routing_local, $OUT/dual_routing_global, $OUT/dual_routing_concat; comparison: $OUT/comparison.md)"
