#!/usr/bin/env bash
# Regenerate tests/golden/fixtures from the real diffusers classes.
#
#   ./tools/golden/generate.sh            # venv at <repo>/.venv-golden (created on first use)
#   GOLDEN_PYTHON=/path/to/python ./tools/golden/generate.sh
#                                         # use an existing interpreter as is (nothing installed)
#
# Extra arguments are passed to generate.py (e.g. --out DIR).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
fixtures="$repo/tests/golden/fixtures"

if [[ -n "${GOLDEN_PYTHON:-}" ]]; then
    py="$GOLDEN_PYTHON"
    echo "generate.sh: using GOLDEN_PYTHON=$py (no pip install)" >&2
else
    venv="$repo/.venv-golden"
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "generate.sh: creating $venv" >&2
        python3 -m venv "$venv"
    fi
    py="$venv/bin/python"
    # CPU wheels are enough: everything runs on CPU. Set PIP_INDEX_URL / PIP_EXTRA_INDEX_URL
    # yourself to pick a different torch build.
    "$py" -m pip install --disable-pip-version-check -q -r "$here/requirements.txt"
fi

"$py" - "$here/requirements.txt" <<'PY'
import sys
from importlib.metadata import version
want = {}
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, ver = line.split("==")
        want[name] = ver
bad = []
for name, ver in want.items():
    have = version(name).split("+")[0]
    if have != ver:
        bad.append(f"{name}: have {have}, pinned {ver}")
if bad:
    print("generate.sh: WARNING, versions differ from requirements.txt (fixtures will differ):", file=sys.stderr)
    for b in bad:
        print("  " + b, file=sys.stderr)
PY

mkdir -p "$fixtures"
# generate.py: transformer + scheduler fixtures; generate_<part>.py: one per component family.
"$py" "$here/generate.py" --out "$fixtures" "$@"
for part in "$here"/generate_*.py; do
    [[ -e "$part" ]] || continue
    echo "generate.sh: $(basename "$part")" >&2
    "$py" "$part" --out "$fixtures"
done
