#!/usr/bin/env bash
# The test suite on a GPU machine, where the commands' device "auto" is CUDA (CI runs the suite on CPUs only):
#   bash benchmarks/gpu_tests.sh [OUTDIR]
# A GPU machine's Python may lack packages of requirements*.txt: wheels in .whl/ (see benchmarks/README.md, "Tests
# on a GPU") are installed into /tmp/site first and found through PYTHONPATH, by the tests' commands too. The
# notebooks (papermill) and the benchmarks' tests are left out. LIMIT (seconds, default 280) and WORKERS (default 8)
# bound the run; the whole log goes to OUTDIR/log.txt.
set -uo pipefail
PY=${PYTHON:-python3}
source "$(dirname "$(readlink -f "$0")")/require_cuda.sh" || exit 2  # beside the script, through a link too
OUT=${1:-gpu_tests}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | tee "$OUT/log.txt"
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.cuda.is_available())" 2>&1 | tee -a "$OUT/log.txt"
timeout "${LIMIT:-280}" $PY -m pytest -q -n "${WORKERS:-8}" --dist loadfile -p no:cacheprovider tests \
    --ignore=tests/test_notebooks.py --ignore=tests/test_benchmarks.py -rfE >>"$OUT/log.txt" 2>&1
echo "pytest exit status $?" >>"$OUT/log.txt"
grep -E "^(FAILED|ERROR)|passed|failed|exit status" "$OUT/log.txt" | tail -40
