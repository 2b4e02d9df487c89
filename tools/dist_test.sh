#!/usr/bin/env bash
# Distributed testing with torchrun (mmengine's DDP; gloo on machines without CUDA).
#   tools/dist_test.sh CONFIG CHECKPOINT NPROC_PER_NODE [tools/test.py args...]
# Multi-node: run it on every node with NNODES, NODE_RANK, MASTER_ADDR and PORT set, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 tools/dist_test.sh CONFIG CKPT 8
set -euo pipefail
usage() {
  cat <<USAGE
usage: bash tools/dist_test.sh CONFIG CHECKPOINT NPROC_PER_NODE [tools/test.py args...]

Evaluates CHECKPOINT with CONFIG in NPROC_PER_NODE processes on this node (torchrun; gloo where
there is no CUDA). Multi-node: run it on every node with NNODES, NODE_RANK, MASTER_ADDR and PORT set.
The other arguments go to tools/test.py (python tools/test.py --help lists them).
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ $# -lt 3 ]; then
  echo "error: dist_test.sh needs CONFIG, CHECKPOINT and NPROC_PER_NODE (got $# argument(s))" >&2
  usage >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
if ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NPROC_PER_NODE must be a positive integer, got '$NPROC'" >&2
  usage >&2
  exit 2
fi
for f in "$CONFIG" "$CHECKPOINT"; do
  if [ ! -f "$f" ]; then
    echo "error: file not found: $f" >&2
    exit 2
  fi
done
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
    "$DIR/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
