#!/usr/bin/env bash
# Local stack control: Prefect server + worker, MLflow server, SeaweedFS S3.
#   deploy/stack.sh up|down|status [RUN_DIR] [SERVICE ...]     (RUN_DIR default: runs/stack)
# See deploy/README.md and deploy/stack.py for ports and environment variables.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${LOLCATS_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || { echo "stack.sh: $PY not found; run 'make install' first" >&2; exit 1; }
eval "$("$PY" "$ROOT/deploy/stack_config.py" offline-env)"  # the offline switches (one list)

exec "$PY" "$ROOT/deploy/stack.py" "$@"
