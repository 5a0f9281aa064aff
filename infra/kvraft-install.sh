#!/bin/sh
# Install kvraft into its own virtualenv, /opt/kvraft (root-owned; the service runs as
# the kvraft user). The package is one pip requirement or a wheel URL.
set -eu
package="$1"
if [ ! -x /opt/kvraft/bin/kvraft ]; then
  command -v apt-get >/dev/null 2>&1 && { apt-get update -q; apt-get install -y -q python3-venv; }
  python3 -m venv /opt/kvraft
fi
/opt/kvraft/bin/pip install -q --upgrade "$package"
/opt/kvraft/bin/kvraft --version
