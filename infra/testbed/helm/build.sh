#!/usr/bin/env bash
# Build the `helm` binary from its Go module (helm.sh/helm/v4) for the chart tests.
#
#   infra/testbed/helm/build.sh                  build if needed; prints the binary's path on stdout
#   infra/testbed/helm/build.sh --print-path     print the path, build nothing
#   infra/testbed/helm/build.sh --force          rebuild even if cached
#
# The version lives in go.mod beside this script (go.mod + go.sum + a tiny main.go; no upstream source is
# vendored). The binary goes to ${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/helm/<key>/bin/helm, where <key>
# is the version plus a hash of this folder, so a second run is a no-op and a version bump builds into a fresh
# directory. Go's module and build caches stay at Go's defaults. Progress goes to stderr; stdout carries only
# the path.
#
# Environment: GO (go binary; default: go on PATH, else /usr/local/go/bin/go), TUNEFORGE_CACHE,
# TUNEFORGE_BUILD_NICE (nice level for the compiler, default 15).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE=build
case "${1:-}" in
  --print-path) MODE=print ;;
  --force) MODE=force ;;
  "") ;;
  *) echo "usage: $0 [--print-path|--force]" >&2; exit 2 ;;
esac

log() { printf '[helm build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

HELM_VERSION="$(awk '$1 == "helm.sh/helm/v4" && $2 ~ /^v/ {print $2; exit}
                     $1 == "require" && $2 == "helm.sh/helm/v4" {print $3; exit}' "$HERE/go.mod")"
[[ -n "$HELM_VERSION" ]] || { log "could not read the helm version from go.mod"; exit 1; }
SRC_HASH="$(cd "$HERE" && sha256sum go.mod go.sum main.go build.sh | sha256sum | cut -c1-10)"
KEY="helm-${HELM_VERSION}_${SRC_HASH}"
CACHE_ROOT="${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/helm"
OUT="$CACHE_ROOT/$KEY"
BIN="$OUT/bin/helm"

complete() { [[ -f "$OUT/.complete" && -x "$BIN" ]]; }

if [[ "$MODE" == print ]]; then echo "$BIN"; exit 0; fi
if [[ "$MODE" == build ]] && complete; then log "cached: $BIN"; echo "$BIN"; exit 0; fi

GO="${GO:-$(command -v go || true)}"
[[ -n "$GO" ]] || { [[ -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go; }
[[ -n "$GO" && -x "$GO" ]] || { log "no Go toolchain found (set GO or put go on PATH)"; exit 3; }
export GOTOOLCHAIN=local       # never fetch a toolchain; fail clearly instead
export CGO_ENABLED=0           # a static binary, no C compiler needed
export GOFLAGS=-mod=readonly   # go.sum is committed; never rewrite go.mod during a build
NEED_GO="$(awk '$1 == "go" {print $2; exit}' "$HERE/go.mod")"
HAVE_GO="$("$GO" env GOVERSION | sed 's/^go//')"
if [[ "$(printf '%s\n%s\n' "$NEED_GO" "$HAVE_GO" | sort -V | head -1)" != "$NEED_GO" ]]; then
  log "Go $HAVE_GO is too old: helm $HELM_VERSION needs Go >= $NEED_GO"; exit 3
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.build.lock"
flock 9
if [[ "$MODE" == build ]] && complete; then log "cached: $BIN"; echo "$BIN"; exit 0; fi

STAGE="$OUT.tmp.$$"
rm -rf "$STAGE"; mkdir -p "$STAGE/bin"
trap 'rm -rf "$STAGE"' EXIT
T0=$SECONDS
log "building $KEY with $("$GO" version | cut -d' ' -f3) (downloads modules on first use) ..."
# the same version stamps as upstream's Makefile
LDFLAGS="-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}"
LDFLAGS+=" -X helm.sh/helm/v4/internal/version.metadata= -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
if ! ( cd "$HERE" && nice -n "${TUNEFORGE_BUILD_NICE:-15}" "$GO" build -trimpath -ldflags "$LDFLAGS" \
        -o "$STAGE/bin/helm" . ) >"$STAGE/build.log" 2>&1; then
  log "FAILED; last lines of the build log:"; grep -v '^go: downloading' "$STAGE/build.log" | tail -40 >&2
  exit 1
fi
"$STAGE/bin/helm" version --short >/dev/null || { log "the built helm does not run"; exit 1; }
printf 'helm=%s\ngo=%s\nseconds=%s\n' "$HELM_VERSION" "$HAVE_GO" "$((SECONDS - T0))" >"$STAGE/versions.txt"
touch "$STAGE/.complete"
rm -rf "$OUT"; mv "$STAGE" "$OUT"
log "built in $((SECONDS - T0))s: $BIN"
echo "$BIN"
