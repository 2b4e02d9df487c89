#!/usr/bin/env bash
# Distributed training with torchrun (mmengine's DDP; gloo on machines without CUDA).
#   tools/dist_train.sh CONFIG NPROC_PER_NODE [tools/train.py args...]
# Multi-node: run it on every node with NNODES, NODE_RANK, MASTER_ADDR and PORT set, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 tools/dist_train.sh CONFIG 8
set -euo pipefail
usage() {
  cat <<USAGE
usage: bash tools/dist_train.sh CONFIG NPROC_PER_NODE [tools/train.py args...]

Trains CONFIG with NPROC_PER_NODE processes on this node (torchrun; gloo where there is no CUDA).
Multi-node: run it on every node with NNODES, NODE_RANK, MASTER_ADDR and PORT set, e.g.
  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh CONFIG 8
The other arguments go to tools/train.py (python tools/train.py --help lists them).
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ $# -lt 2 ]; then
  echo "error: dist_train.sh needs CONFIG and NPROC_PER_NODE (got $# argument(s))" >&2
  usage >&2
  exit 2
fi
CONFIG=$1
NPROC=$2
if ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NPROC_PER_NODE must be a positive integer, got '$NPROC'" >&2
  usage >&2
  exit 2
fi
if [ ! -f "$CONFIG" ]; then
  echo "error: config file not found: $CONFIG" >&2
  exit 2
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
DIR="$(cd "$(dirname "$0")" && pwd)"
PYTHONPATH="$DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "${PYTHON:-python3}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$NPROC" \
    "$DIR/train.py" "$CONFIG" --launcher pytorch "${@:3}"
