#!/bin/bash
# Launch a fewstep run on a SLURM cluster: one task per GPU, requeued automatically.
#
#   sbatch --nodes=2 configs/cluster/slurm.sh distill distill/mdlm_owt teacher.path=kuleshov-group/mdlm-owt
#
# Shortly before the time limit SLURM sends SIGUSR1 (--signal); every process finishes its step,
# rank 0 writes checkpoints/last.ckpt atomically and requeues the job, and the requeued job
# starts again here and continues with --resume. SIGTERM (preemption, scancel) saves the same way
# without requeueing. Extra KEY=VALUE arguments are passed to fewstep; --with layers too.
#SBATCH --job-name=fewstep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

COMMAND=${1:?usage: sbatch slurm.sh teacher|distill CONFIG [--with LAYER] [KEY=VALUE ...]}
CONFIG=${2:?usage: sbatch slurm.sh teacher|distill CONFIG [--with LAYER] [KEY=VALUE ...]}
shift 2
ARGS=(--with cluster/multinode "$@" "trainer.num_nodes=${SLURM_NNODES:-1}"
      "trainer.devices=${SLURM_NTASKS_PER_NODE:-1}")

OUT_DIR=$(fewstep "$COMMAND" "$CONFIG" "${ARGS[@]}" --print-config | sed -n 's/^out_dir: //p')
RESUME=()
if [ -f "$OUT_DIR/checkpoints/last.ckpt" ]; then
  RESUME=(--resume)
  echo "resuming $OUT_DIR (restart ${SLURM_RESTART_COUNT:-0})"
fi
export WANDB_MODE=${WANDB_MODE:-offline}
srun fewstep "$COMMAND" "$CONFIG" "${ARGS[@]}" "${RESUME[@]}"
