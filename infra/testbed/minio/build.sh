#!/usr/bin/env bash
# Build the MinIO server (an S3-compatible object store written in Go) from the Go module proxy, for the
# object-store benchmark (bench/object_store.py --server minio). Tests use moto's server; MinIO is what many
# self-hosted deployments of tuneforge store their bucket in, and it is fast enough that the client, not the
# server, limits a benchmark on this machine.
#
#   infra/testbed/minio/build.sh                  build if needed; prints the binary's path on stdout
#   infra/testbed/minio/build.sh --print-path     print the path, build nothing
#
# The binary goes to ${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/minio/<version>/minio (nothing in the
# repository); a second run is a no-op. Progress goes to stderr. Cold build: ~10 min on 2 cores.
set -euo pipefail

# MinIO tags releases as RELEASE.<date>, so the Go module proxy serves pseudo-versions; pin one.
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
OUT="${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/minio/$MINIO_VERSION"

case "${1:-}" in
  --print-path) echo "$OUT/minio"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-path]" >&2; exit 2 ;;
esac

if [[ -x "$OUT/minio" ]]; then echo "$OUT/minio"; exit 0; fi
mkdir -p "$OUT"
echo "[minio build $(date +%H:%M:%S)] go install github.com/minio/minio@$MINIO_VERSION" >&2
GOBIN="$OUT" nice -n "${TUNEFORGE_BUILD_NICE:-15}" "$GO" install "github.com/minio/minio@$MINIO_VERSION" >&2
echo "$OUT/minio"
