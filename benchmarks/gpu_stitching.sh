#!/usr/bin/env bash
# The stitching overhead on one GPU, eager and replayed as CUDA graphs (issue 14), in about 3 minutes on an H100:
#   bash benchmarks/gpu_stitching.sh [OUTDIR]
# 1. the CUDA graph tests (graphed calls give the eager results exactly); 2. benchmarks.overhead at 0.08, 1 and
# 8 MP, eager and with --cuda-graphs, in alternating runs, width 8 (the demo's model) and at 0.08 and 1 MP width 64
# (the published one); 3. the Segmenter with a width-8 model on 200 images of 256×256 and of 512×512 and 10 of
# 2000×4000, without and with CUDA graphs; 4. predict.py end to end on 500 tiles, without and with --cuda-graphs.
# STAGES (default "tests overhead segmenter predict") picks the stages to run.
# Needs torch with CUDA, pytest, tqdm, pillow, tifffile.
set -uo pipefail
PY=${PYTHON:-python3}
source "$(dirname "$(readlink -f "$0")")/require_cuda.sh" || exit 2  # beside the script, through a link too
OUT=${1:-gpu_stitching}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | log
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | log

STAGES=${STAGES:-tests overhead segmenter predict}
[[ $STAGES == *tests* ]] && timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py 2>&1 | tail -15 | log

overhead() {  # $1: name, then the flags
    local name=$1
    shift
    timeout 100 $PY -m benchmarks.overhead --device cuda --out-dir "$OUT/$name" "$@" 2>&1 | grep -v -i warn \
        | sed -n '/^time:/,/^call seconds/p' | log
}
[[ $STAGES == *overhead* ]] && for round in 1 2; do
    overhead "eager$round" --megapixels 0.08 1 8 --repeats 9 --launches
    overhead "graphs$round" --megapixels 0.08 1 8 --repeats 9 --launches --cuda-graphs
done
[[ $STAGES == *overhead* ]] && overhead eager_w64 --width 64 --megapixels 0.08 1 --repeats 9
[[ $STAGES == *overhead* ]] && overhead graphs_w64 --width 64 --megapixels 0.08 1 --repeats 9 --cuda-graphs
if [[ $STAGES == *segmenter* ]]; then

# the Segmenter on many small tiles (normalising, copies to and from the GPU included), random width-8 weights
$PY - "$OUT" <<'PY' 2>&1 | log
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lib.core.params import load_params
from lib.segmenter import Segmenter
from model import UNet
from model.checkpoint import build_checkpoint, save_checkpoint

path = Path(sys.argv[1]) / "w8.pth"
torch.manual_seed(0)
save_checkpoint(path, build_checkpoint(UNet(1, 3, 8), load_params("parameters.json"), {"mean": [0.5], "std": [0.2]}))
rng = np.random.default_rng(0)
for (height, width), count in (((256, 256), 200), ((512, 512), 200), ((2000, 4000), 10)):
    tiles = [rng.integers(0, 256, (height, width), dtype=np.uint8) for _ in range(count)]
    seconds = {}
    for graphs in (False, True, False, True):
        segmenter = Segmenter.from_checkpoint(path, "cuda", cuda_graphs=graphs)
        segmenter.predict(tiles[0])  # warm-up (and the capture)
        torch.cuda.synchronize()
        tic = time.perf_counter()
        labels = [segmenter.predict(tile)[1] for tile in tiles]
        seconds.setdefault(graphs, []).append(time.perf_counter() - tic)
        if graphs:
            same = all(torch.equal(a, b) for a, b in zip(labels, eager_labels))
        else:
            eager_labels = labels
    print(f"Segmenter.predict, {count} images of {height}x{width}, width 8, bf16: eager {min(seconds[False]):.3f} s, "
          f"CUDA graphs {min(seconds[True]):.3f} s (best of 2 each; {min(seconds[False]) / min(seconds[True]):.2f}x), "
          f"labels equal: {same}")
PY
fi

# predict.py end to end (start-up, reading and writing the PNGs included) on 500 tiles of 256×256, random width-8 weights
if [[ $STAGES == *predict* ]]; then
    $PY - "$OUT/tiles" <<'PY' 2>&1 | log
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lib.core.params import load_params
from model import UNet
from model.checkpoint import build_checkpoint, save_checkpoint

root = Path(sys.argv[1])
(root / "images").mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(500):
    Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(root / "images" / f"t{i:03d}.png")
torch.manual_seed(0)
save_checkpoint(root / "w8.pth", build_checkpoint(UNet(1, 3, 8), load_params("parameters.json"),
                                                  {"mean": [0.5], "std": [0.2]}))
PY
    for flags in "" "--cuda-graphs" "" "--cuda-graphs"; do
        rm -rf "$OUT/tiles/pred"
        t0=$(date +%s.%N)
        timeout 120 $PY predict.py --checkpoint "$OUT/tiles/w8.pth" --input "$OUT/tiles/images" \
            --output "$OUT/tiles/pred" --device cuda --quiet $flags >/dev/null 2>"$OUT/predict_stderr.txt" \
            || tail -3 "$OUT/predict_stderr.txt" | log
        echo "predict.py, 500 tiles of 256x256 ${flags:-(eager)}: $($PY -c "print(round($(date +%s.%N) - $t0, 2))") s" | log
    done
    rm -rf "$OUT/tiles"
fi
