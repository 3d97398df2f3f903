#!/usr/bin/env bash
# GPU check (run on a CUDA machine with torch, tensorboard, tqdm, pillow, matplotlib installed):
#   bash benchmarks/gpu_check.sh [EPOCHS] [OUTDIR]
# Generates the data, trains the published U-Net (width 64) with mixed precision for EPOCHS epochs, evaluates it on
# the whole test images on the GPU, runs one epoch under torchrun with NCCL, and times whole-image inference.
set -euo pipefail
EPOCHS=${1:-10}
OUT=${2:-gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/log.txt"
python -m lib.generate --overwrite 2>/dev/null | tee -a "$OUT/log.txt"
python -m lib.prepare --overwrite 2>/dev/null | tee -a "$OUT/log.txt"
start=$(date +%s)
python train.py -e "$EPOCHS" -l 0.01 -b 16 -f patches_s96 --amp --name gpu_published 2>/dev/null | tee -a "$OUT/log.txt"
echo "train wall: $(( $(date +%s) - start )) s for $EPOCHS epochs" | tee -a "$OUT/log.txt"
python predict.py --checkpoint checkpoints/gpu_published/best.pth --input data/images_test/images \
    --masks data/images_test/masks --output "$OUT/pred" --metrics "$OUT/test_metrics.json" --quiet | tee -a "$OUT/log.txt"
torchrun --nproc_per_node=1 train.py -e 1 -b 16 -f patches_s96 --amp --base-channels 16 --name gpu_ddp 2>/dev/null \
    | tee -a "$OUT/log.txt"
python - <<'PY' | tee -a "$OUT/log.txt"
import time, torch
from lib.core.inference import sliding_window_predict
from model import UNet
model = UNet(1, 3, 64).cuda().eval().to(memory_format=torch.channels_last)
image = torch.randn(1, 2000, 4000)
for precision in ("fp32", "bf16"):
    for _ in range(2):
        torch.cuda.synchronize(); t = time.perf_counter()
        sliding_window_predict(model, image, batch_size=256, precision=precision, device="cuda",
                               memory_format=torch.channels_last)
        torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"2000x4000 sliding-window inference, width 64, {precision}: {dt:.2f} s")
PY
