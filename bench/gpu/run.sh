#!/usr/bin/env bash
# Every GPU check in one command (bench/gpu/run.py; the exact device call is in bench/README.md):
#
#   bash bench/gpu/run.sh [run.py options]      e.g. --dry-run, --only sft,serving, --out DIR
#
# With carried wheels in .whl/ (bench/gpu/fetch_wheels.sh) and CPython 3.12 it installs them into /tmp first
# and checks that the versions are the pinned ones; with $OUT set (the device machine's return folder) the summary, the
# results and the log are kept current there as they are measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
# the wheels are CPython 3.12's (the GPU machine's); elsewhere the environment's own packages are used
if compgen -G ".whl/*.whl" >/dev/null && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  SITE=${TUNEFORGE_GPU_SITE:-/tmp/tuneforge-gpu-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" bench/gpu/envcheck.py --strict
else
  "$PY" bench/gpu/envcheck.py
fi
publish=()
if [ -n "${OUT:-}" ]; then publish=(--publish "$OUT"); fi
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu/run.py "${publish[@]}" "$@"
