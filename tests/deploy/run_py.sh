#!/usr/bin/env bash
# Runs a deployment check with the .venv-tools interpreter that `./x setup` creates.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
py="$root/.venv-tools/bin/python"
if [ ! -x "$py" ]; then
  echo "$py is missing: run ./x setup (it installs tests/deploy/requirements.txt)" >&2
  exit 1
fi
exec "$py" "$@"
