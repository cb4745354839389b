#!/usr/bin/env bash
# Build the binaries of the test control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok) from Go modules.
#
#   infra/testbed/k8s/build.sh               build if needed; prints the bin dir on stdout
#   infra/testbed/k8s/build.sh --print-bin-dir   print the bin dir, build nothing
#   infra/testbed/k8s/build.sh --force       rebuild even if cached
#
# The versions live in the wrapper modules beside this script (etcd/, kube/,
# kwok/: go.mod + go.sum + tiny main.go files; no upstream source is vendored).
# Binaries go to ${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/k8s/<key>/bin, where
# <key> names the versions plus a hash of the wrapper modules, so a second run
# is a no-op and a version bump builds into a fresh directory. The Go module and
# build caches are Go's defaults (GOMODCACHE, GOCACHE), outside the repository.
# Progress goes to stderr; stdout carries only the bin dir.
#
# Environment: GO (go binary; default: go on PATH, else /usr/local/go/bin/go),
# TUNEFORGE_CACHE, TUNEFORGE_BUILD_NICE (nice level for the compiler, default 15).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE=build
case "${1:-}" in
  --print-bin-dir) MODE=print ;;
  --force) MODE=force ;;
  "") ;;
  *) echo "usage: $0 [--print-bin-dir|--force]" >&2; exit 2 ;;
esac

log() { printf '[k8s-testbed build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- versions (single source of truth: the go.mod files) ---------------------
modver() { # modver <dir> <module path>
  awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$HERE/$1/go.mod"
}
K8S_VERSION="$(modver kube k8s.io/kubernetes)"
ETCD_VERSION="$(modver etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(modver kwok sigs.k8s.io/kwok)"
for v in K8S_VERSION ETCD_VERSION KWOK_VERSION; do
  [[ -n "${!v}" ]] || { log "could not read $v from the go.mod files"; exit 1; }
done
# The hash covers the wrapper modules and this script (its build flags).
SRC_HASH="$(cd "$HERE" && { find etcd kube kwok -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) -print0; \
  printf 'build.sh\0'; } | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-10)"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_${SRC_HASH}"
CACHE_ROOT="${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/k8s"
OUT="$CACHE_ROOT/$KEY"
BIN="$OUT/bin"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

complete() {
  [[ -f "$OUT/.complete" ]] || return 1
  local b; for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

if [[ "$MODE" == print ]]; then echo "$BIN"; exit 0; fi
if [[ "$MODE" == build ]] && complete; then
  log "cached: $BIN"
  echo "$BIN"; exit 0
fi

# --- toolchain ---------------------------------------------------------------
GO="${GO:-$(command -v go || true)}"
[[ -n "$GO" ]] || { [[ -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go; }
[[ -n "$GO" && -x "$GO" ]] || { log "no Go toolchain found (set GO or put go on PATH)"; exit 3; }
export GOTOOLCHAIN=local   # never fetch a toolchain; fail clearly instead
export CGO_ENABLED=0       # static binaries, no C compiler needed
export GOFLAGS=-mod=readonly   # go.sum is committed; never rewrite go.mod during a build
NEED_GO="$(awk '$1 == "go" {print $2; nextfile}' "$HERE/kube/go.mod" "$HERE/etcd/go.mod" | sort -V | tail -1)"
HAVE_GO="$("$GO" env GOVERSION | sed 's/^go//')"
if [[ "$(printf '%s\n%s\n' "$NEED_GO" "$HAVE_GO" | sort -V | head -1)" != "$NEED_GO" ]]; then
  log "Go $HAVE_GO is too old: these modules need Go >= $NEED_GO"; exit 3
fi
NICE=(nice -n "${TUNEFORGE_BUILD_NICE:-15}")

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.build.lock"
log "waiting for the build lock ($CACHE_ROOT/.build.lock)"
flock 9
if [[ "$MODE" == build ]] && complete; then   # built by a concurrent run meanwhile
  log "cached: $BIN"; echo "$BIN"; exit 0
fi

STAGE="$OUT.tmp.$$"
rm -rf "$STAGE"; mkdir -p "$STAGE/bin"
HEARTBEAT_PID=
cleanup() {
  [[ -n "$HEARTBEAT_PID" ]] && kill "$HEARTBEAT_PID" 2>/dev/null || true
  rm -rf "$STAGE"
}
trap cleanup EXIT

T0=$SECONDS
log "building $KEY with $("$GO" version | cut -d' ' -f3) (GOMODCACHE=$("$GO" env GOMODCACHE), GOCACHE=$("$GO" env GOCACHE))"

# go_build <label> <module dir> <go build args...>: runs `go build -v`, printing
# a heartbeat with the number of packages compiled so far once a minute.
go_build() {
  local label="$1" dir="$2"; shift 2
  local vlog="$STAGE/$label.build.log" t=$SECONDS
  log "$label: go build (downloads modules on first use) ..."
  ( while sleep 60; do
      log "$label: still building, $(grep -c . "$vlog" 2>/dev/null || echo 0) packages so far, $((SECONDS - t))s"
    done ) &
  HEARTBEAT_PID=$!
  local rc=0
  ( cd "$HERE/$dir" && "${NICE[@]}" "$GO" build -v -trimpath "$@" ) >"$vlog" 2>&1 || rc=$?
  kill "$HEARTBEAT_PID" 2>/dev/null || true; wait "$HEARTBEAT_PID" 2>/dev/null || true; HEARTBEAT_PID=
  if [[ $rc -ne 0 ]]; then
    log "$label: FAILED (exit $rc); last lines of the build log:"
    grep -v '^go: downloading' "$vlog" | tail -40 >&2
    exit $rc
  fi
  log "$label: done in $((SECONDS - t))s"
}

BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# etcd ------------------------------------------------------------------------
go_build etcd etcd -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" \
  -o "$STAGE/bin/etcd" .

# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl --------------
ver="${K8S_VERSION#v}"; major="${ver%%.*}"; minor="${ver#*.}"; minor="${minor%%.*}"
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=${major} -X $pkg.gitMinor=${minor}"
  K8S_LDFLAGS+=" -X $pkg.gitCommit=${K8S_VERSION} -X $pkg.gitTreeState=clean -X $pkg.buildDate=${BUILD_DATE}"
done
go_build kubernetes kube -ldflags "$K8S_LDFLAGS" -o "$STAGE/bin/" \
  ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubectl

# kwok ------------------------------------------------------------------------
go_build kwok kwok -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
  -o "$STAGE/bin/kwok" .

for b in "${BINARIES[@]}"; do [[ -x "$STAGE/bin/$b" ]] || { log "missing $b after build"; exit 1; }; done
mkdir -p "$STAGE/logs"; mv "$STAGE"/*.build.log "$STAGE/logs/"
printf 'k8s=%s\netcd=%s\nkwok=%s\ngo=%s\nbuilt=%s\nseconds=%s\n' "$K8S_VERSION" "$ETCD_VERSION" \
  "$KWOK_VERSION" "$HAVE_GO" "$BUILD_DATE" "$((SECONDS - T0))" >"$STAGE/versions.txt"
touch "$STAGE/.complete"
rm -rf "$OUT"; mv "$STAGE" "$OUT"
log "all built in $((SECONDS - T0))s: $BIN"
echo "$BIN"
