#!/usr/bin/env bash
# Real-data check of `fibrosis monitor` on the shared NIH ChestX-ray14 sample (../shared):
# train on the PA images only (MobileNetV2 ImageNet features, head only, 160 px), evaluate,
# then score the PA test split (expected: no alert) and the AP images (a view never seen).
# Usage: bash scripts/monitor_nih.sh [WORK_DIR]   (about 3 minutes on 2 CPU cores)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DATA="$REPO/../shared/data/nih-cxr14-sample"
WEIGHTS="$REPO/../shared/weights/mobilenet_v2-imagenet-features.pth"
W="${1:-work/monitor-nih}"
F="${FIBROSIS:-fibrosis}"
export FIBROSIS_SALT="${FIBROSIS_SALT:-nih-monitor-demo}"  # the same keys (hence split) on every run
mkdir -p "$W/scores"
python3 - "$DATA" "$W" <<'PY'
import csv, sys
data, work = sys.argv[1:]
rows = list(csv.DictReader(open(f"{data}/labels.csv")))
for view in ("PA", "AP"):
    with open(f"{work}/{view.lower()}_inputs.csv", "w") as fh:
        fh.write("path\n" + "".join(f"{data}/images/{r['image']}\n" for r in rows if r["view"] == view))
PY
cat > "$W/cfg.yaml" <<YAML
ingest: {image_size: 256}
model: {arch: mobilenet_v2, weights: $WEIGHTS, input_size: 160,
        weights_sha256: 221f65aa066671af07650dac6d86a51916c5a61f97e50f238fd3aa7a56bef257}
train: {preset: head-only, head_epochs: 30, num_workers: 0, batch_size: 32}
split: {train: 0.6, val: 0.2, test: 0.2}
evaluate: {gradcam_per_kind: 0, bootstrap_resamples: 500}
YAML
$F ingest "$W/pa_inputs.csv" --cache "$W/cache" --labels "$DATA/labels.csv" --config "$W/cfg.yaml" --no-progress
$F split --cache "$W/cache" --config "$W/cfg.yaml"
$F train --cache "$W/cache" --out "$W/run" --config "$W/cfg.yaml"
$F evaluate --run "$W/run" --cache "$W/cache"
python3 -c "import csv,sys; rows=[r for r in csv.DictReader(open(sys.argv[1])) if r['split']=='test']; \
open(sys.argv[2],'w').write('path\n'+''.join(r['path']+'\n' for r in rows))" "$W/cache/manifest.csv" "$W/pa_test_inputs.csv"
for b in pa_test ap; do
  $F score --model "$W/run" --input "$W/${b}_inputs.csv" --out "$W/scores/$b.csv" --salt-dir "$W/cache" --no-progress
done
$F monitor --model "$W/run" --scores "$W/scores/pa_test.csv" --labels "$DATA/labels.csv" --out "$W/monitor-pa" \
  && echo "PA test split: no alert (exit 0)"
$F monitor --model "$W/run" --scores "$W/scores/pa_test.csv" --scores "$W/scores/ap.csv" \
  --labels "$DATA/labels.csv" --out "$W/monitor-ap" || echo "PA + AP batches: alerts (exit $?)"
