#!/usr/bin/env bash
# yamllint (strict: warnings fail too) over the deployment YAML (deploy/, tests/deploy/), with the
# committed .yamllint. ctest: deploy.yamllint
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v yamllint >/dev/null || { echo "yamllint not found: run ./x setup (Debian package yamllint)" >&2; exit 1; }
files=$(find deploy tests/deploy -name '*.yaml' -o -name '*.yml'; echo .yamllint)
[ -n "$files" ] || { echo "no YAML files found" >&2; exit 1; }
echo "yamllint: $(echo "$files" | wc -l) files"
# shellcheck disable=SC2086
yamllint --strict $files
# The config must be able to fail: "on"/"yes" are not booleans Kubernetes should ever see.
if printf 'enabled: yes\n' | yamllint --strict -c .yamllint - >/dev/null; then
  echo "yamllint accepted 'enabled: yes': the truthy rule is off" >&2
  exit 1
fi
echo "yamllint: clean"
