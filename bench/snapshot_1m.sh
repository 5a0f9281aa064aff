#!/usr/bin/env bash
# Snapshot and restore time and peak memory for a 1,000,000-key state (16-byte keys,
# 100-byte values), each step under /usr/bin/time -v; S3 is a moto server on 127.0.0.1.
#   bash bench/snapshot_1m.sh [PYTHON] [KEYS]
set -euo pipefail
PY=${1:-python3}; KEYS=${2:-1000000}
D=$(mktemp -d /tmp/kvraft-snap-bench.XXXX)
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
$PY -m moto.server -H 127.0.0.1 -p "$PORT" > "$D/moto.log" 2>&1 &
MOTO=$!; trap 'kill $MOTO 2>/dev/null; rm -rf "$D"' EXIT
sleep 1.5
here=$(cd "$(dirname "$0")" && pwd)
measure() { /usr/bin/time -v "$@" 2> "$D/time.txt"; grep -E "Elapsed \(wall|Maximum resident" "$D/time.txt" | sed 's/^\s*/    /'; }
echo "== build $KEYS keys"; $PY "$here/snapshot_size.py" build "$D/src" --keys "$KEYS"
echo "== snapshot (SQLite backup API + fsync + sha256)"; measure $PY "$here/snapshot_size.py" snapshot "$D/src"
echo "== upload to S3 (multipart)"; measure $PY "$here/snapshot_size.py" upload "$D/src" --endpoint-url "http://127.0.0.1:$PORT"
echo "== kvraft restore (download + sha256 + install)"
measure $PY -m kvraft restore --bucket kvraft-bench --cluster big --endpoint-url "http://127.0.0.1:$PORT" \
  --id 1 --whole-group --data-dir "$D/restored"
