#!/usr/bin/env bash
# Side-by-side: the same fixed HTTP load client (../shared/bench/loadgen_*.py) against a
# 3-member etcd 3.4 and a 3-node kvraft cluster on this machine, alternating A/B rounds.
# Needs etcd-server + etcd-client (Debian) and a venv with aiohttp + uvloop for the client.
#   bash bench/compare_etcd.sh KVRAFT_PYTHON CLIENT_PYTHON [ROUNDS] [N]
set -euo pipefail
KPY=${1:?kvraft python}; CPY=${2:?client python}; ROUNDS=${3:-2}; N=${4:-10000}
here=$(cd "$(dirname "$0")" && pwd)
SB=${SHARED_BENCH:-$here/../../shared/bench}
out=${OUT:-/tmp/kvraft-compare.jsonl}; : > "$out"
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r: etcd"
  bash "$SB/etcd_cluster.sh" start > /dev/null
  L=$(bash "$SB/etcd_cluster.sh" leader)
  (cd "$SB" && $CPY loadgen_etcd.py --endpoint "$L" --op put --n "$N" --concurrency 1 64 --uvloop) | tee -a "$out"
  (cd "$SB" && $CPY loadgen_etcd.py --endpoint "$L" --op get --n "$N" --concurrency 64 --uvloop) | tee -a "$out"
  bash "$SB/etcd_cluster.sh" stop > /dev/null
  echo "== round $r: kvraft"
  bash "$here/cluster.sh" start "$KPY" > /dev/null
  L=$(bash "$here/cluster.sh" leader)
  U="http://$L/v1/kv/{key}"
  (cd "$SB" && $CPY loadgen_http.py --op put --put-url "$U" --get-url "$U" --json-value value --n "$N" --concurrency 1 64 --uvloop) | tee -a "$out"
  (cd "$SB" && $CPY loadgen_http.py --op get --put-url "$U" --get-url "$U" --json-value value --n "$N" --concurrency 64 --uvloop) | tee -a "$out"
  bash "$here/cluster.sh" stop > /dev/null
done
$CPY - "$out" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(label, op, c, field):
    v = [r[field] for r in rows
         if str(r.get("target", "")).startswith("etcd ") == (label == "etcd")
         and r["op"] == op and r["concurrency"] == c]
    return st.median(v) if v else float("nan")
print("\nmedians over rounds (kvraft / etcd):")
for op, c, field in [("put", 1, "p50_ms"), ("put", 1, "ops_s"), ("put", 64, "ops_s"), ("get", 64, "ops_s")]:
    k, e = med("kvraft", op, c, field), med("etcd", op, c, field)
    print(f"  {op:3} c={c:<3} {field:7} kvraft {k:9.2f}  etcd {e:9.2f}  ratio {k / e:5.2f}")
PY
