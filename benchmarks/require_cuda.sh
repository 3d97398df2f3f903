# Sourced by the GPU scripts after they set PY: stop in one line, before anything is written, where torch sees no
# CUDA device (on a CPU machine gpu_check.sh went on to train the width-64 model for minutes on the CPU).
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "error: $0 needs a CUDA device, and torch ($PY) sees none" >&2
    exit 2
fi
