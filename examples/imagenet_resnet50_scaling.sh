#!/usr/bin/env bash
# ImageNet ResNet-50 from scratch on 1, 2 and 4 GPUs under one time budget each, then the
# throughput benchmark; prints a table of accuracy and training time per GPU count.
#
#   bash examples/imagenet_resnet50_scaling.sh /data/imagenet            # real run (GPUs)
#   BUDGET=2h GPUS="1 2 4 8" bash examples/imagenet_resnet50_scaling.sh /data/imagenet
#   bash examples/imagenet_resnet50_scaling.sh --smoke                   # generated data, CPU, seconds
#
# Every count runs the same command under `accelerate launch`; easycls shards the data per
# process and only rank 0 writes runs/imagenet-r50-<N>gpu/. The time budget plans the epochs
# so each run ends (with all its files) within BUDGET of wall time.
set -euo pipefail

PY=${PYTHON:-python}
OUT=${OUT:-runs}
if [[ "${1:-}" == "--smoke" ]]; then
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/imagenet-smoke-XXXXXX")
    DATA=$($PY -c "from easycls.bench import synthetic_folder; print(synthetic_folder('$OUT/data', n=48, side=32))")
    GPUS="1"; BUDGET=${BUDGET:-8s}
    FIT_ARGS=(--arch resnet18 --no-pretrained --size 32 --bs 8 --lr 2e-3 --epochs 1 --quiet)
    BENCH_ARGS=(--arch resnet18 --size 32 --bs 8 --steps 2 --processes 1 --epochs 1)
else
    DATA=${1:?usage: $0 IMAGENET_DIR | --smoke}
    GPUS=${GPUS:-"1 2 4"}; BUDGET=${BUDGET:-4h}
    FIT_ARGS=(imagenet --path "$DATA" --arch resnet50 --no-pretrained --size 224 --bs 128 --quiet)
    BENCH_ARGS=(--arch resnet50 --size 224 --bs 128 --processes "${GPUS// /,}")
fi

for n in $GPUS; do
    run="$OUT/imagenet-r50-${n}gpu"
    launch=("$PY" -m accelerate.commands.launch --num_machines 1 --mixed_precision no --dynamo_backend no --num_processes "$n")
    [[ $n -gt 1 ]] && launch+=(--multi_gpu)
    if [[ "${1:-}" == "--smoke" ]]; then
        "${launch[@]}" -m easycls fit "$DATA" "${FIT_ARGS[@]}" --time-budget "$BUDGET" --out "$run"
    else
        "${launch[@]}" -m easycls fit "${FIT_ARGS[@]}" --time-budget "$BUDGET" --out "$run"
    fi
done

if [[ "${1:-}" == "--smoke" ]]; then
    "$PY" -m easycls bench "$DATA" "${BENCH_ARGS[@]}" --out "$OUT/bench"
else
    "$PY" -m easycls bench "imagenet" "${BENCH_ARGS[@]}" --out "$OUT/bench"
fi

# One line per GPU count from each run's metrics.json.
"$PY" - "$OUT" $GPUS <<'PYEOF'
import json, sys
from pathlib import Path
out, counts = Path(sys.argv[1]), sys.argv[2:]
print(f"{'gpus':>4} {'epochs':>6} {'train s':>8} {'accuracy':>9} {'top5':>7}")
for n in counts:
    m = json.loads((out / f"imagenet-r50-{n}gpu" / "metrics.json").read_text())
    epochs = m.get("planned_epochs") or json.loads((out / f"imagenet-r50-{n}gpu" / "config.json").read_text())["epochs"]
    print(f"{n:>4} {epochs:>6} {m['train_seconds']:>8.1f} {m['accuracy']:>9.4f} {m.get('top5_accuracy', float('nan')):>7.4f}")
print(f"benchmark: {out / 'bench' / 'bench.json'}")
PYEOF
