#!/usr/bin/env bash
# Install checkov (static analysis of the Terraform/OpenTofu code) into a virtualenv of its own, outside the
# repository: its dependencies are many and pinned tightly, so it stays out of tuneforge's environment.
#
#   infra/terraform/install-checkov.sh          install if needed; prints the checkov executable on stdout
#   infra/terraform/install-checkov.sh --print  print the path, install nothing
#
# Goes to ${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/checkov/<version>; a second run is a no-op.
# Environment: PYTHON (default python3), TUNEFORGE_CACHE.
set -euo pipefail
VERSION=3.3.30
ROOT="${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/checkov"
DIR="$ROOT/$VERSION"
BIN="$DIR/bin/checkov"
log() { printf '[checkov %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ "${1:-}" == --print ]]; then echo "$BIN"; exit 0; fi
if [[ -f "$DIR/.complete" && -x "$BIN" ]]; then echo "$BIN"; exit 0; fi

mkdir -p "$ROOT"
exec 9>"$ROOT/.install.lock"
flock 9
if [[ -f "$DIR/.complete" && -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
T0=$SECONDS
log "installing checkov $VERSION into $DIR"
rm -rf "$DIR"
"${PYTHON:-python3}" -m venv "$DIR"
"$DIR/bin/pip" install -q --disable-pip-version-check --upgrade pip >&2
"$DIR/bin/pip" install -q --disable-pip-version-check "checkov==$VERSION" >&2
"$BIN" --version >/dev/null
touch "$DIR/.complete"
log "installed in $((SECONDS - T0))s"
echo "$BIN"
