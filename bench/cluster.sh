#!/usr/bin/env bash
# Start/stop a 3-node kvraft cluster on 127.0.0.1:7101-7103 for benchmarks.
#   bash bench/cluster.sh start [PYTHON]   # data in /tmp/kvraft-bench, pids recorded
#   bash bench/cluster.sh leader           # prints the leader's HOST:PORT
#   bash bench/cluster.sh stop
set -euo pipefail
BASE=/tmp/kvraft-bench
PY=${2:-${PYTHON:-python3}}
PEERS="--peer 1=127.0.0.1:7101 --peer 2=127.0.0.1:7102 --peer 3=127.0.0.1:7103"
case "${1:-}" in
start)
  rm -rf "$BASE"; mkdir -p "$BASE"
  for i in 1 2 3; do
    KVRAFT_SECRET=bench nohup "$PY" -m kvraft serve --id $i --listen 127.0.0.1:710$i $PEERS \
      --data-dir "$BASE/n$i" --log-level warning > "$BASE/n$i.log" 2>&1 &
    echo $! > "$BASE/n$i.pid"
  done
  for t in $(seq 1 60); do
    if [ -n "$(bash "$0" leader 2>/dev/null)" ]; then echo "kvraft cluster up"; exit 0; fi
    sleep 0.25
  done
  echo "no leader elected" >&2; exit 1 ;;
leader)
  for i in 1 2 3; do
    curl -s --max-time 1 "http://127.0.0.1:710$i/v1/status" | grep -q '"role": "leader"' \
      && { echo "127.0.0.1:710$i"; exit 0; }
  done; exit 1 ;;
stop)
  for i in 1 2 3; do [ -f "$BASE/n$i.pid" ] && kill "$(cat "$BASE/n$i.pid")" 2>/dev/null || true; done
  for i in 1 2 3; do
    f="$BASE/n$i.pid"; [ -f "$f" ] || continue; pid=$(cat "$f")
    for t in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$BASE"; echo stopped ;;
*) echo "usage: $0 start|leader|stop [PYTHON]" >&2; exit 2 ;;
esac
