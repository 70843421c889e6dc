#!/bin/bash
# Train on several machines with SLURM: one task per node, each task starts one process
# per GPU through `accelerate launch`. Resubmitting the same script after a preemption
# continues from the checkpoint (SLURM sends SIGTERM first; easycls then writes a checkpoint).
#
#   sbatch examples/multinode_slurm.sh imagenet resnet50
#
#SBATCH --job-name=easycls
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --signal=TERM@120          # SIGTERM two minutes before the time limit
#SBATCH --requeue                  # a preempted job comes back and resumes
#SBATCH --output=%x-%j.out

set -euo pipefail
SOURCE=${1:-imagenet}
ARCH=${2:-resnet50}
OUT=${OUT:-runs/${SOURCE}-${ARCH}-slurm}

GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-4}
MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}

# Continue the run if an earlier attempt left a checkpoint; otherwise start it.
if [ -f "$OUT/checkpoint.pth" ]; then
    WHAT=(--resume "$OUT")
else
    # The time budget leaves ten minutes for validation and writing the run directory.
    WHAT=("$SOURCE" --arch "$ARCH" --out "$OUT" --time-budget 3h50m --checkpoint-minutes 15)
fi

# `srun` starts one launcher per node; each launcher starts GPUS_PER_NODE processes.
# Batch size is per process: the total is bs x GPUS_PER_NODE x SLURM_NNODES.
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
    --multi_gpu \
    --num_machines $SLURM_NNODES \
    --num_processes $((GPUS_PER_NODE * SLURM_NNODES)) \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_ADDR \
    --main_process_port $MAIN_PORT \
    -m easycls fit ${WHAT[*]} --quiet"
