#!/usr/bin/env bash
# Longest serving stall while a 1,000,000-key replica snapshots under write load.
# A 3-node cluster is restored from S3 (moto) with 1M keys, then written to with
# `kvraft bench` while each node snapshots every 20,000 entries; the nodes' event-loop
# lag monitor (loop_lag_max_ms in /v1/status) and the client's max latency are read.
# SNAP_ENTRIES=0 gives the baseline without snapshots.
#   bash bench/snapshot_stall.sh [PYTHON]
set -euo pipefail
PY=${1:-python3}
D=$(mktemp -d /tmp/kvraft-stall.XXXX)
here=$(cd "$(dirname "$0")" && pwd)
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
$PY -m moto.server -H 127.0.0.1 -p "$PORT" > "$D/moto.log" 2>&1 &
PIDS="$!"
cleanup() { kill $PIDS 2>/dev/null || true; sleep 1; rm -rf "$D"; }
trap cleanup EXIT
sleep 1.5
S3="--bucket kvraft-bench --cluster big --endpoint-url http://127.0.0.1:$PORT"
$PY "$here/snapshot_size.py" build "$D/src"
$PY "$here/snapshot_size.py" snapshot "$D/src" > /dev/null
$PY "$here/snapshot_size.py" upload "$D/src" --endpoint-url "http://127.0.0.1:$PORT" > /dev/null
PEERS="--peer 1=127.0.0.1:7201 --peer 2=127.0.0.1:7202 --peer 3=127.0.0.1:7203"
for i in 1 2 3; do
  $PY -m kvraft restore $S3 --id $i --whole-group --data-dir "$D/n$i" > /dev/null 2>&1
  KVRAFT_SECRET=s $PY -m kvraft serve --insecure --id $i --listen 127.0.0.1:720$i $PEERS --group 0 --group 1 --data-dir "$D/n$i" \
    --snapshot-entries ${SNAP_ENTRIES:-20000} --log-level warning > "$D/n$i.log" 2>&1 &
  PIDS="$PIDS $!"
done
A=127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203
# the restored data group takes its first configuration (it owns every key) from a new controller
$PY -c '
from kvraft.bootstrap import bootstrap, wait_groups_at
a = ["127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]
wait_groups_at(a, [1], bootstrap(a, "s", {1: {i: x for i, x in enumerate(a, 1)}}, splits=[]), secret="s")'
for t in $(seq 1 60); do $PY -m kvraft get k000000000000000 --addr $A > /dev/null 2>&1 && break; sleep 0.5; done
echo "== write load: 60000 puts at c=16 over 1M keys, snapshots every 20000 entries"
$PY -m kvraft bench --addr $A --n 60000 -c 16 --keys 1000000 --json
for i in 1 2 3; do
  curl -s -H "X-Kvraft-Secret: s" http://127.0.0.1:720$i/v1/status | $PY -c '
import json, sys
d = json.load(sys.stdin)
g = d["groups"]["1"]
print("node", d["node"], g["role"], "loop_lag_max_ms", d["loop_lag_max_ms"],
      "snapshots taken", g["snapshot"]["taken"], "max_take_s", g["snapshot"]["max_take_s"])'
done
