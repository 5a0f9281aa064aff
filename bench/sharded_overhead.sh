#!/usr/bin/env bash
# Routing overhead of sharding: the same 3 processes with 1 data group and with 2 (the
# key space split between them), puts then linearizable gets at c=64, alternating runs.
#   bash bench/sharded_overhead.sh [ROUNDS] [N]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
ROUNDS=${1:-2}
N=${2:-6000}
A=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
for r in $(seq 1 "$ROUNDS"); do
  for g in 1 2; do
    DATA_GROUPS=$g bash "$here/cluster.sh" start "$PY" > /dev/null
    w=$($PY -m kvraft bench --addr $A --n "$N" -c 64 --keys 10000 --json | tail -1)
    rd=$($PY -m kvraft bench --addr $A --n "$N" -c 64 --keys 10000 --reads 1 --json | tail -1)
    bash "$here/cluster.sh" stop > /dev/null
    echo "round $r groups $g put $w"
    echo "round $r groups $g get $rd"
  done
done
