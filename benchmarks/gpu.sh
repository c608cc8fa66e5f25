#!/usr/bin/env bash
# Every GPU check of the project in one short run (~6 min on one H100/H200), for a lent GPU machine.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # results as JSON lines + logs in OUT_DIR (default ./gpu-out)
#
# Needs a Python with torch + CUDA and the project's own dependencies importable (pydicom,
# albumentations, monai, ...: install them with scripts/setup.sh, or from wheels where the
# machine has no network). Every figure is a ratio measured in the same run (README: Benchmarks).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" \
  | tee -a "$out/gpu.txt" || exit 1

run() {  # name, timeout (s), command...: one check, its log kept, a failure does not stop the others
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1; local rc=$?
  tail -n 5 "$out/$name.log"
  echo "{\"check\": \"$name\", \"rc\": $rc}" >>"$out/status.jsonl"
}

# 1. Training fed from the cache vs. the compute ceiling (target >= 0.9), bf16 + channels_last.
run train_throughput 150 "$py" benchmarks/train_throughput.py --arch resnet50 --size 224 --batch-size 128 \
    --steps 60 --workers 14 --cache-size 512 --device cuda --json "$out/train_throughput.json"
# 2. The same with torch.compile.
run train_throughput_compile 200 "$py" benchmarks/train_throughput.py --arch resnet50 --size 224 --batch-size 128 \
    --steps 60 --workers 14 --cache-size 512 --device cuda --compile --json "$out/train_throughput_compile.json"
# 3. Test-time augmentation's cost on the GPU (about one pass per view expected).
run tta_cost 60 "$py" benchmarks/tta_cost.py --arch resnet50 --size 224 --batch-size 64 --device cuda
echo "done: $out"
