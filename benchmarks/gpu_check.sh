#!/usr/bin/env bash
# The published run on one GPU, end to end, in under 10 minutes (issue 14):
#   bash benchmarks/gpu_check.sh [EPOCHS] [OUTDIR]
# 1. generate and prepare the data; 2. the training step lever by lever (benchmarks/gpu_step.py) and the fastest
# torch.compile mode including its compile time; 3. train.py -e EPOCHS -l 0.01 -b 16 -f patches_s96 --amp (width 64)
# with that mode, timed end to end; 4. predict.py on the test images (test mIoU); 5. fraction of peak
# (benchmarks/hardware.py). Needs torch with CUDA, tensorboard, tqdm, pillow, matplotlib, tifffile, zarr.
set -uo pipefail
PY=${PYTHON:-python3}
source "$(dirname "$(readlink -f "$0")")/require_cuda.sh" || exit 2  # beside the script, through a link too
EPOCHS=${1:-100}
OUT=${2:-gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | log
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | log

tic=$(date +%s.%N)
$PY -m lib.generate --overwrite >/dev/null 2>&1 && $PY -m lib.prepare --overwrite 2>/dev/null | tail -1 | log
echo "data: $($PY -c "print(round($(date +%s.%N) - $tic, 1))") s" | log

timeout 150 $PY -m benchmarks.gpu_step --steps 200 --out-dir "$OUT" 2>&1 | grep -v Warning | log
# the mode with the least warm-up + 100 epochs of steps ("fused" is train.py without --compile)
MODE=$($PY - "$OUT/gpu_step.json" <<'PY' 2>/dev/null || echo off
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["results"] if r["variant"] != "sync"]
best = min(rows, key=lambda r: r["warmup_s"] + r["published_s"])["variant"]
print("off" if best == "fused" else best)
PY
)
echo "chosen --compile $MODE" | log

train_run() {  # $1: compile mode, $2: time limit in seconds
    rm -rf checkpoints/published runs/published
    local t0; t0=$(date +%s.%N)
    timeout "$2" $PY train.py -e "$EPOCHS" -l 0.01 -b 16 -f patches_s96 --amp --compile "$1" --name published \
        2>"$OUT/train_stderr.txt" | grep -v "^$" | log
    local rc=${PIPESTATUS[0]}
    local wall; wall=$($PY -c "print(round($(date +%s.%N) - $t0, 1))")
    echo "$wall" > "$OUT/train_wall.txt"
    echo "train.py --compile $1: exit $rc, wall $wall s for $EPOCHS epochs" | log
    return "$rc"
}
train_run "$MODE" 330
rc=$?
if [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$MODE" != off ]; then  # failed early (not the time limit): eager
    tail -5 "$OUT/train_stderr.txt" | log
    train_run off $(( 520 - SECONDS > 1 ? 520 - SECONDS : 1 ))
fi

$PY predict.py --checkpoint checkpoints/published/best.pth --input data/images_test/images \
    --masks data/images_test/masks --output "$OUT/pred" --metrics "$OUT/test_metrics.json" 2>&1 | tail -8 | log
rm -rf "$OUT/pred"
$PY - "$OUT" "$EPOCHS" <<'PY' 2>&1 | log
import json, sys
from pathlib import Path
out, epochs = Path(sys.argv[1]), int(sys.argv[2])
wall, m = float((out / "train_wall.txt").read_text()), json.loads((out / "test_metrics.json").read_text())
line = m["iou"]["line"]
ok = lambda good: "met" if good else "MISSED"
print(f"published run: {epochs} epochs in {wall:.1f} s (target <= 300 s for 100: {ok(epochs == 100 and wall <= 300)}), "
      f"test mIoU {m['miou']:.4f} (>= 0.99: {ok(m['miou'] >= 0.99)}), line {line:.4f} (>= 0.97: {ok(line >= 0.97)})")
PY

timeout $(( 585 - SECONDS > 1 ? 585 - SECONDS : 1 )) $PY -m benchmarks.hardware --device cuda --widths 8 16 64 --image 1920 3840 --out-dir "$OUT" 2>&1 \
    | grep -v Warning | log
