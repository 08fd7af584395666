#!/bin/bash
# Train on a Slurm cluster: one task per node, each running `accelerate launch` for its node's GPUs.
#   sbatch --job-name big scripts/slurm.sh [train.py arguments ...]
# The run folder (run.dir, default runs/) must be on a filesystem every node shares: only the main process
# writes it, but every process reads its checkpoint files on resume (docs/distributed.md: Scaling out).
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
# SIGTERM two minutes before the time limit: the run checkpoints and stops; --requeue starts the job again,
# and --resume auto continues from that checkpoint.
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail

gpus_per_node=${SLURM_GPUS_ON_NODE:-8}
# sed, not head: it reads the whole list, so scontrol never dies of SIGPIPE (which pipefail would make fatal).
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)

# Single quotes: each node's task expands SLURM_NODEID itself (srun runs this line once per node).
# --max_restarts 3: a worker that dies is restarted on its node, and the group continues from the newest
# checkpoint without Slurm noticing.
srun bash -c 'exec accelerate launch --multi_gpu --num_machines "$SLURM_NNODES" \
    --num_processes $((SLURM_NNODES * '"$gpus_per_node"')) --machine_rank "$SLURM_NODEID" \
    --main_process_ip '"$head"' --main_process_port 29500 --max_restarts 3 --mixed_precision bf16 \
    train.py --resume auto run.name="$SLURM_JOB_NAME" "$@"' _ "$@"
