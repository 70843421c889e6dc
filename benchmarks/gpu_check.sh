#!/usr/bin/env bash
# One-shot GPU check of easycls (under 8 minutes on one GPU); writes one JSON file.
#
#   bash benchmarks/gpu_check.sh [--dry] [--wheels DIR] [--out FILE]
#
# It measures the synthetic train step (resnet50, 224 px, bs 256, bf16, channels_last, with
# and without torch.compile), the real data path on generated JPEGs (loader alone and end
# to end), and a 1-process `accelerate launch` of `easycls.fit` (bf16, channels_last, no
# SyncBatchNorm, run directory, easycls.load + predict on the GPU). See benchmarks/gpu_check.py.
#
# A GPU machine without fastai: fetch fastai and the pure-Python packages it imports as
# wheels here, once, and let the script install them (`pip install --no-deps`):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       -d benchmarks/wheels -r benchmarks/gpu_wheels.txt
# (benchmarks/wheels is git-ignored; copy it along with the checkout.)
#
# --dry: tiny sizes on the CPU (what CI runs); CUDA-only parts are skipped with a line.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=""
wheels="benchmarks/wheels"
out="gpu_check.json"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry) dry="--dry" ;;
        --wheels) wheels="$2"; shift ;;
        --out) out="$2"; shift ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --dry, --wheels DIR, --out FILE)" >&2; exit 2 ;;
    esac
    shift
done
py="${PYTHON:-python3}"

if ! "$py" -c "import fastai" 2>/dev/null; then
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: fastai is not installed and $wheels holds no wheels;" \
             "fetch them as the header of this script says" >&2
        exit 2
    fi
    site="$(mktemp -d)/site"
    echo "[gpu_check] installing $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's easycls, also in subprocesses
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg

work="$(mktemp -d -t easycls-gpu-check-XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$py" benchmarks/gpu_check.py check $dry --work "$work" --out "$out"
