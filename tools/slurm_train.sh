#!/usr/bin/env bash
# Training on a Slurm cluster (one task per GPU; mmengine's DDP with the slurm launcher).
#   GPUS=16 GPUS_PER_NODE=8 tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
set -eu
usage() {
  cat <<USAGE
usage: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \\
       bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]

Submits CONFIG to the Slurm partition PARTITION with srun: GPUS tasks in all, GPUS_PER_NODE per
node, one GPU each, checkpoints and logs in WORK_DIR. Needs a Slurm login node (srun on PATH); on
a single machine use bash tools/dist_train.sh CONFIG NPROC_PER_NODE instead.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ $# -lt 4 ]; then
  echo "error: slurm_train.sh needs PARTITION, JOB_NAME, CONFIG and WORK_DIR (got $# argument(s))" >&2
  usage >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
if [ ! -f "$CONFIG" ]; then
  echo "error: config file not found: $CONFIG" >&2
  exit 2
fi
if ! command -v srun >/dev/null 2>&1; then
  echo "error: srun not found on PATH: slurm_train.sh submits to a Slurm cluster and must run on one" >&2
  echo "       (on a single machine: bash tools/dist_train.sh $CONFIG NPROC_PER_NODE)" >&2
  exit 2
fi
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
DIR="$(cd "$(dirname "$0")" && pwd)"

set -x
# shellcheck disable=SC2086  # SRUN_ARGS is a list of srun options
PYTHONPATH="$DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    --gres=gpu:"${GPUS_PER_NODE}" \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${GPUS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "${PYTHON:-python3}" -u "$DIR/train.py" "${CONFIG}" --work-dir="${WORK_DIR}" --launcher="slurm" "${@:5}"
