#!/usr/bin/env bash
# Start/stop a 3-node kvraft cluster on 127.0.0.1:7101-7103 for benchmarks.
#   bash bench/cluster.sh start [PYTHON]   # data in /tmp/kvraft-bench, pids recorded
#   DATA_GROUPS=2 bash bench/cluster.sh start   # the controller plus 2 data groups
#   bash bench/cluster.sh leader           # prints the leader's HOST:PORT
#   bash bench/cluster.sh stop
set -euo pipefail
BASE=/tmp/kvraft-bench
PY=${2:-${PYTHON:-python3}}
PEERS="--peer 1=127.0.0.1:7101 --peer 2=127.0.0.1:7102 --peer 3=127.0.0.1:7103"
NGROUPS=${DATA_GROUPS:-1}
GROUPS_ARGS="--group 0"
for g in $(seq 1 "$NGROUPS"); do GROUPS_ARGS="$GROUPS_ARGS --group $g"; done
case "${1:-}" in
start)
  rm -rf "$BASE"; mkdir -p "$BASE"
  for i in 1 2 3; do
    KVRAFT_SECRET=bench nohup "$PY" -m kvraft serve --insecure --id $i --listen 127.0.0.1:710$i $PEERS $GROUPS_ARGS \
      --data-dir "$BASE/n$i" --log-level warning ${EXTRA_ARGS:-} > "$BASE/n$i.log" 2>&1 &
    echo $! > "$BASE/n$i.pid"
  done
  for t in $(seq 1 60); do
    if [ -n "$(bash "$0" leader 2>/dev/null)" ]; then
      "$PY" - "$NGROUPS" <<'PYEOF'
import sys
from kvraft.bootstrap import bootstrap, wait_groups_at
addrs = [f"127.0.0.1:710{i}" for i in (1, 2, 3)]
groups = list(range(1, int(sys.argv[1]) + 1))
# `kvraft bench` keys are k000000000000000..: split them evenly between the groups
n = len(groups)
splits = [f"k{10_000 * i // n:015d}" for i in range(1, n)]
num = bootstrap(addrs, "bench", {g: {i: a for i, a in enumerate(addrs, 1)} for g in groups},
                splits=splits)
wait_groups_at(addrs, groups, num, secret="bench")
PYEOF
      echo "kvraft cluster up ($NGROUPS data groups)"; exit 0
    fi
    sleep 0.25
  done
  echo "no leader elected" >&2; exit 1 ;;
leader)  # the leader of data group ${GROUP:-1}
  for i in 1 2 3; do
    curl -s --max-time 1 "http://127.0.0.1:710$i/v1/status" | "$PY" -c '
import json, sys
g = json.load(sys.stdin).get("groups", {}).get(sys.argv[1], {})
sys.exit(0 if g.get("role") == "leader" else 1)' "${GROUP:-1}" 2>/dev/null \
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
