#!/usr/bin/env bash
# Multi-node pretraining under slurm: one `accelerate launch` per node, one process per GPU.
#
#   sbatch --nodes=4 launch/slurm/pretrain.sh configs/pretrain/vit_b_k400.yaml \
#       data.shards=/shared/k400/train run.dir=/shared/runs/vit_b_k400
#
# Arguments: the preset, then any key=value overrides. run.dir and data.shards must be on storage
# every node sees (all ranks write into one checkpoint directory). Requeue-safe: a restarted job
# resumes from the newest complete checkpoint in run.dir (run.resume=true by default).
# Environment knobs: GPUS_PER_NODE (default 8), MAIN_PORT (default 29500),
# ACCEL_CONFIG (default launch/accelerate/multi-node.yaml), RDZV_TIMEOUT (default 300: seconds the
# nodes wait for each other at start; an unreachable main node fails after this instead of 600 s).
# A node that dies mid-run makes the others fail after at most dist.timeout_s (a collective timeout,
# default 600 s; usually at once, when the connection drops); --kill-on-bad-exit then ends the step
# and --requeue restarts the job, which resumes.
#
#SBATCH --job-name=tubelet-pretrain
#SBATCH --ntasks-per-node=1          # one launcher per node; it starts GPUS_PER_NODE processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64           # data loading: data.num_workers per GPU x GPUs, plus the trainers
#SBATCH --time=72:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch launch/slurm/pretrain.sh CONFIG [key=value ...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_PORT=${MAIN_PORT:-29500}
RDZV_TIMEOUT=${RDZV_TIMEOUT:-300}
ACCEL_CONFIG=${ACCEL_CONFIG:-launch/accelerate/multi-node.yaml}
NNODES=${SLURM_NNODES:?run this under sbatch/srun}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

cd "${SLURM_SUBMIT_DIR:-.}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "tubelet: $NNODES node(s) x $GPUS_PER_NODE process(es), main $MAIN_IP:$MAIN_PORT, config $CONFIG $*"

# SLURM_NODEID differs per node, so expand it inside the per-node shell (single quotes).
srun --kill-on-bad-exit=1 bash -c '
  accelerate launch --config_file "$0" \
    --num_machines "$1" --num_processes "$(( $1 * $2 ))" --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$3" --main_process_port "$4" --rdzv_conf "timeout=$5" \
    -m pretrain --config "${@:6}"
' "$ACCEL_CONFIG" "$NNODES" "$GPUS_PER_NODE" "$MAIN_IP" "$MAIN_PORT" "$RDZV_TIMEOUT" "$CONFIG" "$@"
